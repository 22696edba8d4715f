"""uWSGI settings that lose events: a fake ``uwsgi`` module, as uWSGI injects the real one."""

from __future__ import annotations

import logging
import sys
import threading
import types
from collections.abc import Iterator

import pytest

from analytics_queue import AnalyticsQueue
from analytics_queue._uwsgi import in_master, uwsgi_problems
from analytics_queue.testing import CaptureServer


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
        assert health.codes == ["uwsgi_no_fork_hooks", "uwsgi_no_die_on_term"]
        assert "py-call-uwsgi-fork-hooks" in health.reasons[0].message
        assert "die-on-term" in health.reasons[1].message
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


def test_the_master_is_told_from_the_workers(fake_uwsgi: types.ModuleType) -> None:
    fake_uwsgi.worker_id = lambda: 0  # type: ignore[attr-defined]
    assert in_master()
    fake_uwsgi.worker_id = lambda: 2  # type: ignore[attr-defined]
    assert not in_master()
    fake_uwsgi.worker_id = lambda: 0  # type: ignore[attr-defined]
    fake_uwsgi.opt = {"processes": b"4"}  # type: ignore[attr-defined]
    assert not in_master()  # without --master the first process is worker 1 and runs atexit


def test_no_uwsgi_is_no_master() -> None:
    assert not in_master()


def test_disabled_threads_are_reported(fake_uwsgi: types.ModuleType) -> None:
    fake_uwsgi.has_threads = 0  # type: ignore[attr-defined]
    fake_uwsgi.opt = {"lazy-apps": True, "die-on-term": True}  # type: ignore[attr-defined]
    assert [code for code, _ in uwsgi_problems()] == ["uwsgi_no_threads"]


def test_in_the_master_track_sends_at_once_without_a_thread(
    fake_uwsgi: types.ModuleType, capture_server: CaptureServer
) -> None:
    fake_uwsgi.worker_id = lambda: 0  # type: ignore[attr-defined]
    before = set(threading.enumerate())
    queue = AnalyticsQueue(api_key="phc_x", host=capture_server.url, flush_interval=60)
    try:
        assert queue.track("app_loaded", distinct_id="master")
        # Sent before track() returned: no thread of ours may hold the GIL at uWSGI's fork.
        assert [e.event for e in capture_server.events()] == ["app_loaded"]
        started = set(threading.enumerate()) - before
        assert "analytics-queue-worker" not in [t.name for t in started]
        assert queue.queue_size == 0
    finally:
        queue.shutdown(timeout=1)


def test_in_the_master_an_unreachable_server_costs_at_most_the_budget(
    fake_uwsgi: types.ModuleType, capture_server: CaptureServer, caplog: pytest.LogCaptureFixture
) -> None:
    fake_uwsgi.worker_id = lambda: 0  # type: ignore[attr-defined]
    capture_server.hang()
    queue = AnalyticsQueue(api_key="phc_x", host=capture_server.url, timeout=0.5)
    try:
        with caplog.at_level(logging.WARNING, logger="analytics_queue"):
            assert queue.track("app_loaded", distinct_id="master")
        assert "tracked in the uWSGI master could not be sent" in caplog.text
        assert queue.queue_size == 1
    finally:
        capture_server.clear_faults()
        queue.shutdown(timeout=1)
