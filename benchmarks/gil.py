"""Tail latency of a request thread (the GIL): a ~200 us CPU-bound handler on the main thread.

Measured alone and while a producer thread tracks a steady 2,000 events/s that the library's
worker drains into the capture server (another process). The handler runs back to back, like a
saturated request thread, so every bit of Python work the worker (and the producer) does must
take the GIL from it. Phases alternate inside one child process per library (alone, loaded,
alone, loaded, ...), so a change of CPU speed hits both phases alike.

`floor` is the same producer doing a bare `Queue.put_nowait` that nobody drains: what the
producer thread alone costs the handler, without any sender.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from typing import Any

from benchmarks._common import (
    DISTINCT_ID,
    EVENT,
    PROPERTIES,
    emit,
    flush,
    make_ours,
    make_posthog,
    median,
    quantile,
    quiet_posthog_logging,
    ratio,
    run_child,
    server_process,
    track_fn,
)

LIBS = ("floor", "ours", "posthog")
RATE = 2000.0  # events per second
TICK = 0.002  # the producer wakes every 2 ms and tracks what is due


def handler(k: int) -> int:
    total = 0
    for i in range(k):
        total += i * i
    return total


def calibrate(target_s: float) -> int:
    k = 2000
    for _ in range(3):
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            handler(k)
            times.append(time.perf_counter() - t0)
        k = max(100, int(k * target_s / median(times)))
    return k


def child(lib: str, url: str, blocks: int, phase_s: float, target_us: float) -> dict[str, Any]:
    quiet_posthog_logging()
    client: Any = None
    if lib == "ours":
        client = make_ours(url)
        send = track_fn(client, lib)
    elif lib == "posthog":
        client = make_posthog(url)
        send = track_fn(client, lib)
    else:
        q: queue.Queue[tuple[Any, ...]] = queue.Queue()
        put = q.put_nowait

        def send(properties: dict[str, Any] = PROPERTIES) -> Any:
            put((EVENT, DISTINCT_ID, properties, time.time()))
            return True

    running = threading.Event()
    stop = threading.Event()
    idle = threading.Event()
    tracked = [0]
    producing = [0.0]  # seconds the producer was running

    def producer() -> None:
        while not stop.is_set():
            idle.set()
            if not running.wait(0.05):
                continue
            idle.clear()
            t0 = time.perf_counter()
            sent = 0
            while running.is_set():
                due = int((time.perf_counter() - t0) * RATE) - sent
                for _ in range(due):
                    send()
                sent += max(due, 0)
                time.sleep(TICK)
            tracked[0] += sent
            producing[0] += time.perf_counter() - t0

    k = calibrate(target_us / 1e6)
    thread = threading.Thread(target=producer, name="bench-producer", daemon=True)
    thread.start()
    samples: dict[str, list[float]] = {"alone": [], "loaded": []}
    per_block: list[dict[str, dict[str, float]]] = []
    perf = time.perf_counter
    for _ in range(blocks):
        block: dict[str, dict[str, float]] = {}
        for phase in ("alone", "loaded"):
            if phase == "loaded":
                running.set()
                time.sleep(0.2)  # let the worker reach its steady state
            else:
                running.clear()
                idle.wait(5)
                if client is not None:
                    flush(client, lib, timeout=10)
                time.sleep(0.1)
            out: list[float] = []
            end = perf() + phase_s
            while True:
                t0 = perf()
                if t0 >= end:
                    break
                handler(k)
                out.append(perf() - t0)
            samples[phase] += out
            block[phase] = {
                "p50_ms": quantile(out, 0.5) * 1e3,
                "p99_ms": quantile(out, 0.99) * 1e3,
            }
        per_block.append(block)
    running.clear()
    idle.wait(5)
    if client is not None:
        flush(client, lib, timeout=10)
    stop.set()
    thread.join(5)

    def stats(xs: list[float]) -> dict[str, float]:
        return {
            "n": len(xs),
            "p50_ms": quantile(xs, 0.5) * 1e3,
            "p99_ms": quantile(xs, 0.99) * 1e3,
            "p999_ms": quantile(xs, 0.999) * 1e3,
            "max_ms": max(xs) * 1e3,
        }

    alone, loaded = stats(samples["alone"]), stats(samples["loaded"])
    # A compact latency distribution for the plot: 200 quantiles of each phase.
    qs = [i / 200 for i in range(201)]
    return {
        "lib": lib,
        "k": k,
        "tracked": tracked[0],
        "producing_s": producing[0],
        "blocks": per_block,
        "alone": alone,
        "loaded": loaded,
        "quantiles": {
            "q": qs,
            "alone_ms": [quantile(samples["alone"], q) * 1e3 for q in qs],
            "loaded_ms": [quantile(samples["loaded"], q) * 1e3 for q in qs],
        },
    }


def run(blocks: int, phase_s: float, rounds: int, log: Any = print) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with server_process(delay=0.0) as server:
        for r in range(rounds):
            for lib in LIBS if r % 2 == 0 else tuple(reversed(LIBS)):
                server.reset()
                result = run_child(
                    "benchmarks.gil",
                    [
                        "--child",
                        lib,
                        "--url",
                        server.url,
                        "--blocks",
                        str(blocks),
                        "--phase-s",
                        str(phase_s),
                    ],
                    timeout=600,
                )
                got = server.settle(quiet=0.2)
                result["delivered"] = got.events
                result["requests"] = got.requests
                result["round"] = r
                runs.append(result)
                a, lo = result["alone"], result["loaded"]
                log(
                    f"  gil {lib:8s} round {r}: p50 {a['p50_ms']:.3f} -> {lo['p50_ms']:.3f} ms, "
                    f"p99 {a['p99_ms']:.3f} -> {lo['p99_ms']:.3f} ms "
                    f"({result['tracked']} tracked, {got.events} delivered)"
                )
    # Each block is an (alone, loaded) pair measured back to back: the figures are the medians
    # over all blocks of all rounds, so that one block hit by a neighbour's burst of CPU (the
    # machine is shared) does not move them.
    summary: dict[str, Any] = {}
    for lib in LIBS:
        mine = [x for x in runs if x["lib"] == lib]
        pairs = [b for x in mine for b in x["blocks"]]
        row: dict[str, float] = {"blocks": len(pairs)}
        for q in ("p50", "p99"):
            alone = [b["alone"][f"{q}_ms"] for b in pairs]
            loaded = [b["loaded"][f"{q}_ms"] for b in pairs]
            row[f"alone_{q}_ms"] = median(alone)
            row[f"loaded_{q}_ms"] = median(loaded)
            row[f"{q}_ratio"] = median([ratio(b, a) for a, b in zip(alone, loaded, strict=True)])
            row[f"{q}_added_ms"] = median([b - a for a, b in zip(alone, loaded, strict=True)])
            row[f"pooled_alone_{q}_ms"] = median([x["alone"][f"{q}_ms"] for x in mine])
            row[f"pooled_loaded_{q}_ms"] = median([x["loaded"][f"{q}_ms"] for x in mine])
        row["events_per_s"] = median([x["tracked"] / x["producing_s"] for x in mine])
        row["delivered"] = min(x["delivered"] for x in mine) if lib != "floor" else 0
        row["tracked"] = min(x["tracked"] for x in mine)
        summary[lib] = row
    return {
        "blocks": blocks,
        "phase_s": phase_s,
        "rounds": rounds,
        "runs": runs,
        "summary": summary,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=LIBS, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--phase-s", type=float, default=2.0)
    parser.add_argument("--target-us", type=float, default=200.0)
    args = parser.parse_args()
    emit(child(args.child, args.url, args.blocks, args.phase_s, args.target_us))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
