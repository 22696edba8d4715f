"""docs/posthog-parity.md: every ```python block runs as written (local mode, no network)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import analytics_queue
import analytics_queue._default

PAGE = Path(__file__).resolve().parent.parent / "docs" / "posthog-parity.md"
BLOCK = re.compile(r"(<!-- skip: next -->\n)?```python\n(.*?)```", re.DOTALL)


def blocks() -> list[str]:
    return [code for skip, code in BLOCK.findall(PAGE.read_text()) if not skip]


@pytest.fixture(autouse=True)
def local_mode(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("POSTHOG_", "ANALYTICS_QUEUE_")):
            monkeypatch.delenv(name)
    monkeypatch.setattr(analytics_queue._default, "_default", None)
    yield
    instance = analytics_queue._default._default
    if instance is not None:
        instance.shutdown(timeout=2.0)


def test_the_page_has_runnable_blocks() -> None:
    assert len(blocks()) >= 6


@pytest.mark.parametrize("code", blocks(), ids=lambda code: code.splitlines()[0][:40])
def test_block_runs(code: str) -> None:
    exec(compile(code, str(PAGE), "exec"), {"__name__": "docs_example"})
