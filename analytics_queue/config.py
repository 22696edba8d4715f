"""Configuration: a frozen :class:`Config`, read from explicit options and the environment.

Every option not passed explicitly is read from ``ANALYTICS_QUEUE_<OPTION>`` (``api_key`` from
``POSTHOG_API_KEY`` and ``host`` from ``POSTHOG_HOST`` first). A bad explicit value raises
:class:`~analytics_queue.errors.ConfigurationError` (a ``ValueError``) at once; a bad environment
value is logged and replaced by the default, so a typo in a deployment never stops an app.

Safe to share between threads: a Config never changes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from analytics_queue._host import normalize_host
from analytics_queue._redact import redact
from analytics_queue.errors import ConfigurationError
from analytics_queue.event import shown_value

logger = logging.getLogger(__name__)

DEFAULT_HOST: Final = "https://us.i.posthog.com"
#: The default bound of the spool file: past it, its oldest events are dropped.
DEFAULT_SPOOL_MAX_BYTES: Final = 256 * 1024 * 1024
ENV_PREFIX: Final = "ANALYTICS_QUEUE_"

_UNSET: Final[Any] = object()


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option, everything about it in one place.

    Attributes:
        name: the keyword of ``AnalyticsQueue(...)``.
        default: the value when the option is given nowhere.
        check: validates an explicit value and returns it normalised; raises ``ValueError``.
        parse: turns an environment string into a value for ``check``.
        env: the environment variables read, first found wins (none for a callable).
        flask_key: the ``app.config`` key.
        django_setting: where Django settings give it: a setting of its own
            (``POSTHOG_API_KEY``, ``ANALYTICS_QUEUE_REQUEST_CONTEXT``), or a key of the
            ``ANALYTICS_QUEUE`` dict (``ANALYTICS_QUEUE["batch_size"]``).
        none_means: what an explicit None means, when None is a value; otherwise None means
            "not given".
        doc: one line for the docs and the configuration table.
    """

    name: str
    default: Any
    check: Callable[[object], Any]
    parse: Callable[[str], object]
    env: tuple[str, ...]
    flask_key: str
    django_setting: str
    none_means: str | None
    doc: str


@dataclass(frozen=True, slots=True)
class _Meta:
    check: Callable[[object], Any]
    parse: Callable[[str], object]
    doc: str
    none_means: str | None
    posthog_name: bool
    code_only: bool
    django_top_level: bool


def _option(
    default: Any,
    check: Callable[[object], Any],
    parse: Callable[[str], object],
    doc: str,
    *,
    none_means: str | None = None,
    posthog_name: bool = False,
    code_only: bool = False,
    django_top_level: bool = False,
    repr: bool = True,
) -> Any:
    meta = _Meta(check, parse, doc, none_means, posthog_name, code_only, django_top_level)
    return dataclasses.field(default=default, repr=repr, metadata={"option": meta})


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
        raise ValueError(f"must be an int >= 1, got {shown_value(value)}")
    return int(value)


def _optional_positive_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be an int >= 1 or None, got {shown_value(value)}")
    return int(value)


def _optional_non_negative_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be an int >= 0 or None, got {shown_value(value)}")
    return int(value)


def _seconds(value: object, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        value_ok = False
    else:
        value_ok = value >= 0 if allow_zero else value > 0
    if not value_ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"must be a number of seconds {bound}, got {shown_value(value)}")
    return float(value)  # type: ignore[arg-type]


def _positive_seconds(value: object) -> float:
    return _seconds(value, allow_zero=False)


def _non_negative_seconds(value: object) -> float:
    return _seconds(value, allow_zero=True)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be True or False, got {shown_value(value)}")
    return value


def _optional_str(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be a str or None, got {shown_value(value)}")
    return value or None


def _super_properties(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a dict of properties, got {type(value).__name__}")
    from analytics_queue.errors import RefusedError
    from analytics_queue.event import capture_properties

    try:
        return capture_properties("super_properties", value) or None
    except RefusedError as exc:
        raise ValueError(str(exc).removeprefix("event 'super_properties': ")) from None


def _callable(value: object) -> Callable[[dict[str, Any]], Any] | None:
    if value is None:
        return None
    if not callable(value):
        raise ValueError(f"must be a callable or None, got {type(value).__name__}")
    return value


def _optional_path(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"must be a path (str or os.PathLike) or None, got {value!r}")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise ValueError(f"must be a str path, got {value!r}")
    if "\x00" in text:
        raise ValueError("must not contain a NUL character")
    return os.path.expanduser(text) if text.strip() else None


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _text(text: str) -> object:
    return text.strip()


def _int_text(text: str) -> object:
    try:
        return int(text.strip())
    except ValueError:
        return text


def _float_text(text: str) -> object:
    try:
        return float(text.strip())
    except ValueError:
        return text


def _bool_text(text: str) -> object:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return text


def _limit_text(text: str) -> object:
    return None if text.strip().lower() in ("", "none", "all") else _int_text(text)


def _json_text(text: str) -> object:
    stripped = text.strip()
    try:
        return json.loads(stripped) if stripped else None
    except ValueError:
        return text


def _no_text(text: str) -> object:
    raise ValueError("is set by code only")  # pragma: no cover - never read from a string


@dataclass(frozen=True, slots=True)
class Config:
    """The options of one AnalyticsQueue, checked when built: the one table of options.

    Each field is an option: its type, default, check, environment variables and framework
    keys are declared here and nowhere else (see :data:`OPTIONS`). ``api_key`` is kept out of
    ``repr()`` so that logging a Config never shows it.
    """

    api_key: str | None = _option(
        None,
        _check_api_key,
        _text,
        "the PostHog project API key (phc_...); none: events are logged, not sent",
        posthog_name=True,
        repr=False,
    )
    host: str = _option(DEFAULT_HOST, _check_host, _text, "PostHog's base URL", posthog_name=True)
    batch_size: int = _option(10, _positive_int, _int_text, "send once this many events wait")
    flush_interval: float = _option(
        5.0, _positive_seconds, _float_text, "seconds: a waiting event is sent at most this late"
    )
    max_queue_size: int = _option(
        10_000, _positive_int, _int_text, "past this many waiting events track() refuses"
    )
    max_queue_bytes: int | None = _option(
        32 * 1024 * 1024,
        _optional_positive_int,
        _limit_text,
        "past about this many bytes of waiting events (estimated at track()) it refuses too",
        none_means="no byte bound: the count bound alone",
    )
    requeue_limit: int | None = _option(
        5,
        _optional_non_negative_int,
        _limit_text,
        "after a retryable failure, the first N events of the batch go again",
        none_means="every event of the batch goes again",
    )
    shutdown_timeout: float = _option(
        5.0, _non_negative_seconds, _float_text, "seconds: the exit budget"
    )
    timeout: float = _option(10.0, _positive_seconds, _float_text, "seconds: one HTTP attempt")
    gzip: bool = _option(True, _bool, _bool_text, "compress request bodies")
    app_version: str | None = _option(
        None, _optional_str, _text, "added to every event as the app_version property"
    )
    environment: str | None = _option(
        None, _optional_str, _text, "added to every event as the environment property"
    )
    strict: bool = _option(
        False, _bool, _bool_text, "refusals raise from track() instead of returning False"
    )
    disabled: bool = _option(False, _bool, _bool_text, "track() is a no-op that returns False")
    health_window: float = _option(
        300.0, _positive_seconds, _float_text, "seconds of recent sends the health verdict judges"
    )
    disable_geoip: bool = _option(
        True, _bool, _bool_text, "send $geoip_disable: PostHog does not geolocate server IPs"
    )
    super_properties: dict[str, Any] | None = _option(
        None, _super_properties, _json_text, "properties added to every event (a JSON object)"
    )
    historical_migration: bool = _option(
        False, _bool, _bool_text, "mark batches as a historical import (posthog-python's flag)"
    )
    before_send: Callable[[dict[str, Any]], Any] | None = _option(
        None,
        _callable,
        _no_text,
        "called on the worker with each event as a dict; returns it, changed, or None to drop",
        code_only=True,
        repr=False,
    )
    request_context: bool = _option(
        True,
        _bool,
        _bool_text,
        "Flask and Django: a context per request ($current_url, ...)",
        django_top_level=True,
    )
    request_context_ip: bool = _option(
        False,
        _bool,
        _bool_text,
        "add the client's $ip to the request context (personal data)",
        django_top_level=True,
    )
    spool_path: str | None = _option(
        None,
        _optional_path,
        _text,
        "a SQLite file where events wait on disk through outages, restarts and crashes; "
        "none: memory only",
    )
    spool_max_bytes: int = _option(
        DEFAULT_SPOOL_MAX_BYTES,
        _positive_int,
        _int_text,
        "past this many bytes in the spool file its oldest events are dropped",
    )

    @property
    def local(self) -> bool:
        """True when there is no API key: events are logged, not sent."""
        return self.api_key is None


def _spec(field: dataclasses.Field[Any]) -> OptionSpec:
    meta: _Meta = field.metadata["option"]
    upper = field.name.upper()
    env: tuple[str, ...]
    if meta.posthog_name:
        env = ("POSTHOG_" + upper, ENV_PREFIX + upper)
        flask_key = django_setting = "POSTHOG_" + upper
    else:
        env = () if meta.code_only else (ENV_PREFIX + upper,)
        flask_key = ENV_PREFIX + upper
        django_setting = flask_key if meta.django_top_level else f'ANALYTICS_QUEUE["{field.name}"]'
    return OptionSpec(
        name=field.name,
        default=field.default,
        check=meta.check,
        parse=meta.parse,
        env=env,
        flask_key=flask_key,
        django_setting=django_setting,
        none_means=meta.none_means,
        doc=meta.doc,
    )


#: Every option, in declaration order, derived from :class:`Config`'s fields.
OPTIONS: Final[tuple[OptionSpec, ...]] = tuple(_spec(f) for f in dataclasses.fields(Config))
OPTIONS_BY_NAME: Final[dict[str, OptionSpec]] = {spec.name: spec for spec in OPTIONS}
#: The options the ``ANALYTICS_QUEUE`` dict of Django settings may give: all but api_key, host.
OPTION_NAMES: Final[tuple[str, ...]] = tuple(
    spec.name for spec in OPTIONS if not spec.django_setting.startswith("POSTHOG_")
)
#: Options with a Django setting of their own, by setting name (they win over the dict).
DJANGO_SETTINGS: Final[dict[str, str]] = {
    spec.django_setting: spec.name
    for spec in OPTIONS
    if not spec.django_setting.startswith("ANALYTICS_QUEUE[")
}


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with one option's value."""

    option: str
    message: str

    def __str__(self) -> str:
        return f"{self.option}: {self.message}"


def _explicit(spec: OptionSpec, value: object) -> bool:
    """True when ``value`` counts as given (None is given only where it means something)."""
    return value is not None or spec.none_means is not None


def build_config(*, env: Mapping[str, str] | None = None, **options: Any) -> Config:
    """Build a Config from explicit options, filling the rest from the environment.

    Args:
        env: the environment to read (default ``os.environ``).
        **options: explicit options; ``None`` for an option means "not given" except where
            the option says what None means (``requeue_limit``: requeue them all).

    Raises:
        ConfigurationError: an unknown option, or a bad explicit value.
    """
    environ = os.environ if env is None else env
    unknown = sorted(set(options) - set(OPTIONS_BY_NAME))
    if unknown:
        raise ConfigurationError(f"unknown option(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for spec in OPTIONS:
        explicit = options.get(spec.name, _UNSET)
        if explicit is not _UNSET and _explicit(spec, explicit):
            try:
                values[spec.name] = spec.check(explicit)
            except ValueError as exc:
                # A key pasted into another option must not reach a traceback or a log.
                message = redact(f"{spec.name}: {exc}", values.get("api_key"))
                raise ConfigurationError(message) from None
            continue
        for env_name in spec.env:
            text = environ.get(env_name)
            if text is None:
                continue
            try:
                values[spec.name] = spec.check(spec.parse(text))
            except ValueError as exc:
                logger.warning(
                    "ignoring %s: %s; using the default",
                    env_name,
                    redact(str(exc), values.get("api_key")),
                )
            break
    return Config(**values)


def validate_options(options: Mapping[str, Any]) -> list[Problem]:
    """Return the problems of explicit options; empty when they are fine.

    Used by the framework integrations (Flask's ``init_app``, Django's system checks).
    """
    problems = [
        Problem(str(name), "unknown option") for name in options if name not in OPTIONS_BY_NAME
    ]
    for name, value in options.items():
        spec = OPTIONS_BY_NAME.get(name)
        if spec is None or not _explicit(spec, value):
            continue
        try:
            spec.check(value)
        except ValueError as exc:
            # api_key's own messages never echo it; other options' messages echo their value.
            key = None if name == "api_key" else _key_of(options)
            problems.append(Problem(name, redact(str(exc), key)))
    return problems


def _key_of(options: Mapping[str, Any]) -> str | None:
    key = options.get("api_key")
    return key.strip() if isinstance(key, str) else None
