"""examples/django_app under gunicorn: events reach the capture server, one person per visitor.

The example runs in its own gunicorn process (Django is configured once per process, and the
integration tests configure it differently), bound to port 0; its port is read from gunicorn's
log. A graceful stop (SIGTERM) must deliver what is still queued.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")
pytest.importorskip("gunicorn")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")


class Gunicorn:
    """gunicorn serving the Django example; the port is read from its log."""

    def __init__(self, capture_url: str, flush_interval: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTHOG_", "ANALYTICS_"))}
        env.update(
            POSTHOG_API_KEY="phc_django_example",
            POSTHOG_HOST=capture_url,
            ANALYTICS_QUEUE_FLUSH_INTERVAL=flush_interval,
            DJANGO_SETTINGS_MODULE="examples.django_app.settings",
            PYTHONPATH=str(ROOT),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "1", "-b", "127.0.0.1:0",
             "examples.django_app.wsgi:application"],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.log: list[str] = []
        self.port: int | None = None
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                match = LISTENING.search(line)
                if match and self.port is None:
                    self.port = int(match.group(1))
                if "Booting worker" in line:
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(30) or self.port is None:
            self.stop()
            pytest.fail("gunicorn did not start:\n" + "".join(self.log))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code


@pytest.fixture
def gunicorn(capture_server: Any) -> Iterator[Gunicorn]:
    # A long flush interval: the events stay queued until the graceful stop drains them.
    server = Gunicorn(capture_server.url, flush_interval="60")
    try:
        yield server
    finally:
        server.stop()


def post_story(opener: urllib.request.OpenerDirector, port: int, topic: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/stories/",
        data=json.dumps({"topic": topic}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with opener.open(request, timeout=10) as response:
        assert response.status == 201
        result: dict[str, Any] = json.loads(response.read())
        return result


def test_visitors_are_distinct_people_and_sigterm_delivers_the_queue(
    gunicorn: Gunicorn, capture_server: Any
) -> None:
    assert gunicorn.port is not None
    alice = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    bob = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    assert post_story(alice, gunicorn.port, "owls")["tracked"] is True
    post_story(alice, gunicorn.port, "bats")
    post_story(bob, gunicorn.port, "cats")

    with urllib.request.urlopen(f"http://127.0.0.1:{gunicorn.port}/analytics/health") as resp:
        health = json.loads(resp.read())
    assert health["mode"] == "posthog"
    assert capture_server.events() == []  # still queued: the flush interval is 60 s

    assert gunicorn.stop() == 0
    events = capture_server.wait_for(3, timeout=10)
    by_topic = {e.properties["topic"]: e.distinct_id for e in events}
    assert by_topic["owls"] == by_topic["bats"]  # one visitor, one session, one person
    assert by_topic["owls"] != by_topic["cats"]
    assert "None" not in by_topic.values()
    assert all(e.properties["environment"] == "example" for e in events)


def test_a_request_without_a_topic_is_400(gunicorn: Gunicorn) -> None:
    opener = urllib.request.build_opener()
    with pytest.raises(urllib.error.HTTPError) as caught:
        post_story(opener, gunicorn.port or 0, "")
    caught.value.close()
    assert caught.value.code == 400
