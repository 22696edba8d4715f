"""A real ``rq worker`` with a real redis-server delivers every event its work horses tracked.

Each job runs in a work horse that RQ ends with ``os._exit()``; the capture server counts uuids.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from redis_server import running_redis
from reliability import record

from analytics_queue.testing import CaptureServer

pytest.importorskip("rq", reason="rq is in the dev extra")
from redis import Redis  # noqa: E402
from rq import Queue  # noqa: E402
from rq.job import Job  # noqa: E402

pytestmark = pytest.mark.slow

KEY = "phc_rq_test"
JOBS = 6
PER_JOB = 7  # fewer than a batch: every horse holds events when its job ends

JOBS_MODULE = """
import analytics_queue


def track_events(job_no, n):
    tracked = 0
    for i in range(n):
        tracked += analytics_queue.track("rq", distinct_id="u", properties={"job": job_no, "i": i})
    return tracked
"""

SETTINGS_MODULE = """
import analytics_queue.rq

analytics_queue.rq.setup()
"""


def worker_env(server: CaptureServer, tmp_path: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("POSTHOG_", "ANALYTICS_QUEUE_", "RQ_"))
    }
    env.update(POSTHOG_API_KEY=KEY, POSTHOG_HOST=server.url, PYTHONPATH=str(tmp_path))
    return env


def check_and_record(
    server: CaptureServer, tracked: int, seconds: float, log: str, ending: str, hookup: str
) -> None:
    assert tracked == JOBS * PER_JOB, log
    delivered = len(set(server.uuids()))
    duplicates = len(server.duplicates())
    assert (delivered, duplicates) == (tracked, 0), log
    assert "could not be delivered" not in log, log
    record("RQ worker (fork)", ending, tracked, delivered, duplicates, seconds, hookup)


def enqueue(connection: Redis) -> list[Job]:
    queue = Queue("default", connection=connection)
    return [queue.enqueue("jobs.track_events", k, PER_JOB) for k in range(JOBS)]


def test_a_burst_worker_with_the_worker_class_delivers_every_event(
    capture_server: CaptureServer, tmp_path: Path
) -> None:
    (tmp_path / "jobs.py").write_text(textwrap.dedent(JOBS_MODULE), encoding="utf-8")
    with running_redis(tmp_path) as socket_path, Redis(unix_socket_path=str(socket_path)) as conn:
        jobs = enqueue(conn)
        result = subprocess.run(
            [
                sys.executable, "-m", "rq.cli", "worker", "--burst",
                "--url", f"unix://{socket_path}", "--path", str(tmp_path),
                "--worker-class", "analytics_queue.rq.Worker",
            ],
            cwd=tmp_path,
            env=worker_env(capture_server, tmp_path),
            capture_output=True,
            text=True,
            timeout=90,
        )  # fmt: skip
        exited_at = datetime.now(timezone.utc)
        log = result.stdout + result.stderr
        assert result.returncode == 0, log
        for job in jobs:
            job.refresh()
        tracked = sum(int(job.return_value(refresh=True)) for job in jobs)
        # From the end of the last job (stored by the horse before it drains) to the exit.
        last_end = max(job.ended_at for job in jobs if job.ended_at is not None)
        seconds = (exited_at - last_end.replace(tzinfo=timezone.utc)).total_seconds()
    check_and_record(
        capture_server,
        tracked,
        seconds,
        log,
        "normal",
        "rq worker --worker-class analytics_queue.rq.Worker",
    )


def test_a_worker_stopped_with_term_after_its_jobs_delivers_every_event(
    capture_server: CaptureServer, tmp_path: Path
) -> None:
    (tmp_path / "jobs.py").write_text(textwrap.dedent(JOBS_MODULE), encoding="utf-8")
    (tmp_path / "settings.py").write_text(textwrap.dedent(SETTINGS_MODULE), encoding="utf-8")
    log_path = tmp_path / "worker.log"
    with (
        running_redis(tmp_path) as socket_path,
        Redis(unix_socket_path=str(socket_path)) as conn,
        log_path.open("w") as log_file,
    ):
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "rq.cli", "worker", "--url", f"unix://{socket_path}",
                "--path", str(tmp_path), "--config", "settings",
            ],
            cwd=tmp_path,
            env=worker_env(capture_server, tmp_path),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            jobs = enqueue(conn)
            tracked = 0
            for job in jobs:
                result = job.latest_result(timeout=60)
                assert result is not None, log_path.read_text()
                tracked += int(result.return_value)
            started = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            returncode = worker.wait(timeout=60)
            seconds = time.monotonic() - started
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=30)
    log = log_path.read_text()
    assert returncode == 0, log
    check_and_record(capture_server, tracked, seconds, log, "TERM", "analytics_queue.rq.setup()")


def test_setup_wraps_perform_job_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import rq

    import analytics_queue.rq

    original = rq.Worker.perform_job
    monkeypatch.setattr(rq.Worker, "perform_job", original)  # restored after the test
    analytics_queue.rq.setup()
    wrapped = rq.Worker.perform_job
    analytics_queue.rq.setup()
    assert rq.Worker.perform_job is wrapped
    assert wrapped is not original
    assert wrapped.__wrapped__ is original  # type: ignore[attr-defined]
