"""What ``import analytics_queue`` and its pytest plugin load (behaviour, not timing).

The timings are in ``benchmarks/import_cost.py``; these tests check the causes of slow imports:
posthog-python and requests must not be loaded at all, and the plugin must not load the server
until a test asks for its fixture.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    """The ``modules`` present in ``sys.modules`` of a fresh interpreter after ``statement``."""
    code = f"import sys\n{statement}\nprint(','.join(m for m in {modules!r} if m in sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return [m for m in proc.stdout.strip().split(",") if m]


def test_import_loads_neither_posthog_nor_requests() -> None:
    assert _loaded_after("import analytics_queue", ("posthog", "requests")) == []


def test_import_defers_the_http_stack() -> None:
    # urllib3 and TLS load with the first instance that has an API key, not with the package.
    modules = ("urllib3", "certifi", "urllib.request", "email.utils", "http.client", "ssl")
    assert _loaded_after("import analytics_queue", modules) == []


def test_plugin_does_not_load_the_server_until_its_fixture_is_used() -> None:
    modules = ("analytics_queue.testing._server", "http.server", "socketserver")
    assert _loaded_after("import analytics_queue.testing.plugin", modules) == []


def test_testing_package_still_exports_its_names() -> None:
    loaded = _loaded_after(
        "from analytics_queue.testing import CaptureServer, CapturedEvent, CapturedRequest",
        ("analytics_queue.testing._server", "analytics_queue.testing._records"),
    )
    assert loaded == ["analytics_queue.testing._server", "analytics_queue.testing._records"]
