"""Which thread is inside analytics_queue's locks, and work deferred until it is out.

``inside.active`` is True on a thread while it runs library code that holds, or may take, one of
the library's locks (the queue's mutex, the ledger's, the counters'), and for good on the worker
thread. Two things read it:

- ``track()`` refuses with reason ``reentrant`` when it is set: a call from a ``__del__``, a GC
  callback, a signal handler or a logging handler on a thread that is already inside would
  otherwise wait for a lock its own interrupted frame holds.
- A signal handler that must end the process (:func:`run_outside`) defers its work while the
  interrupted frame is inside, so that the exception it raises never leaves a lock held; the work
  runs as soon as that frame leaves its last guarded section.

Thread safety: ``inside`` is per thread; the deferred list is only touched by the main thread,
where Python runs signal handlers.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Final

#: How long a read inside the library (a signal handler calling ``metrics()`` while its frame
#: holds a lock) waits for a lock before it reads without it.
READ_PATIENCE: Final = 0.05


class _ThreadState(threading.local):
    """Per-thread flag: True while this thread is inside the library's critical sections."""

    active = False


inside: Final = _ThreadState()

#: Work a signal handler asked for while its thread was inside: at most one item.
deferred: Final[list[Callable[[], None]]] = []


def run_outside(work: Callable[[], None]) -> None:
    """Run ``work`` now, or as soon as this thread leaves the library's critical sections.

    Meant for signal handlers: ``work`` may raise (``SystemExit``), and it is never run while
    the interrupted frame holds one of the library's locks. Work asked for while earlier work
    still waits is dropped: the first request wins.
    """
    if inside.active:
        if not deferred:
            deferred.append(work)
        return
    work()


def run_deferred() -> None:
    """Run the work a signal handler deferred, if any; called where a guarded section ends.

    Only on the main thread, where the signal arrived: an exception raised on another thread
    would end that thread, not the process.
    """
    if deferred and not inside.active and threading.current_thread() is threading.main_thread():
        deferred.pop()()


@contextlib.contextmanager
def reading(lock: threading.Lock | threading.RLock) -> Iterator[None]:
    """Hold ``lock`` for a read of figures; never wait for it forever inside the library.

    Outside (a request thread calling ``metrics()``) this is ``with lock``. Inside (a signal
    handler or ``__del__`` whose interrupted frame may hold ``lock``) it waits at most
    :data:`READ_PATIENCE`, then reads without the lock: figures a moment out of step, never a
    deadlock.
    """
    if not inside.active:
        with lock:
            yield
        return
    held = lock.acquire(timeout=READ_PATIENCE)
    try:
        yield
    finally:
        if held:
            lock.release()


class guarded:  # noqa: N801 - used as a statement: `with guarded():`
    """Marks the current thread as inside the library for the duration of the block.

    Nested blocks are fine; leaving the outermost one runs deferred signal work.
    """

    __slots__ = ("_was",)

    def __enter__(self) -> None:
        self._was = inside.active
        inside.active = True

    def __exit__(self, *exc: object) -> None:
        inside.active = self._was
        if deferred and not self._was:
            run_deferred()
