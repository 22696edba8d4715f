"""Run every benchmark and write the report: `python -m benchmarks.run [--quick]`.

Writes `<out>/<timestamp>.json` (every run of every section), `<out>/<timestamp>.md` and a copy
`<out>/latest.md`, and the plots `<out>/latest-*.png` that the docs embed. `<out>` is
`benchmarks/results/` for a full run (the committed results) and the git-ignored
`benchmarks/results/scratch/` for `--quick` or `--only`, whose figures must not replace them.
A goal that is missed gets a profile (cProfile, or tracemalloc for memory) whose top functions
go into the report. Exits 1 when a section failed to run (a missed goal is a finding, not a
failure).

Sizes: the full run takes about 10 minutes on 2 cores; `--quick` runs every section with tiny
sizes in about a minute (the smoke test of `make test` runs it), its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import (
    at_exit,
    gil,
    import_cost,
    memory,
    profiling,
    report,
    routes,
    spool,
    throughput,
)
from benchmarks._common import (
    PYTHON,
    ROOT,
    child_env,
    machine_info,
    server_process,
    summarize,
)

SECTIONS = ("caller_cost", "throughput", "memory", "gil", "routes", "exit", "import_cost", "spool")
RESULTS = ROOT / "benchmarks" / "results"
SCRATCH = RESULTS / "scratch"
#: Profiled in every run that measures throughput: where the caller's and the worker's time goes.
ALWAYS_PROFILED = ("track", "throughput", "throughput_wall")
CALLER_CASES = {
    "test_floor_put_nowait": "floor",
    "test_ours_track": "ours",
    "test_ours_track_in_context": "ours_context",
    "test_posthog_capture": "posthog",
    "test_blocking[0ms]": "blocking_0ms",
    "test_blocking[300ms]": "blocking_300ms",
}

FULL: dict[str, dict[str, Any]] = {
    "throughput": {"n": 100_000, "rounds": 3},
    "memory": {"n": 10_000, "rounds": 2},
    "gil": {"blocks": 8, "phase_s": 1.0, "rounds": 2},
    "routes": {"duration": 5.0, "rounds": 5, "warmup": 1.0},
    "exit": {"n": 500, "rounds": 3},
    "import_cost": {"rounds": 21},
    "spool": {"steady_s": 10.0, "rounds": 4, "outage": 10.0, "before": 3.0, "after": 3.0},
}
QUICK: dict[str, dict[str, Any]] = {
    "throughput": {"n": 2_000, "rounds": 1},
    "memory": {"n": 300, "rounds": 1},
    "gil": {"blocks": 2, "phase_s": 0.2, "rounds": 1},
    "routes": {"duration": 1.0, "rounds": 1, "warmup": 0.0},
    "exit": {"n": 50, "rounds": 1, "shutdown_timeout": 1.0},
    "import_cost": {"rounds": 1},
    "spool": {
        "steady_s": 1.0,
        "rounds": 1,
        "outage": 1.0,
        "before": 0.5,
        "after": 0.5,
        "drain_timeout": 30.0,
    },
}


def log(msg: str) -> None:
    print(msg, flush=True)


def run_caller_cost(quick: bool) -> dict[str, Any]:
    """The pytest-benchmark group, in a pytest process of its own; p99 from its saved rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "caller.json"
        cmd = [
            PYTHON,
            "-m",
            "pytest",
            "benchmarks/test_caller_cost.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "timeout=900",
            "--benchmark-only",
            f"--benchmark-json={out}",
            "--benchmark-columns=min,median,mean,max,rounds",
            "--benchmark-sort=name",
        ]
        env = child_env({"ANALYTICS_QUEUE_BENCH": "quick" if quick else "full"})
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False
        )
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"pytest-benchmark failed:\n{proc.stdout[-6000:]}\n{proc.stderr}")
        data = json.loads(out.read_text())
    summary: dict[str, Any] = {}
    for bench in data["benchmarks"]:
        case = CALLER_CASES.get(bench["name"])
        if case is None:
            continue
        times = bench["stats"]["data"]
        row = summarize(times)
        row["rounds"] = len(times)
        row["extra_info"] = bench.get("extra_info", {})
        summary[case] = row
        log(
            f"  caller {case:15s} median {row['median_us']:10.2f} us   p99 {row['p99_us']:10.2f} us"
            f"   ({len(times)} rounds)"
        )
    ratios = {}
    if "ours" in summary and "posthog" in summary:
        ours, ph = summary["ours"], summary["posthog"]
        ratios = {
            "posthog_over_ours_median": ph["median_us"] / ours["median_us"],
            "posthog_over_ours_p99": ph["p99_us"] / ours["p99_us"],
        }
        if "floor" in summary:
            ratios["ours_over_floor_median"] = ours["median_us"] / summary["floor"]["median_us"]
        if "ours_context" in summary:
            ratios["context_over_ours_median"] = (
                summary["ours_context"]["median_us"] / ours["median_us"]
            )
        for case in ("blocking_0ms", "blocking_300ms"):
            if case in summary:
                ratios[f"{case}_over_ours_median"] = summary[case]["median_us"] / ours["median_us"]
    return {
        "machine_info": data.get("machine_info", {}),
        "summary": summary,
        "ratios": ratios,
        "pytest_output": proc.stdout[-3000:],
    }


def runners(plan: dict[str, dict[str, Any]], loadgen: str) -> dict[str, Callable[[], Any]]:
    return {
        "throughput": lambda: throughput.run(log=log, **plan["throughput"]),
        "memory": lambda: memory.run(log=log, **plan["memory"]),
        "gil": lambda: gil.run(log=log, **plan["gil"]),
        "routes": lambda: routes.run(log=log, loadgen=loadgen, **plan["routes"]),
        "exit": lambda: at_exit.run(log=log, **plan["exit"]),
        "import_cost": lambda: import_cost.run(log=log, **plan["import_cost"]),
        "spool": lambda: spool.run(log, **plan["spool"]),
    }


def run_profiles(scenarios: list[str], quick: bool) -> dict[str, Any]:
    profiles: dict[str, Any] = {}
    with server_process(delay=0.0) as server:
        for scenario in scenarios:
            log(f"  profiling {scenario} ...")
            try:
                profiles[scenario] = profiling.run(scenario, server.url, quick)
            except Exception as exc:  # a failed profile must not lose the report
                profiles[scenario] = {"error": f"{type(exc).__name__}: {exc}"}
    return profiles


def _cause_of_profile(scenario: str, prof: dict[str, Any]) -> str | None:
    if "error" in prof:
        return None
    if scenario == "memory":
        sites = prof.get("sites", [])
        if not sites:
            return None
        top = sites[0]
        return (
            f"most of it allocated at `{top['where']}` ({top['bytes_per_event']:,.0f} B per event)"
        )
    if scenario == "gil_segments":
        rows = prof.get("segments", [])[:3]
        if not rows:
            return None
        spots = ", ".join(
            f"`{row['worker_at'].split(' ← ')[0]}` ({row['share_of_slow'] * 100:.0f} %)"
            for row in rows
        )
        return f"slow handler runs ended while the worker gave the GIL back at {spots}"
    causes = []
    for part in ("main", "worker"):
        if part not in prof:
            continue
        thread = "caller" if part == "main" else "worker"
        clock = "wall time" if prof[part].get("clock") == "wall" else "CPU"
        sub = report.biggest_subcall(prof, part)
        own = report.hottest(prof, part)
        bits = []
        if sub:
            bits.append(
                f"costliest call `{sub['function']}` ({sub['share_of_total'] * 100:.0f} % of its "
                f"{clock}, {sub['ncalls']:,} calls)"
            )
        if own:
            bits.append(
                f"most own {clock} in `{own['function']}` ({own['share_of_total'] * 100:.0f} %)"
            )
        if bits:
            causes.append(f"{thread} thread: " + "; ".join(bits))
    return ". ".join(causes) if causes else None


def attach_causes(goals: list[dict[str, Any]], profiles: dict[str, Any]) -> None:
    for goal in goals:
        if goal["met"] is not False:
            continue
        causes = []
        for scenario in goal["profile"]:
            cause = _cause_of_profile(scenario, profiles.get(scenario, {}))
            if cause:
                causes.append(f"[{scenario}] {cause}")
        if causes:
            goal["cause"] = " — ".join(causes)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def rerender(path: Path, out: Path) -> int:
    """Write `<stamp>.md`, `latest.md` and the plots again from a results file."""
    results = json.loads(path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    markdown = report.render_markdown(results, results["goals"])
    (out / f"{results['meta']['timestamp']}.md").write_text(markdown)
    (out / "latest.md").write_text(markdown)
    plots = report.plot_all(results, out)
    log(f"rendered {path} into {out}: latest.md and {len(plots)} plots")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results directory (default: {RESULTS.relative_to(ROOT)} for a full run, "
        f"{SCRATCH.relative_to(ROOT)} for --quick or --only)",
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated sections of: {','.join(SECTIONS)}"
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--profile", action="store_true", help="profile every scenario")
    parser.add_argument("--no-profile", action="store_true", help="never profile")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="RESULTS",
        help="measure nothing: render the markdown and plots of an earlier results file",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = SCRATCH if (args.quick or args.only) else RESULTS
    if args.from_json:
        return rerender(args.from_json, args.out)

    selected = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = set(selected) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    now = datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    command = "python -m benchmarks.run" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    results: dict[str, Any] = {
        "meta": {
            "timestamp": stamp,
            "date": now.strftime("%Y-%m-%d %H:%M UTC"),
            "command": command.strip(),
            "quick": args.quick,
            "machine": machine_info(),
            "plan": plan,
            "loadgen": routes.pick_loadgen(args.loadgen),
            "loadavg_start": list(os.getloadavg()),
        },
        "errors": {},
    }
    log(
        f"benchmarks: {', '.join(selected)} ({'quick' if args.quick else 'full'}), "
        f"{results['meta']['machine']['nproc']} cores, {results['meta']['machine']['cpu_model']}"
    )
    section_runners = runners(plan, args.loadgen)
    for section in selected:
        log(f"[{time.monotonic() - started:6.1f} s] {section}")
        try:
            if section == "caller_cost":
                results[section] = run_caller_cost(args.quick)
            else:
                results[section] = section_runners[section]()
        except Exception:
            results["errors"][section] = traceback.format_exc()
            log(f"  {section} FAILED:\n{results['errors'][section]}")

    goals = report.evaluate_goals(results)
    scenarios: list[str] = []
    if args.profile:
        scenarios = list(profiling.SCENARIOS)
    elif not args.no_profile:
        # Where the time goes, in every run that measured throughput; then what a miss needs.
        if "throughput" in selected:
            scenarios = list(ALWAYS_PROFILED)
        for goal in goals:
            if goal["met"] is False:
                scenarios += [p for p in goal["profile"] if p not in scenarios]
    if scenarios:
        log(f"[{time.monotonic() - started:6.1f} s] profiles: {', '.join(scenarios)}")
        results["profiles"] = run_profiles(scenarios, args.quick)
        attach_causes(goals, results["profiles"])
    results["goals"] = goals
    results["meta"]["duration_s"] = time.monotonic() - started
    results["meta"]["loadavg_end"] = list(os.getloadavg())

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stamp}.json").write_text(json.dumps(_jsonable(results), indent=1) + "\n")
    markdown = report.render_markdown(results, goals)
    (out / f"{stamp}.md").write_text(markdown)
    (out / "latest.md").write_text(markdown)
    plots = report.plot_all(results, out)

    log("")
    for goal in goals:
        verdict = {True: "met   ", False: "MISSED", None: "n/a   "}[goal["met"]]
        log(f"  {verdict} {goal['goal']}: {goal['shown']}")
        if goal.get("cause"):
            log(f"         cause: {goal['cause']}")
    log(
        f"\nwrote {out / (stamp + '.json')}, {out / (stamp + '.md')}, {out / 'latest.md'} "
        f"and {len(plots)} plots in {results['meta']['duration_s'] / 60:.1f} min"
    )
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
