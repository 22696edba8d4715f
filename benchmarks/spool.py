"""The durable spool: what it costs when PostHog is up, and what it saves when PostHog is down.

Each run is a child process that tracks at a steady RATE (2,000 events per second by default)
into the capture server (a process of its own, which counts unique and duplicate uuids), with
``spool_path`` set (``spool``) or not (``memory``); the variants alternate within one run.

- **steady**: the server answers throughout. Measured: ``track()``'s cost per call on the
  request thread (every call timed with ``perf_counter_ns``), and the worker thread's own CPU per
  delivered event (``pthread_getcpuclockid`` of the worker: neither the caller nor the server).
- **outage**: ``before`` seconds of traffic, ``outage`` seconds in which the server answers 503 to
  every request, ``after`` seconds of traffic again; the child then waits until everything it
  holds, in memory and in the spool, reached PostHog (or a timeout). Measured: events lost
  (tracked and never received), duplicates, and the resident set size sampled every 0.5 s.

``python -m benchmarks.spool`` runs the long version (a 60 s outage) and writes
``results/spool-<stamp>.json`` and ``.md``; ``benchmarks.run`` runs the short one as its
``spool`` section, with goal rows in the main report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from array import array
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks._common import (
    DISTINCT_ID,
    EVENT,
    PROPERTIES,
    ROOT,
    emit,
    machine_info,
    make_ours,
    median,
    quiet_posthog_logging,
    server_process,
)

VARIANTS = ("memory", "spool")
RATE = 2000
CHUNK = 20  # events tracked back to back between two pacing sleeps


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _worker_cpu(client: Any) -> float:
    thread = client._worker._thread
    if thread is None or thread.ident is None:
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except OSError:  # the thread ended
        return 0.0


def child(variant: str, url: str, rate: int, seconds: float, drain_timeout: float) -> None:
    """Track at ``rate`` for ``seconds`` (the parent makes the outage), then wait for delivery."""
    quiet_posthog_logging()
    spool_dir = tempfile.mkdtemp(prefix="aq-spool-bench-")
    spool_path = os.path.join(spool_dir, "spool.db") if variant == "spool" else None
    client = make_ours(url, spool_path=spool_path, flush_interval=0.5)
    track = client.track
    total = int(rate * seconds)
    costs = array("q")
    rss: list[tuple[float, float]] = []
    stop_sampling = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not stop_sampling.is_set():
            rss.append((time.monotonic() - started, _rss_mb()))
            stop_sampling.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    print("STARTED", flush=True)
    accepted = 0
    clock = time.perf_counter_ns
    for i in range(total):
        if i % CHUNK == 0:
            due = started + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        t0 = clock()
        accepted += track(EVENT, distinct_id=DISTINCT_ID, properties=PROPERTIES)
        costs.append(clock() - t0)
    tracked_s = time.monotonic() - started
    cpu_tracking = _worker_cpu(client)
    deadline = time.monotonic() + drain_timeout
    client.flush(timeout=drain_timeout)
    while time.monotonic() < deadline:  # the spool replays after flush() counted it as kept
        m = client.metrics()
        if m.queue_size == 0 and (m.spool is None or m.spool["rows"] == 0):
            break
        time.sleep(0.2)
    drained_s = time.monotonic() - started
    cpu = _worker_cpu(client)
    stop_sampling.set()
    sampler.join()
    m = client.metrics()
    client.shutdown(5)
    ordered = sorted(costs)
    emit(
        {
            "variant": variant,
            "tracked": total,
            "accepted": accepted,
            "refused": m.refused,
            "delivered": m.delivered,
            "failed": m.failed,
            "failed_by_reason": m.failed_by_reason,
            "spooled": m.spooled,
            "replayed": m.replayed,
            "track_median_us": ordered[len(ordered) // 2] / 1000,
            "track_p99_us": ordered[int(len(ordered) * 0.99)] / 1000,
            "worker_cpu_s": cpu,
            "worker_cpu_tracking_s": cpu_tracking,
            "tracked_s": tracked_s,
            "drained_s": drained_s,
            "rss": rss,
        }
    )


def _one(variant: str, rate: int, plan: dict[str, float], log: Any) -> dict[str, Any]:
    """One child run with the outage the plan says (none when ``outage`` is 0)."""
    import subprocess

    from benchmarks._common import PYTHON, child_env

    seconds = plan["before"] + plan["outage"] + plan["after"]
    with server_process() as server:
        proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "benchmarks.spool",
                "--child",
                variant,
                "--url",
                server.url,
                "--rate",
                str(rate),
                "--seconds",
                str(seconds),
                "--drain-timeout",
                str(plan["drain_timeout"]),
            ],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "STARTED":
            raise RuntimeError(f"spool child did not start: {proc.communicate()[1][-3000:]}")
        started = time.monotonic()
        if plan["outage"]:
            time.sleep(plan["before"])
            server.command("fail", 503)
            time.sleep(max(0.0, started + plan["before"] + plan["outage"] - time.monotonic()))
            server.command("clear")
        out, err = proc.communicate(timeout=seconds + plan["drain_timeout"] + 120)
        stats = server.command("stats")
    result: dict[str, Any] | None = None
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            break
    if result is None:
        raise RuntimeError(f"spool child exited {proc.returncode}:\n{out[-2000:]}\n{err[-3000:]}")
    result["received_unique"] = stats["unique"]
    result["duplicates"] = stats["duplicates"]
    result["lost"] = result["tracked"] - stats["unique"]
    rss = [mb for t, mb in result["rss"] if plan["before"] <= t <= plan["before"] + plan["outage"]]
    result["rss_outage_start_mb"] = rss[0] if rss else None
    result["rss_outage_end_mb"] = rss[-1] if rss else None
    result["rss_peak_mb"] = max(mb for _, mb in result["rss"]) if result["rss"] else None
    log(
        f"  {variant:6s} outage {plan['outage']:4.0f} s: tracked {result['tracked']}, "
        f"received {stats['unique']} (lost {result['lost']}, dup {stats['duplicates']}), "
        f"track median {result['track_median_us']:.2f} us, worker CPU "
        f"{result['worker_cpu_s'] * 1e6 / max(1, result['delivered']):.1f} us/event, "
        f"RSS peak {result['rss_peak_mb']:.0f} MB"
    )
    return result


def run(
    log: Any,
    *,
    steady_s: float = 10.0,
    rounds: int = 2,
    outage: float = 10.0,
    before: float = 3.0,
    after: float = 3.0,
    rate: int = RATE,
    drain_timeout: float = 120.0,
) -> dict[str, Any]:
    """Steady rounds (variants alternating), then one outage run per variant."""
    steady_plan = {"before": steady_s, "outage": 0.0, "after": 0.0, "drain_timeout": 30.0}
    steady: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            steady[variant].append(_one(variant, rate, steady_plan, log))
    outage_plan = {
        "before": before,
        "outage": outage,
        "after": after,
        "drain_timeout": drain_timeout,
    }
    outages = {v: _one(v, rate, outage_plan, log) for v in VARIANTS}
    pairs = list(zip(steady["memory"], steady["spool"], strict=True))
    summary: dict[str, Any] = {
        "rate": rate,
        "steady_s": steady_s,
        "outage_s": outage,
        "rounds": rounds,
        # Each round runs both variants back to back: differences are taken per round first.
        "track_diff_us": median(
            [sp["track_median_us"] - mem["track_median_us"] for mem, sp in pairs]
        ),
        "worker_cpu_diff_us": median(
            [_cpu_per_event(sp) - _cpu_per_event(mem) for mem, sp in pairs]
        ),
    }
    for variant in VARIANTS:
        runs = steady[variant]
        summary[variant] = {
            "track_median_us": median([x["track_median_us"] for x in runs]),
            "track_p99_us": median([x["track_p99_us"] for x in runs]),
            "worker_cpu_us_per_event": median([_cpu_per_event(x) for x in runs]),
            "steady_lost": sum(x["lost"] for x in runs),
            "outage_lost": outages[variant]["lost"],
            "outage_tracked": outages[variant]["tracked"],
            "outage_duplicates": outages[variant]["duplicates"],
            "outage_refused": outages[variant]["refused"],
            "outage_failed_by_reason": outages[variant]["failed_by_reason"],
            "outage_rss_start_mb": outages[variant]["rss_outage_start_mb"],
            "outage_rss_end_mb": outages[variant]["rss_outage_end_mb"],
            "outage_rss_peak_mb": outages[variant]["rss_peak_mb"],
            "outage_drained_s": outages[variant]["drained_s"],
        }
    return {"summary": summary, "steady": steady, "outage": outages}


def _cpu_per_event(run: dict[str, Any]) -> float:
    return float(run["worker_cpu_s"]) * 1e6 / max(1, int(run["delivered"]))


def goals(section: dict[str, Any], make_goal: Any) -> list[dict[str, Any]]:
    """The spool's goal rows for the report (``make_goal`` is ``report._goal``)."""
    s = section["summary"]
    mem, sp = s["memory"], s["spool"]
    track_diff = s["track_diff_us"]
    track_allowed = max(0.5, 0.1 * mem["track_median_us"])
    cpu_diff = s["worker_cpu_diff_us"]
    growth = (sp["outage_rss_end_mb"] or 0.0) - (sp["outage_rss_start_mb"] or 0.0)
    return [
        make_goal(
            "spool_track",
            "spool",
            "track() unchanged with a spool (median at most 10 % or 0.5 µs above, same run)",
            track_diff,
            track_diff <= track_allowed,
            f"{track_diff:+.2f} µs per round ({sp['track_median_us']:.2f} µs with, "
            f"{mem['track_median_us']:.2f} µs without)",
            (),
        ),
        make_goal(
            "spool_worker_cpu",
            "spool",
            "worker CPU per event with the spool ≤ 20 µs above without",
            cpu_diff,
            cpu_diff <= 20,
            f"{cpu_diff:+.1f} µs per round ({sp['worker_cpu_us_per_event']:.1f} vs "
            f"{mem['worker_cpu_us_per_event']:.1f} µs per event)",
            (),
        ),
        make_goal(
            "spool_zero_loss",
            "spool",
            f"{s['outage_s']:.0f} s outage at {s['rate']} ev/s with a spool: zero loss",
            float(sp["outage_lost"]),
            sp["outage_lost"] == 0 and sp["outage_duplicates"] == 0,
            f"lost {sp['outage_lost']} of {sp['outage_tracked']} (without: lost "
            f"{mem['outage_lost']})",
            (),
        ),
        make_goal(
            "spool_memory_flat",
            "spool",
            "memory flat during the outage with a spool (RSS growth ≤ 10 MB)",
            growth,
            growth <= 10,
            f"{growth:+.1f} MB ({sp['outage_rss_start_mb']:.0f} → "
            f"{sp['outage_rss_end_mb']:.0f} MB)",
            (),
        ),
    ]


def markdown(section: dict[str, Any]) -> list[str]:
    """The spool section of a report."""
    s = section["summary"]
    out = [
        "## Spool: the durable spool's cost and what it saves",
        "",
        f"Children tracking at {s['rate']} ev/s; {s['rounds']} rounds of steady runs of "
        f"{s['steady_s']:.0f} s with the server up (variants back to back, order alternating; "
        "differences are taken per round, then their median), then one run per variant with a "
        f"{s['outage_s']:.0f} s outage (every request answered 503).",
        "",
        "| | track() median | track() p99 | worker CPU / event | outage: lost | "
        "duplicates | refused | RSS start → end of outage (peak) | drained after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant in VARIANTS:
        v = s[variant]
        out.append(
            f"| {variant} | {v['track_median_us']:.2f} µs | {v['track_p99_us']:.2f} µs | "
            f"{v['worker_cpu_us_per_event']:.1f} µs | {v['outage_lost']} of "
            f"{v['outage_tracked']} | {v['outage_duplicates']} | {v['outage_refused']} | "
            f"{v['outage_rss_start_mb']:.0f} → {v['outage_rss_end_mb']:.0f} MB "
            f"({v['outage_rss_peak_mb']:.0f}) | {v['outage_drained_s']:.0f} s |"
        )
    out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.spool", description=__doc__)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--drain-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, default=RATE, help="events per second")
    parser.add_argument("--outage", type=float, default=60.0, help="outage seconds")
    parser.add_argument("--steady", type=float, default=20.0, help="steady run seconds")
    parser.add_argument("--rounds", type=int, default=4, help="steady rounds per variant")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results", help="results directory"
    )
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.url, args.rate, args.seconds, args.drain_timeout)
        return 0
    from benchmarks.report import _goal

    now = datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    section = run(
        print, steady_s=args.steady, rounds=args.rounds, outage=args.outage, rate=args.rate
    )
    rows = goals(section, _goal)
    command = "python -m benchmarks.spool " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# Spool benchmark, {now.strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"Machine: {machine_info()['nproc']} cores, {machine_info()['cpu_model']}. "
        f"Run: `{command.strip()}`.",
        "",
        "| goal | measured | verdict |",
        "| --- | --- | --- |",
        *(f"| {g['goal']} | {g['shown']} | {'met' if g['met'] else 'MISSED'} |" for g in rows),
        "",
        *markdown(section),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"spool-{stamp}.json").write_text(
        json.dumps({"section": section, "goals": rows}, indent=1) + "\n"
    )
    (args.out / f"spool-{stamp}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
