"""Exit behaviour, in subprocesses: what the capture server received and how long exit took."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from analytics_queue.testing import CaptureServer

KEY = "phc_exit_test"


def run_script(
    code: str, server: CaptureServer, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``code`` in a fresh interpreter; returns the result and seconds from 'ready' to exit."""
    environ = {
        **os.environ,
        "PYTHONWARNINGS": "error",
        "POSTHOG_API_KEY": KEY,
        "POSTHOG_HOST": server.url,
        **env,
    }
    # The app configures logging, as a real one does: the library itself only has a NullHandler.
    preamble = "import logging\nlogging.basicConfig(level=logging.WARNING)\n"
    process = subprocess.Popen(
        [sys.executable, "-c", preamble + textwrap.dedent(code)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready = process.stdout.readline()
    assert ready.strip() == "ready", ready + (process.stderr.read() if process.stderr else "")
    started = time.monotonic()
    # Read the rest through the same text wrapper: readline() may have buffered lines printed
    # right after "ready", which communicate() (reading the pipe itself) would never see.
    # stderr is small here, so reading stdout to its end first cannot fill stderr's pipe.
    with process:  # closes both pipes
        stdout = process.stdout.read()
        stderr = process.stderr.read() if process.stderr else ""
        process.wait(timeout=60)
    elapsed = time.monotonic() - started
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), elapsed


TRACK_500_AND_EXIT = """
    from analytics_queue import AnalyticsQueue
    q = AnalyticsQueue(flush_interval=60, shutdown_timeout=5)
    for i in range(500):
        q.track("exit", distinct_id="u", properties={"i": i})
    print("ready", flush=True)
"""


def test_500_events_queued_at_exit_all_arrive_from_a_slow_server(
    capture_server: CaptureServer,
) -> None:
    capture_server.delay_responses(0.3)
    result, elapsed = run_script(TRACK_500_AND_EXIT, capture_server)
    assert result.returncode == 0, result.stderr
    assert len(capture_server.events("exit")) == 500
    assert capture_server.duplicates() == []
    assert elapsed < 5 + 0.5 + 2  # within the budget; generous margin for interpreter teardown
    assert "could not be delivered" not in result.stderr


def test_exit_keeps_its_budget_when_the_server_is_down(capture_server: CaptureServer) -> None:
    capture_server.down()
    code = TRACK_500_AND_EXIT.replace("shutdown_timeout=5", "shutdown_timeout=1")
    result, elapsed = run_script(code, capture_server)
    assert result.returncode == 0
    assert elapsed < 1 + 0.5 + 1.5
    assert "could not be delivered before exit" in result.stderr
    assert KEY not in result.stderr


def test_exit_keeps_its_budget_when_the_server_never_answers(
    capture_server: CaptureServer,
) -> None:
    capture_server.hang()
    code = TRACK_500_AND_EXIT.replace("shutdown_timeout=5", "shutdown_timeout=1")
    result, elapsed = run_script(code, capture_server)
    assert result.returncode == 0
    assert elapsed < 1 + 0.5 + 1.5
    assert "500 event(s) could not be delivered before exit" in result.stderr


def test_a_signal_raising_systemexit_inside_the_exit_drain_still_logs_the_count(
    capture_server: CaptureServer,
) -> None:
    # gunicorn's SIGABRT handler raises SystemExit inside a running atexit handler.
    capture_server.hang()
    code = """
        import signal, sys
        from analytics_queue import AnalyticsQueue
        def abort(signum, frame):
            sys.exit(1)
        signal.signal(signal.SIGALRM, abort)
        q = AnalyticsQueue(flush_interval=60, shutdown_timeout=30)
        for i in range(7):
            q.track("exit", distinct_id="u")
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        print("ready", flush=True)
    """
    result, elapsed = run_script(code, capture_server)
    assert elapsed < 10
    assert "7 event(s) could not be delivered before exit" in result.stderr
    assert "Traceback" not in result.stderr


def test_events_tracked_inside_an_atexit_handler_are_delivered_without_a_new_thread(
    capture_server: CaptureServer,
) -> None:
    code = """
        import atexit, threading
        from analytics_queue import AnalyticsQueue
        q = AnalyticsQueue(flush_interval=60)

        def late():
            # As on Python 3.12+: no new thread may start at interpreter shutdown.
            def refuse(self):
                raise RuntimeError("can't create new thread at interpreter shutdown")
            threading.Thread.start = refuse
            q.track("at_exit", distinct_id="u")

        atexit.register(late)  # registered after ours, so it runs before ours
        print("ready", flush=True)
    """
    result, _ = run_script(code, capture_server)
    assert result.returncode == 0, result.stderr
    assert len(capture_server.events("at_exit")) == 1


@pytest.mark.parametrize("instances", [2])
def test_one_shared_budget_for_every_instance(
    capture_server: CaptureServer, instances: int
) -> None:
    capture_server.delay_responses(0.3)
    code = f"""
        from analytics_queue import AnalyticsQueue
        queues = [AnalyticsQueue(flush_interval=60, shutdown_timeout=3) for _ in range({instances})]
        for n, q in enumerate(queues):
            for i in range(50):
                q.track("multi", distinct_id=str(n), properties={{"i": i}})
        print("ready", flush=True)
    """
    result, elapsed = run_script(code, capture_server)
    assert result.returncode == 0, result.stderr
    assert len(capture_server.events("multi")) == 50 * instances
    assert elapsed < 3 + 0.5 + 2


def test_the_opt_in_sigterm_handler_exits_143_after_the_exit_drain(
    capture_server: CaptureServer,
) -> None:
    # waitress installs no SIGTERM handler: without ours, SIGTERM loses the queue.
    code = """
        import os, signal
        import analytics_queue
        from analytics_queue import AnalyticsQueue
        analytics_queue.install_sigterm_handler()
        analytics_queue.install_sigterm_handler()  # twice installs it once
        q = AnalyticsQueue(flush_interval=60)
        for i in range(20):
            q.track("sigterm", distinct_id="u", properties={"i": i})
        print("ready", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()  # never reached past the default action
    """
    result, elapsed = run_script(code, capture_server)
    assert result.returncode == 143, result.stderr
    assert len(capture_server.events("sigterm")) == 20
    assert elapsed < 10


def test_the_sigterm_handler_chains_a_previous_handler_then_exits_after_the_drain(
    capture_server: CaptureServer,
) -> None:
    code = """
        import os, signal
        import analytics_queue
        from analytics_queue import AnalyticsQueue
        import sys
        # stderr: stdout's first line is read by the test, and later bytes may sit in its buffer.
        def previous(signum, frame):
            print("previous", signum, file=sys.stderr)
        signal.signal(signal.SIGTERM, previous)
        analytics_queue.install_sigterm_handler()
        q = AnalyticsQueue(flush_interval=60)
        for i in range(20):
            q.track("chained", distinct_id="u", properties={"i": i})
        print("ready", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()
    """
    result, elapsed = run_script(code, capture_server)
    assert result.returncode == 143, result.stderr
    assert f"previous {int(signal.SIGTERM)}" in result.stderr
    assert len(capture_server.events("chained")) == 20
    assert elapsed < 10


def test_sigterm_stays_ignored_when_it_was_ignored(capture_server: CaptureServer) -> None:
    code = """
        import os, signal
        import analytics_queue
        from analytics_queue import AnalyticsQueue
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        analytics_queue.install_sigterm_handler()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        q = AnalyticsQueue(flush_interval=60)
        q.track("ignored", distinct_id="u")
        print("ready", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        import sys
        print("still running", file=sys.stderr)
    """
    result, _ = run_script(code, capture_server)
    assert result.returncode == 0, result.stderr
    assert "still running" in result.stderr
    assert len(capture_server.events("ignored")) == 1  # delivered by the normal exit drain


def test_without_the_handler_sigterm_loses_the_queue(capture_server: CaptureServer) -> None:
    # The failure the handler exists for, shown so that the test above can be trusted.
    code = """
        import os, signal
        from analytics_queue import AnalyticsQueue
        q = AnalyticsQueue(flush_interval=60)
        q.track("sigterm", distinct_id="u")
        print("ready", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()
    """
    result, _ = run_script(code, capture_server)
    assert result.returncode == -signal.SIGTERM
    assert capture_server.events("sigterm") == []


def test_events_of_a_garbage_collected_instance_are_still_delivered_at_exit(
    capture_server: CaptureServer,
) -> None:
    code = """
        import gc
        from analytics_queue import AnalyticsQueue

        def send_and_forget():
            q = AnalyticsQueue(flush_interval=60)
            for i in range(5):
                q.track("forgotten", distinct_id="u", properties={"i": i})

        send_and_forget()
        gc.collect()
        print("ready", flush=True)
    """
    result, _ = run_script(code, capture_server)
    assert result.returncode == 0, result.stderr
    assert len(capture_server.events("forgotten")) == 5


def test_a_logging_handler_that_tracks_cannot_deadlock_the_default_instance(
    capture_server: CaptureServer,
) -> None:
    # The default instance logs a bad environment value while it is being built; a handler
    # that tracks every warning must not wait for that construction forever.
    code = """
        import logging
        import analytics_queue

        class Tracking(logging.Handler):
            def emit(self, record):
                analytics_queue.track("log_line", distinct_id="logger")

        logging.getLogger().addHandler(Tracking())
        assert analytics_queue.track("real", distinct_id="u")
        print("ready", flush=True)
    """
    result, elapsed = run_script(code, capture_server, ANALYTICS_QUEUE_BATCH_SIZE="ten")
    assert result.returncode == 0, result.stderr
    assert [e.event for e in capture_server.events()] == ["real"]
