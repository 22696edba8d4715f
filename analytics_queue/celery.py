"""Celery: events tracked in tasks are delivered before a prefork child exits.

Celery's prefork pool (billiard) ends each child process with ``os._exit()``: when the worker
shuts down (TERM, INT), when a child is recycled (``--max-tasks-per-child``,
``--max-memory-per-child``) and when it is scaled down. ``atexit`` never runs there, so the events
the child's worker thread still holds would be lost. Celery sends ``worker_process_shutdown`` in
the child just before that exit; :func:`setup` drains the queues there, within the exit budget
(``shutdown_timeout``).

A child killed outright (a cold shutdown, ``SIGKILL``, a hard time limit) sends nothing: with
``flush_after_task=True`` each task's events are also flushed when the task ends, within
``timeout`` seconds, so that such an end loses nothing either (at the cost of that wait at the end
of each task).

    import analytics_queue.celery
    analytics_queue.celery.setup()

Call it in the module that creates the Celery app (the worker imports it in every process).
The other pools (solo, threads, gevent, eventlet) run tasks in the worker's main process, which
drains at exit as any other.

Thread safety: :func:`setup` may be called again (from any thread) to change its options; the
handlers run on the thread Celery sends the signals from.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from celery import signals

from analytics_queue import _lifecycle
from analytics_queue._flushing import flush_quietly

if TYPE_CHECKING:
    from analytics_queue.client import AnalyticsQueue

__all__ = ["setup"]

_UID = "analytics_queue.celery"
_lock = threading.Lock()
_flush_options: tuple[float | None, AnalyticsQueue | None] = (None, None)


def setup(
    *,
    flush_after_task: bool = False,
    timeout: float | None = 2.0,
    instance: AnalyticsQueue | None = None,
) -> None:
    """Drain the queues in each prefork child before it exits; optionally flush after each task.

    Calling it again replaces the options of the previous call; the handlers are connected once.

    Args:
        flush_after_task: also flush when each task ends (``task_postrun``).
        timeout: seconds one flush after a task may wait; None: the instance's ``timeout``.
        instance: the queue flushed after each task; None: the default instance. The drain
            before exit covers every instance.

    Raises:
        ValueError: ``timeout`` is negative.
    """
    global _flush_options
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be at least 0 seconds, not {timeout!r}")
    with _lock:
        _flush_options = (timeout, instance)
        signals.worker_process_shutdown.connect(_drain, weak=False, dispatch_uid=_UID)
        if flush_after_task:
            signals.task_postrun.connect(_flush_after_task, weak=False, dispatch_uid=_UID)
        else:
            signals.task_postrun.disconnect(_flush_after_task, dispatch_uid=_UID)


def _drain(**_: Any) -> None:
    _lifecycle.drain_at_exit()


def _flush_after_task(**_: Any) -> None:
    timeout, instance = _flush_options
    flush_quietly(timeout, instance)
