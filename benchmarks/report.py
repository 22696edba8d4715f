"""The report of a run: the goals and their verdicts, the markdown, and the PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

CASE_LABELS = {
    "floor": "Queue.put_nowait (floor)",
    "ours": "AnalyticsQueue.track()",
    "ours_context": "track() in a context with 5 tags",
    "posthog": "posthog Posthog.capture()",
    "blocking_0ms": "blocking send, server 0 ms",
    "blocking_300ms": "blocking send, server 300 ms",
}
PLOTS = ("caller-cost", "throughput", "memory", "gil", "routes", "exit")
EXIT_SHUTDOWN_TIMEOUT = 5.0  # AnalyticsQueue's default exit budget


# --------------------------------------------------------------------------- goals


def _goal(
    gid: str,
    section: str,
    goal: str,
    measured: float | None,
    ok: bool | None,
    shown: str,
    profile: tuple[str, ...],
) -> dict[str, Any]:
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        ok = None
    return {
        "id": gid,
        "section": section,
        "goal": goal,
        "measured": measured,
        "shown": shown,
        "met": ok,
        "profile": profile,
    }


def evaluate_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    goals: list[dict[str, Any]] = []
    cc = results.get("caller_cost", {}).get("summary")
    if cc and "ours" in cc and "posthog" in cc:
        ours, ph = cc["ours"], cc["posthog"]
        speed = ph["median_us"] / ours["median_us"]
        if "floor" in cc:
            over_floor = ours["median_us"] / cc["floor"]["median_us"]
            goals.append(
                _goal(
                    "track_over_floor",
                    "caller cost",
                    "track() median ≤ 2.5× a bare Queue.put_nowait (flat 8-key dict)",
                    over_floor,
                    over_floor <= 2.5,
                    f"{over_floor:.2f}× ({ours['median_us']:.2f} µs vs "
                    f"{cc['floor']['median_us']:.2f} µs)",
                    ("track",),
                )
            )
        goals += [
            _goal(
                "track_p99",
                "caller cost",
                "track() p99 ≤ 15 µs while the worker sends",
                ours["p99_us"],
                ours["p99_us"] <= 15,
                f"{ours['p99_us']:.2f} µs",
                ("track",),
            ),
            _goal(
                "track_vs_posthog",
                "caller cost",
                "track() ≥ 10× faster than posthog capture() (median)",
                speed,
                speed >= 10,
                f"{speed:.1f}×",
                ("track",),
            ),
        ]
    if cc and "ours" in cc and "ours_context" in cc:
        ratio = cc["ours_context"]["median_us"] / cc["ours"]["median_us"]
        goals.append(
            _goal(
                "track_context",
                "caller cost",
                "track() in a context with 5 tags ≤ 2× track() without (median)",
                ratio,
                ratio <= 2,
                f"{ratio:.2f}×",
                ("track",),
            )
        )
    tp = results.get("throughput", {}).get("summary")
    if tp and "speed_ratio_stdlib" in tp:
        n = results["throughput"]["n"]
        why = ("throughput", "throughput_wall")
        goals += [
            _goal(
                "throughput_vs_posthog_stdlib",
                "throughput",
                "≥ 7× posthog-python's events/s without orjson",
                tp["speed_ratio_stdlib"],
                tp["speed_ratio_stdlib"] >= 7,
                f"{tp['speed_ratio_stdlib']:.1f}× ({tp['ours_stdlib']['events_per_s']:,.0f} "
                "events/s)",
                why,
            ),
            _goal(
                "throughput_vs_posthog",
                "throughput",
                "≥ 10× posthog-python's events/s with orjson",
                tp["speed_ratio"],
                tp["speed_ratio"] >= 10,
                f"{tp['speed_ratio']:.1f}× ({tp['ours']['events_per_s']:,.0f} events/s)",
                why,
            ),
            _goal(
                "throughput_vs_ceiling",
                "throughput",
                "≥ 60 % of the capture server's ceiling with orjson",
                tp["ceiling_share"],
                tp["ceiling_share"] >= 0.6,
                f"{tp['ceiling_share'] * 100:.0f} % (ceiling "
                f"{tp['ceiling']['events_per_s']:,.0f} events/s)",
                why,
            ),
            _goal(
                "cpu_vs_posthog_stdlib",
                "throughput",
                "CPU per delivered event ≤ 0.12× posthog-python's without orjson",
                tp["cpu_ratio_stdlib"],
                tp["cpu_ratio_stdlib"] <= 0.12,
                f"{tp['cpu_ratio_stdlib']:.3f}× ({tp['ours_stdlib']['cpu_us_per_event']:.1f} µs)",
                why,
            ),
            _goal(
                "cpu_vs_posthog",
                "throughput",
                "CPU per delivered event ≤ 0.06× posthog-python's with orjson",
                tp["cpu_ratio"],
                tp["cpu_ratio"] <= 0.06,
                f"{tp['cpu_ratio']:.3f}× ({tp['ours']['cpu_us_per_event']:.1f} µs)",
                why,
            ),
            _goal(
                "throughput_delivered",
                "throughput",
                f"all {n:,} events delivered, both backends",
                min(tp["ours"]["delivered"], tp["ours_stdlib"]["delivered"]),
                min(tp["ours"]["delivered"], tp["ours_stdlib"]["delivered"]) == n,
                f"{tp['ours']['delivered']:,} / {tp['ours_stdlib']['delivered']:,}",
                (),
            ),
        ]
    mem = results.get("memory", {}).get("summary")
    if mem:
        b = mem["ours"]["tracemalloc"]
        goals.append(
            _goal(
                "memory",
                "memory",
                "≤ 500 bytes per queued, unsent event",
                b,
                b <= 500,
                f"{b:,.0f} B",
                ("memory",),
            )
        )
    gil = results.get("gil", {}).get("summary")
    if gil:
        added = gil["ours"]["p99_added_ms"]
        goals.append(
            _goal(
                "gil_p99",
                "GIL",
                "ours adds ≤ 0.3 ms to a request thread's p99 (2,000 events/s)",
                added,
                added <= 0.3,
                f"+{added:.3f} ms (×{gil['ours']['p99_ratio']:.2f})",
                ("worker", "gil_segments"),
            )
        )
    routes = results.get("routes", {}).get("summary")
    if routes:
        p50, p99 = routes["async_over_off_p50"], routes["async_over_off_p99"]
        blocked = routes["blocking_added_p50_ms"]
        goals += [
            _goal(
                "route_async_p50",
                "routes",
                "async within 5 % of off at p50",
                p50,
                p50 <= 1.05,
                f"{(p50 - 1) * 100:+.1f} %",
                ("track",),
            ),
            _goal(
                "route_async_p99",
                "routes",
                "async within 5 % of off at p99",
                p99,
                p99 <= 1.05,
                f"{(p99 - 1) * 100:+.1f} %",
                ("worker", "gil_segments"),
            ),
            _goal(
                "route_blocking",
                "routes",
                "blocking ≥ 300 ms slower than off (p50)",
                blocked,
                blocked >= 300,
                f"+{blocked:.0f} ms",
                (),
            ),
        ]
    ex = results.get("exit", {}).get("summary")
    if ex and "ours_slow" in ex:
        n = results["exit"]["n"]
        got = ex["ours_slow"]["delivered_min"]
        goals.append(
            _goal(
                "exit_delivered",
                "exit",
                f"{n} events queued at exit, server 300 ms: all delivered",
                got,
                got >= n,
                f"{got}/{n} (worst round)",
                (),
            )
        )
        if "ours_down" in ex:
            budget = results["exit"].get("shutdown_timeout", EXIT_SHUTDOWN_TIMEOUT)
            t = ex["ours_down"]["exit_max_s"]
            goals.append(
                _goal(
                    "exit_down",
                    "exit",
                    f"server down: exit within shutdown_timeout + 0.5 s ({budget + 0.5:.1f} s)",
                    t,
                    t <= budget + 0.5,
                    f"{t:.2f} s (worst round)",
                    (),
                )
            )
    ic = results.get("import_cost", {}).get("summary")
    if ic:
        goals += [
            _goal(
                "import_added",
                "import cost",
                "import analytics_queue adds ≤ 30 ms to a bare interpreter",
                ic["import_added_ms"],
                ic["import_added_ms"] <= 30,
                f"{ic['import_added_ms']:+.1f} ms",
                (),
            ),
            _goal(
                "import_heavy_modules",
                "import cost",
                "import analytics_queue loads neither posthog nor requests",
                float(len(set(ic["loaded_heavy_modules"]) & {"posthog", "requests"})),
                not set(ic["loaded_heavy_modules"]) & {"posthog", "requests"},
                ", ".join(ic["loaded_heavy_modules"]) or "neither",
                (),
            ),
            _goal(
                "plugin_added",
                "import cost",
                "the pytest plugin adds ≤ 20 ms to a run that does not use its fixture",
                ic["plugin_added_ms"],
                ic["plugin_added_ms"] <= 20,
                f"{ic['plugin_added_ms']:+.1f} ms",
                (),
            ),
        ]
    if results.get("spool", {}).get("summary"):
        from benchmarks import spool

        goals += spool.goals(results["spool"], _goal)
    return goals


# --------------------------------------------------------------------------- markdown


def _fmt_us(us: float) -> str:
    if us >= 100_000:
        return f"{us / 1000:,.0f} ms"
    if us >= 1000:
        return f"{us / 1000:,.2f} ms"
    return f"{us:,.2f} µs"


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def _profile_lines(name: str, prof: dict[str, Any]) -> list[str]:
    lines = [f"### Profile `{name}`", ""]
    if "error" in prof:
        return lines + [f"Profiling failed: `{prof['error']}`", ""]
    if name == "gil_segments":
        lines += [
            f"{prof['slow_runs']:,} of {prof['handler_runs']:,} handler runs took longer than "
            f"their median + 0.4 ms ({prof['threshold_ms']:.2f} ms). Where the worker thread stood "
            "right after each (the call at which it gave the GIL back, ending the work that "
            "delayed the handler), innermost frame first:",
            "",
            "| worker at | slow runs | share | mean handler time |",
            "| --- | ---: | ---: | ---: |",
        ]
        for row in prof.get("segments", []):
            lines.append(
                f"| `{row['worker_at']}` | {row['count']:,} | "
                f"{row['share_of_slow'] * 100:.0f} % | {row['mean_handler_ms']:.2f} ms |"
            )
        return lines + [""]
    if name == "memory":
        lines += ["| allocated at | bytes per event | blocks per event |", "| --- | ---: | ---: |"]
        for row in prof.get("sites", []):
            lines.append(
                f"| `{row['where']}` | {row['bytes_per_event']:,.0f} | "
                f"{row['blocks_per_event']:.2f} |"
            )
        return lines + [""]
    for part in ("main", "worker"):
        if part not in prof:
            continue
        data = prof[part]
        thread = "calling thread" if part == "main" else "worker thread"
        clock = "wall-clock time" if data.get("clock") == "wall" else "CPU time"
        lines += [
            f"{thread.capitalize()}: {data['total_ms']:,.0f} ms of its {clock} profiled "
            "(cProfile inflates small calls); top functions by own time:",
            "",
            "| function | calls | own time | share | cumulative |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for row in data["by_tottime"][:8]:
            lines.append(
                f"| `{row['function']}` | {row['ncalls']:,} | {row['tottime_ms']:,.1f} ms | "
                f"{row.get('share_of_total', 0) * 100:.0f} % | {row['cumtime_ms']:,.1f} ms |"
            )
        lines += [
            "",
            "Top functions by cumulative time (the call chains):",
            "",
            "| function | calls | cumulative | share |",
            "| --- | ---: | ---: | ---: |",
        ]
        for row in data["by_cumtime"][:10]:
            share = row["cumtime_ms"] / data["total_ms"] if data["total_ms"] else 0.0
            lines.append(
                f"| `{row['function']}` | {row['ncalls']:,} | {row['cumtime_ms']:,.1f} ms | "
                f"{share * 100:.0f} % |"
            )
        lines.append("")
    return lines


def _harness(name: str) -> bool:
    return name.startswith("benchmarks/") or "_lsprof" in name or "threading.py" in name


def hottest(prof: dict[str, Any], part: str) -> dict[str, Any] | None:
    """The function with the most own CPU time, leaving out the harness and the profiler."""
    for row in prof.get(part, {}).get("by_tottime", []):
        if not _harness(row["function"]):
            return dict(row)
    return None


def biggest_subcall(prof: dict[str, Any], part: str, limit: float = 0.6) -> dict[str, Any] | None:
    """The costliest call below the thread's entry frames: the largest cumulative CPU time under
    `limit` of the thread's total (entry frames such as the worker loop hold nearly all of it)."""
    data = prof.get(part, {})
    total = data.get("total_ms", 0.0)
    for row in data.get("by_cumtime", []):
        if _harness(row["function"]) or not total:
            continue
        if row["cumtime_ms"] < limit * total:
            return dict(row, share_of_total=row["cumtime_ms"] / total)
    return None


def render_markdown(results: dict[str, Any], goals: list[dict[str, Any]]) -> str:
    meta = results["meta"]
    m = meta["machine"]
    out: list[str] = [
        f"# Benchmark report, {meta['date']}",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}; Python {m['python']}; "
        f"analytics_queue {m['analytics_queue']}, posthog-python {m['posthog']}, "
        f"gunicorn {m['gunicorn']}. Run: `{meta['command']}`"
        f"{' (quick: tiny sizes, figures not meaningful)' if meta['quick'] else ''}, "
        f"{meta['duration_s'] / 60:.1f} min.",
        "",
        f"Load average (1 min) at start / end: {meta['loadavg_start'][0]:.2f} / "
        f"{meta.get('loadavg_end', [math.nan])[0]:.2f}.",
        "",
        "The machine is shared and its CPU speed jumps: every figure below is a median over "
        "rounds that alternate the libraries within this one run, and each ratio is computed "
        "per round (both sides back to back) before taking the median.",
        "",
        "## Goals",
        "",
        "| section | goal | measured | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for g in goals:
        out.append(f"| {g['section']} | {g['goal']} | {g['shown']} | {_verdict(g['met'])} |")
    missed = [g for g in goals if g["met"] is False]
    if missed:
        out += ["", "Missed goals and the cause the profile names:", ""]
        for g in missed:
            cause = g.get("cause") or "no profile for this goal"
            out.append(f"- **{g['goal']}** ({g['shown']}): {cause}")
    for name, err in results.get("errors", {}).items():
        out += ["", f"**{name} failed**: `{err.strip().splitlines()[-1] if err else ''}`"]
    out.append("")

    cc = results.get("caller_cost")
    if cc and cc.get("summary"):
        s = cc["summary"]
        out += [
            "## 1. Caller cost: what one event costs the request thread",
            "",
            "pytest-benchmark, one group, each round one call. Same event and properties "
            "everywhere; the queued clients' workers send to the capture server (another process) "
            "meanwhile.",
            "",
            "| case | rounds | median | p99 | median vs ours |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for case in CASE_LABELS:
            if case not in s:
                continue
            row = s[case]
            rel = row["median_us"] / s["ours"]["median_us"] if "ours" in s else math.nan
            out.append(
                f"| {CASE_LABELS[case]} | {row['rounds']:,} | {_fmt_us(row['median_us'])} | "
                f"{_fmt_us(row['p99_us'])} | ×{rel:,.1f} |"
            )
        out += ["", "![caller cost](latest-caller-cost.png)", ""]

    tp = results.get("throughput")
    if tp and tp.get("summary"):
        s = tp["summary"]
        out += [
            f"## 2. Throughput and CPU: {tp['n']:,} events end to end",
            "",
            f"{tp['rounds']} rounds per library, alternating, each in a fresh process; the "
            "capture server runs in another process (its CPU is not counted). CPU is the sending "
            "process's (caller and worker threads). Both clients keep their default batch size and "
            "compression; the queue bound is raised to N for both. `ours` serializes with orjson, "
            "`ours (stdlib json)` with the standard library (`ANALYTICS_QUEUE_JSON=stdlib`). "
            "The ceiling is the capture server's own ingest rate: pre-encoded, pre-compressed "
            "bodies posted one after the other on one urllib3 connection.",
            "",
            "| library | events/s | CPU per delivered event | HTTP requests | delivered | "
            "caller thread busy | wall |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        names = {
            "ceiling": "ceiling: pre-encoded, server + HTTP only",
            "ours_stdlib": "ours (stdlib json)",
        }
        for lib in ("ceiling", "ours", "ours_stdlib", "posthog"):
            if lib not in s:
                continue
            r = s[lib]
            name = names.get(lib, lib)
            out.append(
                f"| {name} | {r['events_per_s']:,.0f} | {r['cpu_us_per_event']:.1f} µs | "
                f"{r['requests']:,.0f} | {r['delivered']:,} | {r['track_s']:.2f} s | "
                f"{r['wall_s']:.2f} s |"
            )
        out += [
            "",
            f"Ours with orjson: {s['speed_ratio']:.1f}× posthog-python's events/s "
            f"({s.get('ceiling_share', math.nan) * 100:.0f} % of the ceiling), at "
            f"{s['cpu_ratio']:.3f}× its CPU per event. With the standard library's json: "
            f"{s.get('speed_ratio_stdlib', math.nan):.1f}×, at "
            f"{s.get('cpu_ratio_stdlib', math.nan):.3f}× its CPU per event.",
            "",
            "![throughput](latest-throughput.png)",
            "",
        ]

    mem = results.get("memory")
    if mem and mem.get("summary"):
        s = mem["summary"]
        out += [
            f"## 3. Memory per queued, unsent event ({mem['n']:,} events, server down)",
            "",
            "| library | tracemalloc (Python objects) | RSS growth | events held |",
            "| --- | ---: | ---: | ---: |",
        ]
        for lib in ("floor", "ours", "posthog"):
            r = s[lib]
            out.append(f"| {lib} | {r['tracemalloc']:,.0f} B | {r['rss']:,.0f} B | {r['held']:,} |")
        out += ["", "![memory](latest-memory.png)", ""]

    gil = results.get("gil")
    if gil and gil.get("summary"):
        s = gil["summary"]
        out += [
            "## 4. Tail latency of a request thread (the GIL)",
            "",
            f"A CPU-bound handler of about 200 µs runs back to back on the main thread, alone and "
            f"while a producer thread tracks 2,000 events/s that the worker drains into the "
            f"capture server (another process). Phases alternate: {gil['blocks']} (alone, loaded) "
            f"pairs of {gil['phase_s']:g} s each per process, {gil['rounds']} processes per "
            f"library; figures are medians over the {s['ours']['blocks']:.0f} pairs, each pair's "
            "p50/p99 taken from its own samples. The floor is the producer doing a bare "
            "`put_nowait`, no sender: what the producer thread alone costs.",
            "",
            "| library | p50 alone → loaded | p99 alone → loaded | p50 added | p99 added | "
            "p99 ratio | events/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for lib in ("floor", "ours", "posthog"):
            r = s[lib]
            out.append(
                f"| {lib} | {r['alone_p50_ms']:.3f} → {r['loaded_p50_ms']:.3f} ms | "
                f"{r['alone_p99_ms']:.3f} → {r['loaded_p99_ms']:.3f} ms | "
                f"{r['p50_added_ms']:+.3f} ms | {r['p99_added_ms']:+.3f} ms | "
                f"×{r['p99_ratio']:.2f} | {r['events_per_s']:,.0f} |"
            )
        out += ["", "![gil](latest-gil.png)", ""]

    routes = results.get("routes")
    if routes and routes.get("summary"):
        s = routes["summary"]
        out += [
            "## 5. Route latency under gunicorn",
            "",
            f"`POST /stories` of the demo under gunicorn ({routes['gunicorn']['workers']} "
            f"{routes['gunicorn']['worker_class']} workers × {routes['gunicorn']['threads']} "
            f"threads), story generation {routes['story_seconds'] * 1000:.0f} ms, capture server "
            f"answering in {routes['server_delay_s'] * 1000:.0f} ms; load from "
            f"`{routes['tool']}` in a separate process at {routes['concurrency']} connections, "
            f"{routes['rounds']} rounds × {routes['duration_s']:.0f} s per mode.",
            "",
            "| mode | p50 | p95 | p99 | requests/s | errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for mode in ("off", "async", "blocking"):
            r = s[mode]
            out.append(
                f"| {mode} | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms | {r['p99_ms']:.1f} ms | "
                f"{r['rps']:.1f} | {r['errors']} |"
            )
        out += [
            "",
            f"async vs off: p50 {(s['async_over_off_p50'] - 1) * 100:+.1f} %, p95 "
            f"{(s['async_over_off_p95'] - 1) * 100:+.1f} %, p99 "
            f"{(s['async_over_off_p99'] - 1) * 100:+.1f} %. blocking vs off: p50 "
            f"+{s['blocking_added_p50_ms']:.0f} ms, p99 +{s['blocking_added_p99_ms']:.0f} ms. "
            f"Events at the capture server: {routes['server_events']:,} "
            f"(tracked by async and blocking requests: {routes.get('expected_events', 0):,}).",
            "",
            "![routes](latest-routes.png)",
            "",
        ]

    ex = results.get("exit")
    if ex and ex.get("summary"):
        s = ex["summary"]
        out += [
            f"## 6. Exit: {ex['n']} events queued when the process exits",
            "",
            f"Each run a fresh process that tracks {ex['n']} events and returns from main; "
            f"{ex['rounds']} rounds. `none` is the same process without events (the interpreter's "
            "own exit).",
            "",
            "| library | server 300 ms: delivered (worst) | exit time | server down: exit time |",
            "| --- | ---: | ---: | ---: |",
        ]
        for lib in ("none", "ours", "posthog"):
            slow = s.get(f"{lib}_slow")
            down = s.get(f"{lib}_down")
            if not slow:
                continue
            n = 0 if lib == "none" else ex["n"]
            down_s = f"{down['exit_s']:.2f} s (max {down['exit_max_s']:.2f})" if down else "—"
            out.append(
                f"| {lib} | {slow['delivered']:.0f}/{n} ({slow['delivered_min']}) | "
                f"{slow['exit_s']:.2f} s | {down_s} |"
            )
        out += ["", "![exit](latest-exit.png)", ""]

    if results.get("import_cost", {}).get("summary"):
        from benchmarks.import_cost import render as render_import_cost

        out += ["## 7. Import cost: `import analytics_queue` and the pytest plugin", ""]
        out += render_import_cost(results["import_cost"])
        out.append("")
    if results.get("spool", {}).get("summary"):
        from benchmarks import spool

        out += spool.markdown(results["spool"])

    profiles = results.get("profiles", {})
    if profiles:
        out += ["## Profiles", ""]
        for name, prof in profiles.items():
            out += _profile_lines(name, prof)
    out += [
        "## Reproduce",
        "",
        "```bash",
        "make bench                      # everything, about 6 min on 2 cores",
        "make bench BENCH_ARGS=--quick   # tiny sizes: checks that it all runs",
        "make bench BENCH_ARGS='--only caller_cost,gil --profile'",
        "python -m benchmarks.run --from-json benchmarks/results/<stamp>.json  # re-render",
        "```",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- plots


def plot_all(results: dict[str, Any], out_dir: Path, prefix: str = "latest") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 9})
    written: list[Path] = []
    colors = {
        "floor": "#636363",
        "ours": "#1b7837",
        "ours_context": "#5aae61",
        "posthog": "#f1a340",
        "blocking_0ms": "#b2182b",
        "blocking_300ms": "#67001f",
        "none": "#bdbdbd",
        "ceiling": "#bdbdbd",
        "ours_stdlib": "#7fbc41",
    }
    date = results["meta"]["date"]

    def save(fig: Any, name: str) -> None:
        path = out_dir / f"{prefix}-{name}.png"
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        written.append(path)

    cc = results.get("caller_cost", {}).get("summary")
    if cc:
        cases = [c for c in CASE_LABELS if c in cc]
        fig, ax = plt.subplots(figsize=(7.5, 3.2))
        y = range(len(cases))
        med = [cc[c]["median_us"] for c in cases]
        p99 = [cc[c]["p99_us"] for c in cases]
        ax.barh([i + 0.2 for i in y], med, 0.4, color=[colors[c] for c in cases], label="median")
        ax.barh([i - 0.2 for i in y], p99, 0.4, color=[colors[c] for c in cases], alpha=0.45)
        for i, (a, b) in enumerate(zip(med, p99, strict=True)):
            ax.text(a * 1.1, i + 0.2, f"median {_fmt_us(a)}", va="center", fontsize=7)
            ax.text(b * 1.1, i - 0.2, f"p99 {_fmt_us(b)}", va="center", fontsize=7)
        ax.set_yticks(list(y), [CASE_LABELS[c] for c in cases])
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(min(med) / 2, max(p99) * 30)
        ax.set_xlabel("caller time per event, µs (log scale)")
        ax.set_title(f"Caller cost per event ({date})")
        save(fig, "caller-cost")

    tp = results.get("throughput", {}).get("summary")
    if tp:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(7.5, 3))
        libs = [lib for lib in ("ceiling", "ours", "ours_stdlib", "posthog") if lib in tp]
        eps = [tp[x]["events_per_s"] for x in libs]
        cpu = [tp[x]["cpu_us_per_event"] for x in libs]
        a1.bar(libs, eps, color=[colors[x] for x in libs])
        a1.set_title("events/s end to end (higher is better)")
        a1.set_ylim(0, max(eps) * 1.15)
        for i, v in enumerate(eps):
            a1.text(i, v, f"{v:,.0f}", ha="center", va="bottom")
        a2.bar(libs, cpu, color=[colors[x] for x in libs])
        a2.set_title("CPU µs per delivered event (lower is better)")
        a2.set_ylim(0, max(cpu) * 1.15)
        for i, v in enumerate(cpu):
            a2.text(i, v, f"{v:.1f}", ha="center", va="bottom")
        fig.suptitle(f"{results['throughput']['n']:,} events into the capture server ({date})")
        save(fig, "throughput")

    mem = results.get("memory", {}).get("summary")
    if mem:
        fig, ax = plt.subplots(figsize=(7.5, 3))
        libs = ["floor", "ours", "posthog"]
        x = range(len(libs))
        tm = [mem[lib]["tracemalloc"] for lib in libs]
        rss = [mem[lib]["rss"] for lib in libs]
        ax.bar([i - 0.2 for i in x], tm, 0.4, color=[colors[lib] for lib in libs])
        ax.bar([i + 0.2 for i in x], rss, 0.4, color=[colors[lib] for lib in libs], alpha=0.45)
        for i in x:
            ax.text(i - 0.2, tm[i], f"{tm[i]:,.0f}", ha="center", va="bottom", fontsize=7)
            ax.text(i + 0.2, rss[i], f"{rss[i]:,.0f}\nRSS", ha="center", va="bottom", fontsize=7)
        ax.axhline(500, color="#1b7837", ls="--", lw=0.8)
        ax.text(len(libs) - 0.5, 500, "goal 500 B", fontsize=7, va="bottom", ha="right")
        ax.set_xticks(list(x), ["put_nowait (floor)", "ours", "posthog"])
        ax.set_ylabel("bytes per queued event")
        ax.set_ylim(0, max(tm + rss) * 1.3)
        ax.set_title(f"Memory per queued, unsent event: tracemalloc | RSS growth ({date})")
        save(fig, "memory")

    gil = results.get("gil", {}).get("summary")
    if gil:
        fig, axes = plt.subplots(1, 2, figsize=(7.5, 3))
        libs = ["floor", "ours", "posthog"]
        x = range(len(libs))
        for ax, q in zip(axes, ("p50", "p99"), strict=True):
            alone = [gil[lib][f"alone_{q}_ms"] for lib in libs]
            loaded = [gil[lib][f"loaded_{q}_ms"] for lib in libs]
            ax.bar([i - 0.2 for i in x], alone, 0.4, color="#bdbdbd", label="alone")
            ax.bar([i + 0.2 for i in x], loaded, 0.4, color=[colors[lib] for lib in libs])
            for i in x:
                ax.text(i + 0.2, loaded[i], f"{loaded[i]:.2f}", ha="center", va="bottom")
                ax.text(i - 0.2, alone[i], f"{alone[i]:.2f}", ha="center", va="bottom", fontsize=7)
            ax.set_xticks(list(x), ["floor", "ours", "posthog"])
            ax.set_ylim(0, max(alone + loaded) * 1.25)
            ax.set_title(f"{q} of a 200 µs handler, ms")
            ax.legend(loc="upper left", fontsize=7)
        fig.suptitle(f"Request thread alone (grey) vs while 2,000 events/s drain ({date})")
        save(fig, "gil")

    routes = results.get("routes", {}).get("summary")
    if routes:
        fig, ax = plt.subplots(figsize=(7, 3))
        modes = ["off", "async", "blocking"]
        qs = ["p50_ms", "p95_ms", "p99_ms"]
        x = range(len(modes))
        for j, q in enumerate(qs):
            vals = [routes[m][q] for m in modes]
            ax.bar([i + (j - 1) * 0.27 for i in x], vals, 0.27, label=q[:3], alpha=1 - j * 0.25)
            for i, v in enumerate(vals):
                ax.text(i + (j - 1) * 0.27, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(x), [f"{m}\n{routes[m]['rps']:.0f} req/s" for m in modes], fontsize=8)
        ax.set_ylabel("latency, ms")
        ax.legend(fontsize=7)
        ax.set_title(f"POST /stories under gunicorn, capture server at 300 ms ({date})")
        save(fig, "routes")

    ex = results.get("exit", {}).get("summary")
    if ex and "ours_slow" in ex:
        n = results["exit"]["n"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(7.5, 3))
        libs = ["ours", "posthog"]
        got = [ex[f"{lib}_slow"]["delivered"] for lib in libs]
        a1.bar(libs, got, color=[colors[lib] for lib in libs])
        a1.axhline(n, color="k", ls="--", lw=0.8)
        for i, v in enumerate(got):
            a1.text(i, v, f"{v:.0f}/{n}", ha="center", va="bottom")
        a1.set_title("delivered at exit, server 300 ms")
        a1.set_ylim(0, n * 1.15)
        labels, times, cols = [], [], []
        for lib in ("none", "ours", "posthog"):
            for scen in ("slow", "down"):
                key = f"{lib}_{scen}"
                if key in ex:
                    labels.append(f"{lib}\n{'300 ms' if scen == 'slow' else 'down'}")
                    times.append(ex[key]["exit_s"])
                    cols.append(colors[lib])
        a2.bar(range(len(times)), times, color=cols)
        a2.set_xticks(range(len(times)), labels, fontsize=7)
        for i, v in enumerate(times):
            a2.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        a2.set_title("exit time, s")
        a2.set_ylim(0, max(times) * 1.15)
        fig.suptitle(f"{n} events queued at exit ({date})")
        save(fig, "exit")
    return written
