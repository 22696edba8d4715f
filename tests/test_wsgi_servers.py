"""The servers most apps deploy on, ended each way they end in production: rows of the matrix.

gunicorn (sync with and without ``--preload``, gthread), waitress, uWSGI workers and a plain
``python app.py`` each serve a tiny Flask app that tracks a few events per request and sends
nothing on a timer (``flush_interval=60``): every event waits in the process until the way the
process ends delivers it, or loses it. The test ends the server the named way, measures the
seconds from the signal to the end of the process, and counts the distinct event uuids the
capture server received: every event must arrive exactly once.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from reliability import record
from test_uwsgi_master import UnixHTTPConnection, _workers_idle

from analytics_queue.testing import CaptureServer

KEY = "phc_wsgi_servers_test"
ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 8
EVENTS_PER_REQUEST = 3
SIGTERM_HOOKUP = "analytics_queue.install_sigterm_handler()"

APP = f"""
import os
from flask import Flask
from analytics_queue import AnalyticsQueue

# Nothing leaves on a timer while the test runs: the way the process ends delivers each event.
analytics = AnalyticsQueue(flush_interval=60, shutdown_timeout=10)
app = Flask(__name__)

@app.get("/track/<int:number>")
def track(number):
    for i in range({EVENTS_PER_REQUEST}):
        analytics.track(
            "request", distinct_id="visitor", properties={{"request": number, "i": i}}
        )
    return str(os.getpid())
"""

# gunicorn's settings file: says when a worker has loaded the app and can take a signal.
GUNICORN_CONF = """
def post_worker_init(worker):
    worker.log.info("worker ready (pid: %s)", worker.pid)
"""

# The waitress app: the module opts in to the SIGTERM handler when waitress imports it.
WAITRESS_APP = """
import analytics_queue
from wsgi_app import app

analytics_queue.install_sigterm_handler()
"""

# `python app.py`: Flask's development server (werkzeug) on a port the OS picks.
SCRIPT = f"""
import sys
from werkzeug.serving import make_server
import analytics_queue
from wsgi_app import app

server = make_server("127.0.0.1", 0, app)
print("port", server.port, flush=True)
if sys.argv[1] == "normal":
    for _ in range({REQUESTS}):  # serves its requests, then the script ends
        server.handle_request()
    server.server_close()
else:
    analytics_queue.install_sigterm_handler()
    server.serve_forever()
"""


class _Server:
    """A server process whose output a thread reads, so a test can wait for a line."""

    def __init__(
        self, command: Sequence[str], cwd: Path, env: dict[str, str], **popen: object
    ) -> None:
        self.process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **popen,  # type: ignore[call-overload]
        )
        assert self.process.stdout is not None
        self._stream = self.process.stdout
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()

    def wait_for_line(self, text: str, count: int = 1, timeout: float = 30.0) -> str:
        """The first line holding ``text``, once ``count`` lines hold it."""
        with self._cond:
            found = self._cond.wait_for(
                lambda: sum(text in line for line in self._lines) >= count, timeout=timeout
            )
            assert found, f"not {count} lines with {text!r} in:\n" + "".join(self._lines)
            return next(line for line in self._lines if text in line)

    def end(self, signum: signal.Signals | None) -> float:
        """Send ``signum`` (None: none, the process ends by itself); seconds until it exited."""
        started = time.monotonic()
        if signum is not None:
            self.process.send_signal(signum)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)  # faulthandler prints each thread's stack
            self.process.wait(10)
            pytest.fail(f"still running 60 s after {signum!r}:\n{self.output()}")
        return time.monotonic() - started

    def output(self) -> str:
        self._reader.join(10)
        with self._cond:
            return "".join(self._lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(10)
        self._stream.close()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "wsgi_app.py").write_text(APP)
    (tmp_path / "gunicorn_conf.py").write_text(GUNICORN_CONF)
    (tmp_path / "waitress_app.py").write_text(WAITRESS_APP)
    (tmp_path / "app.py").write_text(SCRIPT)
    return tmp_path


@pytest.fixture
def env(capture_server: CaptureServer, app_dir: Path) -> dict[str, str]:
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("POSTHOG_", "ANALYTICS_QUEUE_"))
    }
    return {
        **clean,
        "POSTHOG_API_KEY": KEY,
        "POSTHOG_HOST": capture_server.url,
        "PYTHONPATH": os.pathsep.join([str(app_dir), str(ROOT)]),
        "PYTHONFAULTHANDLER": "1",
    }


@pytest.fixture
def servers() -> Iterator[list[_Server]]:
    """Servers a test started; any still running at the end is killed.

    A shell without job control starts background jobs with SIGINT ignored, and a server
    would inherit that: Python then installs no KeyboardInterrupt handler and INT does nothing.
    While the test runs, pytest's own SIGINT is Python's default, which a server inherits as
    the system default.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    started: list[_Server] = []
    try:
        yield started
    finally:
        for server in started:
            server.kill()
        signal.signal(signal.SIGINT, previous)


def _get(url: str) -> int:
    """GET ``url``; the pid of the process that answered."""
    with urllib.request.urlopen(url, timeout=20) as response:
        assert response.status == 200
        return int(response.read())


def _tcp_listener() -> socket.socket:
    """A socket listening on 127.0.0.1 at a port the OS picked, for a server to inherit."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.set_inheritable(True)
    return listener


def _wait_until_gone(pids: set[int], timeout: float = 30.0) -> None:
    """Poll until no process has one of ``pids`` (gunicorn's master reaps its workers)."""
    pause, deadline = threading.Event(), time.monotonic() + timeout
    while True:
        alive = set()
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            alive.add(pid)
        if not alive:
            return
        assert time.monotonic() < deadline, f"processes {sorted(alive)} still run"
        pause.wait(0.02)


def _check_and_record(
    capture_server: CaptureServer,
    runtime: str,
    ending: str,
    exit_seconds: float,
    requests: int = REQUESTS,
    hookup: str = "nothing",
    output: str = "",
) -> None:
    """Count distinct uuids at the capture server, record the row, require each event once."""
    tracked = requests * EVENTS_PER_REQUEST
    try:
        capture_server.wait_for(tracked, timeout=10)
    except TimeoutError:
        pass  # recorded, then the assertions below say what is missing
    uuids = capture_server.uuids()
    delivered = len(set(uuids))
    duplicates = len(uuids) - delivered
    record(
        runtime=runtime,
        ending=ending,
        tracked=tracked,
        delivered=delivered,
        duplicates=duplicates,
        exit_seconds=exit_seconds,
        hookup=hookup,
    )
    assert (delivered, duplicates) == (tracked, 0), output
    assert "could not be delivered" not in output, output


# -- gunicorn --------------------------------------------------------------------------------


def _gunicorn(
    env: dict[str, str], app_dir: Path, servers: list[_Server], *options: str
) -> tuple[str, _Server]:
    """gunicorn serving the app with 2 workers on an inherited socket (``--bind fd://N``).

    Returns its URL once both workers have loaded the app.
    """
    listener = _tcp_listener()
    try:
        port = listener.getsockname()[1]
        command = [sys.executable, "-m", "gunicorn", "--bind", f"fd://{listener.fileno()}"]
        command += ["-c", "gunicorn_conf.py", "-w", "2", "--graceful-timeout", "20", *options]
        server = _Server([*command, "wsgi_app:app"], app_dir, env, pass_fds=(listener.fileno(),))
    finally:
        listener.close()  # gunicorn holds its own copy now
    servers.append(server)
    server.wait_for_line("worker ready", count=2)
    return f"http://127.0.0.1:{port}", server


SYNC = {
    "gunicorn sync -w 2": (),
    "gunicorn sync -w 2 --preload": ("--preload",),
}


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("runtime", list(SYNC))
@pytest.mark.parametrize("ending", ["TERM", "INT"])
def test_gunicorn_sync_delivers_every_event_when_stopped(
    runtime: str,
    ending: str,
    env: dict[str, str],
    app_dir: Path,
    servers: list[_Server],
    capture_server: CaptureServer,
) -> None:
    url, server = _gunicorn(env, app_dir, servers, *SYNC[runtime])
    for number in range(REQUESTS):
        _get(f"{url}/track/{number}")
    # TERM: a graceful stop; INT: a quick one (the master sends the workers QUIT).
    exit_seconds = server.end(signal.SIGTERM if ending == "TERM" else signal.SIGINT)
    output = server.output()
    assert server.process.returncode == 0, output
    _check_and_record(capture_server, runtime, ending, exit_seconds, output=output)


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("runtime", list(SYNC))
def test_gunicorn_sync_workers_recycled_by_max_requests_deliver_their_events(
    runtime: str,
    env: dict[str, str],
    app_dir: Path,
    servers: list[_Server],
    capture_server: CaptureServer,
) -> None:
    # Each worker exits after one request: every event leaves with a recycled worker, none is
    # left for the stop at the end.
    url, server = _gunicorn(env, app_dir, servers, *SYNC[runtime], "--max-requests", "1")
    requests = REQUESTS // 2  # each request waits for a fresh worker to boot
    pids = {_get(f"{url}/track/{number}") for number in range(requests)}
    assert len(pids) == requests  # one worker per request: each was recycled
    finished = time.monotonic()
    _wait_until_gone(pids)
    exit_seconds = time.monotonic() - finished  # from the last answer to the last worker's end
    try:
        capture_server.wait_for(requests * EVENTS_PER_REQUEST, timeout=10)
    except TimeoutError:
        pass  # the row below records what is missing
    delivered_by_recycling = len(capture_server.uuids())
    server.end(signal.SIGTERM)
    output = server.output()
    assert server.process.returncode == 0, output
    _check_and_record(
        capture_server, runtime, "recycle", exit_seconds, requests=requests, output=output
    )
    assert delivered_by_recycling == requests * EVENTS_PER_REQUEST, output


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("runtime", list(SYNC))
def test_gunicorn_sync_reload_by_hup_delivers_the_old_workers_events(
    runtime: str,
    env: dict[str, str],
    app_dir: Path,
    servers: list[_Server],
    capture_server: CaptureServer,
) -> None:
    url, server = _gunicorn(env, app_dir, servers, *SYNC[runtime])
    half = REQUESTS // 2
    old = {_get(f"{url}/track/{number}") for number in range(half)}
    # HUP: new workers start, the old ones stop gracefully and take their events with them.
    started = time.monotonic()
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_line("worker ready", count=4)
    _wait_until_gone(old)
    exit_seconds = time.monotonic() - started  # from HUP to the last old worker's end
    try:
        capture_server.wait_for(half * EVENTS_PER_REQUEST, timeout=10)
    except TimeoutError:
        pass  # the row below records what is missing
    delivered_by_reload = len(capture_server.uuids())
    new = {_get(f"{url}/track/{number}") for number in range(half, REQUESTS)}
    assert not new & old
    server.end(signal.SIGTERM)
    output = server.output()
    assert server.process.returncode == 0, output
    _check_and_record(capture_server, runtime, "HUP", exit_seconds, output=output)
    assert delivered_by_reload == half * EVENTS_PER_REQUEST, output


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_gunicorn_gthread_delivers_every_event_when_stopped_with_term(
    env: dict[str, str], app_dir: Path, servers: list[_Server], capture_server: CaptureServer
) -> None:
    url, server = _gunicorn(env, app_dir, servers, "-k", "gthread", "--threads", "4")
    with ThreadPoolExecutor(4) as pool:  # concurrent requests: several threads track at once
        list(pool.map(lambda n: _get(f"{url}/track/{n}"), range(REQUESTS)))
    exit_seconds = server.end(signal.SIGTERM)
    output = server.output()
    assert server.process.returncode == 0, output
    _check_and_record(
        capture_server, "gunicorn gthread -w 2 --threads 4", "TERM", exit_seconds, output=output
    )


# -- waitress and python app.py ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("ending", ["TERM", "INT"])
def test_waitress_delivers_every_event_when_stopped(
    ending: str,
    env: dict[str, str],
    app_dir: Path,
    servers: list[_Server],
    capture_server: CaptureServer,
) -> None:
    waitress = shutil.which("waitress-serve", path=os.path.dirname(sys.executable))
    if waitress is None:
        pytest.skip("waitress is not installed in this environment (dev extra)")
    # TERM needs the opt-in handler (waitress installs none: SIGTERM would end the process
    # without running atexit); INT is a KeyboardInterrupt, after which atexit runs.
    module = "waitress_app:app" if ending == "TERM" else "wsgi_app:app"
    server = _Server([waitress, "--listen=127.0.0.1:0", module], app_dir, env)
    servers.append(server)
    port = server.wait_for_line("Serving on http://").strip().rsplit(":", 1)[1]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: _get(f"http://127.0.0.1:{port}/track/{n}"), range(REQUESTS)))
    exit_seconds = server.end(signal.SIGTERM if ending == "TERM" else signal.SIGINT)
    output = server.output()
    # waitress catches SystemExit and KeyboardInterrupt, stops its threads and returns: 0.
    assert server.process.returncode == 0, output
    hookup = SIGTERM_HOOKUP if ending == "TERM" else "nothing"
    _check_and_record(
        capture_server, "waitress", ending, exit_seconds, hookup=hookup, output=output
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("ending", ["normal", "TERM"])
def test_a_python_app_py_script_delivers_every_event_when_it_ends(
    ending: str,
    env: dict[str, str],
    app_dir: Path,
    servers: list[_Server],
    capture_server: CaptureServer,
) -> None:
    server = _Server([sys.executable, "app.py", ending], app_dir, env)
    servers.append(server)
    port = server.wait_for_line("port ").split()[1]
    for number in range(REQUESTS):
        _get(f"http://127.0.0.1:{port}/track/{number}")
    exit_seconds = server.end(signal.SIGTERM if ending == "TERM" else None)
    output = server.output()
    # The handler exits as SIGTERM's default would report it, after the exit drain: 128 + 15.
    assert server.process.returncode == (143 if ending == "TERM" else 0), output
    hookup = SIGTERM_HOOKUP if ending == "TERM" else "nothing"
    _check_and_record(
        capture_server,
        "python app.py (werkzeug server)",
        ending,
        exit_seconds,
        hookup=hookup,
        output=output,
    )


# -- uWSGI workers ---------------------------------------------------------------------------

# The option, and how many times the app loads: in each worker, or once in the master.
UWSGI = {
    "uWSGI --master --lazy-apps --die-on-term": ("--lazy-apps", 2),
    "uWSGI --master --py-call-uwsgi-fork-hooks --die-on-term": ("--py-call-uwsgi-fork-hooks", 1),
}


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("runtime", list(UWSGI))
@pytest.mark.parametrize("ending", ["TERM", "INT"])
def test_uwsgi_workers_deliver_every_event_when_stopped(
    runtime: str,
    ending: str,
    env: dict[str, str],
    app_dir: Path,
    servers: list[_Server],
    capture_server: CaptureServer,
) -> None:
    uwsgi = shutil.which("uwsgi", path=os.path.dirname(sys.executable))
    if uwsgi is None:
        pytest.skip("uwsgi is not installed in this environment (the dev extra builds it)")
    sock, stats = str(app_dir / "uwsgi.sock"), str(app_dir / "stats.sock")
    command = [uwsgi, "--master", "--processes", "2", "--enable-threads", "--die-on-term"]
    option, loads = UWSGI[runtime]
    command += ["--http-socket", sock, "--stats", stats, "--need-app", option]
    command += ["--pythonpath", str(app_dir), "--module", "wsgi_app:app"]
    server = _Server(command, app_dir, env)
    servers.append(server)
    server.wait_for_line("spawned uWSGI worker", count=2)
    # A signal that finds a worker still importing the app interrupts the import (--need-app
    # then ends uWSGI with status 22): stop a server that has finished starting.
    server.wait_for_line("WSGI app 0 (mountpoint='') ready", count=loads)
    for number in range(REQUESTS):
        conn = UnixHTTPConnection(sock)
        try:
            conn.request("GET", f"/track/{number}")
            response = conn.getresponse()
            assert response.status == 200
            response.read()
        finally:
            conn.close()
    # uWSGI skips a worker's exit handlers when INT finds it busy, and a client has its answer
    # before the worker marks the request done: signal once every worker is idle.
    pause, deadline = threading.Event(), time.monotonic() + 20
    while not _workers_idle(stats, REQUESTS):
        assert time.monotonic() < deadline, "uWSGI's workers did not become idle"
        pause.wait(0.02)
    exit_seconds = server.end(signal.SIGTERM if ending == "TERM" else signal.SIGINT)
    output = server.output()
    assert server.process.returncode == 0, output
    _check_and_record(capture_server, runtime, ending, exit_seconds, output=output)
