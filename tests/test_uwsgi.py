"""uWSGI settings that lose events: a fake ``uwsgi`` module, as uWSGI injects the real one."""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Iterator

import pytest

from analytics_queue import AnalyticsQueue
from analytics_queue._uwsgi import uwsgi_problems


@pytest.fixture
def fake_uwsgi(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    module = types.ModuleType("uwsgi")
    module.version = b"2.0.31"  # type: ignore[attr-defined]
    module.opt = {"master": True, "processes": b"4"}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", module)
    uwsgi_problems.cache_clear()
    yield module
    uwsgi_problems.cache_clear()


def test_no_uwsgi_no_problem() -> None:
    uwsgi_problems.cache_clear()
    assert uwsgi_problems() == ()


def test_missing_fork_hooks_and_die_on_term_are_reported(
    fake_uwsgi: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="analytics_queue"):
        queue = AnalyticsQueue(api_key="phc_x", host="http://127.0.0.1:9")
    try:
        health = queue.health()
        assert health.status == "degraded"
        assert any("py-call-uwsgi-fork-hooks" in r for r in health.reasons)
        assert any("die-on-term" in r for r in health.reasons)
        assert "py-call-uwsgi-fork-hooks" in caplog.text and "die-on-term" in caplog.text
    finally:
        queue.shutdown(timeout=1)


def test_safe_settings_are_not_reported(fake_uwsgi: types.ModuleType) -> None:
    fake_uwsgi.opt = {  # type: ignore[attr-defined]
        "master": True,
        "py-call-uwsgi-fork-hooks": True,
        "die-on-term": True,
    }
    assert uwsgi_problems() == ()
    fake_uwsgi.opt = {"lazy-apps": b"true", "die-on-term": b"1"}  # type: ignore[attr-defined]
    uwsgi_problems.cache_clear()
    assert uwsgi_problems() == ()
