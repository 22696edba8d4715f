"""analytics_queue.flask: the extension, its config, and the health/metrics blueprint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from prometheus_client import parser as prometheus_parser

from analytics_queue import AnalyticsQueue, __version__
from analytics_queue.config import OPTION_NAMES
from analytics_queue.flask import EXTENSION_KEY, FlaskAnalytics, config_key

TEST_KEY = "phc_integration_tests"

MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(capture_server: Any) -> Iterator[MakeApp]:
    """Flask apps with FlaskAnalytics sending to ``capture_server``; their queues are shut down."""
    apps: list[Flask] = []

    def make(config: dict[str, Any] | None = None, *, ext: FlaskAnalytics | None = None) -> Flask:
        app = Flask(f"test_app_{len(apps)}")
        app.config.update(
            POSTHOG_API_KEY=TEST_KEY,
            POSTHOG_HOST=capture_server.url,
            ANALYTICS_QUEUE_SHUTDOWN_TIMEOUT=2.0,
        )
        app.config.update(config or {})
        apps.append(app)
        extension = ext or FlaskAnalytics()
        extension.init_app(app)

        @app.post("/signup/<user>")
        def signup(user: str) -> tuple[str, int]:
            tracked = extension.track(
                "user_signed_up", distinct_id=user, properties={"plan": "pro"}
            )
            return ("queued" if tracked else "refused"), 202

        return app

    yield make
    for app in apps:
        queue = app.extensions.get(EXTENSION_KEY)
        if isinstance(queue, AnalyticsQueue):
            queue.shutdown(timeout=2.0)


def queue_of(app: Flask) -> AnalyticsQueue:
    queue = app.extensions[EXTENSION_KEY]
    assert isinstance(queue, AnalyticsQueue)
    return queue


def test_init_app_sets_a_default_for_every_config_key_and_documents_it(make_app: MakeApp) -> None:
    app = make_app()
    keys = ["POSTHOG_API_KEY", "POSTHOG_HOST", "ANALYTICS_QUEUE_URL_PREFIX"]
    keys += [f"ANALYTICS_QUEUE_{name.upper()}" for name in OPTION_NAMES]
    for key in keys:
        assert key in app.config, key
        assert f"``{key}``" in (FlaskAnalytics.__doc__ or ""), f"{key} missing from the docstring"
    assert app.config["ANALYTICS_QUEUE_BATCH_SIZE"] is None  # not set: env, then default
    assert app.config["ANALYTICS_QUEUE_URL_PREFIX"] == "/analytics"
    assert config_key("flush_interval") == "ANALYTICS_QUEUE_FLUSH_INTERVAL"


def test_config_values_reach_the_queue_and_the_events(
    make_app: MakeApp, capture_server: Any
) -> None:
    app = make_app(
        {
            "ANALYTICS_QUEUE_BATCH_SIZE": 2,
            "ANALYTICS_QUEUE_ENVIRONMENT": "flask-test",
            "ANALYTICS_QUEUE_APP_VERSION": "9.9.9",
        }
    )
    assert queue_of(app).config.batch_size == 2
    client = app.test_client()
    assert client.post("/signup/ada").text == "queued"
    assert client.post("/signup/grace").text == "queued"

    events = capture_server.wait_for(2)  # batch_size 2: sent without a flush
    assert sorted(e.distinct_id for e in events) == ["ada", "grace"]
    for event in events:
        assert event.event == "user_signed_up"
        assert event.properties["plan"] == "pro"
        assert event.properties["environment"] == "flask-test"
        assert event.properties["app_version"] == "9.9.9"


def test_unset_keys_fall_back_to_the_environment(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALYTICS_QUEUE_BATCH_SIZE", "7")
    app = make_app()
    assert app.config["ANALYTICS_QUEUE_BATCH_SIZE"] is None
    assert queue_of(app).config.batch_size == 7


def test_a_bad_config_value_raises_at_init_app_naming_the_key(make_app: MakeApp) -> None:
    with pytest.raises(ValueError, match=r"ANALYTICS_QUEUE_BATCH_SIZE: must be an int >= 1"):
        make_app({"ANALYTICS_QUEUE_BATCH_SIZE": "ten"})
    with pytest.raises(ValueError, match=r"ANALYTICS_QUEUE_URL_PREFIX"):
        make_app({"ANALYTICS_QUEUE_URL_PREFIX": "analytics"})


def test_a_second_init_app_on_the_same_app_is_refused(make_app: MakeApp) -> None:
    ext = FlaskAnalytics()
    app = make_app(ext=ext)
    first = queue_of(app)
    with pytest.raises(RuntimeError, match="already called"):
        ext.init_app(app)
    with pytest.raises(RuntimeError, match="already called"):
        FlaskAnalytics(app)
    assert queue_of(app) is first


def test_one_extension_serves_several_apps(make_app: MakeApp) -> None:
    ext = FlaskAnalytics()
    one, two = make_app(ext=ext), make_app(ext=ext)
    assert queue_of(one) is not queue_of(two)
    with one.app_context():
        assert ext.queue is queue_of(one)
    with two.app_context():
        assert ext.get_queue() is queue_of(two)


def test_use_without_init_app_says_what_is_missing() -> None:
    ext = FlaskAnalytics()
    app = Flask("never_initialised")
    with app.app_context(), pytest.raises(RuntimeError, match="did you forget init_app"):
        ext.track("x", distinct_id="u")
    with pytest.raises(RuntimeError, match="did you forget init_app"):
        ext.get_queue(app)
    with pytest.raises(RuntimeError, match="application context"):
        ext.track("x", distinct_id="u")


def test_health_is_200_when_healthy(make_app: MakeApp, capture_server: Any) -> None:
    app = make_app()
    client = app.test_client()
    client.post("/signup/ada")
    assert queue_of(app).flush(timeout=5.0)
    capture_server.wait_for(1)

    response = client.get("/analytics/health")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["status"] == "healthy"
    assert body["mode"] == "posthog"
    assert body["metrics"]["delivered"] == 1


def test_health_is_503_when_critical_with_the_server_down(
    make_app: MakeApp, capture_server: Any
) -> None:
    # requeue_limit 0: a failed send fails its events at once, so flush() returns promptly.
    app = make_app({"ANALYTICS_QUEUE_REQUEUE_LIMIT": 0})
    client = app.test_client()
    capture_server.down()
    for user in ("ada", "grace", "linus"):
        client.post(f"/signup/{user}")
    assert queue_of(app).flush(timeout=5.0)

    response = client.get("/analytics/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "critical"
    assert body["reasons"], "a critical verdict explains itself"
    assert body["metrics"]["failed"] == 3
    assert body["metrics"]["delivered"] == 0


def test_health_is_200_when_degraded(make_app: MakeApp, capture_server: Any) -> None:
    app = make_app()
    client = app.test_client()
    queue = queue_of(app)
    capture_server.fail_with(400, times=1)
    client.post("/signup/rejected")
    assert queue.flush(timeout=5.0)
    for i in range(49):
        client.post(f"/signup/user-{i}")
    assert queue.flush(timeout=5.0)
    capture_server.wait_for(49)

    response = client.get("/analytics/health")
    body = response.get_json()
    assert body["status"] == "degraded", body  # 98 % delivered, 2 % failed
    assert response.status_code == 200


def test_metrics_as_json_by_default(make_app: MakeApp, capture_server: Any) -> None:
    app = make_app()
    client = app.test_client()
    for user in ("ada", "grace", "linus"):
        client.post(f"/signup/{user}")
    assert queue_of(app).flush(timeout=5.0)
    capture_server.wait_for(3)

    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
        response = client.get("/analytics/metrics", headers=headers)
        assert response.status_code == 200
        assert response.mimetype == "application/json"
        body = response.get_json()
        assert body["queued"] == 3
        assert body["delivered"] == 3
        assert body["queue_size"] == 0
        assert body["queued"] == body["delivered"] + body["failed"] + body["queue_size"]
    assert client.get("/analytics/metrics?format=json", headers={"Accept": "text/plain"}).is_json


def sample_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse exposition text with prometheus_client's own parser."""
    values = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("?format=prometheus", {}),
        ("", {"Accept": "text/plain"}),
        (
            "",  # what Prometheus itself sends
            {
                "Accept": "application/openmetrics-text;version=1.0.0;q=0.5,"
                "text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
            },
        ),
    ],
)
def test_metrics_in_prometheus_text_when_asked(
    make_app: MakeApp, capture_server: Any, query: str, headers: dict[str, str]
) -> None:
    app = make_app()
    client = app.test_client()
    for user in ("ada", "grace", "linus"):
        client.post(f"/signup/{user}")
    assert queue_of(app).flush(timeout=5.0)
    capture_server.wait_for(3)

    response = client.get("/analytics/metrics" + query, headers=headers)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert "version=0.0.4" in response.content_type
    assert "Accept" in response.headers["Vary"]
    values = sample_values(response.text)
    assert values[("analytics_queue_events_queued_total", ())] == 3
    assert values[("analytics_queue_events_delivered_total", ())] == 3
    assert values[("analytics_queue_queue_size", ())] == 0
    assert values[("analytics_queue_health", (("status", "healthy"),))] == 1
    assert values[("analytics_queue_health", (("status", "critical"),))] == 0
    assert values[("analytics_queue_info", (("mode", "posthog"), ("version", __version__)))] == 1


def test_metrics_rejects_an_unknown_format(make_app: MakeApp) -> None:
    response = make_app().test_client().get("/analytics/metrics?format=xml")
    assert response.status_code == 400
    assert "unknown format" in response.get_json()["error"]


def test_the_url_prefix_is_configurable(make_app: MakeApp) -> None:
    client = make_app({"ANALYTICS_QUEUE_URL_PREFIX": "/ops/analytics"}).test_client()
    assert client.get("/ops/analytics/health").status_code == 200
    assert client.get("/ops/analytics/metrics").status_code == 200
    assert client.get("/analytics/health").status_code == 404

    no_routes = make_app({"ANALYTICS_QUEUE_URL_PREFIX": None}).test_client()
    assert no_routes.get("/analytics/health").status_code == 404


def _token_guard(request: Any) -> bool:
    return bool(request.headers.get("X-Monitoring-Token") == "s3cret")


def test_the_endpoint_guard_protects_health_and_metrics(make_app: MakeApp) -> None:
    app = make_app({"ANALYTICS_QUEUE_ENDPOINT_GUARD": _token_guard})
    client = app.test_client()
    for route in ("/analytics/health", "/analytics/metrics"):
        refused = client.get(route)
        assert refused.status_code == 403 and refused.get_json() == {"error": "forbidden"}
        assert "queued" not in refused.get_data(as_text=True)
        allowed = client.get(route, headers={"X-Monitoring-Token": "s3cret"})
        assert allowed.status_code == 200
    assert client.post("/signup/ada").status_code == 202  # the app's own routes are untouched


def test_the_endpoint_guard_may_be_a_dotted_path_and_a_bad_one_is_refused(
    make_app: MakeApp,
) -> None:
    app = make_app({"ANALYTICS_QUEUE_ENDPOINT_GUARD": f"{__name__}._token_guard"})
    assert app.test_client().get("/analytics/health").status_code == 403
    with pytest.raises(ValueError, match="ANALYTICS_QUEUE_ENDPOINT_GUARD"):
        make_app({"ANALYTICS_QUEUE_ENDPOINT_GUARD": "no.such.module.guard"})
    with pytest.raises(ValueError, match="ANALYTICS_QUEUE_ENDPOINT_GUARD"):
        make_app({"ANALYTICS_QUEUE_ENDPOINT_GUARD": 42})


# -- the request context ------------------------------------------------------------------------


def context_app(make_app: MakeApp, config: dict[str, Any] | None = None) -> Flask:
    app = make_app(config)

    @app.post("/stories")
    def story() -> tuple[str, int]:
        tracked = queue_of(app).track(
            "story_generated", properties={"$request_path": "/explicit-wins"}
        )
        return ("queued" if tracked else "refused"), 201

    return app


def test_a_request_opens_a_context_with_posthogs_names(
    make_app: MakeApp, capture_server: Any
) -> None:
    app = context_app(make_app)
    response = app.test_client().post(
        "/stories?token=secret",
        headers={
            "X-POSTHOG-SESSION-ID": "session-42",
            "X-POSTHOG-DISTINCT-ID": "user-7",
            "User-Agent": "pytest-agent/1.0",
        },
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert response.text == "queued"
    assert queue_of(app).flush(timeout=10)
    (event,) = capture_server.wait_for(1)
    assert event.distinct_id == "user-7"
    props = event.properties
    assert props["$session_id"] == "session-42"
    assert props["$current_url"] == "http://localhost/stories"  # no query string
    assert props["$request_method"] == "POST"
    assert props["$request_path"] == "/explicit-wins"  # explicit properties win over tags
    assert props["$user_agent"] == "pytest-agent/1.0"
    assert "$ip" not in props  # personal data: opt-in only
    assert "$process_person_profile" not in props


def test_without_the_header_the_event_is_personless_and_nothing_leaks_to_the_next_request(
    make_app: MakeApp, capture_server: Any
) -> None:
    app = context_app(make_app)
    client = app.test_client()
    client.post("/stories", headers={"X-POSTHOG-DISTINCT-ID": "user-7"})
    client.post("/stories")
    assert queue_of(app).flush(timeout=10)
    first, second = capture_server.wait_for(2)
    assert first.distinct_id == "user-7"
    assert second.distinct_id != "user-7"
    assert second.properties["$process_person_profile"] is False
    assert "$session_id" not in second.properties


def test_ip_only_when_opted_in(make_app: MakeApp, capture_server: Any) -> None:
    app = context_app(make_app, {"ANALYTICS_QUEUE_REQUEST_CONTEXT_IP": True})
    app.test_client().post(
        "/stories",
        headers={"X-POSTHOG-DISTINCT-ID": "u"},
        environ_base={"REMOTE_ADDR": "203.0.113.9"},
    )
    assert queue_of(app).flush(timeout=10)
    (event,) = capture_server.wait_for(1)
    assert event.properties["$ip"] == "203.0.113.9"


def test_request_context_off_with_one_setting(make_app: MakeApp, capture_server: Any) -> None:
    app = context_app(make_app, {"ANALYTICS_QUEUE_REQUEST_CONTEXT": False})
    app.test_client().post("/stories", headers={"X-POSTHOG-DISTINCT-ID": "user-7"})
    assert queue_of(app).flush(timeout=10)
    (event,) = capture_server.wait_for(1)
    assert event.distinct_id != "user-7"
    assert "$current_url" not in event.properties
