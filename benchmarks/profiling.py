"""Where the time goes: cProfile (and tracemalloc) runs that name the functions behind a figure.

`benchmarks.run` runs the scenario of each goal it found missed (or all of them with
`--profile`), each in a child process of its own, and puts the top functions in the report:

    track            the caller's track() calls (main thread), worker sending meanwhile
    capture          posthog-python's capture() calls, for comparison
    worker           the worker thread's CPU while a producer tracks a steady 2,000 events/s
    gil_segments     the GIL test itself: after each slow handler run, where the worker was
                     (the call at which it gave the GIL back, which ended what delayed it)
    throughput       N events end to end: the caller's CPU and the worker's CPU
    throughput_wall  the same, the worker's wall-clock time (waits for the GIL, the server)
    memory           tracemalloc: where the memory held by queued, unsent events was allocated

Times are CPU time of the profiled thread (`time.thread_time`), not wall time: a thread blocked
on a lock, a socket or a sleep costs nobody the GIL, so waits do not show up as hot functions.
The worker thread is profiled by a `threading.setprofile` hook that enables a profiler of its
own inside the thread named `analytics-queue-worker` (cProfile only sees the thread enabling it).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import re
import sys
import threading
import time
import tracemalloc
from types import FrameType
from typing import Any

from benchmarks._common import (
    DISTINCT_ID,
    EVENT,
    PROPERTIES,
    ROOT,
    closed_port_url,
    emit,
    flush,
    make_ours,
    make_posthog,
    quiet_posthog_logging,
    run_child,
    track_fn,
)

WORKER_THREAD = "analytics-queue-worker"
SCENARIOS = (
    "track",
    "capture",
    "worker",
    "gil_segments",
    "throughput",
    "throughput_wall",
    "memory",
)
TOP = 12


def _short(path: str) -> str:
    """A path short enough for the report: package-relative, project-relative or stdlib."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    root = f"{ROOT}/"
    if path.startswith(root):
        return path[len(root) :]
    stdlib = re.search(r"/lib/python3\.\d+/(.*)", path)
    return stdlib.group(1) if stdlib else path


def cpu_profile() -> cProfile.Profile:
    """A profiler that counts the CPU time of the thread it runs in."""
    return cProfile.Profile(time.thread_time)


def top_functions(prof: cProfile.Profile, clock: str = "cpu", top: int = TOP) -> dict[str, Any]:
    stats = pstats.Stats(prof)
    rows = []
    total = 0.0
    for (path, line, name), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += tt
        rows.append(
            {
                "function": f"{_short(path)}:{line}({name})",
                "ncalls": nc,
                "primitive_calls": cc,
                "tottime_ms": tt * 1e3,
                "cumtime_ms": ct * 1e3,
            }
        )
    by_tottime = sorted(rows, key=lambda r: r["tottime_ms"], reverse=True)[:top]
    by_cumtime = sorted(rows, key=lambda r: r["cumtime_ms"], reverse=True)[:top]
    for row in by_tottime:
        row["share_of_total"] = row["tottime_ms"] / (total * 1e3) if total else 0.0
    return {
        "clock": clock,
        "total_ms": total * 1e3,
        "by_tottime": by_tottime,
        "by_cumtime": by_cumtime,
    }


class ThreadProfiler:
    """Profiles the named thread (started after install) with a cProfile of its own."""

    def __init__(self, thread_name: str, wall: bool = False) -> None:
        self.thread_name = thread_name
        self.profile = cProfile.Profile() if wall else cpu_profile()
        self.clock = "wall" if wall else "cpu"
        self.started = False

    def _hook(self, frame: FrameType, event: str, arg: object) -> None:
        sys.setprofile(None)
        if threading.current_thread().name == self.thread_name and not self.started:
            self.started = True
            self.profile.enable()

    def install(self) -> None:
        threading.setprofile(self._hook)

    def uninstall(self) -> None:
        threading.setprofile(None)


def _client(lib: str, url: str, **options: Any) -> Any:
    return make_ours(url, **options) if lib == "ours" else make_posthog(url, **options)


def scenario_calls(lib: str, url: str, n: int) -> dict[str, Any]:
    """Profile n track()/capture() calls on the main thread, the worker sending meanwhile."""
    client = _client(lib, url, max_queue_size=max(n, 10_000))
    send = track_fn(client, lib)
    for _ in range(100):
        send()
    flush(client, lib, timeout=30)
    prof = cpu_profile()
    prof.enable()
    for _ in range(n):
        send()
    prof.disable()
    flush(client, lib, timeout=60)
    return {
        "scenario": "track" if lib == "ours" else "capture",
        "n": n,
        "main": top_functions(prof),
    }


def scenario_worker(url: str, seconds: float, rate: float = 2000.0) -> dict[str, Any]:
    """Profile the worker thread while a producer tracks a steady `rate` events/s."""
    worker = ThreadProfiler(WORKER_THREAD)
    worker.install()
    client = make_ours(url)
    send = track_fn(client, "ours")
    t0 = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - t0) < seconds:
        due = int(elapsed * rate) - sent
        for _ in range(due):
            send()
        sent += max(due, 0)
        time.sleep(0.002)
    client.shutdown(timeout=30)
    worker.uninstall()
    return {
        "scenario": "worker",
        "events": sent,
        "seconds": seconds,
        "worker": top_functions(worker.profile),
    }


def scenario_gil_segments(url: str, seconds: float, rate: float = 2000.0) -> dict[str, Any]:
    """Run the GIL test's loaded phase; after each handler run slower than its median plus
    0.4 ms, record the innermost frames of the worker thread at that moment. The worker had the
    GIL while the handler waited; where it stands now is the call at which it gave it back, so
    its stack names the piece of work that delayed the handler."""
    import traceback

    from benchmarks import gil

    client = make_ours(url)
    send = track_fn(client, "ours")
    running = threading.Event()
    running.set()

    def producer() -> None:
        t0 = time.perf_counter()
        sent = 0
        while running.is_set():
            due = int((time.perf_counter() - t0) * rate) - sent
            for _ in range(due):
                send()
            sent += max(due, 0)
            time.sleep(gil.TICK)

    k = gil.calibrate(200e-6)
    alone = []
    for _ in range(500):
        t0 = time.perf_counter()
        gil.handler(k)
        alone.append(time.perf_counter() - t0)
    threshold = sorted(alone)[len(alone) // 2] + 0.0004
    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    time.sleep(0.3)
    workers = [t for t in threading.enumerate() if t.name == WORKER_THREAD]
    ident = workers[0].ident if workers else None
    where: dict[str, int] = {}
    delays: dict[str, float] = {}
    runs = slow = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        gil.handler(k)
        took = time.perf_counter() - t0
        runs += 1
        if took <= threshold:
            continue
        slow += 1
        frame = sys._current_frames().get(ident) if ident is not None else None
        if frame is None:
            key = "(worker not found)"
        else:
            stack = traceback.extract_stack(frame)[-4:]
            key = " ← ".join(f"{_short(f.filename)}:{f.lineno}({f.name})" for f in reversed(stack))
        where[key] = where.get(key, 0) + 1
        delays[key] = delays.get(key, 0.0) + took
    running.clear()
    thread.join(5)
    client.shutdown(timeout=30)
    rows = [
        {
            "worker_at": key,
            "count": count,
            "share_of_slow": count / slow if slow else 0.0,
            "mean_handler_ms": delays[key] / count * 1e3,
        }
        for key, count in sorted(where.items(), key=lambda kv: kv[1], reverse=True)[:TOP]
    ]
    return {
        "scenario": "gil_segments",
        "seconds": seconds,
        "handler_runs": runs,
        "slow_runs": slow,
        "threshold_ms": threshold * 1e3,
        "segments": rows,
    }


def scenario_throughput(url: str, n: int, wall: bool) -> dict[str, Any]:
    """Profile n events end to end: the calling thread's CPU and the worker thread's CPU; or
    (`wall`) only the worker thread's wall-clock time, waits for the GIL and for the server
    included (the calling thread then runs unprofiled, at its real speed)."""
    worker = ThreadProfiler(WORKER_THREAD, wall=wall)
    worker.install()
    client = make_ours(url, max_queue_size=n)
    send = track_fn(client, "ours")
    main = cpu_profile()
    if not wall:
        main.enable()
    for _ in range(n):
        send()
    if not wall:
        main.disable()
    client.flush(timeout=300)
    client.shutdown(timeout=30)
    worker.uninstall()
    result: dict[str, Any] = {
        "scenario": "throughput_wall" if wall else "throughput",
        "n": n,
        "worker": top_functions(worker.profile, clock=worker.clock),
    }
    if not wall:
        result["main"] = top_functions(main)
    return result


def scenario_memory(n: int) -> dict[str, Any]:
    """Where the memory held by n queued, unsent events was allocated (server down)."""
    client = make_ours(
        closed_port_url(), batch_size=n + 10, flush_interval=3600.0, max_queue_size=n + 10
    )
    track = client.track
    track(EVENT, distinct_id=DISTINCT_ID, properties=dict(PROPERTIES))
    time.sleep(0.2)
    gc.collect()
    tracemalloc.start(8)
    before = tracemalloc.take_snapshot()
    for _ in range(n):
        track(EVENT, distinct_id=DISTINCT_ID, properties=dict(PROPERTIES))
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    rows = []
    for stat in after.compare_to(before, "lineno")[:TOP]:
        frame = stat.traceback[0]
        rows.append(
            {
                "where": f"{_short(frame.filename)}:{frame.lineno}",
                "bytes_per_event": stat.size_diff / n,
                "blocks_per_event": stat.count_diff / n,
            }
        )
    return {"scenario": "memory", "n": n, "sites": rows}


def run(scenario: str, url: str, quick: bool) -> dict[str, Any]:
    """Run one scenario in a child process (the parent stays free of profilers)."""
    return run_child(
        "benchmarks.profiling",
        ["--scenario", scenario, "--url", url] + (["--quick"] if quick else []),
        timeout=600,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=SCENARIOS, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    quiet_posthog_logging()
    n = 2_000 if args.quick else 20_000
    if args.scenario == "track":
        result = scenario_calls("ours", args.url, n)
    elif args.scenario == "capture":
        result = scenario_calls("posthog", args.url, n // 4)
    elif args.scenario == "worker":
        result = scenario_worker(args.url, 1.0 if args.quick else 4.0)
    elif args.scenario == "gil_segments":
        result = scenario_gil_segments(args.url, 1.0 if args.quick else 8.0)
    elif args.scenario in ("throughput", "throughput_wall"):
        result = scenario_throughput(args.url, n * 2, wall=args.scenario == "throughput_wall")
    else:
        result = scenario_memory(n // 4)
    emit(result)
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
