"""The fault script of the capture server: which misbehaviour the next request gets.

Two queues, consumed once per request to a capture route:

- *answer* faults (`fail_with`, `hang`, `reset_connections`, `accept_then_fail`) replace the
  normal answer. They apply in the order they were set: the first one serves its ``times``
  requests (or every request, when ``times`` is ``None``), then the next one takes over.
- *delay* faults hold the answer back; they queue the same way, independently of answer faults.

`FaultScript` is not thread-safe on its own: `CaptureServer` only touches it under its lock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar

__all__ = ["AnswerFault", "DelayFault", "FaultScript", "default_fault_body", "format_retry_after"]

AnswerKind = Literal["status", "hang", "reset", "partial"]

_DEFAULT_BODIES: Final = {
    400: "failed to decode request: injected fault",
    401: "API key is not valid: injected fault",
    408: "request timeout",
    413: "maximum event size exceeded",
    429: "rate limited",
    500: "internal server error",
    502: "bad gateway",
    503: "transient error, please retry",
    504: "gateway timeout",
}


def default_fault_body(status: int) -> str:
    """The plain-text body PostHog (or the proxy in front of it) answers with `status`."""
    if 200 <= status < 300:
        return '{"status":"Ok"}'
    return _DEFAULT_BODIES.get(status, f"injected fault: HTTP {status}")


def format_retry_after(value: float | str) -> str:
    """A ``Retry-After`` header value: seconds as ``"7"``/``"0.5"``, or a string as given."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value < 0:
        raise ValueError(f"retry_after must be a number of seconds >= 0, got {value!r}")
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def check_times(times: int | None) -> None:
    """Raise `ValueError` unless `times` is ``None`` or a positive int."""
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise ValueError(f"times must be None or an int >= 1, got {times!r}")


@dataclass(slots=True)
class AnswerFault:
    """A replacement answer for the next ``remaining`` requests (``None``: until cleared)."""

    kind: AnswerKind
    status: int = 0
    body: str | None = None
    retry_after: str | None = None
    accept: int = 0
    remaining: int | None = None


@dataclass(slots=True)
class DelayFault:
    """Hold the answer back by ``seconds`` for the next ``remaining`` requests."""

    seconds: float
    remaining: int | None = None


@dataclass(slots=True)
class FaultScript:
    """The queued faults. Not thread-safe: the caller holds a lock."""

    answers: deque[AnswerFault] = field(default_factory=deque)
    delays: deque[DelayFault] = field(default_factory=deque)

    def add_answer(self, fault: AnswerFault) -> None:
        self.answers.append(fault)

    def add_delay(self, fault: DelayFault) -> None:
        self.delays.append(fault)

    def clear(self) -> None:
        self.answers.clear()
        self.delays.clear()

    def take(self) -> tuple[AnswerFault | None, float]:
        """Consume one use of the current answer fault and delay, and return them."""
        answer = _take(self.answers)
        delay = _take(self.delays)
        return answer, (delay.seconds if delay is not None else 0.0)


_Fault = TypeVar("_Fault", AnswerFault, DelayFault)


def _take(queue: deque[_Fault]) -> _Fault | None:
    if not queue:
        return None
    head = queue[0]
    if head.remaining is not None:
        head.remaining -= 1
        if head.remaining <= 0:
            queue.popleft()
    return head
