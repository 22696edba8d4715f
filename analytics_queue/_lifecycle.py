"""Process lifecycle: one atexit handler and one fork hook for every AnalyticsQueue alive.

Instances are held by weak reference, so registering one never keeps it alive. Their workers are
held strongly while their thread may hold events (from start to the end of the thread), so
events of an instance that was garbage-collected are still drained at exit.

At exit, every instance is closed and every worker asked to stop at once, then each is waited
for, all within one shared budget (the largest ``shutdown_timeout``). The handler never starts a
thread, catches ``BaseException`` (gunicorn's SIGABRT raises ``SystemExit`` inside a running
atexit handler) and logs one WARNING with the number of events it could not deliver, never their
payloads.

After ``fork()``, in the child, every instance drops what the parent queued (the parent delivers
it), and gets fresh locks, a fresh HTTP session and a worker of its own at its first ``track()``.

Thread safety: registration takes a lock; the hooks run where the interpreter calls them.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
import weakref
from types import FrameType
from typing import Final, Protocol

from analytics_queue._guard import guarded, run_outside
from analytics_queue._ledger import Totals

logger = logging.getLogger("analytics_queue")


class Lifecycle(Protocol):
    """What the hooks need of an instance."""

    def _begin_shutdown(self, deadline: float) -> None: ...

    def _finish_shutdown(self, deadline: float) -> bool: ...

    def _after_fork_in_child(self) -> None: ...

    @property
    def pid(self) -> int: ...


class Drainable(Protocol):
    """What the exit drain needs of a worker."""

    shutdown_timeout: float
    pid: int

    def begin_stop(self, deadline: float) -> None: ...

    def wait_stopped(self, deadline: float) -> bool: ...

    def totals(self) -> Totals: ...


_instances: weakref.WeakSet[Lifecycle] = weakref.WeakSet()
#: Each kept worker with the pid of the process that started it: after a fork that skipped
#: Python's hooks (uWSGI's workers), the child must not wait for the parent's thread.
_workers: set[Drainable] = set()
_lock = threading.Lock()
_lock_pid = os.getpid()
_hooks_installed = False


def _registry_lock() -> threading.Lock:
    """The registry's lock; a new one in a child forked without Python's hooks."""
    global _lock, _lock_pid
    if _lock_pid != os.getpid():
        _lock, _lock_pid = threading.Lock(), os.getpid()  # another thread held it at the fork
    return _lock


def register(instance: Lifecycle) -> None:
    """Include ``instance`` in the exit drain and the fork reset."""
    global _hooks_installed
    with _registry_lock():
        _instances.add(instance)
        if not _hooks_installed:
            atexit.register(drain_at_exit)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_after_fork_in_child)
            _hooks_installed = True


def keep(worker: Drainable) -> None:
    """Hold ``worker`` for the exit drain until :func:`release`."""
    with _registry_lock():
        _workers.add(worker)


def release(worker: Drainable) -> None:
    """Stop holding ``worker`` (its thread ended)."""
    with _registry_lock():
        _workers.discard(worker)


def drain_at_exit() -> int:
    """Send what every instance of this process still holds within the shared budget.

    Instances and workers of another process (the parent, after a fork that skipped Python's
    hooks) are left alone: a child that never tracked returns at once.

    Returns the number of events that could not be delivered (also logged as one WARNING).
    """
    pid = os.getpid()
    instances: list[Lifecycle] = []
    workers: list[Drainable] = []
    undelivered = 0
    try:
        with guarded():
            with _registry_lock():
                instances = [i for i in _instances if i.pid == pid]
                workers = [w for w in _workers if w.pid == pid]
            if not workers:
                for instance in instances:
                    instance._begin_shutdown(time.monotonic())  # nothing to send: just close
                return 0
            deadline = time.monotonic() + max(worker.shutdown_timeout for worker in workers)
            for instance in instances:
                instance._begin_shutdown(deadline)  # refuse new events, start their drain
            for worker in workers:
                worker.begin_stop(deadline)  # and the drain of workers whose client is gone
            for worker in workers:
                worker.wait_stopped(deadline)
            for instance in instances:
                instance._finish_shutdown(deadline)  # closes its connections
            undelivered = sum(worker.totals().unfinished for worker in workers)
    except BaseException:  # noqa: B036 - SystemExit from a signal must not lose the count
        try:
            undelivered = sum(worker.totals().unfinished for worker in workers)
        except BaseException:  # noqa: B036
            undelivered = -1
    if undelivered:
        try:
            logger.warning(
                "analytics_queue: %s event(s) could not be delivered before exit",
                undelivered if undelivered > 0 else "an unknown number of",
            )
        except BaseException:  # noqa: B036 - logging may be torn down already
            pass
    return undelivered


#: The exit status after the opt-in SIGTERM handler: 128 + 15, as shells and container
#: runtimes report a process ended by SIGTERM.
SIGTERM_EXIT_STATUS: Final = 128 + signal.SIGTERM


def install_sigterm_handler() -> None:
    """Opt in: on SIGTERM, exit normally so that the exit drain sends what is queued.

    For servers that install no SIGTERM handler of their own (waitress, a plain
    ``python app.py``), where SIGTERM (``docker stop``, Kubernetes) ends the process without
    running atexit. The handler itself takes no lock and sends nothing: it raises
    ``SystemExit(143)`` (deferred while the main thread is inside analytics_queue's critical
    sections, so that no lock is left held), the stack unwinds, and the exit drain runs with
    its usual budget; the process then exits with status 143. A previous Python handler is
    called first; when it ends the process itself, its way wins. ``SIG_IGN`` stays ignored.
    Call it from the main thread (Python's rule for signal handlers); calling it twice
    installs it once.

    Raises:
        ValueError: when called from another thread than the main one.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if getattr(previous, "_analytics_queue_handler", False) or previous == signal.SIG_IGN:
        return

    exiting = False

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        def leave() -> None:
            nonlocal exiting
            exiting = True  # a second SIGTERM must not cut the exit drain short
            if callable(previous):
                previous(signum, frame)
            raise SystemExit(SIGTERM_EXIT_STATUS)

        if not exiting:
            run_outside(leave)

    on_sigterm._analytics_queue_handler = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, on_sigterm)


def _after_fork_in_child() -> None:
    global _lock, _lock_pid
    _lock, _lock_pid = threading.Lock(), os.getpid()  # another thread may have held it
    _workers.clear()  # the parent's workers and their events stay with the parent
    for instance in list(_instances):
        try:
            instance._after_fork_in_child()
        except Exception:
            logger.exception("analytics_queue: resetting after fork failed")
