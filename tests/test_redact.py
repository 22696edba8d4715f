"""API keys never show: not whole, not cut, not pasted into the wrong option."""

from __future__ import annotations

import logging

import pytest

from analytics_queue import AnalyticsQueue
from analytics_queue._redact import MIN_FRAGMENT, redact
from analytics_queue.config import build_config, validate_options
from analytics_queue.errors import ConfigurationError

KEY = "phc_Zx81kQp2LmN7vB4tR9sW3yH6jD0fG5cA1eU8iO2"


@pytest.mark.parametrize(
    "text",
    [
        f"got {KEY!r}",
        f"token {KEY[:12]}…",
        f"echo: phc_…{KEY[-10:]}...",
        f"invalid key …{KEY[10:30]}… for project",
        "someone else's phx_AbCdEf123456 and phc_QWERTY",
    ],
)
def test_key_like_text_and_fragments_of_the_key_are_masked(text: str) -> None:
    masked = redact(text, KEY)
    for start in range(len(KEY) - MIN_FRAGMENT + 1):
        assert KEY[start : start + MIN_FRAGMENT] not in masked
    assert "AbCdEf" not in masked and "QWERTY" not in masked
    assert "***" in masked


def test_ordinary_text_is_left_alone() -> None:
    text = "502 Bad Gateway: no answer within 10 s (phone: 555-0100)"
    assert redact(text, KEY) == text
    assert redact("is a personal API key (phx_...)") == "is a personal API key (phx_***)"


def test_a_key_pasted_into_batch_size_is_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as raised:
        AnalyticsQueue(api_key=KEY, batch_size=KEY)  # type: ignore[arg-type]
    assert "batch_size" in str(raised.value)
    assert KEY not in str(raised.value) and KEY[4:20] not in str(raised.value)
    with pytest.raises(ConfigurationError) as other:
        build_config(batch_size="phc_someOtherProjectKey123", env={})
    assert "someOtherProjectKey" not in str(other.value)
    (problem,) = validate_options({"api_key": KEY, "flush_interval": KEY})
    assert problem.option == "flush_interval" and KEY[4:20] not in str(problem)


def test_a_key_pasted_into_an_environment_variable_is_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"POSTHOG_API_KEY": KEY, "ANALYTICS_QUEUE_BATCH_SIZE": KEY}
    with caplog.at_level(logging.WARNING, logger="analytics_queue"):
        config = build_config(env=env)
    assert config.batch_size == 10
    assert "ANALYTICS_QUEUE_BATCH_SIZE" in caplog.text
    assert KEY[4:20] not in caplog.text
