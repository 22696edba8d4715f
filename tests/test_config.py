"""Config: explicit values are checked at once, environment values fall back with a log line."""

from __future__ import annotations

import dataclasses
import inspect
import logging

import pytest

from analytics_queue import AnalyticsQueue, ConfigurationError
from analytics_queue.config import (
    DEFAULT_HOST,
    OPTION_NAMES,
    OPTIONS,
    OPTIONS_BY_NAME,
    Config,
    Problem,
    build_config,
    validate_options,
)

SECRET = "phc_secret_key_never_shown_0123456789"


def test_defaults_without_environment() -> None:
    config = build_config(env={})
    assert (config.batch_size, config.flush_interval, config.max_queue_size) == (10, 5.0, 10_000)
    assert (config.requeue_limit, config.shutdown_timeout, config.timeout) == (5, 5.0, 10.0)
    assert config.gzip and not config.strict and not config.disabled
    assert config.disable_geoip and not config.historical_migration  # posthog-python's defaults
    assert config.super_properties is None and config.before_send is None
    assert config.request_context and not config.request_context_ip
    assert config.api_key is None and config.local
    assert config.host == DEFAULT_HOST


def test_every_option_is_read_from_its_environment_variable() -> None:
    env = {
        "POSTHOG_API_KEY": "phc_env",
        "POSTHOG_HOST": "http://127.0.0.1:9/",
        "ANALYTICS_QUEUE_BATCH_SIZE": "25",
        "ANALYTICS_QUEUE_FLUSH_INTERVAL": "0.5",
        "ANALYTICS_QUEUE_MAX_QUEUE_SIZE": "7",
        "ANALYTICS_QUEUE_MAX_QUEUE_BYTES": "none",
        "ANALYTICS_QUEUE_REQUEUE_LIMIT": "none",
        "ANALYTICS_QUEUE_SHUTDOWN_TIMEOUT": "1.5",
        "ANALYTICS_QUEUE_TIMEOUT": "3",
        "ANALYTICS_QUEUE_GZIP": "false",
        "ANALYTICS_QUEUE_APP_VERSION": "2.0.0",
        "ANALYTICS_QUEUE_ENVIRONMENT": "staging",
        "ANALYTICS_QUEUE_STRICT": "yes",
        "ANALYTICS_QUEUE_DISABLED": "1",
        "ANALYTICS_QUEUE_DISABLE_GEOIP": "false",
        "ANALYTICS_QUEUE_SUPER_PROPERTIES": '{"service": "stories", "region": 3}',
        "ANALYTICS_QUEUE_HISTORICAL_MIGRATION": "true",
        "ANALYTICS_QUEUE_REQUEST_CONTEXT": "off",
        "ANALYTICS_QUEUE_REQUEST_CONTEXT_IP": "on",
        "ANALYTICS_QUEUE_HEALTH_WINDOW": "60",
        "ANALYTICS_QUEUE_SPOOL_PATH": "/var/spool/analytics.db",
        "ANALYTICS_QUEUE_SPOOL_MAX_BYTES": "1048576",
    }
    config = build_config(env=env)
    assert config.api_key == "phc_env"
    assert config.host == "http://127.0.0.1:9"
    assert config.batch_size == 25 and config.flush_interval == 0.5
    assert config.max_queue_size == 7 and config.requeue_limit is None
    assert config.max_queue_bytes is None
    assert config.shutdown_timeout == 1.5 and config.timeout == 3.0
    assert config.gzip is False and config.strict is True and config.disabled is True
    assert (config.app_version, config.environment) == ("2.0.0", "staging")
    assert config.spool_path == "/var/spool/analytics.db"
    assert config.spool_max_bytes == 1_048_576
    assert config.disable_geoip is False and config.historical_migration is True
    assert config.super_properties == {"service": "stories", "region": 3}
    assert config.request_context is False and config.request_context_ip is True
    assert config.health_window == 60.0
    read_from_env = {spec.name for spec in OPTIONS if spec.env} - {"api_key", "host"}
    assert read_from_env == {
        n.removeprefix("ANALYTICS_QUEUE_").lower() for n in env if n.startswith("ANALYTICS")
    }
    assert set(OPTION_NAMES) == read_from_env | {"before_send"}


def test_explicit_options_win_over_the_environment() -> None:
    config = build_config(
        env={"ANALYTICS_QUEUE_BATCH_SIZE": "25"}, batch_size=3, requeue_limit=None
    )
    assert config.batch_size == 3
    assert config.requeue_limit is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("batch_size", 0),
        ("batch_size", "10"),
        ("batch_size", True),
        ("flush_interval", 0),
        ("flush_interval", float("nan")),
        ("max_queue_size", -1),
        ("requeue_limit", -1),
        ("shutdown_timeout", -0.5),
        ("timeout", float("inf")),
        ("gzip", "yes"),
        ("strict", 1),
        ("host", "us.i.posthog.com"),
        ("api_key", 42),
        ("disable_geoip", "no"),
        ("super_properties", ["not", "a", "dict"]),
        ("super_properties", {"bad": float("nan")}),
        ("historical_migration", 1),
        ("before_send", "not callable"),
        ("request_context", 0),
    ],
)
def test_a_bad_explicit_value_raises_value_error(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        build_config(env={}, **{name: value})
    with pytest.raises(ConfigurationError):
        AnalyticsQueue(**{name: value})  # type: ignore[arg-type]


def test_unknown_option_raises() -> None:
    with pytest.raises(ConfigurationError, match="bacth_size"):
        build_config(env={}, bacth_size=3)


def test_a_bad_environment_value_is_logged_and_replaced_by_the_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="analytics_queue.config"):
        config = build_config(
            env={"ANALYTICS_QUEUE_BATCH_SIZE": "ten", "ANALYTICS_QUEUE_TIMEOUT": "-1"}
        )
    assert config.batch_size == 10 and config.timeout == 10.0
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "ANALYTICS_QUEUE_BATCH_SIZE" in messages and "ANALYTICS_QUEUE_TIMEOUT" in messages


def test_the_api_key_never_appears_in_repr_or_errors() -> None:
    config = build_config(env={}, api_key=SECRET)
    assert SECRET not in repr(config)
    personal = "phx_" + SECRET
    with pytest.raises(ConfigurationError) as raised:
        build_config(env={}, api_key=personal)
    assert personal not in str(raised.value) and "personal" in str(raised.value)


def test_app_hosts_map_to_ingestion_hosts() -> None:
    assert build_config(env={}, host="https://us.posthog.com/").host == "https://us.i.posthog.com"
    assert build_config(env={}, host="https://eu.posthog.com").host == "https://eu.i.posthog.com"


def test_validate_options_lists_every_problem() -> None:
    problems = validate_options({"batch_size": 0, "gzip": "no", "colour": "red"})
    assert sorted(p.option for p in problems) == ["batch_size", "colour", "gzip"]
    assert Problem("colour", "unknown option") in problems
    assert validate_options({"batch_size": 5, "requeue_limit": None}) == []


def test_every_option_is_declared_once_with_its_keys() -> None:
    # The table is Config's fields: names, defaults, environment and framework keys agree.
    assert [spec.name for spec in OPTIONS] == [f.name for f in dataclasses.fields(Config)]
    for spec in OPTIONS:
        assert getattr(Config(), spec.name) == spec.default
        assert spec.check(spec.default) == spec.default or spec.default is None
        assert spec.flask_key in spec.env or spec.env == ()  # a callable: code only
    batch = OPTIONS_BY_NAME["batch_size"]
    assert batch.env == ("ANALYTICS_QUEUE_BATCH_SIZE",)
    assert batch.django_setting == 'ANALYTICS_QUEUE["batch_size"]'
    assert OPTIONS_BY_NAME["api_key"].env == ("POSTHOG_API_KEY", "ANALYTICS_QUEUE_API_KEY")
    assert OPTIONS_BY_NAME["requeue_limit"].none_means is not None
    assert build_config(env={"ANALYTICS_QUEUE_REQUEUE_LIMIT": "all"}).requeue_limit is None


def test_a_bad_super_properties_environment_value_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = build_config(env={"ANALYTICS_QUEUE_SUPER_PROPERTIES": "{not json"})
    assert config.super_properties is None
    assert "ANALYTICS_QUEUE_SUPER_PROPERTIES" in caplog.text


def test_before_send_is_never_read_from_the_environment() -> None:
    assert build_config(env={"ANALYTICS_QUEUE_BEFORE_SEND": "os.system"}).before_send is None


def test_every_option_is_a_parameter_of_the_constructor() -> None:
    parameters = inspect.signature(AnalyticsQueue.__init__).parameters
    assert set(OPTIONS_BY_NAME) <= set(parameters)
