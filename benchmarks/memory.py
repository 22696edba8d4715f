"""Memory: bytes held per queued, unsent event, ours and posthog-python's (and the floor).

The server is down (a closed local port) and both clients are told not to send before N events
wait (batch size and flush interval beyond the run), so every tracked event is still held when
it is counted. The caller builds a fresh properties dict per event, as a view does, and drops it;
what stays allocated afterwards is what the library keeps for the event.

Two measures, each in a fresh child process: `tracemalloc` (Python allocations still live, the
primary figure) and the growth of the resident set (RSS, includes allocator overhead).
The floor is a bare `queue.Queue.put_nowait` of a tuple (event, distinct_id, properties, time).
"""

from __future__ import annotations

import argparse
import gc
import os
import queue
import time
import tracemalloc
from typing import Any

from benchmarks._common import (
    DISTINCT_ID,
    EVENT,
    PROPERTIES,
    closed_port_url,
    emit,
    make_ours,
    make_posthog,
    median,
    quiet_posthog_logging,
    ratio,
    run_child,
)

LIBS = ("floor", "ours", "posthog")
METHODS = ("tracemalloc", "rss")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def child(lib: str, n: int, method: str) -> dict[str, Any]:
    quiet_posthog_logging()
    url = closed_port_url()
    client: Any = None
    if lib == "ours":
        client = make_ours(url, batch_size=n + 10, flush_interval=3600.0, max_queue_size=n + 10)
        track = client.track

        def send() -> Any:
            return track(EVENT, distinct_id=DISTINCT_ID, properties=dict(PROPERTIES))

        def queued() -> int:
            return int(client.queue_size)

    elif lib == "posthog":
        client = make_posthog(url, flush_at=n + 10, flush_interval=3600.0, max_queue_size=n + 10)
        capture = client.capture

        def send() -> Any:
            return capture(EVENT, distinct_id=DISTINCT_ID, properties=dict(PROPERTIES))

        def queued() -> int:
            # Its consumer moves events from the queue into the batch it is building.
            return int(client._analytics_lane.queue.unfinished_tasks)

    else:
        q: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=n + 10)
        put = q.put_nowait

        def send() -> Any:
            put((EVENT, DISTINCT_ID, dict(PROPERTIES), time.time()))
            return True

        def queued() -> int:
            return q.qsize()

    # Warm up: lazy imports, the worker thread, caches (this event stays queued and is excluded).
    send()
    time.sleep(0.2)
    base_queued = queued()
    gc.collect()
    if method == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = _rss_bytes()
    accepted = 0
    for _ in range(n):
        if send():
            accepted += 1
    time.sleep(0.2)
    gc.collect()
    if method == "tracemalloc":
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    else:
        after = _rss_bytes()
    held = queued() - base_queued
    return {
        "lib": lib,
        "method": method,
        "n": n,
        "accepted": accepted,
        "held": held,
        "bytes": after - before,
        "bytes_per_event": (after - before) / held if held > 0 else float("nan"),
    }


def run(n: int, rounds: int, log: Any = print) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        for method in METHODS:
            for lib in LIBS if r % 2 == 0 else tuple(reversed(LIBS)):
                result = run_child(
                    "benchmarks.memory",
                    ["--child", lib, "--n", str(n), "--method", method],
                    timeout=300,
                )
                result["round"] = r
                runs.append(result)
                log(
                    f"  memory {lib:8s} {method:11s} round {r}: "
                    f"{result['bytes_per_event']:,.0f} B/event "
                    f"({result['held']}/{n} held)"
                )
    summary: dict[str, Any] = {}
    for lib in LIBS:
        summary[lib] = {
            method: median(
                [x["bytes_per_event"] for x in runs if x["lib"] == lib and x["method"] == method]
            )
            for method in METHODS
        }
        summary[lib]["held"] = min(x["held"] for x in runs if x["lib"] == lib)
    summary["ratio_ours_posthog"] = ratio(
        summary["ours"]["tracemalloc"], summary["posthog"]["tracemalloc"]
    )
    return {"n": n, "rounds": rounds, "runs": runs, "summary": summary}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=LIBS, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--method", choices=METHODS, required=True)
    args = parser.parse_args()
    result = child(args.child, args.n, args.method)
    emit(result)
    # The server is down: leave without the exit flush (it would wait for its budget).
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
