"""Fixtures of the pytest-benchmark group, and how big it runs.

Full sizes only when benchmarking was asked for: `--benchmark-only`, or the environment variable
`ANALYTICS_QUEUE_BENCH=full` (set by `benchmarks.run`); `ANALYTICS_QUEUE_BENCH=quick` gives tiny
sizes that are still timed (`benchmarks.run --quick`). With `--benchmark-disable`, or with neither
(a plain `pytest`, `make test`), the same code runs as a smoke test: a few calls of each case, so
that the benchmarks cannot rot without costing the test suite time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from benchmarks._common import FULL, QUICK, SMOKE, ServerProcess, Sizes


@pytest.fixture(scope="session")
def sizes(request: pytest.FixtureRequest) -> Sizes:
    config = request.config
    mode = os.environ.get("ANALYTICS_QUEUE_BENCH", "")
    if config.getoption("benchmark_disable", False):
        return SMOKE
    if mode == "quick":
        return QUICK
    if mode == "full" or config.getoption("benchmark_only", False):
        return FULL
    return SMOKE


@pytest.fixture(scope="module")
def capture_server() -> Iterator[ServerProcess]:
    """The capture server answering at once, in a process of its own."""
    with ServerProcess(delay=0.0) as server:
        yield server


@pytest.fixture(scope="module")
def slow_capture_server() -> Iterator[ServerProcess]:
    """The capture server answering every request after 300 ms, in a process of its own."""
    with ServerProcess(delay=0.3) as server:
        yield server
