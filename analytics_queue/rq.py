"""RQ: events tracked in a job are delivered before the work horse exits.

RQ runs each job in a work horse, a process forked for that job that ends with ``os._exit()``:
``atexit`` never runs there, so the events the horse's worker thread still holds would be lost.
Here the horse drains the queues (within the exit budget, ``shutdown_timeout``) when the job has
finished and its result is stored, just before that exit. Either start the worker with the
worker class of this module::

    rq worker --worker-class analytics_queue.rq.Worker

or call :func:`setup` where the worker process starts (the module given to ``rq worker -c``, or
a script that builds its own worker), which makes every RQ worker class do the same::

    import analytics_queue.rq
    analytics_queue.rq.setup()

Calling it in the module of the job functions is too late for the first job: the horse imports
that module while the job already runs.

Workers that run jobs in their own process (``SimpleWorker``) drain at exit as any process does.

Thread safety: :func:`setup` may be called from any thread, and more than once.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import rq

from analytics_queue import _lifecycle

__all__ = ["Worker", "setup"]

_lock = threading.Lock()


def _drain_in_horse(worker: Any) -> None:
    # The horse ends with os._exit() as soon as perform_job returns.
    if getattr(worker, "is_horse", False):
        _lifecycle.drain_at_exit()


class Worker(rq.Worker):
    """RQ's forking ``Worker`` whose work horse drains the queues before it exits."""

    def perform_job(self, *args: Any, **kwargs: Any) -> bool:
        try:
            return super().perform_job(*args, **kwargs)
        finally:
            _drain_in_horse(self)


def setup() -> None:
    """Make every RQ worker class drain the queues in the work horse before it exits."""
    with _lock:
        original: Callable[..., bool] = rq.Worker.perform_job
        if getattr(original, "_analytics_queue_drains", False):
            return

        @functools.wraps(original)
        def perform_job(self: rq.Worker, *args: Any, **kwargs: Any) -> bool:
            try:
                return original(self, *args, **kwargs)
            finally:
                _drain_in_horse(self)

        perform_job._analytics_queue_drains = True  # type: ignore[attr-defined]
        rq.Worker.perform_job = perform_job  # type: ignore[method-assign, assignment]
