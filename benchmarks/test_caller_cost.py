"""Caller cost: what one event costs the request thread. One benchmark group.

- `floor`: a bare `queue.Queue.put_nowait` of a tuple, nothing else;
- `ours`: `AnalyticsQueue.track()`, its worker sending to the capture server meanwhile;
- `ours_context`: the same call inside `analytics_queue.new_context()` with 5 tags, as a request
  of the Flask or Django integration makes it;
- `posthog`: posthog-python's `Posthog.capture()` with its consumer thread running;
- `blocking_0ms` / `blocking_300ms`: the blocking pattern, one synchronous send per event
  (`Posthog(sync_mode=True)`), against the capture server answering at once / after 300 ms.

Same event and properties everywhere. Each round times one call (`iterations=1`) so that the
saved data gives the p99 of single calls, not of averages. Both queued clients get a queue bound
above the number of calls, so no call is a (cheaper) refusal. Nothing here asserts a time: the
assertions check that the calls did what they should.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks._common import (
    DISTINCT_ID,
    EVENT,
    PROPERTIES,
    ServerProcess,
    Sizes,
    make_ours,
    make_posthog,
    quiet_posthog_logging,
    track_fn,
)

pytestmark = [pytest.mark.benchmark(group="caller-cost"), pytest.mark.slow]

QUEUE_BOUND = 100_000


@pytest.fixture(autouse=True)
def _quiet() -> None:
    quiet_posthog_logging()


@pytest.fixture
def ours(capture_server: ServerProcess) -> Iterator[Any]:
    client = make_ours(capture_server.url, max_queue_size=QUEUE_BOUND)
    yield client
    client.shutdown(timeout=30)


@pytest.fixture
def posthog_client(capture_server: ServerProcess) -> Iterator[Any]:
    client = make_posthog(capture_server.url, max_queue_size=QUEUE_BOUND)
    yield client
    client.shutdown()


def test_floor_put_nowait(benchmark: Any, sizes: Sizes) -> None:
    q: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=QUEUE_BOUND)
    put = q.put_nowait
    now = time.time

    def floor() -> None:
        put((EVENT, DISTINCT_ID, PROPERTIES, now()))

    benchmark.pedantic(
        floor, rounds=sizes.rounds_fast, warmup_rounds=sizes.warmup_fast, iterations=1
    )
    assert q.qsize() >= 1


def test_ours_track(benchmark: Any, sizes: Sizes, ours: Any, capture_server: ServerProcess) -> None:
    capture_server.reset()
    send = track_fn(ours, "ours")
    benchmark.pedantic(
        send, rounds=sizes.rounds_fast, warmup_rounds=sizes.warmup_fast, iterations=1
    )
    assert ours.flush(timeout=60)
    metrics = ours.metrics().to_dict()
    benchmark.extra_info["refused"] = metrics["refused"]
    benchmark.extra_info["batches_sent_meanwhile"] = metrics["batches_sent"]
    got = capture_server.wait_for(metrics["queued"], timeout=30)
    assert metrics["refused"] == 0
    assert got.events == metrics["queued"]


#: The tags of the `ours_context` case: what the request context of an integration sets.
CONTEXT_TAGS = {
    "$current_url": "https://stories.example/api/stories",
    "$request_method": "POST",
    "$request_path": "/api/stories",
    "$user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
    "$raw_user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
}


def test_ours_track_in_context(
    benchmark: Any, sizes: Sizes, ours: Any, capture_server: ServerProcess
) -> None:
    import analytics_queue

    capture_server.reset()
    send = track_fn(ours, "ours")
    with analytics_queue.new_context():
        for key, value in CONTEXT_TAGS.items():
            analytics_queue.tag(key, value)
        benchmark.pedantic(
            send, rounds=sizes.rounds_fast, warmup_rounds=sizes.warmup_fast, iterations=1
        )
    assert ours.flush(timeout=60)
    metrics = ours.metrics().to_dict()
    got = capture_server.wait_for(metrics["queued"], timeout=30)
    assert metrics["refused"] == 0
    assert got.events == metrics["queued"]


def test_posthog_capture(
    benchmark: Any, sizes: Sizes, posthog_client: Any, capture_server: ServerProcess
) -> None:
    capture_server.reset()
    send = track_fn(posthog_client, "posthog")
    benchmark.pedantic(
        send, rounds=sizes.rounds_fast, warmup_rounds=sizes.warmup_fast, iterations=1
    )
    posthog_client.flush(timeout_seconds=60)
    calls = 1 if benchmark.disabled else sizes.rounds_fast + sizes.warmup_fast
    got = capture_server.wait_for(calls, timeout=30)
    benchmark.extra_info["refused"] = calls - got.events
    assert got.events == calls


@pytest.mark.parametrize("delay", ["0ms", "300ms"])
def test_blocking(
    benchmark: Any,
    sizes: Sizes,
    delay: str,
    capture_server: ServerProcess,
    slow_capture_server: ServerProcess,
) -> None:
    server = capture_server if delay == "0ms" else slow_capture_server
    server.reset()
    client = make_posthog(server.url, sync_mode=True)
    send = track_fn(client, "posthog")
    rounds = sizes.rounds_blocking_0ms if delay == "0ms" else sizes.rounds_blocking_300ms
    benchmark.pedantic(send, rounds=rounds, warmup_rounds=1, iterations=1)
    got = server.stats()
    assert got.events == got.requests >= 1
