"""Green-thread runtimes: which library patched the standard library, and a queue that works in all.

gevent's ``monkey.patch_all()`` (``gunicorn -k gevent``) and eventlet's ``monkey_patch()`` replace
``threading``'s primitives with cooperative ones, turn ``threading.Thread`` into a greenlet, and
replace the class ``queue.Queue`` by their own (gevent since 25.4; eventlet always), which keeps
only the documented methods: no ``mutex``, ``queue`` or ``not_full``.

analytics_queue stays cooperative there, as posthog-python and sentry-python do: the worker is a
greenlet, its locks and events are the patched ones, and its HTTP goes through the patched socket.
Only the queue class needs care. :func:`queue_class` returns the standard library's ``Queue``
class in every runtime (the base of :class:`~analytics_queue._buffer.EventBuffer`); its instances
take their locks from ``threading`` when they are made, so they are cooperative in a patched
process and ordinary elsewhere, and ``put_nowait`` never waits.

Safe from any thread; :func:`queue_class` builds the class at most once per process.
"""

from __future__ import annotations

import functools
import importlib.util
import queue
import sys
from typing import Any, Final, Literal

Runtime = Literal["gevent", "eventlet"]

#: The standard library's Queue, when analytics_queue was imported before any patching.
_IMPORTED_QUEUE: Final[type[queue.Queue[Any]]] = queue.Queue


def patched_by() -> Runtime | None:
    """The library that patched ``threading`` in this process, or None.

    Neither library is imported here: a process that never imported one was not patched by it.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return "gevent"
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None and patcher.is_monkey_patched("thread"):
        return "eventlet"
    return None


def _is_stdlib(cls: type) -> bool:
    return cls.__module__ == "queue" and hasattr(cls, "_qsize") and hasattr(cls, "_init")


@functools.cache
def _rebuilt_queue_class() -> type[queue.Queue[Any]]:
    """The standard library's Queue, run again from its source with today's ``threading``.

    Used when the class was replaced before analytics_queue was imported. The copy raises the
    real module's ``queue.Full`` (``Empty`` comes from the C module ``_queue`` in both).
    """
    spec = importlib.util.find_spec("queue")
    if spec is None or spec.loader is None:  # pragma: no cover - the stdlib always has it
        raise ImportError("the standard library's queue module is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__dict__.update(Full=queue.Full, Empty=queue.Empty)
    cls: type[queue.Queue[Any]] = module.Queue
    return cls


def queue_class() -> type[queue.Queue[Any]]:
    """The standard library's ``queue.Queue`` class, whatever patched the ``queue`` module.

    Its instances have the stdlib internals (``mutex``, ``queue``, ``not_full``), raise
    ``queue.Full`` and ``queue.Empty``, and make their locks with the ``threading`` module as it
    is when they are created: cooperative under gevent or eventlet.
    """
    current = queue.Queue
    if _is_stdlib(current):
        return current
    if _is_stdlib(_IMPORTED_QUEUE):
        return _IMPORTED_QUEUE
    return _rebuilt_queue_class()
