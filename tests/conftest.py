"""Suite-wide guards: a test fails when an analytics worker swallowed an unexpected exception.

The ``capture_server`` fixture comes from analytics_queue's own pytest plugin (``pytest11``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


class _WorkerErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def fail_on_swallowed_worker_errors() -> Iterator[None]:
    """The worker logs and survives unexpected errors; in a test, that is a failure."""
    handler = _WorkerErrors()
    loggers = [logging.getLogger(f"analytics_queue.{name}") for name in ("_worker", "_sender")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    if handler.records:
        pytest.fail(
            "the analytics worker swallowed an exception:\n"
            + "\n".join(handler.format(r) + "\n" + (r.exc_text or "") for r in handler.records)
        )
