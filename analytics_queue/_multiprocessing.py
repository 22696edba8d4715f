"""The exit drain in child processes started by ``multiprocessing``.

A child started by ``multiprocessing`` (fork, forkserver or spawn; a ``Process`` or a ``Pool``
worker) ends with ``os._exit()`` after its target returns, so ``atexit`` never runs there and the
events its worker thread still holds would be lost. What does run is multiprocessing's own exit
step (``multiprocessing.util._exit_function``, called by ``BaseProcess._bootstrap``), which calls
every ``multiprocessing.util.Finalize`` registered with an ``exitpriority``. So, when a worker
thread starts in such a child, the process's exit drain is registered there as well.

multiprocessing is never imported here: a child started by it has ``multiprocessing.util`` loaded
already (its bootstrap imports it before running the target), and a process without it needs
nothing from this module.

A child killed by a signal (``Pool.terminate()`` sends SIGTERM) runs no finalizer: there, flush at
the end of each task with :func:`analytics_queue.flushing`.

Thread safety: :func:`register_exit_drain` may be called from any thread; two threads racing at
the first call may register the drain twice, and the drain runs once per process.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Final

from analytics_queue import _lifecycle

#: The priority of the drain among multiprocessing's exit finalizers: those of priority 0 and
#: above run first, before the process's daemonic children are terminated.
EXIT_PRIORITY: Final = 0

_registered_pid: int | None = None
_drained_pid: int | None = None


def register_exit_drain() -> None:
    """Register the exit drain with multiprocessing's finalizers in a multiprocessing child.

    Called when a worker thread starts. Does nothing in a process that multiprocessing did not
    start (atexit drains those) and when it was registered in this process already.
    """
    global _registered_pid
    pid = os.getpid()
    if _registered_pid == pid:
        return
    util = sys.modules.get("multiprocessing.util")
    process = sys.modules.get("multiprocessing.process")
    if util is None or process is None or process.parent_process() is None:
        return
    _registered_pid = pid
    # Finalize remembers the pid that created it and never runs in another process (a fork of
    # this child clears the registry and registers its own drain).
    util.Finalize(None, _drain, exitpriority=EXIT_PRIORITY)


def _drain() -> None:
    global _drained_pid
    pid = os.getpid()
    if _drained_pid == pid:
        return
    _drained_pid = pid
    try:
        _lifecycle.drain_at_exit()
    finally:
        # A spawn child runs atexit after this: the drain is done, and must not retry (and
        # spend the exit budget again) when the server is down.
        atexit.unregister(_lifecycle.drain_at_exit)
