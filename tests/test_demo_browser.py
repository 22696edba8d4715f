"""The demo page in a real browser, at a phone's width and a desktop's, under gunicorn -w 3.

Debian's Chromium, headless, driven by playwright. Never downloads a browser: it uses the
system Chromium at ``/usr/bin/chromium`` (``.ci/run`` installs Debian's ``chromium`` package)
and skips, with the reason, when it is missing. The screenshots of each width are kept in
``tests/artifacts/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from examples.flask_app import demo

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
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
WORKERS = 3
#: How long the capture server takes to answer: what one blocking capture costs a request.
POSTHOG_DELAY = 0.2
MODES = ("async", "blocking", "off")
#: Stories per mode. The first track() in each worker process starts its thread (milliseconds,
#: once): with 2 * WORKERS + 1 requests the median is a warm one whichever worker served which.
ROUNDS = 2 * WORKERS + 1

WIDTHS: dict[str, dict[str, Any]] = {
    "390": {
        "viewport": {"width": 390, "height": 844},
        "is_mobile": True,
        "has_touch": True,
        "device_scale_factor": 2,
    },
    "desktop": {"viewport": {"width": 1280, "height": 900}},
}


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


@dataclass
class LiveDemo:
    url: str
    gunicorn_pid: int


def _children(pid: int) -> set[int]:
    """The child processes of ``pid`` (Linux /proc); empty where that is not available."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(child) for child in text.split()}


@pytest.fixture
def live_demo(capture_server: Any) -> Iterator[LiveDemo]:
    """The demo under ``gunicorn -w 3 --preload`` (as ``make demo`` runs it), sending to
    ``capture_server``; stopped with TERM after the test, so every worker flushes."""
    capture_server.delay_responses(POSTHOG_DELAY)
    with tempfile.TemporaryDirectory(prefix="story-demo-browser-") as workdir:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)},
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "POSTHOG_API_KEY": "phc_browser_test",
            "POSTHOG_HOST": capture_server.url,
            "STORY_GENERATION_SECONDS": "0.05",
            "DATABASE": os.path.join(workdir, "stories.sqlite3"),
            "ANALYTICS_QUEUE_FLUSH_INTERVAL": "0.2",
            "ANALYTICS_QUEUE_SHUTDOWN_TIMEOUT": "5",
        }
        with demo.gunicorn(env, WORKERS) as (url, proc):
            status, _, _ = demo.http("GET", url + "/analytics/health")  # waits until served
            assert status == 200 and proc.poll() is None
            yield LiveDemo(url, proc.pid)


def _scroll_size(page: Any) -> tuple[int, int]:
    width, client = page.evaluate(
        "() => [document.scrollingElement.scrollWidth, document.scrollingElement.clientWidth]"
    )
    return int(width), int(client)


def _wait_for_refreshes(page: Any, counter: str, more: int) -> None:
    """Wait (no sleep) until the page refreshed ``counter`` ``more`` more times."""
    target = page.evaluate(f"() => window.demoState.{counter}") + more
    page.wait_for_function(f"n => window.demoState.{counter} >= n", arg=target, timeout=15_000)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("width", list(WIDTHS))
def test_the_demo_page_at_a_phone_and_a_desktop_width(
    width: str, chromium: str, sync_api: Any, live_demo: LiveDemo, capture_server: Any
) -> None:
    expect = sync_api.expect
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            page = browser.new_page(**WIDTHS[width])
            page.goto(live_demo.url + "/")

            # The live panel covers the whole app: every gunicorn worker reports.
            scope = page.locator("#q-scope")
            expect(scope).to_contain_text(f"{WORKERS} worker processes", timeout=15_000)
            expect(page.locator("#m-queued")).to_have_text("0")
            expect(page.locator("#m-health")).to_contain_text("healthy")

            # ROUNDS stories in each mode, one mode after the other.
            page.fill("#topic", f"a clockwork owl at {width}")
            for round_ in range(1, ROUNDS + 1):
                page.click("#compare")
                for mode in MODES:
                    expect(page.locator(f"#bar-{mode}")).to_have_attribute(
                        "data-requests", str(round_), timeout=15_000
                    )
            expect(page.locator("#story")).to_contain_text(f"a clockwork owl at {width}")
            expect(page.locator("#error")).to_be_hidden()

            # The panel sums every worker, whichever served each request.
            expect(page.locator("#m-queued")).to_have_text(str(ROUNDS))
            expect(page.locator("#m-delivered")).to_have_text(str(ROUNDS), timeout=15_000)

            # Kept for a person to look at, before any check of the layout can fail.
            page.screenshot(path=str(ARTIFACTS / f"demo-{width}.png"), full_page=True)
            # No sideways scroll, with every figure filled in.
            scroll_width, client_width = _scroll_size(page)
            assert scroll_width <= client_width, (scroll_width, client_width)

            # The bars: what analytics added, per mode, in numbers and in pixels.
            bars = {
                mode: page.evaluate(
                    """mode => {
                        const row = document.getElementById("bar-" + mode);
                        const box = (sel) => row.querySelector(sel).getBoundingClientRect().width;
                        return {added: Number(row.dataset.addedMs),
                                total: Number(row.dataset.totalMs),
                                bar: box(".bar"), analytics: box(".analytics"),
                                label: row.querySelector(".added").textContent};
                    }""",
                    mode,
                )
                for mode in MODES
            }
            assert bars["blocking"]["added"] >= POSTHOG_DELAY * 1000, bars
            # Microseconds when warm; the bound leaves room for a busy CPU.
            assert bars["async"]["added"] < 0.05 * bars["blocking"]["added"], bars
            assert bars["off"]["added"] == 0, bars
            for mode, bar in bars.items():
                assert bar["bar"] > 20, (mode, bars)  # each request's bar is drawn
            # At a glance: most of the blocking bar is analytics; on the async bar none shows.
            assert bars["blocking"]["analytics"] >= 0.5 * bars["blocking"]["bar"], bars
            assert bars["async"]["analytics"] < 0.05 * bars["blocking"]["analytics"], bars
            assert bars["blocking"]["label"].startswith("+"), bars
            expect(page.locator("#headline")).to_contain_text("posthog-python in sync_mode")

            # The timings table: the track and total columns on screen.
            client_width = _scroll_size(page)[1]
            for mode in MODES:
                expect(page.locator(f"#row-{mode} .count")).to_contain_text(str(ROUNDS))
                for column in ("track", "total"):
                    cell = page.locator(f"#row-{mode} .{column}")
                    expect(cell).to_be_visible()
                    box = cell.bounding_box()
                    assert box is not None and box["width"] > 0, (mode, column)
                    assert box["x"] >= 0 and box["x"] + box["width"] <= client_width, (mode, box)
                    float(cell.inner_text().splitlines()[-1])  # a figure, not a placeholder

            # The panel stays on the same workers from one refresh to the next.
            seen = []
            for _ in range(4):
                _wait_for_refreshes(page, "queueRefreshes", 1)
                seen.append(scope.get_attribute("data-pids"))
                assert page.locator("#m-delivered").inner_text() == str(ROUNDS)
            assert len(set(seen)) == 1, seen
            pids = {int(pid) for pid in (seen[0] or "").split(", ")}
            assert len(pids) == WORKERS, seen
            workers = _children(live_demo.gunicorn_pid)
            if workers:  # the gunicorn master's children, read from /proc where available
                assert pids == workers, (pids, workers)
            expect(page.locator("#q-workers tbody tr")).to_have_count(WORKERS)
        finally:
            browser.close()

    # Every tracked story arrived: ROUNDS async (through the queue) and ROUNDS blocking.
    events = capture_server.wait_for(2 * ROUNDS, timeout=15.0)
    modes = sorted(e.properties["analytics_mode"] for e in events)
    assert modes == ["async"] * ROUNDS + ["blocking"] * ROUNDS
    assert {e.properties["topic"] for e in events} == {f"a clockwork owl at {width}"}
    assert {e.distinct_id for e in events} == {"browser-demo-user"}
