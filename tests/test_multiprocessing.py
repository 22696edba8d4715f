"""Events tracked in children started by multiprocessing arrive once, with no change to user code.

Each test runs a script in a fresh interpreter (so the start methods behave as in an app), whose
children track events through the default instance; the capture server counts distinct uuids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from reliability import record

from analytics_queue.testing import CaptureServer

pytestmark = pytest.mark.slow

KEY = "phc_multiprocessing_test"
PER_CHILD = 1000

PROLOGUE = """
import json, multiprocessing, os, sys, time
import analytics_queue

def work(n):
    tracked = 0
    for i in range(n):
        tracked += analytics_queue.track("mp", distinct_id="u", properties={"i": i})
    return tracked

def process_work(n, results):
    results.put(work(n))
"""

PROCESS = """
if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    results = ctx.Queue()
    child = ctx.Process(target=process_work, args=(PER_CHILD, results))
    child.start()
    tracked = results.get(timeout=60)
    started = time.monotonic()
    child.join(60)
    print(json.dumps({"tracked": tracked, "seconds": time.monotonic() - started,
                      "exitcode": child.exitcode}))
"""

POOL_CLOSE_JOIN = """
if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    pool = ctx.Pool(4)
    tracked = sum(pool.map(work, [PER_CHILD] * 4, chunksize=1))
    started = time.monotonic()
    pool.close()
    pool.join()
    print(json.dumps({"tracked": tracked, "seconds": time.monotonic() - started, "exitcode": 0}))
"""

PROCESS_POOL_EXECUTOR = """
from concurrent.futures import ProcessPoolExecutor

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with ProcessPoolExecutor(4, mp_context=ctx) as executor:
        tracked = sum(executor.map(work, [PER_CHILD] * 4))
        started = time.monotonic()
    print(json.dumps({"tracked": tracked, "seconds": time.monotonic() - started, "exitcode": 0}))
"""

POOL_TERMINATE_FLUSHING = """
@analytics_queue.flushing(timeout=10)
def flushed_work(n):
    return work(n)

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with ctx.Pool(4) as pool:  # leaving the block calls terminate(): SIGTERM to each worker
        tracked = sum(pool.map(flushed_work, [PER_CHILD] * 4, chunksize=1))
        started = time.monotonic()
    print(json.dumps({"tracked": tracked, "seconds": time.monotonic() - started, "exitcode": 0}))
"""


def run_children(body: str, method: str, server: CaptureServer, tmp_path: Path) -> dict[str, Any]:
    """Run the script in a fresh interpreter; its last stdout line is a JSON summary."""
    script = tmp_path / "app.py"
    source = PROLOGUE + f"PER_CHILD = {PER_CHILD}\n" + textwrap.dedent(body)
    script.write_text(source, encoding="utf-8")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("POSTHOG_", "ANALYTICS_QUEUE_"))
    }
    env.update(POSTHOG_API_KEY=KEY, POSTHOG_HOST=server.url, PYTHONWARNINGS="error")
    result = subprocess.run(
        [sys.executable, str(script), method],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["exitcode"] == 0, result.stderr
    assert "could not be delivered" not in result.stderr, result.stderr
    return summary


def check_and_record(
    server: CaptureServer, summary: dict[str, Any], runtime: str, ending: str, hookup: str
) -> None:
    tracked = summary["tracked"]
    assert tracked > 0
    delivered = len(set(server.uuids()))
    duplicates = len(server.duplicates())
    assert (delivered, duplicates) == (tracked, 0)
    record(runtime, ending, tracked, delivered, duplicates, summary["seconds"], hookup)


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_events_of_a_process_are_delivered_when_it_ends(
    method: str, capture_server: CaptureServer, tmp_path: Path
) -> None:
    summary = run_children(PROCESS, method, capture_server, tmp_path)
    check_and_record(
        capture_server, summary, f"multiprocessing.Process ({method})", "normal", "nothing"
    )


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_events_of_pool_workers_are_delivered_after_close_and_join(
    method: str, capture_server: CaptureServer, tmp_path: Path
) -> None:
    summary = run_children(POOL_CLOSE_JOIN, method, capture_server, tmp_path)
    check_and_record(
        capture_server, summary, f"multiprocessing.Pool(4) ({method})", "normal", "nothing"
    )


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_events_of_process_pool_executor_workers_are_delivered_at_its_shutdown(
    method: str, capture_server: CaptureServer, tmp_path: Path
) -> None:
    summary = run_children(PROCESS_POOL_EXECUTOR, method, capture_server, tmp_path)
    check_and_record(
        capture_server,
        summary,
        f"concurrent.futures.ProcessPoolExecutor(4) ({method})",
        "normal",
        "nothing",
    )


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_terminated_pool_delivers_what_flushing_tasks_tracked(
    method: str, capture_server: CaptureServer, tmp_path: Path
) -> None:
    summary = run_children(POOL_TERMINATE_FLUSHING, method, capture_server, tmp_path)
    check_and_record(
        capture_server,
        summary,
        f"with multiprocessing.Pool(4) ({method})",
        "terminate",
        "@analytics_queue.flushing(timeout=10)",
    )


SERVER_DOWN = """
import logging
logging.basicConfig(level=logging.WARNING)  # at import: a spawn child runs this part too

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    results = ctx.Queue()
    child = ctx.Process(target=process_work, args=(10, results))
    child.start()
    tracked = results.get(timeout=60)
    started = time.monotonic()
    child.join(60)
    print(json.dumps({"tracked": tracked, "seconds": time.monotonic() - started,
                      "exitcode": child.exitcode}))
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_child_spends_one_exit_budget_when_the_server_is_down(
    method: str, capture_server: CaptureServer, tmp_path: Path
) -> None:
    # A spawn child runs both multiprocessing's exit step and atexit: the drain runs once.
    capture_server.down()
    script = tmp_path / "app.py"
    script.write_text(PROLOGUE + textwrap.dedent(SERVER_DOWN), encoding="utf-8")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("POSTHOG_", "ANALYTICS_QUEUE_"))
    }
    env.update(
        POSTHOG_API_KEY=KEY,
        POSTHOG_HOST=capture_server.url,
        ANALYTICS_QUEUE_SHUTDOWN_TIMEOUT="2",
        PYTHONWARNINGS="error",
    )
    result = subprocess.run(
        [sys.executable, str(script), method],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["exitcode"] == 0, result.stderr
    assert summary["seconds"] < 2 + 1.5, result.stderr  # one budget of 2 s, not two
    assert result.stderr.count("could not be delivered before exit") == 1, result.stderr
