"""Context scopes: tags and identity per thread and per asyncio task, delivered for real."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import analytics_queue
from analytics_queue import AnalyticsQueue
from analytics_queue.testing import CaptureServer

MakeQueue = Callable[..., AnalyticsQueue]


@pytest.fixture
def make_queue(capture_server: CaptureServer) -> Iterator[MakeQueue]:
    """Queues that send to the capture server; every one is shut down afterwards."""
    made: list[AnalyticsQueue] = []

    def make(**options: Any) -> AnalyticsQueue:
        queue = AnalyticsQueue(
            api_key="phc_context", host=capture_server.url, flush_interval=60.0, **options
        )
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.shutdown(timeout=2.0)


def by_event(server: CaptureServer, count: int) -> dict[str, Any]:
    return {e.event: e for e in server.wait_for(count, timeout=10)}


def test_track_takes_the_contexts_id_and_tags_and_explicit_properties_win(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    queue = make_queue()
    with analytics_queue.new_context():
        analytics_queue.identify_context("ctx-user")
        analytics_queue.tag("plan", "from-tag")
        analytics_queue.tag("request_id", "r-1")
        assert queue.track("inside", properties={"plan": "explicit"})
        assert queue.track("explicit_id", distinct_id="someone-else")
    assert queue.track("outside", distinct_id="u")
    assert queue.flush(timeout=10)
    events = by_event(capture_server, 3)
    inside = events["inside"]
    assert inside.distinct_id == "ctx-user"
    assert inside.properties["plan"] == "explicit"
    assert inside.properties["request_id"] == "r-1"
    assert sorted(inside.properties["$context_tags"]) == ["plan", "request_id"]
    assert events["explicit_id"].distinct_id == "someone-else"
    assert events["explicit_id"].properties["request_id"] == "r-1"
    assert "request_id" not in events["outside"].properties
    assert "$context_tags" not in events["outside"].properties


def test_nested_scopes_inherit_unless_fresh_and_never_leak_outwards() -> None:
    with analytics_queue.new_context():
        analytics_queue.identify_context("outer")
        analytics_queue.tag("a", 1)
        with analytics_queue.new_context():
            analytics_queue.tag("b", 2)
            assert analytics_queue.get_tags() == {"a": 1, "b": 2}
            assert analytics_queue.context.get_context_distinct_id() == "outer"
        with analytics_queue.new_context(fresh=True):
            assert analytics_queue.get_tags() == {}
            assert analytics_queue.context.get_context_distinct_id() is None
        assert analytics_queue.get_tags() == {"a": 1}
    assert analytics_queue.get_tags() == {}


def test_outside_a_scope_the_calls_do_nothing() -> None:
    analytics_queue.tag("lost", 1)
    analytics_queue.identify_context("nobody")
    analytics_queue.set_context_session("s")
    assert analytics_queue.get_tags() == {}
    assert analytics_queue.context.get_context_distinct_id() is None


def test_a_tag_that_cannot_be_sent_is_left_out_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with analytics_queue.new_context():
        with caplog.at_level(logging.WARNING, logger="analytics_queue.context"):
            analytics_queue.tag("bad", object())
            analytics_queue.tag("good", 1)
        assert analytics_queue.get_tags() == {"good": 1}
    assert "'bad' ignored" in caplog.text


def test_threads_each_see_their_own_scope(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    queue = make_queue()
    both_inside = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def request(name: str) -> None:
        try:
            with analytics_queue.new_context():
                analytics_queue.identify_context(f"user-{name}")
                analytics_queue.tag("thread", name)
                both_inside.wait()  # the other thread's scope is open now too
                assert queue.track(f"event-{name}")
                both_inside.wait()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == []
    assert queue.flush(timeout=10)
    events = by_event(capture_server, 2)
    for name in ("a", "b"):
        event = events[f"event-{name}"]
        assert event.distinct_id == f"user-{name}"
        assert event.properties["thread"] == name
    assert analytics_queue.get_tags() == {}  # nothing reached the main thread


def test_asyncio_tasks_each_see_their_own_scope(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    queue = make_queue()

    async def handler(name: str, entered: asyncio.Event, other: asyncio.Event) -> None:
        with analytics_queue.new_context():
            analytics_queue.identify_context(f"user-{name}")
            analytics_queue.tag("task", name)
            entered.set()
            await other.wait()  # both scopes are open, interleaved on one thread
            assert queue.track(f"event-{name}")

    async def main() -> None:
        a, b = asyncio.Event(), asyncio.Event()
        await asyncio.wait_for(asyncio.gather(handler("a", a, b), handler("b", b, a)), 10)
        assert analytics_queue.get_tags() == {}

    asyncio.run(main())
    assert queue.flush(timeout=10)
    events = by_event(capture_server, 2)
    for name in ("a", "b"):
        assert events[f"event-{name}"].distinct_id == f"user-{name}"
        assert events[f"event-{name}"].properties["task"] == name
        assert "$context_tags" in events[f"event-{name}"].properties


def test_person_calls_take_the_contexts_id(
    make_queue: MakeQueue, capture_server: CaptureServer
) -> None:
    queue = make_queue()
    with analytics_queue.new_context():
        analytics_queue.identify_context("ctx-user")
        assert queue.set(properties={"plan": "pro"})
        assert queue.alias("anon-9")
    assert queue.flush(timeout=10)
    events = by_event(capture_server, 2)
    assert events["$set"].distinct_id == "ctx-user"
    assert events["$create_alias"].properties["alias"] == "ctx-user"
    assert events["$create_alias"].distinct_id == "anon-9"


def test_person_calls_without_an_id_are_refused_and_counted(make_queue: MakeQueue) -> None:
    queue = make_queue()
    assert queue.set(properties={"plan": "pro"}) is False
    assert queue.set(distinct_id="u", properties={}) is False
    assert queue.alias("anon") is False
    assert queue.alias("", "u") is False
    assert queue.group_identify("", "acme") is False
    assert queue.group_identify("company", None) is False
    assert queue.track("e", distinct_id="u", disable_geoip="yes") is False  # type: ignore[arg-type]
    assert queue.metrics().refused_by_reason == {"invalid": 7}
    strict = make_queue(strict=True)
    with pytest.raises(ValueError, match="needs a distinct_id"):
        strict.set_once(properties={"a": 1})
