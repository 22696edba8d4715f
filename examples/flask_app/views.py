"""The demo's routes: the page and ``POST /stories``."""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from examples.flask_app import db
from examples.flask_app.story import generate_story
from examples.flask_app.tracking import BLOCKING_KEY, MODES, track

bp = Blueprint("stories", __name__)

MAX_TOPIC_LENGTH = 200


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


@bp.after_app_request
def _served_by(response: Response) -> Response:
    # Each gunicorn worker has its own queue: say which one answered.
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@bp.get("/")
def index() -> str:
    return render_template(
        "index.html", modes=MODES, default_mode=current_app.config["ANALYTICS_MODE"]
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
    body = {
        "id": story_id,
        "story": story,
        "analytics": {"mode": mode, "tracked": tracked},
        "timings_ms": {
            "generate": _ms(t1 - t0),
            "save": _ms(t2 - t1),
            "track": _ms(t3 - t2),
            "total": _ms(t3 - started),
        },
    }
    return jsonify(body), 201
