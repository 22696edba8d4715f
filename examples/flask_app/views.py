"""The demo's routes: the page, ``POST /stories`` and the page's two data sources."""

from __future__ import annotations

import os
import time
from typing import Any, Final

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from examples.flask_app import db
from examples.flask_app.story import generate_story
from examples.flask_app.tracking import BLOCKING_KEY, MODE_LABELS, MODES, track
from examples.flask_app.workers import SnapshotPublisher, whole_app

bp = Blueprint("stories", __name__)

#: Where the SnapshotPublisher of an app is kept, in ``app.extensions``.
PUBLISHER_KEY: Final = "story_demo_publisher"
_NO_CACHE: Final = {"Cache-Control": "no-store"}

MAX_TOPIC_LENGTH = 200


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _publisher() -> SnapshotPublisher:
    publisher = current_app.extensions[PUBLISHER_KEY]
    assert isinstance(publisher, SnapshotPublisher)
    return publisher


@bp.before_app_request
def _publish_snapshots() -> None:
    # A process that was not forked from the one that built the app starts publishing here.
    _publisher().ensure_started()


@bp.after_app_request
def _served_by(response: Response) -> Response:
    # Each gunicorn worker has its own queue: say which one answered.
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@bp.get("/")
def index() -> str:
    return render_template(
        "index.html",
        modes=MODES,
        labels=MODE_LABELS,
        default_mode=current_app.config["ANALYTICS_MODE"],
    )


@bp.post("/stories")
def create_story() -> tuple[Response, int]:
    started = time.perf_counter()
    payload: Any = request.get_json(silent=True)
    topic = payload.get("topic") if isinstance(payload, dict) else None
    if not isinstance(topic, str) or not topic.strip():
        return _error(400, 'send JSON like {"topic": "a lighthouse"}')
    topic = " ".join(topic.split())[:MAX_TOPIC_LENGTH]
    mode = request.args.get("analytics", current_app.config["ANALYTICS_MODE"]).strip().lower()
    if mode not in MODES:
        return _error(400, f"?analytics= must be one of {', '.join(MODES)}, got {mode!r}")
    user_id = request.headers.get("X-User-Id", "").strip() or "anonymous"

    t0 = time.perf_counter()
    story = generate_story(topic, current_app.config["STORY_GENERATION_SECONDS"])
    t1 = time.perf_counter()
    story_id = db.save_story(
        current_app.config["DATABASE"],
        user_id=user_id,
        topic=topic,
        story=story,
        analytics_mode=mode,
    )
    t2 = time.perf_counter()
    tracked = track(
        mode,
        current_app.extensions[BLOCKING_KEY],
        "story_generated",
        distinct_id=user_id,
        properties={
            "story_id": story_id,
            "topic": topic,
            "story_length": len(story),
            "word_count": len(story.split()),
            "generate_ms": _ms(t1 - t0),
            "save_ms": _ms(t2 - t1),
            "analytics_mode": mode,
        },
    )
    t3 = time.perf_counter()
    timings = {
        "generate": _ms(t1 - t0),
        "save": _ms(t2 - t1),
        "track": _ms(t3 - t2),
        "total": _ms(t3 - started),
    }
    db.save_timings(current_app.config["DATABASE"], analytics_mode=mode, timings_ms=timings)
    body = {
        "id": story_id,
        "story": story,
        "analytics": {"mode": mode, "tracked": tracked},
        "timings_ms": timings,
    }
    return jsonify(body), 201


@bp.get("/demo/timings")
def timings() -> tuple[Response, int, dict[str, str]]:
    """Per mode: requests served and median timings (ms), over every worker process."""
    summary = db.timing_summary(current_app.config["DATABASE"], MODES)
    return jsonify(summary), 200, _NO_CACHE


@bp.get("/demo/queue")
def queue() -> tuple[Response, int, dict[str, str]]:
    """The analytics of every worker process, and their sum (see ``workers.whole_app``)."""
    _publisher().publish()  # this process's figures are current; the others' at most 1 s old
    body = whole_app(current_app.config["DATABASE"])
    body["served_by"] = os.getpid()
    return jsonify(body), 200, _NO_CACHE
