"""Exit: N events queued when the process exits, the capture server answering in 300 ms.

Each run is a child process that builds a client with its defaults, tracks N events, prints a
marker and returns from main: nothing but the library's own exit handling delivers them. The
parent times from the marker to the process's end and asks the server (another process) what
arrived. Also: the same with the server down (how long exit takes), and `none` (the same child
without any event: the interpreter's own exit time, the baseline).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

from benchmarks._common import (
    PYTHON,
    ROOT,
    child_env,
    closed_port_url,
    make_ours,
    make_posthog,
    median,
    quiet_posthog_logging,
    server_process,
    track_fn,
)

LIBS = ("none", "ours", "posthog")
MARKER = "TRACKED"

# Like an application's module-level client: alive until the interpreter exits.
CLIENTS: list[Any] = []


def child(lib: str, n: int, url: str, shutdown_timeout: float | None) -> None:
    quiet_posthog_logging()
    if lib == "none":
        import posthog  # noqa: F401

        import analytics_queue  # noqa: F401  (same imports as the others)
    else:
        if lib == "ours":
            options = {} if shutdown_timeout is None else {"shutdown_timeout": shutdown_timeout}
            client = make_ours(url, **options)
        else:
            client = make_posthog(url)
        CLIENTS.append(client)
        send = track_fn(client, lib)
        for _ in range(n):
            send()
    sys.stdout.write(MARKER + "\n")
    sys.stdout.flush()


def _one(lib: str, n: int, url: str, shutdown_timeout: float | None) -> dict[str, Any]:
    cmd = [PYTHON, "-m", "benchmarks.at_exit", "--child", lib, "--n", str(n), "--url", url]
    if shutdown_timeout is not None:
        cmd += ["--shutdown-timeout", str(shutdown_timeout)]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    t0 = time.perf_counter()
    if line.strip() != MARKER:
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"exit child {lib} failed: {line!r} {err[-2000:]}")
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    exit_s = time.perf_counter() - t0
    proc.communicate()
    return {"lib": lib, "n": n, "exit_s": exit_s, "returncode": proc.returncode}


def run(
    n: int,
    rounds: int,
    delay: float = 0.3,
    shutdown_timeout: float | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """`shutdown_timeout`: ours' exit budget (None: the library's default, 5 s)."""
    runs: list[dict[str, Any]] = []
    with server_process(delay=delay) as server:
        for r in range(rounds):
            for lib in LIBS if r % 2 == 0 else tuple(reversed(LIBS)):
                server.reset()
                result = _one(lib, n if lib != "none" else 0, server.url, shutdown_timeout)
                # A request cut at exit may still be open on the server: wait for it to end.
                got = server.settle(quiet=delay + 0.4)
                result.update(scenario="slow", delivered=got.events, requests=got.requests, round=r)
                runs.append(result)
                log(
                    f"  exit {lib:8s} round {r} (server {delay * 1000:.0f} ms): "
                    f"{got.events}/{result['n']} delivered, exit {result['exit_s']:.2f} s"
                )
    for r in range(rounds):
        for lib in ("ours", "posthog"):
            result = _one(lib, n, closed_port_url(), shutdown_timeout)
            result.update(scenario="down", delivered=0, requests=0, round=r)
            runs.append(result)
            log(f"  exit {lib:8s} round {r} (server down): exit {result['exit_s']:.2f} s")
    summary: dict[str, Any] = {}
    for scenario in ("slow", "down"):
        for lib in LIBS:
            mine = [x for x in runs if x["lib"] == lib and x["scenario"] == scenario]
            if not mine:
                continue
            summary[f"{lib}_{scenario}"] = {
                "delivered": median([x["delivered"] for x in mine]),
                "delivered_min": min(x["delivered"] for x in mine),
                "exit_s": median([x["exit_s"] for x in mine]),
                "exit_max_s": max(x["exit_s"] for x in mine),
            }
    return {
        "n": n,
        "delay_s": delay,
        "rounds": rounds,
        "shutdown_timeout": 5.0 if shutdown_timeout is None else shutdown_timeout,
        "runs": runs,
        "summary": summary,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=LIBS, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--shutdown-timeout", type=float, default=None)
    args = parser.parse_args()
    child(args.child, args.n, args.url, args.shutdown_timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
