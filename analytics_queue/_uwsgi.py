"""uWSGI: settings that lose analytics events, and whether this process is the master.

uWSGI's master never runs Python's exit handlers (``uwsgi_plugins_atexit`` returns early in the
master), so an event tracked there, while the master loads the app before forking the workers
(``--master`` without ``--lazy-apps``), must be sent at once: :func:`in_master` tells the client.

Pure reads of the ``uwsgi`` module, which uWSGI injects; safe from any thread.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Any, Final

logger = logging.getLogger("analytics_queue")

#: Problem codes, one per setting (the ``code`` of a health reason).
NO_FORK_HOOKS: Final = "uwsgi_no_fork_hooks"
NO_DIE_ON_TERM: Final = "uwsgi_no_die_on_term"
NO_THREADS: Final = "uwsgi_no_threads"


def _module() -> Any | None:
    try:
        return importlib.import_module("uwsgi")
    except ImportError:
        return None


def in_master() -> bool:
    """True in a uWSGI master process that loads the app (``--master``, no ``--lazy-apps``).

    Its ``worker_id()`` is 0 until it forks; the workers' are 1 and up.
    """
    module = _module()
    if module is None:
        return False
    options = getattr(module, "opt", {}) or {}
    if not _flag(options, "master"):
        return False
    worker_id = getattr(module, "worker_id", None)
    try:
        return callable(worker_id) and worker_id() == 0
    except Exception:  # a uWSGI build without it: assume a worker, as before
        return False


def _flag(options: Any, name: str) -> bool:
    value = options.get(name, options.get(name.encode())) if hasattr(options, "get") else None
    if isinstance(value, (bytes, str)):
        text = value.decode() if isinstance(value, bytes) else value
        return text.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


def _version(module: Any) -> tuple[int, ...]:
    raw = getattr(module, "version", b"0")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    parts: list[int] = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


@functools.lru_cache(maxsize=1)
def uwsgi_problems() -> tuple[tuple[str, str], ...]:
    """One (code, message) per uWSGI setting that loses events; empty outside uWSGI.

    Computed once per process, when each is also logged as one WARNING.
    """
    module = _module()
    if module is None:
        return ()
    options = getattr(module, "opt", {}) or {}
    problems: list[tuple[str, str]] = []
    lazy = _flag(options, "lazy-apps") or _flag(options, "lazy")
    hooks = _flag(options, "py-call-uwsgi-fork-hooks") or _flag(options, "py-call-osafterfork")
    if not lazy and not hooks:
        problems.append(
            (
                NO_FORK_HOOKS,
                "uWSGI: Python fork hooks are not called (add --py-call-uwsgi-fork-hooks or "
                "--lazy-apps); each worker resets its queue at its first track() instead",
            )
        )
    if not _flag(options, "die-on-term") and _version(module) < (2, 1):
        problems.append(
            (
                NO_DIE_ON_TERM,
                "uWSGI: SIGTERM reloads instead of stopping (add --die-on-term); "
                "events waiting at a SIGTERM may be lost",
            )
        )
    if getattr(module, "has_threads", 1) == 0:
        problems.append(
            (
                NO_THREADS,
                "uWSGI: Python threads are disabled (add --enable-threads); the worker thread "
                "cannot send between requests, and the master's events are never sent",
            )
        )
    for _, message in problems:
        logger.warning("%s", message)
    return tuple(problems)
