"""The demo page in a real browser: Debian's Chromium, headless, driven by playwright.

Never downloads a browser: it uses the system Chromium at ``/usr/bin/chromium`` (``.ci/run``
installs Debian's ``chromium`` package) and skips, with the reason, when it is missing.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from examples.flask_app import create_app, shutdown_app

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ENV_PREFIXES = ("POSTHOG_", "ANALYTICS_")


@pytest.fixture
def chromium() -> str:
    """The system Chromium's path; skips the test with the reason when there is none."""
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("chromium")
    if found:
        return found
    pytest.skip(
        "no system Chromium (looked for /usr/bin/chromium): install Debian's package with "
        "`apt-get install chromium` (.ci/run does); this test never downloads a browser"
    )


@pytest.fixture
def sync_api() -> Any:
    return pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed (dev extra)"
    )


@pytest.fixture
def live_demo(
    capture_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The demo app served over real HTTP on a port the OS picked; stopped and flushed after."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)
    app = create_app(
        {
            "POSTHOG_API_KEY": "phc_browser_test",
            "POSTHOG_HOST": capture_server.url,
            "STORY_GENERATION_SECONDS": 0.05,
            "DATABASE": str(tmp_path / "stories.sqlite3"),
            "ANALYTICS_QUEUE_BATCH_SIZE": 1,  # delivered at once: the page sees it change
            "ANALYTICS_QUEUE_SHUTDOWN_TIMEOUT": 2.0,
        }
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="demo-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        shutdown_app(app, timeout=2.0)


@pytest.mark.slow
def test_generate_a_story_in_headless_chromium(
    chromium: str, sync_api: Any, live_demo: str, capture_server: Any
) -> None:
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            page = browser.new_page()
            page.goto(live_demo + "/")
            expect(page.locator("#m-queued")).to_have_text("0")
            expect(page.locator("#m-delivered")).to_have_text("0")
            expect(page.locator("#m-health")).to_contain_text("healthy")

            page.fill("#topic", "a clockwork owl")
            page.select_option("#mode", "async")
            page.click("#generate")
            expect(page.locator("#story")).to_contain_text("a clockwork owl")
            expect(page.locator("#row-async .count")).to_have_text("1")
            expect(page.locator("#row-async .track")).not_to_have_text("–")
            # The live figures follow: queued, then delivered by the worker thread.
            expect(page.locator("#m-queued")).to_have_text("1")
            expect(page.locator("#m-delivered")).to_have_text("1", timeout=15_000)

            page.fill("#topic", "a patient heron")
            page.select_option("#mode", "blocking")
            page.click("#generate")
            expect(page.locator("#story")).to_contain_text("a patient heron")
            expect(page.locator("#row-blocking .count")).to_have_text("1")
            expect(page.locator("#row-async .count")).to_have_text("1")
            expect(page.locator("#error")).to_be_hidden()
        finally:
            browser.close()

    events = capture_server.wait_for(2)
    assert sorted(e.properties["topic"] for e in events) == ["a clockwork owl", "a patient heron"]
    assert {e.distinct_id for e in events} == {"browser-demo-user"}
    assert sorted(e.properties["analytics_mode"] for e in events) == ["async", "blocking"]
