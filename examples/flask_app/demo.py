"""``make demo``: the story demo under gunicorn, each analytics mode measured side by side.

    python -m examples.flask_app.demo [--once] [--requests 30] [--generation-seconds 0.05]

1. Starts the local capture server (``python -m analytics_queue.testing``) answering every
   request after 300 ms, like a remote PostHog — unless ``POSTHOG_API_KEY`` and ``POSTHOG_HOST``
   are both set, in which case events go to that PostHog.
2. Starts the demo app under ``gunicorn -w 3 --preload`` on a socket this script binds to a port
   the OS picks (passed to gunicorn as ``--bind fd://N``: no free-port guessing, no race).
3. Sends story requests in each mode (``async``, ``blocking``, ``off``) with a short generation
   time, and prints p50/p95 route latency per mode, the time ``track()`` took, the events the
   capture server received and the health every worker reports.
4. Keeps serving at the printed URL until Ctrl-C (``--once``: exits after the table).

Installs nothing: ``make demo`` has installed the project with its dev extra first. Exits 0
when every request succeeded and every tracked event arrived, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[2]
MODES = ("async", "blocking", "off")
WORKERS = 3
DEMO_KEY = "phc_story_demo"
#: Seconds a waiting event stays queued in the demo: short, so the table fills in quickly.
FLUSH_INTERVAL = 1.0
REQUEST_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def say(text: str = "", out: TextIO | None = None) -> None:
    print(text, file=out or sys.stdout, flush=True)


class CaptureServerProcess:
    """``python -m analytics_queue.testing --print`` in a subprocess, its output counted."""

    def __init__(self, delay: float) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "analytics_queue.testing",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--delay",
                str(delay),
                "--print",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches this script only; it stops us in order
        )
        self.url: str | None = None
        self.accepted = 0
        self.echo = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="capture-server-output")
        self._thread.daemon = True
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                if self.url is None:
                    match = re.search(r"listening on (http://\S+)", line)
                    if match:
                        self.url = match.group(1)
                else:
                    accepted = re.search(r"\baccepted=(\d+)", line)
                    if accepted:
                        self.accepted += int(accepted.group(1))
                self._cond.notify_all()
            if self.echo:
                say("  capture server: " + line.rstrip())
        with self._cond:
            self._cond.notify_all()

    def wait_ready(self, timeout: float) -> str:
        with self._cond:
            self._cond.wait_for(
                lambda: self.url is not None or self.proc.poll() is not None, timeout
            )
            if self.url is None:
                raise RuntimeError("the capture server did not start")
            return self.url

    def wait_for_total(self, total: int, timeout: float) -> int:
        """Wait until ``total`` events were accepted in all, or ``timeout``; return the count."""
        with self._cond:
            self._cond.wait_for(lambda: self.accepted >= total, timeout)
            return self.accepted

    def stop(self) -> None:
        _stop_process(self.proc, signal.SIGTERM)
        self._thread.join(STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _stop_process(proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def capture_server(delay: float) -> Iterator[CaptureServerProcess]:
    server = CaptureServerProcess(delay)
    try:
        server.wait_ready(timeout=30.0)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def gunicorn(env: dict[str, str], workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """gunicorn on a socket bound here to a port the OS picked, handed over as ``fd://N``."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                str(workers),
                "--preload",
                "--bind",
                f"fd://{fd}",
                "--log-level",
                "warning",
                "--graceful-timeout",
                "10",
                "examples.flask_app:create_app()",
            ],
            cwd=ROOT,
            env=env,
            pass_fds=(fd,),
            start_new_session=True,
        )
    finally:
        listener.close()  # gunicorn holds its own copy now
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        # TERM: a graceful stop, each worker flushes its queue at exit.
        _stop_process(proc, signal.SIGTERM)


@dataclass
class ModeResult:
    mode: str
    route_ms: list[float] = field(default_factory=list)
    track_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    tracked: int = 0
    received: int | None = None

    @property
    def expected(self) -> int:
        return 0 if self.mode == "off" else self.tracked


def percentile(values: Sequence[float], pct: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        with err:
            payload = err.read()
        try:
            decoded = json.loads(payload)
        except ValueError:
            decoded = payload.decode(errors="replace")
        return err.code, dict(err.headers), decoded


def story_request(base: str, mode: str, i: int) -> tuple[float, dict[str, Any] | str]:
    started = time.perf_counter()
    status, _, body = http(
        "POST",
        f"{base}/stories?analytics={mode}",
        {"topic": f"demo topic {i % 7}"},
        {"X-User-Id": f"demo-user-{i % 5}"},
    )
    elapsed = (time.perf_counter() - started) * 1000.0
    if status != 201 or not isinstance(body, dict):
        return elapsed, f"HTTP {status}: {body}"
    return elapsed, body


def run_mode(base: str, mode: str, count: int, concurrency: int) -> ModeResult:
    result = ModeResult(mode)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"demo-{mode}") as pool:
        for elapsed, body in pool.map(lambda i: story_request(base, mode, i), range(count)):
            if isinstance(body, str):
                result.errors.append(body)
                continue
            result.route_ms.append(elapsed)
            result.track_ms.append(float(body["timings_ms"]["track"]))
            result.tracked += bool(body["analytics"]["tracked"])
    return result


def worker_health(base: str) -> dict[str, str]:
    """The health of every worker process, by pid, as the app's ``/demo/queue`` reports it."""
    status, _, body = http("GET", f"{base}/demo/queue")
    if not isinstance(body, dict):
        return {"?": f"HTTP {status}"}
    seen: dict[str, str] = {}
    for worker in body["workers"]:
        reasons = "; ".join(worker["reasons"])
        seen[str(worker["pid"])] = (
            f"{worker['status']} ({worker['mode']} mode, delivered {worker['delivered']}, "
            f"failed {worker['failed']}, queue size {worker['queue_size']})"
            + (f": {reasons}" if reasons else "")
        )
    return seen


def print_table(results: list[ModeResult], local: bool) -> None:
    header = (
        f"{'mode':<9} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'track() p50 ms':>15} {'track() p95 ms':>15}  events received"
    )
    say(header)
    say("-" * len(header))
    for r in results:
        received = f"{r.received} / {r.expected}" if r.received is not None else "n/a (PostHog)"
        say(
            f"{r.mode:<9} {len(r.route_ms):>8} {percentile(r.route_ms, 50):>8.1f} "
            f"{percentile(r.route_ms, 95):>8.1f} {percentile(r.track_ms, 50):>15.3f} "
            f"{percentile(r.track_ms, 95):>15.3f}  {received}"
        )
    by_mode = {r.mode: r for r in results}
    if all(by_mode[m].route_ms for m in MODES):
        off = percentile(by_mode["off"].route_ms, 50)
        say()
        say(
            "Added to the median request by analytics: "
            f"async {percentile(by_mode['async'].route_ms, 50) - off:+.1f} ms, "
            f"blocking {percentile(by_mode['blocking'].route_ms, 50) - off:+.1f} ms"
            + (" (the capture server answers in 300 ms)." if local else ".")
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.flask_app.demo",
        description="The story demo under gunicorn: analytics modes measured side by side.",
    )
    parser.add_argument("--once", action="store_true", help="exit after printing the table")
    parser.add_argument("--requests", type=int, default=30, help="story requests per mode (30)")
    parser.add_argument(
        "--generation-seconds",
        type=float,
        default=0.05,
        help="time each story takes to 'generate' (0.05; the app's own default is 2.0)",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=0.3,
        help="seconds the local capture server waits before answering (0.3, like a remote PostHog)",
    )
    parser.add_argument("--workers", type=int, default=WORKERS, help="gunicorn workers (3)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.workers < 1 or args.generation_seconds < 0 or args.delay < 0:
        parser.error("--requests and --workers must be >= 1; times must be >= 0")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("gunicorn") is None:
        say("gunicorn is not installed: run `make demo`, which installs the dev extra.", sys.stderr)
        return 2
    # Ctrl-C and SIGTERM both stop the demo in order (even when started in the background,
    # where a shell may have set SIGINT to be ignored): gunicorn first, then the capture server.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        say("\ninterrupted: stopped gunicorn and the capture server", sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    """Start the servers, measure each mode, print the table, then serve (unless --once)."""
    remote_key, remote_host = os.environ.get("POSTHOG_API_KEY"), os.environ.get("POSTHOG_HOST")
    local = not (remote_key and remote_host)
    if local and (remote_key or remote_host):
        say("POSTHOG_API_KEY and POSTHOG_HOST must both be set to use a real PostHog;")
        say("using the local capture server instead.")

    with contextlib.ExitStack() as stack:
        capture: CaptureServerProcess | None = None
        if local:
            capture = stack.enter_context(capture_server(args.delay))
            destination = f"the local capture server at {capture.url} (answers in {args.delay}s)"
            api_key, host = DEMO_KEY, capture.url or ""
        else:
            destination = f"PostHog at {remote_host}"
            api_key, host = remote_key or "", remote_host or ""
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="story-demo-"))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_QUEUE_")},
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "POSTHOG_API_KEY": api_key,
            "POSTHOG_HOST": host,
            "ANALYTICS_MODE": "async",
            "STORY_GENERATION_SECONDS": str(args.generation_seconds),
            "DATABASE": os.path.join(workdir, "stories.sqlite3"),
            "ANALYTICS_QUEUE_FLUSH_INTERVAL": str(FLUSH_INTERVAL),
            "ANALYTICS_QUEUE_ENVIRONMENT": "demo",
        }
        base, proc = stack.enter_context(gunicorn(env, args.workers))

        say(f"Story demo: gunicorn -w {args.workers} --preload at {base}, events to {destination}.")
        say(
            f"Each story takes {args.generation_seconds * 1000:.0f} ms to generate; "
            f"{args.requests} requests per mode, {args.workers} at a time."
        )
        http("GET", f"{base}/analytics/health")  # waits until gunicorn serves
        if proc.poll() is not None:
            say(f"gunicorn exited with code {proc.returncode}", sys.stderr)
            return 1

        # Warm-up, not measured: each worker's first requests pay for imports and SQLite setup.
        run_mode(base, "off", 2 * args.workers, args.workers)

        results: list[ModeResult] = []
        for mode in MODES:
            before = capture.accepted if capture else 0
            result = run_mode(base, mode, args.requests, args.workers)
            if capture is not None:
                # async: the workers send within FLUSH_INTERVAL; blocking: already sent;
                # off: give a stray event the same chance to show up.
                wait = FLUSH_INTERVAL + args.delay + 10.0 if mode == "async" else 2.0
                target = before + (result.expected or 1)
                total = capture.wait_for_total(target, wait if result.expected else 1.0)
                result.received = total - before
            results.append(result)

        say()
        print_table(results, local)
        say()
        for pid, verdict in sorted(worker_health(base).items()):
            say(f"health of worker {pid}: {verdict}")
        say("(each gunicorn worker has its own queue; each writes its health to the app's")
        say(" database every second, and /demo/queue reads them all)")

        ok = True
        for r in results:
            for error in r.errors[:3]:
                say(f"{r.mode}: request failed: {error}", sys.stderr)
            ok = ok and not r.errors
            if r.received is not None and r.received != r.expected:
                say(f"{r.mode}: {r.received} events received, {r.expected} expected", sys.stderr)
                ok = False
        if args.once:
            return 0 if ok else 1

        say()
        say(f"The demo is serving at {base}/ — open it in a browser: the bars and the timings")
        say("include the requests above, the queue panel sums every worker. Ctrl-C to stop.")
        if capture is not None:
            capture.echo = True
        try:
            proc.wait()
            say(f"gunicorn exited with code {proc.returncode}", sys.stderr)
            return 1
        except KeyboardInterrupt:
            say("\nstopping: gunicorn flushes each worker's queue, then the capture server stops")
            return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
