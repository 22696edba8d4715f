"""Throughput and CPU: N events end to end into the capture server, ours and posthog-python's.

The sending process (a child of its own per run) tracks N events as fast as one thread can and
then flushes; its wall time runs from the first track() to flush() returning, and its CPU is the
process's own (`resource.getrusage`, every thread: the caller's track() calls and the worker). The
capture server runs in another process, so its CPU is not counted; it also counts the events and
the HTTP requests that arrived. Runs alternate between the libraries.

Both clients keep their own defaults (batch size, gzip, timeouts), except the queue bound, raised
to N for both so that neither drops events while one thread produces faster than it sends. Ours
runs twice: `ours` serializes with orjson (the `fast` extra, installed by the dev extra) and
`ours_stdlib` with the standard library's json (`ANALYTICS_QUEUE_JSON=stdlib`, as without it).

`ceiling` is the capture server's own ingest rate: the same N events, serialized and gzipped
before the clock starts, posted 500 per request one after the other over one urllib3 connection.
No sender on one connection can beat it on this machine.
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

from benchmarks._common import (
    API_KEY,
    DISTINCT_ID,
    EVENT,
    PROPERTIES,
    emit,
    flush,
    make_ours,
    make_posthog,
    median,
    quiet_posthog_logging,
    ratio,
    run_child,
    server_process,
    track_fn,
)

LIBS = ("ours", "ours_stdlib", "posthog")
#: The environment of each sender's child process.
ENV = {"ours_stdlib": {"ANALYTICS_QUEUE_JSON": "stdlib"}}
CEILING_BATCH = 500


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ceiling(n: int, url: str) -> dict[str, Any]:
    import json
    import uuid
    import zlib
    from datetime import datetime, timezone

    import urllib3

    stamp = datetime.now(timezone.utc).isoformat()
    props = dict(PROPERTIES, **{"$lib": "benchmark", "$lib_version": "0"})
    events = [
        json.dumps(
            {
                "event": EVENT,
                "distinct_id": DISTINCT_ID,
                "properties": props,
                "timestamp": stamp,
                "uuid": str(uuid.uuid4()),
            }
        ).encode()
        for _ in range(n)
    ]
    bodies = []
    for i in range(0, n, CEILING_BATCH):
        body = b"".join(
            (
                b'{"api_key":"' + API_KEY.encode() + b'","batch":[',
                b",".join(events[i : i + CEILING_BATCH]),
                b'],"historical_migration":false,"sent_at":"',
                stamp.encode(),
                b'"}',
            )
        )
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)
        bodies.append(packer.compress(body) + packer.flush())
    pool = urllib3.PoolManager(maxsize=1)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    cpu0 = _cpu()
    t0 = time.perf_counter()
    for body in bodies:
        response = pool.request("POST", f"{url}/batch/", body=body, headers=headers, timeout=60)
        assert response.status == 200, response.status
    t1 = time.perf_counter()
    cpu1 = _cpu()
    return {
        "lib": "ceiling",
        "n": n,
        "accepted": n,
        "track_s": 0.0,
        "wall_s": t1 - t0,
        "cpu_s": cpu1 - cpu0,
    }


def child(lib: str, n: int, url: str) -> dict[str, Any]:
    if lib == "ceiling":
        return ceiling(n, url)
    quiet_posthog_logging()
    extra: dict[str, Any] = {}
    if lib.startswith("ours"):
        client = make_ours(url, max_queue_size=n)
        extra["json_backend"] = client._encoder.backend.name
        lib = "ours"
    else:
        client = make_posthog(url, max_queue_size=n)
    send = track_fn(client, lib)
    props = PROPERTIES
    accepted = 0
    cpu0 = _cpu()
    t0 = time.perf_counter()
    for _ in range(n):
        if send(props):  # ours: True; posthog: the event's uuid (None when dropped)
            accepted += 1
    t_tracked = time.perf_counter()
    flush(client, lib, timeout=600)
    t1 = time.perf_counter()
    cpu1 = _cpu()
    if lib == "ours":
        extra["metrics"] = client.metrics().to_dict()
    return {
        "lib": lib,
        "n": n,
        "accepted": accepted,
        "track_s": t_tracked - t0,
        "wall_s": t1 - t0,
        "cpu_s": cpu1 - cpu0,
        **extra,
    }


def run(n: int, rounds: int, log: Any = print) -> dict[str, Any]:
    """Alternate ours and posthog `rounds` times each; return every run and the medians."""
    runs: list[dict[str, Any]] = []
    with server_process(delay=0.0) as server:
        for r in range(rounds):
            order = ("ceiling", *LIBS) if r % 2 == 0 else (*reversed(LIBS), "ceiling")
            for lib in order:
                server.reset()
                result = run_child(
                    "benchmarks.throughput",
                    ["--child", lib, "--n", str(n), "--url", server.url],
                    timeout=900,
                    env=ENV.get(lib),
                )
                result["lib"] = lib
                got = server.settle(quiet=0.2)
                result["delivered"] = got.events
                result["requests"] = got.requests
                result["events_per_s"] = got.events / result["wall_s"]
                result["cpu_us_per_event"] = (
                    result["cpu_s"] / got.events * 1e6 if got.events else float("inf")
                )
                result["round"] = r
                runs.append(result)
                log(
                    f"  throughput {lib:8s} round {r}: {result['events_per_s']:,.0f} events/s, "
                    f"{result['cpu_us_per_event']:.1f} us CPU/event, {got.requests} requests, "
                    f"{got.events}/{n} delivered"
                )
    summary: dict[str, Any] = {}
    for lib in ("ceiling", *LIBS):
        mine = [x for x in runs if x["lib"] == lib]
        summary[lib] = {
            "events_per_s": median([x["events_per_s"] for x in mine]),
            "cpu_us_per_event": median([x["cpu_us_per_event"] for x in mine]),
            "requests": median([x["requests"] for x in mine]),
            "delivered": min(x["delivered"] for x in mine),
            "track_s": median([x["track_s"] for x in mine]),
            "wall_s": median([x["wall_s"] for x in mine]),
        }
    # Ratios per round (all measured back to back), then their median.
    ratios: dict[str, list[float]] = {}
    for r in range(rounds):
        pair = {x["lib"]: x for x in runs if x["round"] == r}
        posthog = pair["posthog"]
        for lib, suffix in (("ours", ""), ("ours_stdlib", "_stdlib")):
            ours = pair[lib]
            ratios.setdefault(f"speed_ratio{suffix}", []).append(
                ratio(ours["events_per_s"], posthog["events_per_s"])
            )
            ratios.setdefault(f"cpu_ratio{suffix}", []).append(
                ratio(ours["cpu_us_per_event"], posthog["cpu_us_per_event"])
            )
            ratios.setdefault(f"ceiling_share{suffix}", []).append(
                ratio(ours["events_per_s"], pair["ceiling"]["events_per_s"])
            )
    for key, values in ratios.items():
        summary[key] = median(values)
    return {"n": n, "rounds": rounds, "runs": runs, "summary": summary}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=("ceiling", *LIBS), required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--url", required=True)
    args = parser.parse_args()
    emit(child(args.child, args.n, args.url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
