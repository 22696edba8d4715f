"""Fork safety: os.fork with an alarm in the child, and gunicorn --preload with 3 workers."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from analytics_queue import AnalyticsQueue
from analytics_queue.testing import CaptureServer

KEY = "phc_fork_test"


@pytest.fixture
def queue(capture_server: CaptureServer) -> Iterator[AnalyticsQueue]:
    q = AnalyticsQueue(api_key=KEY, host=capture_server.url, flush_interval=60)
    yield q
    q.shutdown(timeout=2)


def fork_and_run(child: object) -> int:
    """Fork; the child runs ``child()`` under a 10 s alarm and exits with its return code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # a deadlock kills the child
            signal.alarm(10)
            code = child()  # type: ignore[operator]
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert not os.WIFSIGNALED(status), f"child killed by signal {os.WTERMSIG(status)} (deadlock?)"
    return os.WEXITSTATUS(status)


def test_the_child_starts_empty_and_delivers_its_own_events(
    queue: AnalyticsQueue, capture_server: CaptureServer
) -> None:
    for i in range(5):
        queue.track("before_fork", distinct_id="parent", properties={"i": i})

    def child() -> int:
        if queue.queue_size != 0:
            return 3  # the parent's events must not be sent twice
        for i in range(3):
            queue.track("in_child", distinct_id="child", properties={"i": i})
        return 0 if queue.flush(timeout=5) else 4

    assert fork_and_run(child) == 0
    assert queue.flush(timeout=5)
    assert len(capture_server.events("before_fork")) == 5
    assert len(capture_server.events("in_child")) == 3
    assert capture_server.duplicates() == []


def test_a_fork_while_the_worker_is_mid_request_does_not_deadlock_the_child(
    queue: AnalyticsQueue, capture_server: CaptureServer
) -> None:
    capture_server.delay_responses(1.0, times=1)
    queue.track("slow", distinct_id="parent")
    # Wakes the worker, which then holds its send lock in a request the server delays.
    assert queue.flush(timeout=0.2) is False

    def child() -> int:
        queue.track("in_child", distinct_id="child")
        return 0 if queue.flush(timeout=5) else 4

    assert fork_and_run(child) == 0
    assert queue.flush(timeout=5)
    assert len(capture_server.events("slow")) == 1
    assert len(capture_server.events("in_child")) == 1


def test_a_fork_that_skips_pythons_hooks_is_caught_by_the_pid_check(
    queue: AnalyticsQueue, capture_server: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue.track("before_fork", distinct_id="parent")
    # What a C-level fork (uWSGI without py-call-uwsgi-fork-hooks) looks like from Python:
    # the process id changes but no after-fork hook ran.
    real_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real_pid + 100_000)
    assert queue.queue_size == 0  # the "child" never sees the parent's queue
    assert queue.track("after_fake_fork", distinct_id="child")
    assert queue.queue_size == 1
    assert queue.flush(timeout=5)
    assert [e.event for e in capture_server.events()] == ["after_fake_fork"]


WSGI_APP = """
import os
from analytics_queue import AnalyticsQueue

analytics = AnalyticsQueue(flush_interval=60, shutdown_timeout=5)
# Tracked in the master before the fork: the master's worker thread exists when gunicorn forks.
analytics.track("app_loaded", distinct_id="master", properties={"pid": os.getpid()})

def app(environ, start_response):
    analytics.track("request", distinct_id="visitor", properties={"pid": os.getpid()})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_gunicorn_preload_with_three_workers_delivers_every_event_once(
    capture_server: CaptureServer, tmp_path: Path
) -> None:
    gunicorn = shutil.which("gunicorn", path=os.path.dirname(sys.executable))
    if gunicorn is None:
        pytest.skip("gunicorn is not installed in this environment (dev extra)")
    (tmp_path / "fork_app.py").write_text(WSGI_APP)
    sock = str(tmp_path / "gunicorn.sock")
    env = {
        **os.environ,
        "POSTHOG_API_KEY": KEY,
        "POSTHOG_HOST": capture_server.url,
        "PYTHONPATH": str(tmp_path),
    }
    server = subprocess.Popen(
        [
            gunicorn,
            "--preload",
            "-w",
            "3",
            "--bind",
            f"unix:{sock}",
            "--graceful-timeout",
            "20",
            "fork_app:app",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        booted = 0
        for line in server.stdout:  # pytest-timeout guards this read
            booted += "Booting worker" in line
            if booted == 3:
                break
        pids: set[str] = set()
        for _ in range(60):
            conn = UnixHTTPConnection(sock)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                pids.add(response.read().decode())
                assert response.status == 200
            finally:
                conn.close()
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 0, output
    requests = capture_server.events("request")
    assert len(requests) == 60
    assert {e.properties["pid"] for e in requests} <= {int(p) for p in pids}
    assert len(capture_server.events("app_loaded")) == 1  # by the master, never by a worker
    assert capture_server.duplicates() == []
