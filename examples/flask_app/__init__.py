"""The story-generation demo: a Flask app that shows analytics adding nothing to a request.

``POST /stories`` "generates" a story (a stand-in for an AI call that takes
``STORY_GENERATION_SECONDS``), saves it in SQLite, tracks ``story_generated`` and answers with the
timing of each step. The analytics mode, per app (``ANALYTICS_MODE``) or per request
(``?analytics=``), is ``async`` (analytics_queue), ``blocking`` (one synchronous PostHog request
per event, the old pattern) or ``off``, so the three can be compared side by side. ``GET /`` is a
page to try it in a browser; it reads ``GET /demo/timings`` (the median timings of each mode over
every request the app served) and ``GET /demo/queue`` (the analytics of every worker process,
summed; see :mod:`examples.flask_app.workers`). ``/analytics/health`` and ``/analytics/metrics``
come from ``analytics_queue.flask`` and answer for the one process that serves them.

Run it::

    flask --app examples.flask_app run
    gunicorn -w 3 --preload "examples.flask_app:create_app()"
    make demo        # the whole comparison against a local capture server

Configuration not passed to :func:`create_app` comes from the environment under the same names:
``POSTHOG_API_KEY``, ``POSTHOG_HOST``, ``ANALYTICS_MODE`` (``async``), ``STORY_GENERATION_SECONDS``
(2.0), ``DATABASE`` (``stories.sqlite3`` in the instance folder) and every
``ANALYTICS_QUEUE_<OPTION>`` (read by analytics_queue itself).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Final

from flask import Flask

from examples.flask_app import db
from examples.flask_app.tracking import BLOCKING_KEY, MODES, BlockingSender, analytics
from examples.flask_app.views import PUBLISHER_KEY, bp
from examples.flask_app.workers import SnapshotPublisher

__all__ = ["ENV_KEYS", "MODES", "create_app", "shutdown_app"]

#: The settings read from the environment when ``create_app`` is not given them.
ENV_KEYS: Final = (
    "POSTHOG_API_KEY",
    "POSTHOG_HOST",
    "ANALYTICS_MODE",
    "STORY_GENERATION_SECONDS",
    "DATABASE",
)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the demo app.

    Args:
        config: Flask config keys; those missing come from the environment, then defaults.

    Raises:
        ValueError: a bad ``ANALYTICS_MODE``, ``STORY_GENERATION_SECONDS`` or analytics option.
    """
    app = Flask(__name__, instance_relative_config=True)
    app.config.update(ANALYTICS_MODE="async", STORY_GENERATION_SECONDS=2.0, DATABASE=None)
    for key in ENV_KEYS:
        if key in os.environ:
            app.config[key] = os.environ[key]
    app.config.update(config or {})

    mode = str(app.config["ANALYTICS_MODE"]).strip().lower()
    if mode not in MODES:
        raise ValueError(f"ANALYTICS_MODE must be one of {', '.join(MODES)}, got {mode!r}")
    app.config["ANALYTICS_MODE"] = mode
    try:
        seconds = float(app.config["STORY_GENERATION_SECONDS"])
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(
            "STORY_GENERATION_SECONDS must be a number >= 0, "
            f"got {app.config['STORY_GENERATION_SECONDS']!r}"
        )
    app.config["STORY_GENERATION_SECONDS"] = seconds
    if not app.config["DATABASE"]:
        app.config["DATABASE"] = os.path.join(app.instance_path, "stories.sqlite3")
    db.init_db(app.config["DATABASE"])

    queue = analytics.init_app(app)
    # The blocking mode sends where the queue sends (key and host resolved from config or env).
    app.extensions[BLOCKING_KEY] = BlockingSender(
        queue.config.api_key, queue.config.host, timeout=queue.config.timeout
    )
    publisher = SnapshotPublisher(app.config["DATABASE"], lambda: queue.health().to_dict())
    publisher.arm()  # gunicorn --preload: each forked worker publishes its own snapshot
    app.extensions[PUBLISHER_KEY] = publisher
    app.register_blueprint(bp)
    return app


def shutdown_app(app: Flask, timeout: float | None = None) -> bool:
    """Flush and stop the app's analytics (both modes); True when everything was delivered."""
    app.extensions[PUBLISHER_KEY].stop()
    app.extensions[BLOCKING_KEY].shutdown()
    return analytics.get_queue(app).shutdown(timeout)
