"""analytics_queue.django: AppConfig.ready(), system checks, views, urls (Django's test client).

Django is configured once by the ``django_settings`` fixture (conftest.py); each test changes
settings with ``override_settings``, which reconfigures the default instance, and gets its own
default instance through ``isolated_default``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("django")

from django.apps import apps  # noqa: E402
from django.core.checks import run_checks  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.base import SystemCheckError  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.urls import include, path, reverse  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import analytics_queue  # noqa: E402

TEST_KEY = "phc_integration_tests"


def story_view(request: HttpRequest) -> HttpResponse:
    tracked = analytics_queue.track(
        "story_generated",
        distinct_id=request.headers.get("X-User-Id", "anonymous"),
        properties={"topic": request.GET.get("topic", "")},
    )
    return HttpResponse("queued" if tracked else "refused", status=201)


def context_view(request: HttpRequest) -> HttpResponse:
    tracked = analytics_queue.track("page_served", properties={"plan": "explicit"})
    return HttpResponse("queued" if tracked else "refused", status=201)


class FakeUser:
    """What AuthenticationMiddleware puts on a request: no database here."""

    is_authenticated = True
    pk = 42


class FakeAuthenticationMiddleware:
    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.user = FakeUser()  # type: ignore[attr-defined]
        response: HttpResponse = self.get_response(request)
        return response


urlpatterns = [
    path("stories/", story_view),
    path("context/", context_view),
    path("analytics/", include("analytics_queue.django.urls")),
]


@pytest.fixture
def client(django_settings: Any, isolated_default: None) -> Iterator[Client]:
    """Django's test client on this module's urls, with the default instance isolated."""
    with override_settings(ROOT_URLCONF=__name__):
        yield Client()


def analytics_settings(capture_server: Any, **options: Any) -> override_settings:
    """Settings that send to ``capture_server``."""
    return override_settings(
        POSTHOG_API_KEY=TEST_KEY,
        POSTHOG_HOST=capture_server.url,
        ANALYTICS_QUEUE={"shutdown_timeout": 2.0, **options},
    )


def our_checks() -> list[tuple[str, str]]:
    return [(m.id, m.msg) for m in run_checks() if (m.id or "").startswith("analytics_queue.")]


def test_the_app_is_installed_under_its_label(django_settings: Any) -> None:
    config = apps.get_app_config("analytics_queue")
    assert config.name == "analytics_queue.django"


def test_ready_configures_the_default_instance_from_settings(
    client: Client, capture_server: Any
) -> None:
    with analytics_settings(capture_server, environment="django-test", app_version="4.2.0"):
        apps.get_app_config("analytics_queue").ready()
        default = analytics_queue.get_default()
        assert default.config.host == capture_server.url
        assert default.config.environment == "django-test"

        response = client.get("/stories/?topic=owls", HTTP_X_USER_ID="user-7")
        assert response.status_code == 201
        assert response.content == b"queued"
        assert analytics_queue.flush(timeout=5.0)

    [event] = capture_server.wait_for(1)
    assert event.event == "story_generated"
    assert event.distinct_id == "user-7"
    assert event.properties["topic"] == "owls"
    assert event.properties["environment"] == "django-test"
    assert event.properties["app_version"] == "4.2.0"


def test_changed_settings_reconfigure_and_shut_down_the_previous_instance(
    client: Client, capture_server: Any
) -> None:
    with analytics_settings(capture_server, batch_size=3):
        first = analytics_queue.get_default()
        assert first.config.batch_size == 3
        with override_settings(ANALYTICS_QUEUE={"batch_size": 4, "shutdown_timeout": 2.0}):
            second = analytics_queue.get_default()
            assert second is not first
            assert second.config.batch_size == 4
            assert not first.track("too_late", distinct_id="u")  # shut down
    assert first.metrics().refused_by_reason == {"shutdown": 1}


def test_bad_settings_are_logged_and_left_out(
    client: Client, capture_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with analytics_settings(capture_server, batch_size="many", environment="still-used"):
        default = analytics_queue.get_default()
    assert default.config.batch_size == 10  # the default, not "many"
    assert default.config.environment == "still-used"
    assert "batch_size: must be an int >= 1, got 'many'" in caplog.text
    assert TEST_KEY not in caplog.text


def test_health_view(client: Client, capture_server: Any) -> None:
    with analytics_settings(capture_server):
        client.get("/stories/?topic=owls")
        assert analytics_queue.flush(timeout=5.0)
        response = client.get("/analytics/health")
        assert response.status_code == 200
        assert response["Content-Type"] == "application/json"
        assert "no-cache" in response["Cache-Control"]
        body = response.json()
        assert body["status"] == "healthy"
        assert body["mode"] == "posthog"
        assert body["metrics"]["delivered"] == 1
        assert client.get("/analytics/health/").status_code == 200
        assert reverse("analytics_queue:health") == "/analytics/health"
        assert client.post("/analytics/health").status_code == 405


def test_health_view_is_503_when_critical(client: Client, capture_server: Any) -> None:
    with analytics_settings(capture_server, requeue_limit=0):
        capture_server.down()
        for user in ("ada", "grace"):
            client.get("/stories/", HTTP_X_USER_ID=user)
        assert analytics_queue.flush(timeout=5.0)
        response = client.get("/analytics/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "critical"
        assert body["reasons"]
        assert body["metrics"]["failed"] == 2


def test_metrics_view_json_and_prometheus(client: Client, capture_server: Any) -> None:
    with analytics_settings(capture_server):
        for user in ("ada", "grace", "linus"):
            client.get("/stories/", HTTP_X_USER_ID=user)
        assert analytics_queue.flush(timeout=5.0)
        capture_server.wait_for(3)

        body = client.get(reverse("analytics_queue:metrics")).json()
        assert body["queued"] == body["delivered"] == 3

        for response in (
            client.get("/analytics/metrics?format=prometheus"),
            client.get("/analytics/metrics", HTTP_ACCEPT="text/plain"),
        ):
            assert response.status_code == 200
            assert response["Content-Type"].startswith("text/plain; version=0.0.4")
            assert "Accept" in response["Vary"]
            delivered = {
                s.name: s.value
                for f in text_string_to_metric_families(response.content.decode())
                for s in f.samples
            }["analytics_queue_events_delivered_total"]
            assert delivered == 3
        assert client.get("/analytics/metrics?format=xml").status_code == 400


def test_clean_settings_pass_the_checks(django_settings: Any) -> None:
    with override_settings(
        POSTHOG_API_KEY=TEST_KEY,
        POSTHOG_HOST="https://eu.i.posthog.com",
        ANALYTICS_QUEUE={"batch_size": 20, "requeue_limit": None},
    ):
        assert our_checks() == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"ANALYTICS_QUEUE": {"batch_size": 0}},
            "settings.ANALYTICS_QUEUE: batch_size: must be an int >= 1, got 0",
        ),
        (
            {"ANALYTICS_QUEUE": {"flush_intervall": 2.0}},
            "settings.ANALYTICS_QUEUE: flush_intervall: unknown option",
        ),
        (
            {"ANALYTICS_QUEUE": [("batch_size", 5)]},
            "settings.ANALYTICS_QUEUE must be a dict of options, got list",
        ),
        (
            {"ANALYTICS_QUEUE": {"api_key": "phc_elsewhere"}},
            "settings.ANALYTICS_QUEUE: 'api_key' is not read from this dict",
        ),
        ({"POSTHOG_HOST": "eu.i.posthog.com"}, "settings.POSTHOG_HOST: must start with http"),
        ({"POSTHOG_API_KEY": "phx_personal"}, "settings.POSTHOG_API_KEY: is a personal API key"),
    ],
)
def test_bad_settings_fail_check_e001(
    django_settings: Any, isolated_default: None, overrides: dict[str, Any], expected: str
) -> None:
    with override_settings(**overrides):
        messages = our_checks()
    assert [m[0] for m in messages] == ["analytics_queue.E001"], messages
    assert messages[0][1].startswith(expected), messages


def test_e001_hints_the_option_meant(django_settings: Any, isolated_default: None) -> None:
    with override_settings(ANALYTICS_QUEUE={"flush_intervall": 2.0, "host": "https://x.test"}):
        hints = [m.hint for m in run_checks() if m.id == "analytics_queue.E001"]
    assert len(hints) == 2
    assert "Did you mean 'flush_interval'?" in hints[0]
    assert "Set POSTHOG_HOST in settings instead." in hints[1]


def test_the_key_and_host_come_only_from_their_own_settings(
    client: Client, capture_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with override_settings(
        POSTHOG_API_KEY=TEST_KEY,
        POSTHOG_HOST=capture_server.url,
        ANALYTICS_QUEUE={"host": "https://elsewhere.example", "shutdown_timeout": 2.0},
    ):
        assert analytics_queue.get_default().config.host == capture_server.url
    assert "set POSTHOG_HOST instead" in caplog.text


def test_e001_stops_manage_py_check(django_settings: Any, isolated_default: None) -> None:
    with (
        override_settings(ANALYTICS_QUEUE={"max_queue_size": -1}),
        pytest.raises(SystemCheckError, match="analytics_queue.E001"),
    ):
        call_command("check")


def test_a_missing_key_warns_w001(
    django_settings: Any, isolated_default: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with override_settings(POSTHOG_API_KEY=None, ANALYTICS_QUEUE={}):
        assert our_checks() == [
            ("analytics_queue.W001", "no PostHog API key: analytics events are logged, not sent")
        ]
        monkeypatch.setenv("POSTHOG_API_KEY", TEST_KEY)  # the environment gives one
        assert our_checks() == []
        monkeypatch.delenv("POSTHOG_API_KEY")
        with override_settings(ANALYTICS_QUEUE={"disabled": True}):
            assert our_checks() == []  # nothing to send anyway


def token_guard(request: HttpRequest) -> bool:
    return request.headers.get("X-Monitoring-Token") == "s3cret"


def test_the_endpoint_guard_setting_protects_the_views(client: Client, capture_server: Any) -> None:
    with (
        analytics_settings(capture_server),
        override_settings(ANALYTICS_QUEUE_ENDPOINT_GUARD=f"{__name__}.token_guard"),
    ):
        for route in ("/analytics/health", "/analytics/metrics"):
            refused = client.get(route)
            assert refused.status_code == 403 and refused.json() == {"error": "forbidden"}
            assert client.get(route, HTTP_X_MONITORING_TOKEN="s3cret").status_code == 200
        assert our_checks() == []
    with (
        analytics_settings(capture_server),
        override_settings(ANALYTICS_QUEUE_ENDPOINT_GUARD="analytics_queue.django.views.staff_only"),
    ):
        assert client.get("/analytics/health").status_code == 403  # anonymous: not staff


def test_a_bad_endpoint_guard_is_a_system_check_error(client: Client, capture_server: Any) -> None:
    with (
        analytics_settings(capture_server),
        override_settings(ANALYTICS_QUEUE_ENDPOINT_GUARD="no.such.module.guard"),
    ):
        assert any(
            id_ == "analytics_queue.E001" and "ENDPOINT_GUARD" in msg for id_, msg in our_checks()
        )


# -- the request context ------------------------------------------------------------------------

CONTEXT_MIDDLEWARE = "analytics_queue.django.middleware.RequestContextMiddleware"


def one_event(capture_server: Any) -> Any:
    assert analytics_queue.flush(timeout=5.0)
    [event] = capture_server.wait_for(1)
    return event


def test_the_app_adds_its_middleware(client: Client) -> None:
    from django.conf import settings

    assert CONTEXT_MIDDLEWARE in settings.MIDDLEWARE
    with override_settings(MIDDLEWARE=["django.middleware.common.CommonMiddleware"]):
        assert settings.MIDDLEWARE[-1] == CONTEXT_MIDDLEWARE


def test_a_request_runs_in_a_context_with_posthogs_names(
    client: Client, capture_server: Any
) -> None:
    with analytics_settings(capture_server):
        response = client.get(
            "/context/?token=secret",
            HTTP_X_POSTHOG_SESSION_ID="session-42",
            HTTP_X_POSTHOG_DISTINCT_ID="user-7",
            HTTP_USER_AGENT="pytest-agent/1.0",
            REMOTE_ADDR="203.0.113.9",
        )
        assert response.content == b"queued"
        event = one_event(capture_server)
    assert event.distinct_id == "user-7"
    props = event.properties
    assert props["$session_id"] == "session-42"
    assert props["$current_url"] == "http://testserver/context/"  # no query string
    assert props["$request_method"] == "GET"
    assert props["$request_path"] == "/context/"
    assert props["$user_agent"] == "pytest-agent/1.0"
    assert props["plan"] == "explicit"
    assert "$ip" not in props


def test_the_authenticated_user_is_the_fallback_distinct_id(
    client: Client, capture_server: Any
) -> None:
    middleware = [f"{__name__}.FakeAuthenticationMiddleware", CONTEXT_MIDDLEWARE]
    with analytics_settings(capture_server), override_settings(MIDDLEWARE=middleware):
        client.get("/context/")
        event = one_event(capture_server)
        capture_server.clear()
        client.get("/context/", HTTP_X_POSTHOG_DISTINCT_ID="from-header")
        header_event = one_event(capture_server)
    assert event.distinct_id == "42"
    assert "$process_person_profile" not in event.properties
    assert header_event.distinct_id == "from-header"  # the header wins over the user


def test_ip_only_when_opted_in(client: Client, capture_server: Any) -> None:
    with (
        analytics_settings(capture_server),
        override_settings(ANALYTICS_QUEUE_REQUEST_CONTEXT_IP=True),
    ):
        client.get("/context/", HTTP_X_FORWARDED_FOR="198.51.100.4, 10.0.0.1")
        event = one_event(capture_server)
    assert event.properties["$ip"] == "198.51.100.4"


def test_request_context_off_with_one_setting(client: Client, capture_server: Any) -> None:
    with (
        analytics_settings(capture_server),
        override_settings(ANALYTICS_QUEUE_REQUEST_CONTEXT=False),
    ):
        assert analytics_queue.get_default().config.request_context is False
        client.get("/context/", HTTP_X_POSTHOG_DISTINCT_ID="user-7")
        event = one_event(capture_server)
    assert event.distinct_id != "user-7"
    assert event.properties["$process_person_profile"] is False
    assert "$current_url" not in event.properties
