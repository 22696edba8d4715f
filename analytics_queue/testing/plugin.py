"""The analytics_queue pytest plugin: a ``capture_server`` fixture.

Installed with analytics_queue and registered through the ``pytest11`` entry point, so any test
suite of a project that depends on analytics_queue can use it without a ``conftest.py``::

    def test_signup_is_tracked(capture_server):
        analytics = AnalyticsQueue(api_key="phc_test", host=capture_server.url)
        analytics.track("user_signed_up", distinct_id="user-1")
        analytics.flush()
        [event] = capture_server.wait_for(1)
        assert event.event == "user_signed_up"

To build the server with constructor arguments, parametrize the fixture indirectly::

    @pytest.mark.parametrize("capture_server", [{"api_keys": {"phc_test"}}], indirect=True)
    def test_wrong_key_is_refused(capture_server): ...

The plugin's module imports only pytest: the server is imported when a test first asks for the
fixture, so the plugin costs next to nothing in the runs that never use it.

Thread safety: the fixture's server is a `CaptureServer`, safe to share with the threads of the
code under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._server import CaptureServer

__all__ = ["capture_server"]


@pytest.fixture
def capture_server(request: pytest.FixtureRequest) -> Iterator[CaptureServer]:
    """A started `CaptureServer` on 127.0.0.1 and a free port, stopped after the test.

    A new server per test rather than one per session, cleared between tests: starting one
    costs about a millisecond, and a fresh port is the only isolation that holds when the code
    under test keeps background threads or pooled keep-alive connections alive past the end of
    a test. Their late requests then hit a closed port instead of landing in the next test's
    records, and a test that left the server ``down()``, hung or faulty cannot leak that state.

    Indirect parametrization passes a dict of keyword arguments to `CaptureServer`.
    """
    # Imported here, not at module level: pytest loads this plugin in every run of a project
    # that has analytics_queue installed, and most of those runs never use the fixture.
    from ._server import CaptureServer

    kwargs: dict[str, Any] = dict(getattr(request, "param", None) or {})
    server = CaptureServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
