"""``flushing()``: flush with a deadline when a block or a function ends.

For code that runs where the process may end without an exit drain: tasks of a
``multiprocessing.Pool`` that is terminated (its workers get SIGTERM), a task runner's worker
that is killed, a serverless handler that is frozen between calls.

Thread safety: each use (each ``with`` block, each call of a decorated function) flushes on its
own; several threads may use one decorated function at once.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from analytics_queue.client import AnalyticsQueue

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def flushing(
    timeout: float | None = None, *, instance: AnalyticsQueue | None = None
) -> Iterator[None]:
    """Flush when the block ends (also when it raises), waiting at most ``timeout`` seconds.

    Works as a context manager and as a decorator::

        with analytics_queue.flushing(timeout=5):
            analytics_queue.track("report_built", distinct_id="user-1")

        @analytics_queue.flushing(timeout=5)
        def task(n): ...

    Never raises from the flush and never hides the block's own exception: a flush that fails
    to finish in time leaves the events queued (they are sent later or at exit) and the figure
    shows in ``metrics()``.

    Args:
        timeout: seconds to wait for delivery; None: the instance's ``timeout`` option.
        instance: the queue to flush; None: the default instance, if one was made (nothing is
            built just to flush it).
    """
    try:
        yield
    finally:
        flush_quietly(timeout, instance)


def flush_quietly(timeout: float | None, instance: AnalyticsQueue | None) -> bool:
    """Flush ``instance`` (or the default instance, if one was made); never raises.

    Returns True when everything tracked before the call reached a final state in time.
    """
    target = instance if instance is not None else _existing_default()
    if target is None:
        return True
    try:
        done = target.flush(timeout)
    except Exception:
        logger.exception("analytics_queue: flush failed")
        return False
    if not done:
        logger.debug("events were still waiting at the flush deadline")
    return done


def _existing_default() -> AnalyticsQueue | None:
    module = sys.modules.get("analytics_queue._default")  # not loaded: no default instance yet
    return None if module is None else module.peek()
