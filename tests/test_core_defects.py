"""Regression tests for the core's concurrency defects, through the public API only.

Each test reproduces one way the promise "analytics never harms your app and nothing is lost"
was broken: ``track()`` racing ``shutdown()`` or ``configure()``, SIGTERM landing inside
``track()``, ``track()`` re-entered on its own thread, a fork that skips Python's hooks, and
concurrent ``flush()`` calls sharing one backoff cut. Whatever can hang or needs its own process
state runs in a subprocess with a timeout; a hang is reported with the child's stack.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from analytics_queue import AnalyticsQueue
from analytics_queue.retry import RetryPolicy
from analytics_queue.testing import CaptureServer

KEY = "phc_core_defects"
# The app configures logging, as a real one does: the library itself only has a NullHandler.
PREAMBLE = "import logging\nlogging.basicConfig(level=logging.WARNING)\n"
UNDELIVERED = re.compile(r"(\d+) event\(s\) could not be delivered")


def child_env(server: CaptureServer) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONWARNINGS": "error",
        "POSTHOG_API_KEY": KEY,
        "POSTHOG_HOST": server.url,
    }


def run_child(
    code: str, server: CaptureServer, *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter and wait for it; a child that outlives ``timeout``
    is killed and the test fails with what it wrote."""
    process = subprocess.Popen(
        [sys.executable, "-c", PREAMBLE + textwrap.dedent(code), *args],
        env=child_env(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"the child hung for {timeout} s and was killed:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def undelivered_at_exit(stderr: str) -> int:
    """The count in the exit warning, 0 when there was none."""
    return sum(int(n) for n in UNDELIVERED.findall(stderr))


# -- 1. track() racing shutdown() / configure() -------------------------------------------------

# Large properties whose copy outlasts a concurrent close. Reading them (any way: items(),
# keys(), dict()) first tells the closing thread that track() is under way, then waits until
# the close has returned (bounded, for a close that itself waits for track()), so the race is
# lined up the same way in every trial instead of by luck.
SLOW_CAPTURE = """
    import json, sys, threading, uuid
    from collections.abc import Mapping

    HOLD = 0.5
    BIG = {f"property_{i}": "value" for i in range(1000)}

    class SlowCapture(Mapping):
        def __init__(self, entered, closed):
            self._entered = entered
            self._closed = closed

        def __getitem__(self, key):
            return BIG[key]

        def __len__(self):
            return len(BIG)

        def __iter__(self):
            self._entered.set()
            self._closed.wait(HOLD)
            return iter(BIG)

    def race(track, close):
        entered, closed = threading.Event(), threading.Event()
        event_id = str(uuid.uuid4())
        out = {"uuid": event_id}

        def tracking():
            try:
                out["tracked"] = track(event_id, SlowCapture(entered, closed))
            finally:
                entered.set()  # a track() that never read the properties holds nobody up

        def closing():
            entered.wait(5)
            out["closed"] = close()
            closed.set()

        threads = [threading.Thread(target=tracking), threading.Thread(target=closing)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive(), "a trial hung"
        return out
"""

SHUTDOWN_RACE = (
    SLOW_CAPTURE
    + """
    from analytics_queue import AnalyticsQueue

    for trial in range(int(sys.argv[1])):
        q = AnalyticsQueue(flush_interval=0.01, shutdown_timeout=1)
        out = race(
            lambda event_id, props: q.track(
                "race", distinct_id="u", properties=props, uuid=event_id
            ),
            lambda: q.shutdown(timeout=0.2),
        )
        m = q.metrics()
        out.update(failed=m.failed, queue_size=m.queue_size)
        print(json.dumps(out), flush=True)
"""
)

CONFIGURE_RACE = (
    SLOW_CAPTURE
    + """
    import analytics_queue

    OPTIONS = dict(flush_interval=0.01, shutdown_timeout=0.2)

    def reconfigure():
        analytics_queue.configure(**OPTIONS)  # returns no verdict on the previous instance

    reconfigure()
    for trial in range(int(sys.argv[1])):
        previous = analytics_queue.get_default()
        out = race(
            lambda event_id, props: analytics_queue.track(
                "race", distinct_id="u", properties=props, uuid=event_id
            ),
            reconfigure,
        )
        m = previous.metrics()
        out.update(failed=m.failed, queue_size=m.queue_size)
        print(json.dumps(out), flush=True)
    analytics_queue.shutdown(timeout=1)
"""
)


def check_race_accounting(
    result: subprocess.CompletedProcess[str], server: CaptureServer, trials: int
) -> None:
    """Every accepted event was delivered, failed with a reason, or counted at exit; and none
    of them is missing after a close that reported nothing left undelivered."""
    assert result.returncode == 0, result.stderr[-4000:]
    outcomes = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(outcomes) == trials, result.stderr[-4000:]
    delivered = {u.lower() for u in server.uuids()}
    silent: list[dict[str, object]] = []  # lost after "everything was delivered"
    admitted: list[dict[str, object]] = []  # left over, so only the exit warning may count it
    for out in outcomes:
        if not out["tracked"] or out["uuid"] in delivered or out["failed"]:
            continue
        (silent if out["closed"] else admitted).append(out)
    counted = undelivered_at_exit(result.stderr)
    accepted = sum(1 for out in outcomes if out["tracked"])
    assert len(silent) == 0, (
        f"{len(silent)} of {trials} trials: track() -> True, the close -> True, and the event "
        f"was never sent nor failed; first: {silent[0]}"
    )
    assert len(admitted) <= counted, (
        f"{len(admitted)} of {accepted} accepted events were neither delivered nor failed, and "
        f"the exit warning counted {counted}; first: {admitted[0]}"
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_track_racing_shutdown_never_loses_an_accepted_event(
    capture_server: CaptureServer,
) -> None:
    trials = 1000
    result = run_child(SHUTDOWN_RACE, capture_server, str(trials), timeout=580)
    check_race_accounting(result, capture_server, trials)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_track_racing_configure_never_loses_an_accepted_event(
    capture_server: CaptureServer,
) -> None:
    # configure() shuts the previous default instance down while another thread tracks on it.
    trials = 200
    result = run_child(CONFIGURE_RACE, capture_server, str(trials), timeout=280)
    check_race_accounting(result, capture_server, trials)


# -- 2. SIGTERM while the main thread tracks ----------------------------------------------------

SIGTERM_SHUTDOWN_TIMEOUT = 2.0
SIGTERM_RUNS = 100
SIGTERM_SERVERS = 3

# A fork server: an interpreter that imported analytics_queue and its HTTP stack once, then forks
# one child per run (starting 100 interpreters would cost a minute of imports on a busy machine).
# Each child tracks in a tight loop with uuids it chooses in sequence; only after track() returned
# True does it write the number accepted so far into a file it maps, so the file never claims an
# event that track() did not accept, whatever instant the signal lands. The server sends SIGTERM
# once the child accepted its share, times the exit, and answers one JSON line per run.
SIGTERM_FORK_SERVER = f"""
    import faulthandler, json, mmap, os, select, signal, sys, time, uuid
    import analytics_queue
    import analytics_queue.transport  # the HTTP stack, loaded once for every child
    from analytics_queue import AnalyticsQueue

    BUDGET = {SIGTERM_SHUTDOWN_TIMEOUT} + 1.0

    def track_until_sigterm(run, ready_after, path, ready):
        faulthandler.register(signal.SIGUSR1)  # the test asks for the stacks of a hung child
        analytics_queue.install_sigterm_handler()
        # A bounded queue keeps what the exit drain must send small even when this loop outruns
        # the worker; a full queue refuses, and that path too is inside track().
        q = AnalyticsQueue(
            flush_interval=0.05, shutdown_timeout={SIGTERM_SHUTDOWN_TIMEOUT}, max_queue_size=2000
        )
        with open(path, "r+b") as file:
            accepted_file = mmap.mmap(file.fileno(), 8)
        accepted = 0
        while True:
            if q.track("sigterm_race", distinct_id="u", uuid=uuid.UUID(int=(run << 64) | accepted)):
                accepted += 1
                accepted_file[:8] = accepted.to_bytes(8, "little")
                if accepted == ready_after:
                    os.write(ready, b"r")

    def one_run(run, ready_after, path, stderr_path):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.dup2(os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            track_until_sigterm(run, ready_after, path, ready_w)
            os._exit(1)  # never reached: SIGTERM ends the loop with SystemExit
        os.close(ready_w)
        exited = os.pidfd_open(pid)
        if not select.select([ready_r], [], [], 60)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return dict(run=run, ready=False, killed=True, seconds=0.0, status=None)
        os.kill(pid, signal.SIGTERM)
        signalled = time.monotonic()
        killed = not select.select([exited], [], [], BUDGET)[0]
        if killed:
            os.kill(pid, signal.SIGUSR1)  # faulthandler prints the stacks
            select.select([exited], [], [], 1)
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        seconds = time.monotonic() - signalled
        os.close(exited)
        os.close(ready_r)
        return dict(run=run, ready=True, killed=killed, seconds=seconds, status=status)

    for line in sys.stdin:
        run, ready_after, path, stderr_path = line.split()
        answer = one_run(int(run), int(ready_after), path, stderr_path)
        os.write(1, (json.dumps(answer) + "\\n").encode())
"""


@dataclass
class SigtermRun:
    run: int
    accepted: int
    exit_seconds: float
    status: int | None
    killed: bool
    stderr: str


def sigterm_runs(server: CaptureServer, runs: range, workdir: Path) -> list[SigtermRun]:
    """Each run of ``runs`` on one fork server: SIGTERM once the child accepted its share."""
    process = subprocess.Popen(
        [sys.executable, "-c", PREAMBLE + textwrap.dedent(SIGTERM_FORK_SERVER)],
        env=child_env(server),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    results = []
    try:
        for run in runs:
            accepted_path = workdir / f"accepted-{run}"
            accepted_path.write_bytes(bytes(8))
            stderr_path = workdir / f"stderr-{run}"
            ready_after = 100 + (run * 7919) % 3000  # spread the landing point over the loop
            process.stdin.write(f"{run} {ready_after} {accepted_path} {stderr_path}\n")
            process.stdin.flush()
            readable, _, _ = select.select([process.stdout], [], [], 120)
            assert readable, f"run {run}: the fork server did not answer"
            answer = json.loads(process.stdout.readline())
            assert answer["ready"], f"run {run}: the child never got ready"
            results.append(
                SigtermRun(
                    run=run,
                    accepted=int.from_bytes(accepted_path.read_bytes()[:8], "little"),
                    exit_seconds=answer["seconds"],
                    status=answer["status"],
                    killed=answer["killed"],
                    stderr=stderr_path.read_text() if stderr_path.exists() else "",
                )
            )
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        process.stdout.close()
    return results


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_landing_inside_track_exits_within_budget_and_delivers(
    capture_server: CaptureServer, tmp_path: Path
) -> None:
    shares = [range(i, SIGTERM_RUNS, SIGTERM_SERVERS) for i in range(SIGTERM_SERVERS)]
    with ThreadPoolExecutor(SIGTERM_SERVERS) as pool:
        runs = sorted(
            (
                r
                for share in pool.map(lambda s: sigterm_runs(capture_server, s, tmp_path), shares)
                for r in share
            ),
            key=lambda r: r.run,
        )
    assert [r.run for r in runs] == list(range(SIGTERM_RUNS))
    delivered = {u.lower() for u in capture_server.uuids()}
    budget = SIGTERM_SHUTDOWN_TIMEOUT + 1.0
    hung = [r for r in runs if r.killed]
    slow = [r for r in runs if not r.killed and r.exit_seconds > budget]
    # Exited by SystemExit(143) from the handler, never by the signal's default action.
    by_signal = [r for r in runs if not r.killed and r.status is not None and r.status & 0x7F]
    lost = {
        r.run: missing
        for r in runs
        if (
            missing := sum(
                str(uuid.UUID(int=(r.run << 64) | i)) not in delivered for i in range(r.accepted)
            )
        )
    }
    report = (
        f"{len(hung)} of {SIGTERM_RUNS} runs hung past {budget} s and were killed; "
        f"{len(slow)} exited late; {len(by_signal)} died by the signal; {len(lost)} lost events "
        "(run: missing of accepted): "
        + ", ".join(f"{run}: {n} of {runs[run].accepted}" for run, n in lost.items())
    )
    if hung:
        report += f"\nfirst hung run's stacks:\n{hung[0].stderr[-3000:]}"
    assert not hung and not slow and not by_signal and not lost, report
    assert sum(r.accepted for r in runs) >= SIGTERM_RUNS * 100  # every run tracked before it


# -- 3. track() re-entered on its own thread ----------------------------------------------------

# The outer track() is run under a profile hook that, at every call it makes (Python or C),
# brings about the re-entry: a signal handler, a garbage collection running a __del__, or a
# collection running gc.callbacks. Python 3.12+ runs signal handlers and collections at any
# such call, so this covers every point deterministically, including those where the outer
# call holds the queue's lock.
REENTER = """
    import faulthandler, gc, json, signal, sys
    from analytics_queue import AnalyticsQueue

    faulthandler.dump_traceback_later(5, exit=True)  # a deadlock: print where, then exit 70
    how = sys.argv[1]
    q = AnalyticsQueue(flush_interval=60, batch_size=1)
    nested = []

    def reenter():
        nested.append(q.track("nested", distinct_id="u"))

    class Garbage:
        # A reference cycle whose finalizer tracks, then leaves a new cycle for the next pass.
        def __init__(self):
            self.cycle = self

        def __del__(self):
            reenter()
            Garbage()

    if how == "signal":
        signal.signal(signal.SIGUSR1, lambda signum, frame: reenter())
        bring_about = lambda: signal.raise_signal(signal.SIGUSR1)
    elif how == "__del__":
        Garbage()
        bring_about = gc.collect
    else:
        gc.callbacks.append(lambda phase, info: phase == "start" and reenter())
        bring_about = gc.collect

    def at_every_call(frame, event, arg):
        if event in ("call", "c_call"):
            bring_about()

    outer = []
    for i in range(3):
        sys.setprofile(at_every_call)
        try:
            tracked = q.track("outer", distinct_id="u", properties={"i": i})
        finally:
            sys.setprofile(None)
        outer.append(tracked)
    gc.callbacks.clear()
    gc.disable()
    m = q.metrics()
    print(json.dumps({
        "outer": outer,
        "nested": nested,
        "reentrant": m.refused_by_reason.get("reentrant", 0),
        "refused": m.refused,
        "flushed": q.flush(timeout=10),
    }))
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["signal", "__del__", "gc_callback"])
def test_track_reentered_on_its_own_thread_returns(capture_server: CaptureServer, how: str) -> None:
    result = run_child(REENTER, capture_server, how, timeout=30)
    assert result.returncode == 0, (
        f"track() re-entered from {how} did not return:\n{result.stderr[-4000:]}"
    )
    out = json.loads(result.stdout)
    assert out["outer"] == [True, True, True]
    assert out["nested"], "the re-entry never happened"
    refused = out["nested"].count(False)
    assert out["reentrant"] == refused == out["refused"], out  # each refusal counted as such
    assert out["flushed"]
    sent = sum(out["outer"]) + out["nested"].count(True)
    assert len(capture_server.events()) == sent


# GC triggered naturally: a low threshold and a stream of cyclic garbage whose __del__ tracks,
# while the queue is full (its worker stuck on a server that never answers), so that a
# collection runs inside put_nowait while it holds the queue's mutex.
NATURAL_GC = """
    import faulthandler, gc, json
    from analytics_queue import AnalyticsQueue

    faulthandler.dump_traceback_later(5, exit=True)
    q = AnalyticsQueue(
        flush_interval=60, batch_size=5, max_queue_size=5, timeout=30, shutdown_timeout=0.5
    )
    for i in range(5):
        q.track("fill", distinct_id="u")  # the worker takes these and waits on the server
    assert q.flush(timeout=0.5) is False
    while q.track("fill", distinct_id="u"):
        pass  # the queue itself is full now
    nested = []

    class Garbage:
        def __init__(self):
            self.cycle = self

        def __del__(self):
            nested.append(q.track("nested", distinct_id="u"))
            Garbage()

    Garbage()
    gc.set_threshold(1)
    outer = [q.track("outer", distinct_id="u", properties={"i": i}) for i in range(200)]
    gc.set_threshold(700)
    gc.disable()
    faulthandler.cancel_dump_traceback_later()
    print(json.dumps({"outer": outer.count(False), "nested": len(nested)}), flush=True)
    q.shutdown(timeout=0)
"""


@pytest.mark.slow
def test_track_from_del_in_a_natural_gc_pass_returns(capture_server: CaptureServer) -> None:
    capture_server.hang()
    result = run_child(NATURAL_GC, capture_server, timeout=30)
    capture_server.clear_faults()
    assert result.returncode == 0, (
        f"track() re-entered from __del__ during a collection did not return:\n"
        f"{result.stderr[-4000:]}"
    )
    out = json.loads(result.stdout.splitlines()[0])
    assert out["nested"] > 0, "no collection ran a __del__"


# -- 4. A fork that skips Python's fork hooks ---------------------------------------------------

LIBC_FORK = """
    import ctypes, json, os, sys, time
    from analytics_queue import AnalyticsQueue

    q = AnalyticsQueue(flush_interval=60, batch_size=500, shutdown_timeout=3)
    for i in range(100):
        assert q.track("parent", distinct_id="p", properties={"i": i})
    # libc's fork(), holding the GIL, as uWSGI forks its workers: no os.register_at_fork hook
    # runs in the child.
    started = time.monotonic()
    pid = ctypes.PyDLL(None).fork()
    if pid == 0:
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        sys.exit(0)  # never tracks: the normal interpreter exit, atexit handlers included
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"seconds": time.monotonic() - started, "status": status}))
"""


@pytest.mark.slow
def test_a_child_forked_without_hooks_exits_at_once_without_a_false_warning(
    capture_server: CaptureServer, tmp_path: Path
) -> None:
    child_stderr = tmp_path / "child-stderr"
    result = run_child(LIBC_FORK, capture_server, str(child_stderr), timeout=60)
    assert result.returncode == 0, result.stderr[-4000:]
    child = json.loads(result.stdout)
    stderr = child_stderr.read_text()
    assert child["status"] == 0, stderr
    assert child["seconds"] < 0.5 and "could not be delivered" not in stderr, (
        f"the child took {child['seconds']:.2f} s to exit and wrote: {stderr!r}"
    )
    assert len(capture_server.events("parent")) == 100  # the parent delivered its own


# -- 5. Concurrent flush() calls ----------------------------------------------------------------

CONCURRENT_FLUSHES = 3
ANSWER_DELAY = 0.2


@pytest.fixture
def failing_queue(capture_server: CaptureServer) -> Iterator[AnalyticsQueue]:
    # Every attempt fails after a while; the backoff after a failure is 30 s, so within the
    # test an attempt happens only where a flush() cuts the backoff short.
    capture_server.fail_with(503)
    capture_server.delay_responses(ANSWER_DELAY)
    q = AnalyticsQueue(
        api_key=KEY,
        host=capture_server.url,
        flush_interval=60,
        retry_policy=RetryPolicy(base=30, cap=30, jitter=False),
    )
    yield q
    capture_server.clear_faults()
    q.shutdown(timeout=1)


@pytest.mark.slow
def test_each_concurrent_flush_cuts_the_backoff_short_once(
    failing_queue: AnalyticsQueue, capture_server: CaptureServer
) -> None:
    assert failing_queue.track("flushed", distinct_id="u")
    # A first flush: the first attempt fails, the backoff starts and this flush cuts it once.
    assert failing_queue.flush(timeout=4 * ANSWER_DELAY + 0.5) is False
    before = len(capture_server.requests)
    assert before >= 1
    # Now several callers flush at once while the worker backs off. Each call may cut the
    # backoff short once, so each yields one attempt: no more, so a dead server is not hammered;
    # no fewer, so no caller waits its whole timeout for an attempt that was never made.
    start = threading.Barrier(CONCURRENT_FLUSHES)
    results: list[bool] = []

    def flush() -> None:
        start.wait(10)
        results.append(failing_queue.flush(timeout=CONCURRENT_FLUSHES * ANSWER_DELAY + 2.0))

    threads = [threading.Thread(target=flush) for _ in range(CONCURRENT_FLUSHES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [False] * CONCURRENT_FLUSHES
    attempts = len(capture_server.requests) - before
    assert attempts == CONCURRENT_FLUSHES, (
        f"{CONCURRENT_FLUSHES} concurrent flush() calls made {attempts} attempt(s)"
    )
