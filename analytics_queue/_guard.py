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

import threading
from collections.abc import Callable
from typing import Final


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
    """Run the work a signal handler deferred, if any; called where a guarded section ends."""
    if deferred and not inside.active:
        deferred.pop()()


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
