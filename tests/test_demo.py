"""The story demo (examples/flask_app) through Flask's test client against ``capture_server``,
and ``python -m examples.flask_app.demo --once`` (what ``make demo`` runs) in a subprocess.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from analytics_queue.flask import EXTENSION_KEY
from examples.flask_app import create_app, db, shutdown_app
from examples.flask_app.workers import STALE_AFTER

ROOT = Path(__file__).resolve().parents[1]
KEY = "phc_demo_tests"
ENV_PREFIXES = ("POSTHOG_", "ANALYTICS_")
ENV_NAMES = ("STORY_GENERATION_SECONDS", "DATABASE")

MakeDemo = Callable[..., Flask]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of the machine's environment configures the demo in a test."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES) or name in ENV_NAMES:
            monkeypatch.delenv(name)


@pytest.fixture
def make_demo(capture_server: Any, tmp_path: Path) -> Iterator[MakeDemo]:
    """Demo apps sending to ``capture_server``, with instant stories; always shut down."""
    apps: list[Flask] = []

    def make(**config: Any) -> Flask:
        base = {
            "POSTHOG_API_KEY": KEY,
            "POSTHOG_HOST": capture_server.url,
            "STORY_GENERATION_SECONDS": 0,
            "DATABASE": str(tmp_path / "stories.sqlite3"),
            "ANALYTICS_QUEUE_SHUTDOWN_TIMEOUT": 2.0,
        }
        app = create_app({**base, **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        shutdown_app(app, timeout=2.0)


def post_story(app: Flask, topic: str = "a lighthouse", *, mode: str | None = None) -> Any:
    query = f"?analytics={mode}" if mode else ""
    response = app.test_client().post(
        "/stories" + query, json={"topic": topic}, headers={"X-User-Id": "user-42"}
    )
    assert response.status_code == 201, response.text
    return response.get_json()


def test_a_story_is_saved_in_sqlite(make_demo: MakeDemo) -> None:
    app = make_demo()
    body = post_story(app, "  a  clockwork owl ")
    assert set(body) == {"id", "story", "analytics", "timings_ms"}
    assert set(body["timings_ms"]) == {"generate", "save", "track", "total"}
    assert "a clockwork owl" in body["story"]

    with closing(sqlite3.connect(app.config["DATABASE"])) as conn:
        row = conn.execute(
            "SELECT user_id, topic, story, analytics_mode FROM stories WHERE id = ?",
            (body["id"],),
        ).fetchone()
    assert row == ("user-42", "a clockwork owl", body["story"], "async")


def test_the_event_reaches_the_server_with_its_properties(
    make_demo: MakeDemo, capture_server: Any
) -> None:
    app = make_demo(ANALYTICS_QUEUE_ENVIRONMENT="demo-test")
    body = post_story(app, "a clockwork owl")
    assert body["analytics"] == {"mode": "async", "tracked": True}
    assert app.extensions[EXTENSION_KEY].flush(timeout=5.0)

    [event] = capture_server.wait_for(1)
    assert event.event == "story_generated"
    assert event.distinct_id == "user-42"
    props = event.properties
    assert props["story_id"] == body["id"]
    assert props["topic"] == "a clockwork owl"
    assert props["story_length"] == len(body["story"])
    assert props["word_count"] == len(body["story"].split())
    assert props["generate_ms"] == body["timings_ms"]["generate"]
    assert props["save_ms"] == body["timings_ms"]["save"]
    assert props["analytics_mode"] == "async"
    assert props["environment"] == "demo-test"


def test_async_tracking_takes_under_a_millisecond_while_posthog_takes_300(
    make_demo: MakeDemo, capture_server: Any
) -> None:
    # batch_size 1: the worker sends at once, so later requests track while a send is in flight.
    app = make_demo(ANALYTICS_QUEUE_BATCH_SIZE=1)
    queue = app.extensions[EXTENSION_KEY]
    post_story(app, "warm-up")  # starts the worker thread: not what is measured
    assert queue.flush(timeout=5.0)
    before = queue.metrics()
    capture_server.delay_responses(0.3)

    tracks = [post_story(app, f"topic {i}")["timings_ms"]["track"] for i in range(9)]
    assert queue.flush(timeout=10.0)
    capture_server.wait_for(10)
    # Under 1 ms; the median, because a busy machine may preempt any one request thread for a
    # few ms. None waited for a send: each would have taken 300 ms.
    assert statistics.median(tracks) < 1.0, tracks
    assert max(tracks) < 100.0, tracks
    # ... while each send they did not wait for took the server's 300 ms.
    after = queue.metrics()
    assert after.delivered == 10
    sends = after.batches_sent - before.batches_sent
    send_ms = after.avg_send_ms * after.batches_sent - before.avg_send_ms * before.batches_sent
    assert sends >= 1
    assert send_ms / sends >= 299.0


def test_blocking_tracking_waits_for_posthog(make_demo: MakeDemo, capture_server: Any) -> None:
    app = make_demo()
    capture_server.delay_responses(0.3)
    body = post_story(app, "a slow owl", mode="blocking")
    assert body["analytics"] == {"mode": "blocking", "tracked": True}
    assert body["timings_ms"]["track"] >= 300.0
    assert body["timings_ms"]["total"] >= 300.0

    [event] = capture_server.events()  # already there: the request waited for it
    assert event.event == "story_generated"
    assert event.distinct_id == "user-42"
    assert event.properties["analytics_mode"] == "blocking"
    assert event.properties["story_id"] == body["id"]
    assert app.extensions[EXTENSION_KEY].metrics().queued == 0  # not through the queue


def test_blocking_reports_a_failed_send(make_demo: MakeDemo, capture_server: Any) -> None:
    app = make_demo()
    capture_server.fail_with(503, times=1)
    failed = post_story(app, "unlucky", mode="blocking")
    assert failed["analytics"] == {"mode": "blocking", "tracked": False}
    sent = post_story(app, "lucky", mode="blocking")
    assert sent["analytics"] == {"mode": "blocking", "tracked": True}
    assert [e.properties["topic"] for e in capture_server.events()] == ["lucky"]


def test_off_sends_nothing(make_demo: MakeDemo, capture_server: Any) -> None:
    app = make_demo(ANALYTICS_MODE="off")
    off = post_story(app, "quiet")
    assert off["analytics"] == {"mode": "off", "tracked": False}
    on = post_story(app, "loud", mode="async")
    assert app.extensions[EXTENSION_KEY].flush(timeout=5.0)
    events = capture_server.wait_for(1)
    assert [e.properties["story_id"] for e in events] == [on["id"]]


def test_bad_requests_are_400(make_demo: MakeDemo) -> None:
    client = make_demo().test_client()
    assert client.post("/stories", json={}).status_code == 400
    assert client.post("/stories", json={"topic": "   "}).status_code == 400
    assert client.post("/stories", data="topic=x").status_code == 400
    response = client.post("/stories?analytics=sometimes", json={"topic": "x"})
    assert response.status_code == 400
    assert "async, blocking, off" in response.get_json()["error"]


def test_the_page_has_the_form_the_timings_and_the_live_figures(make_demo: MakeDemo) -> None:
    response = make_demo(ANALYTICS_MODE="blocking").test_client().get("/")
    assert response.status_code == 200
    html = response.text
    for needle in (
        'id="topic"',
        'id="generate"',
        'id="row-async"',
        'id="row-blocking"',
        'id="row-off"',
        'id="m-delivered"',
        '<option value="blocking" selected>',
        '"/analytics/metrics"',
    ):
        assert needle in html, needle


def test_the_timings_are_medians_per_mode_over_every_request(make_demo: MakeDemo) -> None:
    app = make_demo()
    tracks = [post_story(app, f"owl {i}", mode="async")["timings_ms"]["track"] for i in range(3)]
    blocking = post_story(app, "heron", mode="blocking")["timings_ms"]
    # Another process of the same app (a gunicorn worker) writes to the same database.
    other = make_demo()
    tracks.append(post_story(other, "owl 3", mode="async")["timings_ms"]["track"])

    response = app.test_client().get("/demo/timings")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    summary = response.get_json()
    assert summary["async"]["requests"] == 4
    assert summary["async"]["track"] == pytest.approx(statistics.median(tracks), abs=0.001)
    assert summary["blocking"] == {"requests": 1, **blocking}
    assert summary["off"] == {
        "requests": 0,
        "generate": None,
        "save": None,
        "track": None,
        "total": None,
    }


def _health(status: str, reasons: list[str], **metrics: float) -> dict[str, Any]:
    figures = dict.fromkeys(
        ("queue_size", "queued", "delivered", "failed", "refused", "batches_sent"), 0
    )
    return {
        "status": status,
        "mode": "posthog",
        "reasons": [{"code": "test", "message": m} for m in reasons],
        "metrics": {**figures, "avg_delivery_ms": 0.0, **metrics},
    }


def test_the_queue_panel_sums_every_worker_process(make_demo: MakeDemo) -> None:
    app = make_demo()
    post_story(app, "owl", mode="async")
    assert app.extensions[EXTENSION_KEY].flush(timeout=5.0)
    path = app.config["DATABASE"]
    now = time.time()
    # Two other worker processes: one reporting, one that stopped reporting (it exited).
    db.save_snapshot(
        path,
        pid=1_000_001,
        updated_at=now,
        health=_health(
            "degraded",
            ["send failing"],
            queued=5,
            delivered=3,
            failed=1,
            queue_size=1,
            avg_delivery_ms=30.0,
        ),
    )
    db.save_snapshot(
        path,
        pid=1_000_002,
        updated_at=now - STALE_AFTER - 1,
        health=_health("healthy", [], queued=100, delivered=100),
    )

    response = app.test_client().get("/demo/queue")
    assert response.status_code == 200
    body = response.get_json()
    assert body["served_by"] == os.getpid()
    assert [w["pid"] for w in body["workers"]] == sorted([os.getpid(), 1_000_001])
    mine = next(w for w in body["workers"] if w["pid"] == os.getpid())
    assert (mine["queued"], mine["delivered"], mine["status"]) == (1, 1, "healthy")
    total = body["total"]
    assert (total["queued"], total["delivered"], total["failed"], total["queue_size"]) == (
        6,
        4,
        1,
        1,
    )
    assert total["status"] == "degraded"  # the worst of the workers
    assert total["reasons"] == ["pid 1000001: send failing"]
    assert total["avg_delivery_ms"] == pytest.approx((mine["avg_delivery_ms"] * 1 + 30.0 * 3) / 4)


def test_a_stopped_app_leaves_the_panel(make_demo: MakeDemo, tmp_path: Path) -> None:
    app = make_demo()
    assert app.test_client().get("/demo/queue").get_json()["total"]["status"] == "healthy"
    path = app.config["DATABASE"]
    assert [pid for pid, _, _ in db.fresh_snapshots(path, since=0)] == [os.getpid()]
    shutdown_app(app, timeout=2.0)
    assert db.fresh_snapshots(path, since=0) == []


def test_configuration_comes_from_the_environment(
    capture_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTHOG_API_KEY", KEY)
    monkeypatch.setenv("POSTHOG_HOST", capture_server.url)
    monkeypatch.setenv("ANALYTICS_MODE", "off")
    monkeypatch.setenv("STORY_GENERATION_SECONDS", "0.01")
    monkeypatch.setenv("DATABASE", str(tmp_path / "env.sqlite3"))
    monkeypatch.setenv("ANALYTICS_QUEUE_BATCH_SIZE", "3")
    app = create_app()
    try:
        assert app.config["ANALYTICS_MODE"] == "off"
        assert app.config["STORY_GENERATION_SECONDS"] == 0.01
        assert app.config["DATABASE"] == str(tmp_path / "env.sqlite3")
        config = app.extensions[EXTENSION_KEY].config
        assert (config.api_key, config.host, config.batch_size) == (KEY, capture_server.url, 3)
        assert (tmp_path / "env.sqlite3").exists()
    finally:
        shutdown_app(app, timeout=2.0)

    explicit = create_app({"ANALYTICS_MODE": "blocking", "ANALYTICS_QUEUE_BATCH_SIZE": 4})
    try:
        assert explicit.config["ANALYTICS_MODE"] == "blocking"  # create_app's config wins
        assert explicit.extensions[EXTENSION_KEY].config.batch_size == 4
    finally:
        shutdown_app(explicit, timeout=2.0)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"ANALYTICS_MODE": "sometimes"}, "ANALYTICS_MODE must be one of async, blocking, off"),
        ({"STORY_GENERATION_SECONDS": "-1"}, "STORY_GENERATION_SECONDS must be a number >= 0"),
        ({"STORY_GENERATION_SECONDS": "soon"}, "STORY_GENERATION_SECONDS must be a number >= 0"),
        ({"ANALYTICS_QUEUE_BATCH_SIZE": 0}, "ANALYTICS_QUEUE_BATCH_SIZE: must be an int >= 1"),
    ],
)
def test_bad_configuration_fails_at_startup(
    config: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        create_app({"DATABASE": str(tmp_path / "s.sqlite3"), **config})


ROW = re.compile(
    r"^(?P<mode>async|blocking|off)\s+(?P<requests>\d+)\s+(?P<p50>[\d.]+)\s+(?P<p95>[\d.]+)\s+"
    r"(?P<track50>[\d.]+)\s+(?P<track95>[\d.]+)\s+(?P<received>\d+) / (?P<expected>\d+)$",
    re.MULTILINE,
)


@pytest.mark.slow
def test_make_demo_once_prints_the_table_and_exits_0() -> None:
    """What ``make demo DEMO_ARGS=--once`` runs: capture server + gunicorn -w 3 --preload."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.flask_app.demo", "--once"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=100)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the demo stops gunicorn and the capture server
        out, err = proc.communicate(timeout=20)
        pytest.fail(f"the demo took over 100 s:\n{out}\n{err}")
    assert proc.returncode == 0, f"{out}\n{err}"

    rows = {m["mode"]: m for m in ROW.finditer(out)}
    assert set(rows) == {"async", "blocking", "off"}, out
    for mode, row in rows.items():
        assert int(row["requests"]) == 30, out
        assert int(row["received"]) == int(row["expected"]) == (0 if mode == "off" else 30), out
    assert float(rows["blocking"]["p50"]) >= 300.0, out
    assert float(rows["blocking"]["track50"]) >= 300.0, out
    assert float(rows["async"]["track50"]) < 1.0, out
    assert float(rows["blocking"]["p50"]) - float(rows["async"]["p50"]) > 200.0, out
    health = re.findall(r"^health of worker \d+: (\w+)", out, re.MULTILINE)
    assert health == ["healthy"] * 3, out  # every one of the 3 gunicorn workers
