"""Configuration: a frozen :class:`Config`, read from explicit options and the environment.

Every option not passed explicitly is read from ``ANALYTICS_QUEUE_<OPTION>`` (``api_key`` from
``POSTHOG_API_KEY`` and ``host`` from ``POSTHOG_HOST`` first). A bad explicit value raises
:class:`~analytics_queue.errors.ConfigurationError` (a ``ValueError``) at once; a bad environment
value is logged and replaced by the default, so a typo in a deployment never stops an app.

Safe to share between threads: a Config never changes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from analytics_queue._host import normalize_host
from analytics_queue.errors import ConfigurationError

logger = logging.getLogger(__name__)

DEFAULT_HOST: Final = "https://us.i.posthog.com"
ENV_PREFIX: Final = "ANALYTICS_QUEUE_"

_UNSET: Final[Any] = object()


@dataclass(frozen=True, slots=True)
class Config:
    """The options of one AnalyticsQueue, checked when built.

    ``api_key`` is kept out of ``repr()`` so that logging a Config never shows it.
    """

    api_key: str | None = dataclasses.field(default=None, repr=False)
    host: str = DEFAULT_HOST
    batch_size: int = 10
    flush_interval: float = 5.0
    max_queue_size: int = 10_000
    requeue_limit: int | None = 5
    shutdown_timeout: float = 5.0
    timeout: float = 10.0
    gzip: bool = True
    app_version: str | None = None
    environment: str | None = None
    strict: bool = False
    disabled: bool = False

    @property
    def local(self) -> bool:
        """True when there is no API key: events are logged, not sent."""
        return self.api_key is None


def _check_api_key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be a str or None, got {type(value).__name__}")
    value = value.strip()
    if not value:
        return None
    # The key itself never goes into a message: these say what is wrong with it, not what it is.
    if value.startswith("phx_"):
        raise ValueError("is a personal API key (phx_...); use the project API key (phc_...)")
    if len(value) > 64 or not value.isascii() or "\x00" in value:
        raise ValueError("is not a PostHog project API key (at most 64 ASCII characters)")
    return value


def _check_host(value: object) -> str:
    if value is None:
        return DEFAULT_HOST
    if not isinstance(value, str):
        raise ValueError(f"must be a str, got {type(value).__name__}")
    value = value.strip()
    if not value:
        return DEFAULT_HOST
    if not value.startswith(("http://", "https://")):
        # The value is not echoed: a key pasted into the wrong variable must not reach a log.
        raise ValueError("must start with http:// or https://")
    return normalize_host(value).rstrip("/")


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be an int >= 1, got {value!r}")
    return int(value)


def _optional_non_negative_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be an int >= 0 or None, got {value!r}")
    return int(value)


def _seconds(value: object, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        value_ok = False
    else:
        value_ok = value >= 0 if allow_zero else value > 0
    if not value_ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"must be a number of seconds {bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _positive_seconds(value: object) -> float:
    return _seconds(value, allow_zero=False)


def _non_negative_seconds(value: object) -> float:
    return _seconds(value, allow_zero=True)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be True or False, got {value!r}")
    return value


def _optional_str(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be a str or None, got {value!r}")
    return value or None


_CHECKS: Final[dict[str, Callable[[object], Any]]] = {
    "api_key": _check_api_key,
    "host": _check_host,
    "batch_size": _positive_int,
    "flush_interval": _positive_seconds,
    "max_queue_size": _positive_int,
    "requeue_limit": _optional_non_negative_int,
    "shutdown_timeout": _non_negative_seconds,
    "timeout": _positive_seconds,
    "gzip": _bool,
    "app_version": _optional_str,
    "environment": _optional_str,
    "strict": _bool,
    "disabled": _bool,
}

#: The options read from ``ANALYTICS_QUEUE_<OPTION>``: every option but api_key and host.
OPTION_NAMES: Final[tuple[str, ...]] = tuple(n for n in _CHECKS if n not in ("api_key", "host"))

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _parse_env(name: str, text: str) -> object:
    """Turn an environment string into the option's type; the check then validates it."""
    default = getattr(Config(), name)
    stripped = text.strip()
    if name in ("api_key", "host", "app_version", "environment"):
        return stripped
    if isinstance(default, bool):
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        return text
    if name == "requeue_limit" and stripped.lower() in ("", "none", "all"):
        return None
    try:
        return (
            int(stripped)
            if isinstance(default, int) or name == "requeue_limit"
            else float(stripped)
        )
    except ValueError:
        return text


def _env_names(name: str) -> tuple[str, ...]:
    if name == "api_key":
        return ("POSTHOG_API_KEY", ENV_PREFIX + "API_KEY")
    if name == "host":
        return ("POSTHOG_HOST", ENV_PREFIX + "HOST")
    return (ENV_PREFIX + name.upper(),)


def build_config(*, env: Mapping[str, str] | None = None, **options: Any) -> Config:
    """Build a Config from explicit options, filling the rest from the environment.

    Args:
        env: the environment to read (default ``os.environ``).
        **options: explicit options; ``None`` for an option means "not given" except for
            ``requeue_limit``, where ``None`` means "requeue them all".

    Raises:
        ConfigurationError: an unknown option, or a bad explicit value.
    """
    environ = os.environ if env is None else env
    unknown = sorted(set(options) - set(_CHECKS))
    if unknown:
        raise ConfigurationError(f"unknown option(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, check in _CHECKS.items():
        explicit = options.get(name, _UNSET)
        if explicit is not _UNSET and (explicit is not None or name == "requeue_limit"):
            try:
                values[name] = check(explicit)
            except ValueError as exc:
                raise ConfigurationError(f"{name}: {exc}") from None
            continue
        for env_name in _env_names(name):
            text = environ.get(env_name)
            if text is None:
                continue
            try:
                values[name] = check(_parse_env(name, text))
            except ValueError as exc:
                logger.warning("ignoring %s: %s; using the default", env_name, exc)
            break
    return Config(**values)


def validate_options(options: Mapping[str, Any]) -> list[str]:
    """Return the problems of explicit options, one message each; empty when they are fine.

    Used by the framework integrations (Django's system check ``analytics_queue.E001``).
    """
    problems = [f"unknown option {name!r}" for name in sorted(set(options) - set(_CHECKS))]
    for name, value in options.items():
        check = _CHECKS.get(name)
        if check is None or (value is None and name != "requeue_limit"):
            continue
        try:
            check(value)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    return problems
