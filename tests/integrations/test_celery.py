"""A real Celery worker (prefork pool, Redis broker started by the test) delivers every event.

The tasks track events through the default instance in the pool's children, which Celery ends
with ``os._exit()``; the worker is stopped with a signal and the capture server counts uuids.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis_server import running_redis
from reliability import record

from analytics_queue.testing import CaptureServer

pytest.importorskip("celery", reason="celery is in the dev extra")
from celery import Celery  # noqa: E402

pytestmark = pytest.mark.slow

KEY = "phc_celery_test"
TASKS = 9
PER_TASK = 7  # per child 7 x k events, k <= 9: never a full batch of 10, always a tail

TASKS_MODULE = """
import os

from celery import Celery

import analytics_queue

app = Celery("tasks", broker=os.environ["TEST_BROKER"], backend=os.environ["TEST_BROKER"])
app.conf.broker_connection_retry_on_startup = True

if os.environ["TEST_HOOKUP"] == "setup":
    import analytics_queue.celery

    analytics_queue.celery.setup()
elif os.environ["TEST_HOOKUP"] == "flush_after_task":
    import analytics_queue.celery

    analytics_queue.celery.setup(flush_after_task=True, timeout=10)


@app.task(name="tasks.track_events")
def track_events(task_no, n):
    tracked = 0
    for i in range(n):
        tracked += analytics_queue.track(
            "celery", distinct_id="u", properties={"task": task_no, "i": i}
        )
    return tracked
"""


@dataclass
class Outcome:
    tracked: int
    exit_seconds: float
    returncode: int
    log: str


def run_worker(
    tmp_path: Path,
    server: CaptureServer,
    *,
    hookup: str,
    stop: signal.Signals,
    worker_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
    delivered_before_stop: bool = False,
) -> Outcome:
    """Start a prefork worker, run the tasks to completion, stop the worker with ``stop``.

    With ``delivered_before_stop``, the worker is stopped only once every event arrived.
    """
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS_MODULE), encoding="utf-8")
    with running_redis(tmp_path) as socket_path:
        url = f"redis+socket://{socket_path}"
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("POSTHOG_", "ANALYTICS_QUEUE_"))
        }
        env.update(
            POSTHOG_API_KEY=KEY,
            POSTHOG_HOST=server.url,
            TEST_BROKER=url,
            TEST_HOOKUP=hookup,
            PYTHONPATH=str(tmp_path),
            **(extra_env or {}),
        )
        log_path = tmp_path / "worker.log"
        with log_path.open("w") as log:
            worker = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "tasks", "worker",
                    "--pool=prefork", "--concurrency=2", "--loglevel=WARNING",
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                    *worker_args,
                ],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            client = Celery("client", broker=url, backend=url)
            try:
                results = [
                    client.send_task("tasks.track_events", args=(k, PER_TASK)) for k in range(TASKS)
                ]
                tracked = sum(int(result.get(timeout=60)) for result in results)
                if delivered_before_stop:
                    server.wait_for(tracked, timeout=30)
                started = time.monotonic()
                worker.send_signal(stop)
                returncode = worker.wait(timeout=60)
                elapsed = time.monotonic() - started
            finally:
                client.close()
                if worker.poll() is None:
                    worker.kill()
                    worker.wait(timeout=30)
    return Outcome(tracked, elapsed, returncode, log_path.read_text())


def check_and_record(
    server: CaptureServer, outcome: Outcome, runtime: str, ending: str, hookup: str
) -> None:
    assert outcome.tracked == TASKS * PER_TASK, outcome.log
    # The children drain before they exit, and the worker waits for its children.
    delivered = len(set(server.uuids()))
    duplicates = len(server.duplicates())
    assert (delivered, duplicates) == (outcome.tracked, 0), outcome.log
    assert "could not be delivered" not in outcome.log, outcome.log
    record(runtime, ending, outcome.tracked, delivered, duplicates, outcome.exit_seconds, hookup)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_prefork_worker_stopped_by_a_signal_delivers_every_event(
    stop: signal.Signals, capture_server: CaptureServer, tmp_path: Path
) -> None:
    outcome = run_worker(tmp_path, capture_server, hookup="setup", stop=stop)
    # Both are a warm shutdown; Celery ends with status 1 after INT, as after Ctrl+C.
    assert outcome.returncode == (0 if stop == signal.SIGTERM else 1), outcome.log
    assert "Warm shutdown" in outcome.log
    ending = "TERM" if stop == signal.SIGTERM else "INT"
    check_and_record(
        capture_server, outcome, "Celery prefork", ending, "analytics_queue.celery.setup()"
    )


def test_recycled_prefork_children_deliver_every_event(
    capture_server: CaptureServer, tmp_path: Path
) -> None:
    outcome = run_worker(
        tmp_path,
        capture_server,
        hookup="setup",
        stop=signal.SIGTERM,
        worker_args=("--max-tasks-per-child=1",),
    )
    assert outcome.returncode == 0, outcome.log
    check_and_record(
        capture_server, outcome, "Celery prefork", "recycle", "analytics_queue.celery.setup()"
    )


def test_a_cold_shutdown_delivers_what_flush_after_task_flushed(
    capture_server: CaptureServer, tmp_path: Path
) -> None:
    # QUIT is Celery's cold shutdown: the pool's children are terminated, no signal is sent.
    # Celery stores a task's result before task_postrun, so the flush after the task may still
    # be running when the result is read: stop once the events arrived, as they do within the
    # flush's timeout. With a 60 s flush interval, only the flush after each task sends them.
    outcome = run_worker(
        tmp_path,
        capture_server,
        hookup="flush_after_task",
        stop=signal.SIGQUIT,
        extra_env={"ANALYTICS_QUEUE_FLUSH_INTERVAL": "60"},
        delivered_before_stop=True,
    )
    check_and_record(
        capture_server,
        outcome,
        "Celery prefork",
        "terminate",
        "analytics_queue.celery.setup(flush_after_task=True)",
    )


def test_setup_refuses_a_negative_timeout() -> None:
    import analytics_queue.celery

    with pytest.raises(ValueError, match="timeout"):
        analytics_queue.celery.setup(timeout=-1)


def test_flush_after_task_flushes_the_given_instance_at_task_postrun(
    capture_server: CaptureServer,
) -> None:
    from celery import signals

    import analytics_queue.celery
    from analytics_queue import AnalyticsQueue

    queue = AnalyticsQueue(api_key=KEY, host=capture_server.url, flush_interval=60, batch_size=1000)
    try:
        analytics_queue.celery.setup(flush_after_task=True, timeout=5, instance=queue)
        queue.track("in_task", distinct_id="u")
        signals.task_postrun.send(sender=None)
        assert len(capture_server.events("in_task")) == 1

        analytics_queue.celery.setup()  # flush_after_task=False disconnects it again
        queue.track("after_setup_again", distinct_id="u")
        signals.task_postrun.send(sender=None)
        assert capture_server.events("after_setup_again") == []
    finally:
        analytics_queue.celery.setup()
        signals.worker_process_shutdown.disconnect(dispatch_uid="analytics_queue.celery")
        queue.shutdown(timeout=2)
