"""What every benchmark shares: the event, the two clients, statistics and child processes.

Every measured sender runs in a child process of its own (a fresh interpreter, so one library's
threads and caches never disturb the other's figures) and the capture server runs in another
(`benchmarks._server_proc`), so that its CPU is never counted as the sender's.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# The same event everywhere: what the demo's story route tracks, a flat dict of 8 keys.
EVENT = "story_generated"
DISTINCT_ID = "user-123"
PROPERTIES: dict[str, Any] = {
    "topic": "space pirates",
    "words": 412,
    "model": "story-v2",
    "duration_ms": 812.5,
    "premium": True,
    "locale": "en-US",
    "referrer": None,
    "retries": 2,
}
API_KEY = "phc_benchmark_key"


@dataclass(frozen=True)
class Sizes:
    """Rounds of the caller-cost benchmarks (`test_caller_cost.py`, chosen in conftest.py)."""

    full: bool
    rounds_fast: int  # track(), capture(), put_nowait
    warmup_fast: int
    rounds_blocking_0ms: int
    rounds_blocking_300ms: int


FULL = Sizes(True, 20_000, 500, 800, 15)
QUICK = Sizes(False, 300, 20, 5, 2)
SMOKE = Sizes(False, 20, 2, 2, 1)


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of values, linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return float(ordered[lo])
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def median(values: Sequence[float]) -> float:
    return quantile(values, 0.5)


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p95, p99 and mean of timings given in seconds, reported in microseconds."""
    return {
        "n": len(seconds),
        "median_us": median(seconds) * 1e6,
        "p95_us": quantile(seconds, 0.95) * 1e6,
        "p99_us": quantile(seconds, 0.99) * 1e6,
        "mean_us": (sum(seconds) / len(seconds) * 1e6) if seconds else math.nan,
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


def closed_port_url() -> str:
    """The URL of a local port nobody listens on: a capture server that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def make_ours(url: str, **options: Any) -> Any:
    from analytics_queue import AnalyticsQueue

    return AnalyticsQueue(api_key=API_KEY, host=url, **options)


def make_posthog(url: str, **options: Any) -> Any:
    import posthog

    return posthog.Posthog(API_KEY, host=url, **options)


def track_fn(client: Any, lib: str) -> Any:
    """`send(properties=PROPERTIES)` for one library: the same event and distinct_id everywhere."""
    if lib == "ours":
        track = client.track

        def send_ours(properties: dict[str, Any] = PROPERTIES) -> Any:
            return track(EVENT, distinct_id=DISTINCT_ID, properties=properties)

        return send_ours
    capture = client.capture

    def send_posthog(properties: dict[str, Any] = PROPERTIES) -> Any:
        return capture(EVENT, distinct_id=DISTINCT_ID, properties=properties)

    return send_posthog


def flush(client: Any, lib: str, timeout: float) -> None:
    if lib == "ours":
        client.flush(timeout=timeout)
    else:
        client.flush(timeout_seconds=timeout)


def quiet_posthog_logging() -> None:
    """posthog logs every dropped or failed batch; the benchmarks count instead."""
    import logging

    logging.getLogger("posthog").setLevel(logging.CRITICAL)
    logging.getLogger("analytics_queue").setLevel(logging.CRITICAL)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    # Nothing from the caller's environment may configure the measured clients.
    for key in list(env):
        if key.startswith(("ANALYTICS_QUEUE_", "POSTHOG_")):
            del env[key]
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def run_child(
    module: str, args: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `python -m module args` and return the JSON object on its last `RESULT ` line."""
    proc = subprocess.run(
        [PYTHON, "-m", module, *args],
        cwd=ROOT,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(
        f"{module} {' '.join(args)} exited {proc.returncode} without a result:\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )


def emit(result: dict[str, Any]) -> None:
    """Print a child's result for `run_child` and flush it (children may leave with os._exit)."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


@dataclass
class ServerStats:
    requests: int
    events: int


class ServerProcess:
    """The project's CaptureServer running in a process of its own, driven over stdin/stdout.

    Counting what it received is a line-based request (`stats`), so the sender's process never
    pays for the server's parsing, and the server's CPU is never counted as the sender's.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> ServerProcess:
        self._proc = subprocess.Popen(
            [PYTHON, "-m", "benchmarks._server_proc", "--delay", str(self.delay)],
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self._readline(timeout=30)
        if not line.startswith("READY "):
            raise RuntimeError(f"capture server process did not start: {line!r}")
        self.url = line.split(" ", 1)[1].strip()
        return self

    def _readline(self, timeout: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise TimeoutError("capture server process did not answer")
        return self._proc.stdout.readline()

    def command(self, *words: object, timeout: float = 60) -> Any:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self._proc.stdin.flush()
        line = self._readline(timeout)
        if not line:
            raise RuntimeError("capture server process exited")
        return json.loads(line)

    def stats(self) -> ServerStats:
        data = self.command("stats")
        return ServerStats(requests=data["requests"], events=data["events"])

    def reset(self) -> None:
        self.command("reset")

    def wait_for(self, events: int, timeout: float) -> ServerStats:
        """Wait until the server holds at least `events` events (or the timeout passed)."""
        data = self.command("wait", events, timeout, timeout=timeout + 30)
        return ServerStats(requests=data["requests"], events=data["events"])

    def settle(self, quiet: float = 0.3, timeout: float = 10.0) -> ServerStats:
        """Wait until no event arrived for `quiet` seconds; return the counts then."""
        deadline = time.monotonic() + timeout
        last = self.stats()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.stats()
            if now == last:
                return now
            last = now
        return last

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.write("quit\n")
                self._proc.stdin.flush()
                self._proc.stdin.close()
            self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        finally:
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def server_process(delay: float = 0.0) -> Iterator[ServerProcess]:
    with ServerProcess(delay) as server:
        yield server


def machine_info() -> dict[str, Any]:
    model = ""
    mhz: list[float] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("cpu MHz"):
                mhz.append(float(line.split(":", 1)[1]))
    except OSError:
        model = platform.processor()
    import importlib.metadata as md

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "cpu_mhz": mhz,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "switch_interval_s": sys.getswitchinterval(),
        "analytics_queue": version("analytics-queue"),
        "posthog": version("posthog"),
        "gunicorn": version("gunicorn"),
    }
