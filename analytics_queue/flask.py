"""Flask integration: the :class:`FlaskAnalytics` extension and its health/metrics blueprint.

Install with the ``flask`` extra (``pip install 'analytics-queue[flask]'``)::

    from flask import Flask
    from analytics_queue.flask import FlaskAnalytics

    analytics = FlaskAnalytics()

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["ANALYTICS_QUEUE_ENVIRONMENT"] = "production"
        analytics.init_app(app)

        @app.post("/signup")
        def signup():
            analytics.track("user_signed_up", distinct_id=request.form["email"])
            return "", 204

        return app

The blueprint answers ``GET /analytics/health`` (JSON; 200 when healthy or degraded, 503 when
critical) and ``GET /analytics/metrics`` (JSON, or the Prometheus text format with
``?format=prometheus`` or ``Accept: text/plain``). They answer anyone unless
``ANALYTICS_QUEUE_ENDPOINT_GUARD`` names a check (docs/network.md)::

    app.config["ANALYTICS_QUEUE_ENDPOINT_GUARD"] = lambda request: (
        request.headers.get("X-Monitoring-Token") == os.environ["MONITORING_TOKEN"]
    )
"""

from __future__ import annotations

import datetime as dt
import uuid as uuid_module
from collections.abc import Callable, Mapping
from typing import Any, Final

try:
    from flask import (
        Blueprint,
        Flask,
        Response,
        current_app,
        g,
        has_app_context,
        jsonify,
        request,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "analytics_queue.flask needs Flask: pip install 'analytics-queue[flask]'"
    ) from exc


from analytics_queue import AnalyticsQueue
from analytics_queue._endpoint_guard import resolve_guard
from analytics_queue.config import OPTIONS, OPTIONS_BY_NAME, validate_options
from analytics_queue.prometheus import CONTENT_TYPE, choose_format, render_text
from analytics_queue.request_context import RequestInfo, close_scope, open_scope

__all__ = ["DEFAULT_URL_PREFIX", "EXTENSION_KEY", "FlaskAnalytics", "config_key"]

#: Where the AnalyticsQueue of an app is kept: ``app.extensions["analytics_queue"]``.
EXTENSION_KEY: Final = "analytics_queue"

#: The default prefix of the health and metrics routes.
DEFAULT_URL_PREFIX: Final = "/analytics"

_NO_CACHE: Final = {"Cache-Control": "no-store"}


def config_key(option: str) -> str:
    """The ``app.config`` key of an option: ``batch_size`` → ``ANALYTICS_QUEUE_BATCH_SIZE``."""
    return OPTIONS_BY_NAME[option].flask_key


class FlaskAnalytics:
    """A Flask extension that gives each app its own AnalyticsQueue and a health/metrics blueprint.

    ``init_app(app)`` sets each of these ``app.config`` keys with ``setdefault``. ``None`` means
    "not set": the AnalyticsQueue then reads the environment variable of the same name, then
    uses its default.

    - ``POSTHOG_API_KEY``: the project API key (``phc_...``); none at all: events are logged,
      not sent.
    - ``POSTHOG_HOST``: default ``https://us.i.posthog.com``.
    - ``ANALYTICS_QUEUE_BATCH_SIZE``: 10.
    - ``ANALYTICS_QUEUE_FLUSH_INTERVAL``: 5.0 seconds.
    - ``ANALYTICS_QUEUE_MAX_QUEUE_SIZE``: 10000; ``ANALYTICS_QUEUE_MAX_QUEUE_BYTES``: 32 MiB.
    - ``ANALYTICS_QUEUE_REQUEUE_LIMIT``: 5.
    - ``ANALYTICS_QUEUE_SHUTDOWN_TIMEOUT``: 5.0 seconds.
    - ``ANALYTICS_QUEUE_TIMEOUT``: 10.0 seconds.
    - ``ANALYTICS_QUEUE_GZIP``: True.
    - ``ANALYTICS_QUEUE_APP_VERSION``: None.
    - ``ANALYTICS_QUEUE_ENVIRONMENT``: None.
    - ``ANALYTICS_QUEUE_STRICT``: False.
    - ``ANALYTICS_QUEUE_DISABLED``: False.
    - ``ANALYTICS_QUEUE_DISABLE_GEOIP``: True; ``ANALYTICS_QUEUE_SUPER_PROPERTIES``: None;
      ``ANALYTICS_QUEUE_HISTORICAL_MIGRATION``: False; ``ANALYTICS_QUEUE_BEFORE_SEND``: None.
    - ``ANALYTICS_QUEUE_REQUEST_CONTEXT``: True: each request runs in a fresh context (see
      :mod:`analytics_queue.context`) tagged with ``$current_url``, ``$request_method``,
      ``$request_path`` and ``$user_agent``, with ``$session_id`` from the
      ``X-POSTHOG-SESSION-ID`` header and the distinct id from ``X-POSTHOG-DISTINCT-ID``, so
      ``analytics.track("clicked")`` needs no distinct id there.
    - ``ANALYTICS_QUEUE_REQUEST_CONTEXT_IP``: False; True adds ``request.remote_addr`` as
      ``$ip`` (personal data: opt in knowingly).
    - ``ANALYTICS_QUEUE_HEALTH_WINDOW``: 300.0 seconds.
    - ``ANALYTICS_QUEUE_SPOOL_PATH``: None (memory only); a SQLite file for the durable spool.
    - ``ANALYTICS_QUEUE_SPOOL_MAX_BYTES``: 268435456 (256 MiB).
    - ``ANALYTICS_QUEUE_URL_PREFIX``: ``"/analytics"``, the prefix of the health and metrics
      routes; ``None`` registers no blueprint.
    - ``ANALYTICS_QUEUE_ENDPOINT_GUARD``: None (the routes answer anyone), or a callable (or its
      dotted import path) that takes the request and returns a true value to let it see health
      and metrics; a false value answers 403.

    A bad value raises ``ValueError`` from ``init_app`` naming the key. As ``None`` means "not
    set", ``requeue_limit=None`` (requeue every event) is set in the environment instead:
    ``ANALYTICS_QUEUE_REQUEUE_LIMIT=none``. The AnalyticsQueue is
    kept in ``app.extensions["analytics_queue"]``; the extension object itself holds no app, so
    one module-level ``FlaskAnalytics()`` serves every app an app factory makes.

    Args:
        app: when given, ``init_app(app)`` is called at once.

    Safe to share between threads: it holds no state of its own.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> AnalyticsQueue:
        """Read the app's config, create its AnalyticsQueue and register the blueprint.

        Returns:
            The app's AnalyticsQueue (also in ``app.extensions["analytics_queue"]``).

        Raises:
            RuntimeError: ``init_app`` was already called for this app.
            ValueError: a config key has a bad value.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                f"analytics_queue: init_app() was already called for the Flask app "
                f"{app.name!r}; call it once per app"
            )
        options: dict[str, Any] = {}
        for spec in OPTIONS:
            value = app.config.setdefault(spec.flask_key, None)
            if value is not None:
                options[spec.name] = value
        url_prefix = app.config.setdefault("ANALYTICS_QUEUE_URL_PREFIX", DEFAULT_URL_PREFIX)
        guard_setting = app.config.setdefault("ANALYTICS_QUEUE_ENDPOINT_GUARD", None)

        problems = [
            f"{config_key(problem.option)}: {problem.message}"
            for problem in validate_options(options)
        ]
        if url_prefix is not None and not (
            isinstance(url_prefix, str) and url_prefix.startswith("/")
        ):
            problems.append(f"ANALYTICS_QUEUE_URL_PREFIX: must start with '/', got {url_prefix!r}")
        guard = None
        try:
            guard = resolve_guard(guard_setting)
        except ValueError as exc:
            problems.append(f"ANALYTICS_QUEUE_ENDPOINT_GUARD: {exc}")
        if problems:
            raise ValueError("analytics_queue: bad Flask config: " + "; ".join(problems))

        queue = AnalyticsQueue(**options)
        app.extensions[EXTENSION_KEY] = queue
        if queue.config.request_context:
            app.before_request(_open_request_context)
            app.teardown_request(_close_request_context)
        if url_prefix is not None:
            app.register_blueprint(_blueprint(url_prefix.rstrip("/"), guard))
        return queue

    def get_queue(self, app: Flask | None = None) -> AnalyticsQueue:
        """The AnalyticsQueue of ``app`` (default: the current app).

        Raises:
            RuntimeError: outside an application context without ``app``, or ``init_app``
                was never called for the app.
        """
        if app is None:
            if not has_app_context():
                raise RuntimeError(
                    "analytics_queue: FlaskAnalytics needs an application context (a request, "
                    "a CLI command or `with app.app_context():`), or pass app=..."
                )
            app = current_app
        queue = app.extensions.get(EXTENSION_KEY)
        if not isinstance(queue, AnalyticsQueue):
            raise RuntimeError(
                f"analytics_queue: the Flask app {app.name!r} has no analytics queue: "
                "did you forget init_app(app)?"
            )
        return queue

    @property
    def queue(self) -> AnalyticsQueue:
        """The AnalyticsQueue of the current app (see :meth:`get_queue`)."""
        return self.get_queue()

    def track(
        self,
        event: str,
        *,
        distinct_id: str | int | uuid_module.UUID | None = None,
        properties: Mapping[str, Any] | None = None,
        timestamp: dt.datetime | str | None = None,
        uuid: str | uuid_module.UUID | None = None,
        groups: Mapping[str, Any] | None = None,
        disable_geoip: bool | None = None,
    ) -> bool:
        """Queue an event on the current app's AnalyticsQueue; see ``AnalyticsQueue.track``.

        Returns:
            True when queued, False when refused (counted in the metrics).

        Raises:
            RuntimeError: no application context, or ``init_app`` was never called.
        """
        return self.get_queue().track(
            event,
            distinct_id=distinct_id,
            properties=properties,
            timestamp=timestamp,
            uuid=uuid,
            groups=groups,
            disable_geoip=disable_geoip,
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Flush the current app's AnalyticsQueue; see ``AnalyticsQueue.flush``."""
        return self.get_queue().flush(timeout)


_SCOPE_KEY: Final = "_analytics_queue_scope"


def _open_request_context() -> None:
    queue = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(queue, AnalyticsQueue):
        return
    info = RequestInfo(
        url=request.base_url,  # without the query string
        method=request.method,
        path=request.path,
        user_agent=request.headers.get("User-Agent"),
        ip=request.remote_addr,
        header=request.headers.get,
    )
    setattr(g, _SCOPE_KEY, open_scope(info, with_ip=queue.config.request_context_ip))


def _close_request_context(exc: BaseException | None) -> None:
    token = g.pop(_SCOPE_KEY, None)
    if token is not None:
        close_scope(token)


def _current_queue() -> AnalyticsQueue:
    queue = current_app.extensions[EXTENSION_KEY]
    assert isinstance(queue, AnalyticsQueue)
    return queue


def _health() -> Response:
    health = _current_queue().health()
    response = jsonify(health.to_dict())
    response.status_code = 503 if health.status == "critical" else 200
    response.headers.update(_NO_CACHE)
    return response


def _metrics() -> Response:
    queue = _current_queue()
    try:
        fmt = choose_format(request.args.get("format"), request.headers.get("Accept"))
    except ValueError as exc:
        response = jsonify({"error": str(exc)})
        response.status_code = 400
        return response
    if fmt == "prometheus":
        response = Response(render_text(queue), content_type=CONTENT_TYPE)
    else:
        response = jsonify(queue.metrics().to_dict())
    response.headers.update(_NO_CACHE)
    response.vary.add("Accept")
    return response


Guard = Callable[[Any], Any]


def _forbidden() -> Response:
    response = jsonify({"error": "forbidden"})
    response.status_code = 403
    response.headers.update(_NO_CACHE)
    return response


def _blueprint(url_prefix: str, guard: Guard | None = None) -> Blueprint:
    blueprint = Blueprint("analytics_queue", __name__, url_prefix=url_prefix or None)
    if guard is not None:

        @blueprint.before_request
        def _check_guard() -> Response | None:
            return None if guard(request) else _forbidden()

    blueprint.add_url_rule("/health", "health", _health, methods=["GET"])
    blueprint.add_url_rule("/metrics", "metrics", _metrics, methods=["GET"])
    return blueprint
