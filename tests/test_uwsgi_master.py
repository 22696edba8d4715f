"""A real uWSGI master (``--master``, no ``--lazy-apps``): the master's event and the workers'.

uWSGI loads the app in the master, forks the workers at the C level (Python's fork hooks do not
run) and never runs Python's exit handlers in the master. An event tracked while the app loads
must still arrive once, and the workers must not wait at exit for the master's thread, which
they do not have.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from reliability import record

from analytics_queue.testing import CaptureServer

KEY = "phc_uwsgi_test"

APP = """
import logging, os
from analytics_queue import AnalyticsQueue

logging.basicConfig(level=logging.WARNING)
# A long flush interval: nothing is sent on a timer while the test runs, as with gunicorn
# --preload, where the master's exit handler delivers the master's event.
analytics = AnalyticsQueue(flush_interval=60, shutdown_timeout=5)
# Tracked in the uWSGI master while it loads the app, before it forks the workers.
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


def _workers_idle(stats: str, requests: int) -> bool:
    """True once uWSGI's stats say every worker is idle after ``requests`` requests in all.

    uWSGI skips a worker's exit handlers when a SIGINT finds it busy, and a client sees its
    answer before the worker marks the request done.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(stats)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    workers = json.loads(b"".join(chunks))["workers"]
    return sum(w["requests"] for w in workers) == requests and all(
        w["status"] == "idle" for w in workers
    )


def _uwsgi() -> str:
    found = shutil.which("uwsgi", path=os.path.dirname(sys.executable))
    if found is None:
        pytest.skip("uwsgi is not installed in this environment (the dev extra builds it)")
    return found


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("ending", ["TERM", "INT"])
def test_the_masters_event_arrives_once_and_workers_exit_without_waiting(
    ending: str, capture_server: CaptureServer, tmp_path: Path
) -> None:
    (tmp_path / "uwsgi_app.py").write_text(APP)
    sock = str(tmp_path / "uwsgi.sock")
    stats = str(tmp_path / "stats.sock")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("POSTHOG_", "ANALYTICS_"))},
        "POSTHOG_API_KEY": KEY,
        "POSTHOG_HOST": capture_server.url,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parent.parent)]),
    }
    server = subprocess.Popen(
        [
            _uwsgi(),
            "--master",
            "--processes",
            "2",
            "--http-socket",
            sock,
            "--module",
            "uwsgi_app:app",
            "--die-on-term",
            "--need-app",
            "--stats",
            stats,
            "--pythonpath",
            str(tmp_path),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        assert server.stdout is not None
        spawned = 0
        for line in server.stdout:  # pytest-timeout guards this read
            output.append(line)
            spawned += "spawned uWSGI worker" in line
            if spawned == 2:
                break
        for _ in range(20):
            conn = UnixHTTPConnection(sock)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                assert response.status == 200
                response.read()
            finally:
                conn.close()
        pause, deadline = threading.Event(), time.monotonic() + 20
        while not _workers_idle(stats, 20) and time.monotonic() < deadline:
            pause.wait(0.05)
    finally:
        started = time.monotonic()
        server.send_signal(signal.SIGTERM if ending == "TERM" else signal.SIGINT)
        rest, _ = server.communicate(timeout=60)
        exit_seconds = time.monotonic() - started
    text = "".join(output) + rest
    assert server.returncode == 0, text
    try:
        capture_server.wait_for(21, timeout=10)
    except TimeoutError:
        pass  # recorded, then the assertions below say what is missing
    uuids = capture_server.uuids()
    duplicates = len(uuids) - len(set(uuids))
    record(
        runtime="uWSGI --master (app loaded in the master)",
        ending=ending,
        tracked=21,
        delivered=len(set(uuids)),
        duplicates=duplicates,
        exit_seconds=exit_seconds,
    )
    assert len(capture_server.events("app_loaded")) == 1, text
    assert len(capture_server.events("request")) == 20, text
    assert duplicates == 0
    # Before the fix each worker waited its whole budget for the master's thread, then
    # reported the master's events as its own.
    assert "could not be delivered" not in text, text
