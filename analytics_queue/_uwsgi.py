"""uWSGI settings that lose analytics events, detected when the ``uwsgi`` module imports.

Pure reads of ``uwsgi.opt``; safe from any thread.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Any

logger = logging.getLogger("analytics_queue")


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
def uwsgi_problems() -> tuple[str, ...]:
    """One message per uWSGI setting that loses events; empty outside uWSGI.

    Computed once per process, when each is also logged as one WARNING.
    """
    try:
        module = importlib.import_module("uwsgi")
    except ImportError:
        return ()
    options = getattr(module, "opt", {}) or {}
    problems: list[str] = []
    lazy = _flag(options, "lazy-apps") or _flag(options, "lazy")
    hooks = _flag(options, "py-call-uwsgi-fork-hooks") or _flag(options, "py-call-osafterfork")
    if not lazy and not hooks:
        problems.append(
            "uWSGI: Python fork hooks are not called (add --py-call-uwsgi-fork-hooks or "
            "--lazy-apps); each worker resets its queue at its first track() instead"
        )
    if not _flag(options, "die-on-term") and _version(module) < (2, 1):
        problems.append(
            "uWSGI: SIGTERM reloads instead of stopping (add --die-on-term); "
            "events waiting at a SIGTERM may be lost"
        )
    for problem in problems:
        logger.warning("%s", problem)
    return tuple(problems)
