"""gevent and eventlet: a monkey-patched process, ``gunicorn -k gevent`` and eventlet's WSGI server.

Every runtime runs in a subprocess with a timeout. Each shows the same things: ``track()`` never
waits (not even behind a send that PostHog holds open), ``metrics()`` and ``health()`` answer,
``/analytics/health`` says 200, and every event arrives exactly once, the last ones from the
exit drain.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability import record

from analytics_queue import _green
from analytics_queue._buffer import EventBuffer
from analytics_queue.testing import CaptureServer

KEY = "phc_green_test"
RUNTIMES = ["gevent", "eventlet"]

#: eventlet warns on import that it is deprecated: not the subject of these tests.
EVENTLET_QUIET = (
    "import warnings; warnings.filterwarnings('ignore', message=r'\\s*Eventlet is deprecated'); "
)
PATCH = {
    "gevent": "from gevent import monkey; monkey.patch_all()",
    "eventlet": EVENTLET_QUIET + "import eventlet; eventlet.monkey_patch()",
}


def _environment(server: CaptureServer, **extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("POSTHOG_", "ANALYTICS_QUEUE_"))
    }
    root = str(Path(__file__).resolve().parent.parent)
    env.update(
        POSTHOG_API_KEY=KEY,
        POSTHOG_HOST=server.url,
        PYTHONPATH=os.pathsep.join(p for p in (extra.pop("PYTHONPATH", ""), root) if p),
        PYTHONWARNINGS="error",
        **extra,
    )
    return env


def _uuids_once(server: CaptureServer, event: str, count: int) -> int:
    """Wait for ``count`` events named ``event``; returns how many uuids came more than once."""
    server.wait_for(count, timeout=15)
    events = server.events(event)
    uuids = [e.uuid for e in events]
    assert len(events) == count, f"{len(events)} {event!r} events, expected {count}"
    return len(uuids) - len(set(uuids))


# -- the queue class -----------------------------------------------------------------------


def test_queue_class_is_the_standard_librarys_when_nothing_patched_it() -> None:
    assert _green.patched_by() is None
    assert _green.queue_class() is queue.Queue
    assert issubclass(EventBuffer, queue.Queue)


def test_a_rebuilt_queue_class_keeps_the_stdlib_internals_and_exceptions() -> None:
    # What analytics_queue uses when gevent or eventlet replaced queue.Queue before it was
    # imported: the same source, run again, raising the real module's exceptions.
    cls = _green._rebuilt_queue_class()
    assert cls is not queue.Queue and cls.__module__ == "queue"
    q = cls(2)
    q.put_nowait("a")
    q.put_nowait("b")
    with q.mutex:
        assert list(q.queue) == ["a", "b"]
    with pytest.raises(queue.Full):
        q.put_nowait("c")
    assert q.get_nowait() == "a"
    q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get_nowait()


# -- a plain monkey-patched script ---------------------------------------------------------

SCRIPT = """
    {patch}
    import json
    import {lib}
    from analytics_queue import _green, AnalyticsQueue

    q = AnalyticsQueue(batch_size=5, flush_interval=0.2, shutdown_timeout=5)
    assert q.track("green", distinct_id="u", properties={{"i": 0}})  # starts the worker

    # track() never yields to the hub: a greenlet spawned now runs only when we yield.
    ran = []
    {lib}.spawn(ran.append, 1)
    accepted = sum(q.track("green", distinct_id="u", properties={{"i": i}}) for i in range(1, 20))
    yielded_in_track = bool(ran)
    flushed = q.flush(timeout=10)  # a cooperative wait: the worker greenlet sends meanwhile
    metrics, health = q.metrics(), q.health()
    for i in range(20, 40):  # left for the exit drain
        q.track("green", distinct_id="u", properties={{"i": i}})
    print(json.dumps({{
        "patched_by": _green.patched_by(),
        "accepted": accepted + 1,
        "yielded_in_track": yielded_in_track,
        "flushed": flushed,
        "delivered": metrics.delivered,
        "status": health.status,
        "reasons": [str(r) for r in health.reasons],
    }}), flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("lib", RUNTIMES)
def test_a_monkey_patched_script_delivers_every_event_once(
    lib: str, capture_server: CaptureServer
) -> None:
    code = textwrap.dedent(SCRIPT.format(patch=PATCH[lib], lib=lib))
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        env=_environment(capture_server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # pytest-timeout guards this read
    started = time.monotonic()
    stdout, stderr = process.communicate(timeout=30)
    exit_seconds = time.monotonic() - started
    assert line, stderr
    report = json.loads(line)
    assert report["patched_by"] == lib
    assert report["accepted"] == 20
    assert report["yielded_in_track"] is False
    assert report["flushed"] is True, stderr
    assert report["delivered"] == 20
    assert report["status"] == "healthy", report["reasons"]
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    duplicates = _uuids_once(capture_server, "green", 40)
    record(
        runtime=f"{lib}: monkey-patched script",
        ending="normal",
        tracked=40,
        delivered=len(capture_server.events("green")),
        duplicates=duplicates,
        exit_seconds=exit_seconds,
    )
    assert duplicates == 0


# -- real servers ----------------------------------------------------------------------------

APP = """
from flask import Flask
from analytics_queue.flask import FlaskAnalytics

app = Flask(__name__)
app.config.update(
    ANALYTICS_QUEUE_BATCH_SIZE=5,
    ANALYTICS_QUEUE_FLUSH_INTERVAL=0.2,
    ANALYTICS_QUEUE_TIMEOUT=30.0,
)
analytics = FlaskAnalytics(app)


@app.get("/track/<int:i>")
def track(i):
    tracked = analytics.track("request", distinct_id="visitor", properties={"i": i})
    return ("queued" if tracked else "refused"), 200
"""

EVENTLET_SERVER = """
import warnings
warnings.filterwarnings("ignore", message=r"\\s*Eventlet is deprecated")
import eventlet
eventlet.monkey_patch()
import signal, sys
import eventlet.wsgi
from green_app import app

sock = eventlet.listen(("127.0.0.1", 0))
print("port", sock.getsockname()[1], flush=True)
server = eventlet.spawn(eventlet.wsgi.server, sock, app, log_output=False)
hub = eventlet.hubs.get_hub()
# As gunicorn's eventlet worker did: the signal only schedules the stop on the hub.
signal.signal(signal.SIGTERM, lambda *_: hub.schedule_call_global(0, server.kill))
try:
    server.wait()
except BaseException:
    pass
"""


class _Lines:
    """Reads a process's output on a thread, so a test can wait for a line with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self._stream = process.stdout
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        with self._cond:
            found = self._cond.wait_for(
                lambda: any(text in line for line in self.lines), timeout=timeout
            )
            assert found, f"no line with {text!r} in:\n" + "".join(self.lines)
            return next(line for line in self.lines if text in line)

    def text(self) -> str:
        """Everything the process wrote, once it closed its output."""
        self._thread.join(10)
        self._stream.close()
        return "".join(self.lines)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    # gunicorn's gevent worker patches before it imports the app; the eventlet script patches
    # first itself, as gunicorn's eventlet worker (removed in gunicorn 26) did.
    (tmp_path / "green_app.py").write_text(APP)
    (tmp_path / "eventlet_server.py").write_text(EVENTLET_SERVER)
    return tmp_path


@pytest.fixture
def app_server(
    server: str, app_dir: Path, capture_server: CaptureServer
) -> Iterator[tuple[str, subprocess.Popen[str], _Lines]]:
    """Start the app; yields its base URL, the process and its output."""
    env = _environment(capture_server, PYTHONPATH=str(app_dir))
    if server == "gunicorn-gevent":
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "gevent",
            "-w",
            "1",
            "--bind",
            "127.0.0.1:0",
            "--graceful-timeout",
            "20",
            "green_app:app",
        ]
    else:
        command = [sys.executable, str(app_dir / "eventlet_server.py")]
    process = subprocess.Popen(
        command,
        env=env,
        cwd=app_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = _Lines(process)
    try:
        if server == "gunicorn-gevent":
            listening = lines.wait_for("Listening at: ")
            url = listening.split("Listening at: ")[1].split()[0]
            lines.wait_for("Booting worker")
        else:
            url = "http://127.0.0.1:" + lines.wait_for("port ").split()[1]
        yield url, process, lines
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        lines.text()


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("server", ["gunicorn-gevent", "eventlet-wsgi"])
def test_a_green_server_answers_while_posthog_is_slow_and_delivers_every_event_once(
    server: str,
    app_server: tuple[str, subprocess.Popen[str], _Lines],
    capture_server: CaptureServer,
) -> None:
    url, process, lines = app_server
    # PostHog ingests the first batch but holds its answer: the worker greenlet waits on it.
    capture_server.delay_responses(60, times=1)
    for i in range(5):
        assert _get(f"{url}/track/{i}") == (200, b"queued")
    capture_server.wait_for_requests(1, timeout=15)

    # Meanwhile requests are served and track() accepts at once: nothing waits behind the send.
    for i in range(5, 20):
        assert _get(f"{url}/track/{i}") == (200, b"queued")
    status, body = _get(f"{url}/analytics/health")
    assert status == 200, body
    health = json.loads(body)
    assert health["status"] in ("healthy", "degraded"), health
    status, body = _get(f"{url}/analytics/metrics")
    assert status == 200, body
    assert json.loads(body)["queued"] == 20

    capture_server.clear_faults()  # the held answer goes out; the rest follow
    capture_server.wait_for(20, timeout=15)
    status, body = _get(f"{url}/analytics/health")
    assert (status, json.loads(body)["status"]) == (200, "healthy"), body

    for i in range(20, 30):  # left for the exit drain
        assert _get(f"{url}/track/{i}") == (200, b"queued")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    exit_seconds = time.monotonic() - started
    output = lines.text()
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    duplicates = _uuids_once(capture_server, "request", 30)
    record(
        runtime="gunicorn -k gevent" if server == "gunicorn-gevent" else "eventlet.wsgi",
        ending="TERM",
        tracked=30,
        delivered=len(capture_server.events("request")),
        duplicates=duplicates,
        exit_seconds=exit_seconds,
    )
    assert duplicates == 0
