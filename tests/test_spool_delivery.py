"""The durable spool end to end: real HTTP to the capture server, real processes, real files.

What each test shows:

- an outage at 2,000 ev/s loses nothing with a spool, where memory only drops events;
- ``kill -9`` during an outage, then a new process on the same file: every event that reached
  the worker is delivered exactly once;
- events left at exit wait in the file for the next process;
- two and four processes replaying one file never send the same event twice;
- a corrupt file is moved aside, a read-only path and a full disk leave the app running in
  memory only, and health says what happened;
- ``python -m analytics_queue spool PATH`` shows and replays a file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid as uuid_module
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analytics_queue import AnalyticsQueue
from analytics_queue._spool import Spool
from analytics_queue.event import EventEncoder, QueuedEvent
from analytics_queue.testing import CaptureServer

KEY = "phc_spool_test"
RATE = 2000  # events per second
CHILD_TIMEOUT = 60


def spooled_uuids(path: Path) -> set[str]:
    """The uuids of the events a spool file holds (read with plain sqlite3)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT events FROM batches").fetchall()
    return {json.loads(line)["uuid"] for (data,) in rows for line in bytes(data).split(b"\n")}


def fill_spool(path: Path, n: int) -> set[str]:
    """Write ``n`` encoded events into a spool file, as a process that died left them."""
    encoder = EventEncoder()
    uuids = [str(uuid_module.uuid4()) for _ in range(n)]
    now = time.time()
    queued = [
        QueuedEvent("left_behind", "u1", {"i": i}, None, u, now - n + i)
        for i, u in enumerate(uuids)
    ]
    rows = [(encoder.encode(item), item.tracked_at) for item in queued]
    store = Spool(path, max_bytes=10**9)
    store.add([rows[i : i + 100] for i in range(0, n, 100)], lease=False)
    store.close()
    return set(uuids)


def child_env(server: CaptureServer, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONWARNINGS": "error",
        "POSTHOG_API_KEY": KEY,
        "POSTHOG_HOST": server.url,
        **extra,
    }


def start_child(code: str, server: CaptureServer, **extra: str) -> subprocess.Popen[str]:
    preamble = "import logging\nlogging.basicConfig(level=logging.WARNING)\n"
    return subprocess.Popen(
        [sys.executable, "-c", preamble + textwrap.dedent(code)],
        env=child_env(server, **extra),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(process: subprocess.Popen[str], expected: str) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith(expected):
        process.kill()
        _, err = process.communicate(timeout=CHILD_TIMEOUT)
        raise AssertionError(f"expected {expected!r}, got {line!r}\n{err}")
    return line


def finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Close the child's stdin (its signal to end) and wait for it."""
    out, err = process.communicate("", timeout=CHILD_TIMEOUT)
    assert process.returncode == 0, err
    return out, err


# -- an outage at 2,000 events per second -------------------------------------------------------


class Load:
    """Tracks at RATE events per second on a thread; marks how many were tracked so far."""

    def __init__(self, client: AnalyticsQueue, total: int) -> None:
        self.client = client
        self.total = total
        self.uuids: list[str] = []
        self.accepted = 0
        self._marks: dict[int, threading.Event] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def mark(self, count: int) -> threading.Event:
        return self._marks.setdefault(count, threading.Event())

    def _run(self) -> None:
        pace = threading.Event()  # never set: its wait is the load's clock, not a sync point
        started = time.monotonic()
        for i in range(self.total):
            due = started + i / RATE
            if i % 20 == 0 and due > time.monotonic():
                pace.wait(due - time.monotonic())
            event_id = str(uuid_module.uuid4())
            self.uuids.append(event_id)
            self.accepted += self.client.track("tick", distinct_id="load", uuid=event_id)
            if i + 1 in self._marks:
                self._marks[i + 1].set()


def run_outage(server: CaptureServer, spool_path: Path | None) -> tuple[Load, AnalyticsQueue]:
    """1 s of traffic, a 3 s outage (every request answered 503), 1 s of traffic again."""
    client = AnalyticsQueue(KEY, host=server.url, spool_path=spool_path, flush_interval=0.2)
    load = Load(client, total=5 * RATE)
    outage_starts, outage_ends = load.mark(1 * RATE), load.mark(4 * RATE)
    load.thread.start()
    try:
        assert outage_starts.wait(30)
        server.fail_with(503)
        assert outage_ends.wait(30)
        server.clear_faults()
        load.thread.join(30)
        assert not load.thread.is_alive()
    finally:
        server.clear_faults()
    return load, client


def test_an_outage_at_2000_events_per_second_loses_nothing_with_a_spool(
    capture_server: CaptureServer, tmp_path: Path
) -> None:
    load, client = run_outage(capture_server, tmp_path / "spool.db")
    try:
        assert load.accepted == load.total  # nothing refused: the buffer never filled
        capture_server.wait_for(load.total, timeout=60)
        received = capture_server.uuids()
        assert sorted(received) == sorted(load.uuids)  # every event, each exactly once
        assert capture_server.duplicates() == []
        assert client.shutdown(10)  # at rest: the accounting below is read in one state
        metrics = client.metrics()
        assert metrics.failed == 0 and metrics.refused == 0
        assert metrics.spooled > 0  # the outage went through the file
        assert metrics.queued + metrics.replayed == (
            metrics.delivered + metrics.failed + metrics.spooled + metrics.queue_size
        )
    finally:
        client.shutdown(5)


def test_the_same_outage_without_a_spool_drops_events(capture_server: CaptureServer) -> None:
    load, client = run_outage(capture_server, None)
    try:
        assert client.flush(30)
        metrics = client.metrics()
        assert metrics.failed_by_reason.get("retry_limit", 0) > 0
        assert len(set(capture_server.uuids())) < load.total
    finally:
        client.shutdown(5)


# -- kill -9 and a new process ------------------------------------------------------------------

TRACK_THEN_WAIT_KILLED = """
    import os, sys, threading, uuid
    from analytics_queue import AnalyticsQueue
    q = AnalyticsQueue(spool_path=os.environ["SPOOL"], flush_interval=0.2)
    ids = [str(uuid.uuid4()) for _ in range(1000)]
    for event_id in ids:
        assert q.track("before_kill", distinct_id="u", uuid=event_id)
    ready = threading.Event()
    def watch():
        while q.metrics().spooled < len(ids):
            ready.wait(0.02)
        print("ready", *ids, flush=True)
    threading.Thread(target=watch, daemon=True).start()
    n = 0
    while True:  # the outage goes on: keep tracking until killed
        q.track("during_kill", distinct_id="u")
        n += 1
        if n % 100 == 0:
            threading.Event().wait(0.01)
"""

NEW_PROCESS = """
    import os, sys
    from analytics_queue import AnalyticsQueue
    q = AnalyticsQueue(spool_path=os.environ["SPOOL"], flush_interval=0.2)
    q.track("new_process", distinct_id="u", uuid=os.environ["NEW_UUID"])
    print("ready", flush=True)
    sys.stdin.read()
    m = q.metrics()
    q.shutdown(5)
    print("replayed", m.replayed, flush=True)
"""


def test_kill_9_mid_outage_then_a_new_process_delivers_each_event_exactly_once(
    capture_server: CaptureServer, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    capture_server.down()
    victim = start_child(TRACK_THEN_WAIT_KILLED, capture_server, SPOOL=str(path))
    tracked_first = set(read_line(victim, "ready").split()[1:])
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=CHILD_TIMEOUT)
    assert victim.returncode == -signal.SIGKILL

    reached_worker = spooled_uuids(path)
    assert tracked_first <= reached_worker  # on disk before the kill
    capture_server.up()
    new_uuid = str(uuid_module.uuid4())
    successor = start_child(NEW_PROCESS, capture_server, SPOOL=str(path), NEW_UUID=new_uuid)
    read_line(successor, "ready")
    capture_server.wait_for(len(reached_worker) + 1, timeout=60)
    out, _ = finish(successor)

    received = capture_server.uuids()
    assert capture_server.duplicates() == []
    assert set(received) == reached_worker | {new_uuid}
    assert f"replayed {len(reached_worker)}" in out
    assert spooled_uuids(path) == set()


EXIT_WHILE_DOWN = """
    import os
    from analytics_queue import AnalyticsQueue
    q = AnalyticsQueue(spool_path=os.environ["SPOOL"], shutdown_timeout=2.0)
    for i in range(300):
        q.track("at_exit", distinct_id="u", properties={"i": i})
    print("ready", flush=True)
"""


def test_events_left_at_exit_wait_in_the_file_for_the_next_process(
    capture_server: CaptureServer, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    capture_server.down()
    leaving = start_child(EXIT_WHILE_DOWN, capture_server, SPOOL=str(path))
    read_line(leaving, "ready")
    finish(leaving)
    assert len(spooled_uuids(path)) == 300
    capture_server.up()
    successor = start_child(
        NEW_PROCESS, capture_server, SPOOL=str(path), NEW_UUID=str(uuid_module.uuid4())
    )
    read_line(successor, "ready")
    capture_server.wait_for(301, timeout=60)
    finish(successor)
    assert len(capture_server.events("at_exit")) == 300
    assert capture_server.duplicates() == []


# -- several processes on one file --------------------------------------------------------------

REPLAYER = """
    import os, sys
    from analytics_queue import AnalyticsQueue
    q = AnalyticsQueue(spool_path=os.environ["SPOOL"], flush_interval=0.2)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    q.track("replayer_started", distinct_id="u")
    sys.stdin.read()
    m = q.metrics()
    q.shutdown(5)
    print("replayed", m.replayed, flush=True)
"""


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_sharing_one_spool_never_send_an_event_twice(
    capture_server: CaptureServer, tmp_path: Path, processes: int
) -> None:
    path = tmp_path / "spool.db"
    left_behind = fill_spool(path, 6000)
    children = [start_child(REPLAYER, capture_server, SPOOL=str(path)) for _ in range(processes)]
    for child in children:
        read_line(child, "ready")
    for child in children:  # all start at once
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    capture_server.wait_for(len(left_behind) + processes, timeout=90)
    replayed = [int(finish(child)[0].split()[-1]) for child in children]

    assert capture_server.duplicates() == []
    assert {e.uuid for e in capture_server.events("left_behind")} == left_behind
    assert sum(replayed) == len(left_behind)  # each row went through exactly one process


# -- a broken file ------------------------------------------------------------------------------


def test_a_corrupt_file_is_moved_aside_and_the_spool_goes_on(
    capture_server: CaptureServer, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"\x00garbage, not SQLite\x00" * 500)
    client = AnalyticsQueue(KEY, host=capture_server.url, spool_path=path, flush_interval=0.2)
    try:
        for i in range(20):
            assert client.track("after_corruption", distinct_id="u", properties={"i": i})
        assert client.flush(10)
        capture_server.wait_for(20)
        health = client.health()
        spool = health.metrics.spool
        assert spool is not None and spool["moved_to"] and spool["active"]
        assert Path(spool["moved_to"]).read_bytes().startswith(b"\x00garbage")
        assert "spool_moved_aside" in {r.code for r in health.reasons}
        assert health.status == "degraded"
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        client.shutdown(5)


def test_a_read_only_path_leaves_delivery_in_memory_and_health_says_so(
    capture_server: CaptureServer,
) -> None:
    # procfs refuses new files to every user, root included: a truly read-only path.
    client = AnalyticsQueue(
        KEY, host=capture_server.url, spool_path="/proc/analytics-spool.db", flush_interval=0.2
    )
    try:
        for i in range(20):
            assert client.track("read_only", distinct_id="u", properties={"i": i})
        assert client.flush(10)
        assert len(capture_server.wait_for(20)) == 20
        health = client.health()
        spool = health.metrics.spool
        assert spool is not None and not spool["active"] and "read_only" in spool["problem"]
        assert health.status != "healthy"
        assert "spool_unusable" in {r.code for r in health.reasons}
    finally:
        client.shutdown(5)


FILL_THE_DISK = """
    import json, os, resource, signal, sys
    from analytics_queue import AnalyticsQueue
    if os.environ.get("FSIZE"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(os.environ["FSIZE"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    q = AnalyticsQueue(spool_path=os.environ["SPOOL"], flush_interval=0.2, max_queue_size=100000)
    accepted = sum(
        q.track("disk_full", distinct_id="u", properties={"pad": "x" * 300, "i": i})
        for i in range(4000)
    )
    import threading
    pause = threading.Event()
    while not (q.metrics().spool or {}).get("problem"):  # the worker spills until the disk is full
        pause.wait(0.05)
    print("ready", accepted, flush=True)
    sys.stdin.readline()  # the server is up again
    q.flush(30)
    health = q.health().to_dict()
    q.shutdown(5)  # at rest: the accounting is read in one state
    m = q.metrics()
    print(json.dumps({"accepted": accepted, "metrics": m.to_dict(), "health": health}))
"""


def _disk_full_run(server: CaptureServer, command: list[str], **env: str) -> dict[str, Any]:
    server.down()
    process = subprocess.Popen(
        [*command, sys.executable, "-c", textwrap.dedent(FILL_THE_DISK)],
        env=child_env(server, **env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        read_line(process, "ready")  # the worker filled the disk
        server.up()
        assert process.stdin is not None
        process.stdin.write("up\n")
        process.stdin.flush()
        out, err = process.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


def _check_disk_full(report: dict[str, Any], server: CaptureServer) -> None:
    metrics, health = report["metrics"], report["health"]
    assert report["accepted"] == 4000  # the app kept running and track() kept accepting
    spool = metrics["spool"]
    assert spool["problem"], spool
    assert "spool_unusable" in {r["code"] for r in health["reasons"]}, health["reasons"]
    assert server.duplicates() == []
    delivered = len(server.events("disk_full"))
    assert delivered == metrics["delivered"]
    # Every accepted event is accounted for: delivered, failed with a reason, or still held.
    assert metrics["queued"] + metrics["replayed"] == (
        metrics["delivered"] + metrics["failed"] + metrics["spooled"] + metrics["queue_size"]
    )


def test_a_full_disk_a_size_limited_file(capture_server: CaptureServer, tmp_path: Path) -> None:
    report = _disk_full_run(
        capture_server, [], SPOOL=str(tmp_path / "spool.db"), FSIZE=str(768 * 1024)
    )
    _check_disk_full(report, capture_server)


@pytest.fixture
def tiny_tmpfs_command(tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    """A command prefix that runs a child with a 256 KiB tmpfs mounted at ``tmp_path/disk``."""
    disk = tmp_path / "disk"
    disk.mkdir()
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed: cannot mount a private tmpfs")
    probe = subprocess.run(
        [unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o size=256k tmpfs {disk}"],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    script = f'mount -t tmpfs -o size=256k tmpfs {disk} && exec "$@"'
    yield [unshare, "-rm", "sh", "-c", script, "sh"], disk


def test_a_full_disk_a_small_tmpfs(
    capture_server: CaptureServer, tiny_tmpfs_command: tuple[list[str], Path]
) -> None:
    command, disk = tiny_tmpfs_command
    report = _disk_full_run(capture_server, command, SPOOL=str(disk / "spool.db"))
    _check_disk_full(report, capture_server)
    assert "full" in report["metrics"]["spool"]["problem"]


# -- the command line ---------------------------------------------------------------------------


def run_cli(*args: str, server: CaptureServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "analytics_queue", "spool", *args],
        env=child_env(server),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )


def test_the_command_shows_and_replays_a_spool(
    capture_server: CaptureServer, tmp_path: Path
) -> None:
    path = tmp_path / "spool.db"
    left_behind = fill_spool(path, 1200)
    shown = run_cli(str(path), "--json", server=capture_server)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["events"] == 1200 and info["oldest_age_s"] >= 1000 and info["file_bytes"] > 0
    assert capture_server.requests == []  # looking sends nothing

    capture_server.fail_with(503, times=1)
    failed = run_cli(str(path), "--replay", server=capture_server)
    assert failed.returncode == 1 and "replay_left: 1200" in failed.stdout

    replayed = run_cli(str(path), "--replay", "--json", server=capture_server)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["replay_sent"] == 1200
    assert set(capture_server.uuids()) == left_behind and capture_server.duplicates() == []
    assert spooled_uuids(path) == set()


def test_the_command_refuses_a_missing_file(capture_server: CaptureServer, tmp_path: Path) -> None:
    result = run_cli(str(tmp_path / "nothing.db"), server=capture_server)
    assert result.returncode == 2 and "no spool file" in result.stderr
