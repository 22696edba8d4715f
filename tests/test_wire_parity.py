"""Each call against posthog-python 7's own body for the same call, key by key.

Both libraries send to the capture server; the test compares what arrived. Every key
posthog-python sends must arrive from us with the same value, except ``$lib`` and ``$lib_version``
(each library names itself); we send one key more, ``queued_at``. Person events, groups,
personless events, GeoIP, super properties, the context and historical_migration are covered.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import posthog
import pytest

import analytics_queue
import analytics_queue._default
from analytics_queue import AnalyticsQueue
from analytics_queue.testing import CaptureServer

KEY = "phc_wire_parity"
WHEN = dt.datetime(2026, 11, 29, 2, 44, 48, 474608, tzinfo=dt.timezone.utc)
PROPS = {"topic": "dragons", "length": 1234, "ratio": 0.5, "ok": True, "none": None}
ONLY_OURS = {"queued_at"}
NAMED_BY_EACH = {"$lib", "$lib_version"}

Call = Callable[[Any], Any]


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POSTHOG_CAPTURE_MODE", "POSTHOG_CAPTURE_COMPRESSION", "POSTHOG_RELEASE_ID"):
        monkeypatch.delenv(name, raising=False)


def their_body(server: CaptureServer, call: Call, **options: Any) -> dict[str, Any]:
    client = posthog.Posthog(KEY, host=server.url, sync_mode=True, **options)
    try:
        call(client)
    finally:
        client.shutdown()
    return _one_body(server)


def our_body(server: CaptureServer, call: Call, **options: Any) -> dict[str, Any]:
    queue = AnalyticsQueue(api_key=KEY, host=server.url, **options)
    try:
        assert call(queue) is True
        assert queue.flush(timeout=10)
    finally:
        queue.shutdown(timeout=5)
    return _one_body(server)


def _one_body(server: CaptureServer) -> dict[str, Any]:
    (request,) = server.wait_for_requests(1, timeout=10)
    assert request.status == 200
    assert isinstance(request.body, dict)
    server.clear()
    return request.body


def assert_same(ours: dict[str, Any], theirs: dict[str, Any], *, random_id: bool = False) -> None:
    """Our body carries every key of theirs with the same value (see the module docstring)."""
    assert set(ours) == set(theirs) == {"api_key", "batch", "historical_migration", "sent_at"}
    assert ours["historical_migration"] == theirs["historical_migration"]
    (mine,) = ours["batch"]
    (their,) = theirs["batch"]
    assert set(mine) == set(their)
    for key in their:
        if key == "properties" or (key == "distinct_id" and random_id):
            continue
        assert mine[key] == their[key], key
    if random_id:
        assert uuid.UUID(mine["distinct_id"]) != uuid.UUID(their["distinct_id"])
    props, their_props = mine["properties"], their["properties"]
    assert set(props) - set(their_props) == ONLY_OURS
    assert set(their_props) <= set(props)
    for key, value in their_props.items():
        if key in NAMED_BY_EACH:
            continue
        if key == "$context_tags":  # a set in posthog-python: its order is arbitrary
            assert sorted(props[key]) == sorted(value)
            continue
        assert props[key] == value, key
    assert props["$lib"] == "analytics_queue"


def compare(
    server: CaptureServer,
    theirs: Call,
    ours: Call,
    *,
    random_id: bool = False,
    **options: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    their = their_body(server, theirs, **options)
    mine = our_body(server, ours, **options)
    assert_same(mine, their, random_id=random_id)
    return mine["batch"][0], their["batch"][0]


def event_id() -> str:
    return str(uuid.uuid4())


# -- track ------------------------------------------------------------------------------------


def capture_call(**kwargs: Any) -> tuple[Call, Call]:
    kwargs.setdefault("timestamp", WHEN)
    kwargs.setdefault("uuid", event_id())
    return (
        lambda client: client.capture("story_generated", **kwargs),
        lambda queue: queue.track("story_generated", **kwargs),
    )


def test_track_defaults_geoip_off_and_server_side(capture_server: CaptureServer) -> None:
    theirs, ours = capture_call(distinct_id="user-123", properties=PROPS)
    mine, their = compare(capture_server, theirs, ours)
    # The defaults of posthog-python's server client, which the wire test pins down.
    assert mine["properties"]["$geoip_disable"] is True is their["properties"]["$geoip_disable"]
    assert mine["properties"]["$is_server"] is True is their["properties"]["$is_server"]
    assert "$python_version" in mine["properties"]


def test_track_with_geoip_on_for_the_instance(capture_server: CaptureServer) -> None:
    theirs, ours = capture_call(distinct_id="user-123", properties=PROPS)
    mine, _ = compare(capture_server, theirs, ours, disable_geoip=False)
    assert "$geoip_disable" not in mine["properties"]


@pytest.mark.parametrize(("instance", "call"), [(True, False), (False, True)])
def test_track_with_geoip_per_call_wins_over_the_instance(
    capture_server: CaptureServer, instance: bool, call: bool
) -> None:
    theirs, ours = capture_call(distinct_id="user-123", properties=PROPS, disable_geoip=call)
    mine, _ = compare(capture_server, theirs, ours, disable_geoip=instance)
    assert ("$geoip_disable" in mine["properties"]) is call


def test_track_with_groups(capture_server: CaptureServer) -> None:
    groups = {"company": "acme", "team": 42}
    theirs, ours = capture_call(distinct_id="user-123", properties=PROPS, groups=groups)
    mine, _ = compare(capture_server, theirs, ours)
    assert mine["properties"]["$groups"] == groups


def test_track_personless_without_a_distinct_id(capture_server: CaptureServer) -> None:
    theirs, ours = capture_call(properties=PROPS)
    mine, _ = compare(capture_server, theirs, ours, random_id=True)
    assert mine["properties"]["$process_person_profile"] is False
    assert uuid.UUID(mine["distinct_id"]).version == 4


def test_track_with_person_properties_inside(capture_server: CaptureServer) -> None:
    props = {**PROPS, "$set": {"plan": "pro"}, "$set_once": {"first_seen": "2026-11-29"}}
    theirs, ours = capture_call(distinct_id="user-123", properties=props)
    mine, _ = compare(capture_server, theirs, ours)
    assert mine["properties"]["$set"] == {"plan": "pro"}


def test_super_properties_merge_over_the_calls(capture_server: CaptureServer) -> None:
    supers = {"service": "stories", "topic": "from-super", "$is_server": False}
    theirs, ours = capture_call(distinct_id="user-123", properties=PROPS)
    mine, _ = compare(capture_server, theirs, ours, super_properties=supers)
    assert mine["properties"]["topic"] == "from-super"  # posthog-python's merge order
    assert mine["properties"]["$is_server"] is True  # its server flag goes over them


def test_historical_migration(capture_server: CaptureServer) -> None:
    theirs, ours = capture_call(distinct_id="user-123", properties=PROPS)
    their = their_body(capture_server, theirs, historical_migration=True)
    mine = our_body(capture_server, ours, historical_migration=True)
    assert_same(mine, their)
    assert mine["historical_migration"] is True


def test_release_id_from_the_environment(
    capture_server: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTHOG_RELEASE_ID", " rel-42 ")
    theirs, ours = capture_call(distinct_id="user-123", properties=PROPS)
    mine, _ = compare(capture_server, theirs, ours)
    assert mine["properties"]["$release_id"] == "rel-42"


def test_track_in_a_context(capture_server: CaptureServer) -> None:
    theirs, ours = capture_call(properties={**PROPS, "plan": "explicit"})

    def their_call(client: Any) -> Any:
        with posthog.new_context(fresh=True, capture_exceptions=False):
            posthog.identify_context("ctx-user")
            posthog.set_context_session("session-1")
            posthog.tag("plan", "from-tag")
            posthog.tag("request_id", "r-7")
            return theirs(client)

    def our_call(queue: AnalyticsQueue) -> Any:
        with analytics_queue.new_context():
            analytics_queue.identify_context("ctx-user")
            analytics_queue.set_context_session("session-1")
            analytics_queue.tag("plan", "from-tag")
            analytics_queue.tag("request_id", "r-7")
            return ours(queue)

    mine, _ = compare(capture_server, their_call, our_call)
    assert mine["distinct_id"] == "ctx-user"
    assert mine["properties"]["plan"] == "explicit"  # explicit properties win over tags
    assert mine["properties"]["request_id"] == "r-7"
    assert mine["properties"]["$session_id"] == "session-1"


# -- persons and groups -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["set", "set_once"])
def test_set_and_set_once(capture_server: CaptureServer, method: str) -> None:
    kwargs = {
        "distinct_id": "user-123",
        "properties": {"plan": "pro", "seats": 3},
        "timestamp": WHEN,
        "uuid": event_id(),
    }
    mine, _ = compare(
        capture_server,
        lambda client: getattr(client, method)(**kwargs),
        lambda queue: getattr(queue, method)(**kwargs),
    )
    assert mine["event"] == f"${method}"
    assert mine[f"${method}"] == {"plan": "pro", "seats": 3}
    assert "$python_version" not in mine["properties"]  # person events carry no runtime


def test_alias(capture_server: CaptureServer) -> None:
    kwargs = {"previous_id": "anon-1", "distinct_id": "user-123", "timestamp": WHEN}
    kwargs["uuid"] = event_id()
    mine, _ = compare(
        capture_server,
        lambda client: client.alias(**kwargs),
        lambda queue: queue.alias(**kwargs),
    )
    assert mine["event"] == "$create_alias" and mine["distinct_id"] == "anon-1"
    assert mine["properties"]["alias"] == "user-123"


@pytest.mark.parametrize("distinct_id", ["user-123", None])
def test_group_identify(capture_server: CaptureServer, distinct_id: str | None) -> None:
    kwargs = {
        "group_type": "company",
        "group_key": "acme",
        "properties": {"name": "Acme", "employees": 11},
        "timestamp": WHEN,
        "uuid": event_id(),
        "distinct_id": distinct_id,
    }
    mine, _ = compare(
        capture_server,
        lambda client: client.group_identify(**kwargs),
        lambda queue: queue.group_identify(**kwargs),
        random_id=distinct_id is None,
    )
    assert mine["properties"]["$group_set"] == {"name": "Acme", "employees": 11}
    assert "$process_person_profile" not in mine["properties"]


def test_person_events_with_geoip_on_per_call(capture_server: CaptureServer) -> None:
    kwargs = {"distinct_id": "user-123", "properties": {"plan": "pro"}, "disable_geoip": False}
    kwargs.update(timestamp=WHEN, uuid=event_id())
    mine, _ = compare(
        capture_server,
        lambda client: client.set(**kwargs),
        lambda queue: queue.set(**kwargs),
    )
    assert "$geoip_disable" not in mine["properties"]


def test_the_before_send_path_sends_the_same_body(capture_server: CaptureServer) -> None:
    """With a hook that changes nothing, the body is the one of the fast path."""
    theirs, ours = capture_call(distinct_id="user-123", properties=PROPS, groups={"org": "a"})
    their = their_body(capture_server, theirs)
    seen: list[dict[str, Any]] = []

    def keep(event: dict[str, Any]) -> dict[str, Any]:
        seen.append(event)
        return event

    mine = our_body(capture_server, ours, before_send=keep)
    assert_same(mine, their)
    assert len(seen) == 1 and seen[0]["uuid"] == mine["batch"][0]["uuid"]


@pytest.fixture
def default_instance(
    capture_server: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AnalyticsQueue]:
    monkeypatch.setattr(analytics_queue._default, "_default", None)
    instance = analytics_queue.configure(api_key=KEY, host=capture_server.url)
    yield instance
    instance.shutdown(timeout=5)


def test_module_level_functions_queue_on_the_default_instance(
    default_instance: AnalyticsQueue, capture_server: CaptureServer
) -> None:
    assert analytics_queue.set(distinct_id="u", properties={"a": 1})
    assert analytics_queue.set_once(distinct_id="u", properties={"b": 2})
    assert analytics_queue.alias("anon", "u")
    assert analytics_queue.group_identify("company", "acme", {"name": "Acme"})
    assert analytics_queue.track("clicked", groups={"company": "acme"})
    assert default_instance.flush(timeout=10)
    events = capture_server.wait_for(5, timeout=10)
    assert [e.event for e in events] == [
        "$set",
        "$set_once",
        "$create_alias",
        "$groupidentify",
        "clicked",
    ]
