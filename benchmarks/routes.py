"""Route latency under a real WSGI server: the demo app under gunicorn, modes off/async/blocking.

gunicorn (2 gthread workers) serves `examples.flask_app:create_app()` on a socket this process
binds and hands over (`--bind fd://N`, no port race). The capture server (another process)
answers every request after 300 ms. The load comes from a separate process at a fixed
concurrency: `wrk` when it is installed (Debian package `wrk`), else `benchmarks._loadgen`.
Each round runs every mode, in a rotating order, and the report takes the median of the rounds.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import PYTHON, ROOT, child_env, median, ratio, server_process

MODES = ("off", "async", "blocking")
BODY = '{"topic": "space pirates"}'
USER_ID = "bench-user"

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-User-Id"] = "%(user)s"
done = function(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'RESULT {"tool": "wrk", "requests": %%d, "duration_s": %%.6f, "rps": %%.3f, ' ..
    '"errors": %%d, "non2xx": %%d, "p50_ms": %%.3f, "p95_ms": %%.3f, "p99_ms": %%.3f, ' ..
    '"max_ms": %%.3f}\\n',
    summary.requests, secs, summary.requests / secs,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def pick_loadgen(choice: str = "auto") -> str:
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    return choice


class Gunicorn:
    """gunicorn serving the demo on a socket bound here, stopped with SIGTERM (graceful)."""

    def __init__(self, capture_url: str, story_seconds: float, workers: int, threads: int) -> None:
        self.capture_url = capture_url
        self.story_seconds = story_seconds
        self.workers = workers
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.url = ""
        self.log = tempfile.TemporaryFile()

    def start(self) -> Gunicorn:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(2048)
        fd = self.sock.fileno()
        os.set_inheritable(fd, True)
        port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = child_env(
            {
                "POSTHOG_API_KEY": "phc_benchmark_key",
                "POSTHOG_HOST": self.capture_url,
                "STORY_GENERATION_SECONDS": str(self.story_seconds),
                "ANALYTICS_MODE": "async",
            }
        )
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "gunicorn",
                "examples.flask_app:create_app()",
                "--bind",
                f"fd://{fd}",
                "--workers",
                str(self.workers),
                "--worker-class",
                "gthread",
                "--threads",
                str(self.threads),
                "--keep-alive",
                "30",
                "--graceful-timeout",
                "15",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            pass_fds=(fd,),
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited {self.proc.returncode}:\n{self.output()}")
            if self._ready():
                return self
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer:\n{self.output()}")

    def _ready(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", int(self.url.rsplit(":", 1)[1]), 5)
            conn.request(
                "POST",
                "/stories?analytics=off",
                body=BODY,
                headers={"Content-Type": "application/json", "X-User-Id": USER_ID},
            )
            ok = 200 <= conn.getresponse().status < 300
            conn.close()
            return ok
        except OSError:
            return False

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.sock is not None:
            self.sock.close()
        self.log.close()

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load(url: str, tool: str, concurrency: int, duration: float, script: Path) -> dict[str, Any]:
    if tool == "wrk":
        cmd = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ]
    else:
        cmd = [
            PYTHON,
            "-m",
            "benchmarks._loadgen",
            "--url",
            url,
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--body",
            BODY,
            "--header",
            f"X-User-Id: {USER_ID}",
        ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=duration + 120
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"load generator failed ({proc.returncode}): {proc.stdout}{proc.stderr}")


def run(
    duration: float,
    rounds: int,
    concurrency: int = 8,
    story_seconds: float = 0.05,
    delay: float = 0.3,
    loadgen: str = "auto",
    warmup: float = 1.0,
    log: Any = print,
) -> dict[str, Any]:
    tool = pick_loadgen(loadgen)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT % {"body": BODY, "user": USER_ID})
        with server_process(delay=delay) as server:
            with Gunicorn(server.url, story_seconds, workers=2, threads=concurrency) as app:
                warm: list[dict[str, Any]] = []
                if warmup > 0:
                    for mode in MODES:
                        url = f"{app.url}/stories?analytics={mode}"
                        warm.append(load(url, tool, concurrency, warmup, script) | {"mode": mode})
                for r in range(rounds):
                    order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
                    for mode in order:
                        result = load(
                            f"{app.url}/stories?analytics={mode}",
                            tool,
                            concurrency,
                            duration,
                            script,
                        )
                        result.update(mode=mode, round=r)
                        runs.append(result)
                        log(
                            f"  route {mode:8s} round {r}: p50 {result['p50_ms']:.1f} ms, "
                            f"p95 {result['p95_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                            f"{result['rps']:.1f} req/s, {result['errors']} errors, "
                            f"{result['non2xx']} non-2xx"
                        )
                gunicorn_log = app.output()
            delivered = server.settle(quiet=1.0, timeout=30)
    summary: dict[str, Any] = {}
    for mode in MODES:
        mine = [x for x in runs if x["mode"] == mode]
        summary[mode] = {
            key: median([x[key] for x in mine]) for key in ("p50_ms", "p95_ms", "p99_ms", "rps")
        }
        summary[mode]["requests"] = sum(x["requests"] for x in mine)
        summary[mode]["errors"] = sum(x["errors"] + x["non2xx"] for x in mine)
    for q in ("p50", "p95", "p99"):
        per_round = []
        added = []
        for r in range(rounds):
            by_mode = {x["mode"]: x for x in runs if x["round"] == r}
            per_round.append(ratio(by_mode["async"][f"{q}_ms"], by_mode["off"][f"{q}_ms"]))
            added.append(by_mode["blocking"][f"{q}_ms"] - by_mode["off"][f"{q}_ms"])
        summary[f"async_over_off_{q}"] = median(per_round)
        summary[f"blocking_added_{q}_ms"] = median(added)
    expected = sum(x["requests"] for x in runs + warm if x["mode"] != "off")
    return {
        "tool": tool,
        "expected_events": expected,
        "duration_s": duration,
        "rounds": rounds,
        "concurrency": concurrency,
        "story_seconds": story_seconds,
        "server_delay_s": delay,
        "gunicorn": {"workers": 2, "worker_class": "gthread", "threads": concurrency},
        "server_events": delivered.events,
        "server_requests": delivered.requests,
        "runs": runs,
        "summary": summary,
        "gunicorn_log_tail": gunicorn_log[-1500:],
    }
