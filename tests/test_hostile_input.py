"""track() against hostile input: objects whose __repr__ never returns, lone surrogates, huge
names and ids. It answers at once, never raises outside strict mode, and the good events around
the bad ones still arrive at the (real, local) capture server.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics_queue import AnalyticsQueue
from analytics_queue.errors import InvalidEventError, RefusedError
from analytics_queue.event import MAX_DISTINCT_ID_LENGTH, MAX_EVENT_NAME_LENGTH
from analytics_queue.testing import CaptureServer

KEY = "phc_hostileInputTest"
TEN_MB = 10 * 1024 * 1024

# -- hostile objects: every way the library might look at them costs half a second of CPU --------

SPIN_SECONDS = 0.5


def _spin(*args: Any) -> Any:
    """Burn CPU for a while, then fail: what a __repr__ that never returns looks like, bounded."""
    end = time.monotonic() + SPIN_SECONDS
    while time.monotonic() < end:
        pass
    raise RuntimeError("a hostile method was called")


_HOSTILE = {
    name: _spin for name in ("__repr__", "__str__", "__format__", "__int__", "__float__", "__len__")
}
Hostile = type("Hostile", (), dict(_HOSTILE))
HostileInt = type("HostileInt", (int,), dict(_HOSTILE))
HostileFloat = type("HostileFloat", (float,), dict(_HOSTILE))
HostileStr = type("HostileStr", (str,), dict(_HOSTILE))
HostileKey = type("HostileKey", (), {**_HOSTILE, "__hash__": object.__hash__})


def _bad_cases() -> dict[str, Callable[[], dict[str, Any]]]:
    """Each builds the keyword arguments of one bad track() call (built inside the test, so
    that nothing outside the library ever calls the hostile methods)."""
    huge = "x" * TEN_MB
    return {
        "hostile name": lambda: {"event": Hostile()},
        "int-subclass name": lambda: {"event": HostileInt(3)},
        "float-subclass name": lambda: {"event": HostileFloat(1.5)},
        "empty str-subclass name": lambda: {"event": HostileStr("")},
        "10 MB name": lambda: {"event": huge},
        "201-character name": lambda: {"event": "n" * (MAX_EVENT_NAME_LENGTH + 1)},
        "surrogate name": lambda: {"event": "sign\ud800up"},
        "hostile id": lambda: {"distinct_id": Hostile()},
        "float-subclass id": lambda: {"distinct_id": HostileFloat(2.5)},
        "10 MB id": lambda: {"distinct_id": huge},
        "201-character id": lambda: {"distinct_id": "i" * (MAX_DISTINCT_ID_LENGTH + 1)},
        "huge int id": lambda: {"distinct_id": 10**300},
        "surrogate id": lambda: {"distinct_id": "u\udfff"},
        "hostile uuid": lambda: {"uuid": Hostile()},
        "str-subclass uuid": lambda: {"uuid": HostileStr("not a uuid")},
        "10 MB uuid": lambda: {"uuid": huge},
        "hostile timestamp": lambda: {"timestamp": HostileStr("yesterday")},
        "hostile key": lambda: {"properties": {HostileKey(): 1}},
        "hostile value": lambda: {"properties": {"v": Hostile()}},
        "float-subclass NaN": lambda: {"properties": {"v": HostileFloat(math.nan)}},
        "surrogate value": lambda: {"properties": {"v": ["ok", "\udc00"]}},
        "surrogate key": lambda: {"properties": {"k\ud800": 1}},
    }


BAD_CASES = _bad_cases()


@pytest.fixture(scope="module")
def server() -> Iterator[CaptureServer]:
    with CaptureServer() as capture:
        yield capture


def _track(queue: AnalyticsQueue, **given: Any) -> tuple[Any, float, float]:
    """track() with good defaults for what is not given; returns (result, cpu s, wall s)."""
    args: dict[str, Any] = {"event": "good", "distinct_id": "user-1", **given}
    cpu, wall = time.thread_time(), time.monotonic()
    try:
        result: Any = queue.track(args.pop("event"), distinct_id=args.pop("distinct_id"), **args)
    except RefusedError as refusal:
        result = refusal
    return result, time.thread_time() - cpu, time.monotonic() - wall


good_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
good_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | good_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(good_text, children, max_size=3)
    ),
    max_leaves=8,
)
good_event = st.tuples(
    good_text,
    good_text | st.integers(min_value=0, max_value=10**30),
    st.dictionaries(good_text, good_values, max_size=4),
)
slot = st.one_of(
    st.tuples(st.just("good"), good_event),
    st.tuples(st.just("bad"), st.sampled_from(sorted(BAD_CASES))),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(slot, min_size=1, max_size=8))
def test_track_answers_at_once_never_raises_and_the_good_neighbours_arrive(
    server: CaptureServer, slots: list[tuple[str, Any]]
) -> None:
    queue = AnalyticsQueue(api_key=KEY, host=server.url, flush_interval=60)
    sent: list[str] = []
    try:
        for kind, case in slots:
            if kind == "good":
                name, ident, properties = case
                event_id = str(uuid.uuid4())
                result, cpu, wall = _track(
                    queue, event=name, distinct_id=ident, properties=properties, uuid=event_id
                )
                assert result is True
                sent.append(event_id)
            else:
                result, cpu, wall = _track(queue, **BAD_CASES[case]())
                assert result is False, case
            # A hang guard, not a speed claim: a hostile method costs 500 ms of CPU.
            assert cpu < 0.1, f"{kind} {case!r}: track() used {cpu * 1000:.0f} ms of CPU"
            assert wall < 5, f"{kind} {case!r}: track() took {wall:.1f} s"
        assert queue.flush(timeout=10)
    finally:
        queue.shutdown(timeout=5)
    assert set(sent) <= set(server.uuids())
    assert queue.metrics().failed_by_reason == {}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_strict_mode_raises_a_short_clear_error_for_each_bad_input(
    server: CaptureServer, case: str
) -> None:
    queue = AnalyticsQueue(api_key=KEY, host=server.url, strict=True)
    try:
        result, cpu, _ = _track(queue, **BAD_CASES[case]())
    finally:
        queue.shutdown(timeout=5)
    assert isinstance(result, RefusedError), case
    assert cpu < 0.1
    assert len(str(result)) < 300, str(result)[:300]


@pytest.mark.parametrize(
    ("properties", "path"),
    [
        ({"v": ["ok", "\udc00"]}, 'properties["v"][1]'),
        ({"a": {"b": "x\ud800"}}, 'properties["a"]["b"]'),
        ({"k\ud800": 1}, 'properties["k\\ud800"]'),
    ],
)
def test_a_lone_surrogate_is_refused_at_track_with_its_path(
    server: CaptureServer, properties: dict[str, Any], path: str
) -> None:
    lenient = AnalyticsQueue(api_key=KEY, host=server.url)
    strict = AnalyticsQueue(api_key=KEY, host=server.url, strict=True)
    try:
        assert lenient.track("e", distinct_id="u", properties=properties) is False
        assert lenient.metrics().refused_by_reason == {"invalid": 1}
        with pytest.raises(InvalidEventError, match="surrogate") as raised:
            strict.track("e", distinct_id="u", properties=properties)
        assert path in str(raised.value)
    finally:
        lenient.shutdown(timeout=5)
        strict.shutdown(timeout=5)


def test_a_10_mb_name_or_id_is_refused_at_track_and_never_queued(server: CaptureServer) -> None:
    queue = AnalyticsQueue(api_key=KEY, host=server.url, strict=True)
    try:
        with pytest.raises(InvalidEventError, match="longer than 200 characters") as name_error:
            queue.track("x" * TEN_MB, distinct_id="u")
        with pytest.raises(InvalidEventError, match="longer than 200 characters"):
            queue.track("e", distinct_id="x" * TEN_MB)
        assert queue.queue_size == 0
        assert len(str(name_error.value)) < 200
        # At the limits themselves, both are accepted and arrive unchanged.
        name, ident = "n" * MAX_EVENT_NAME_LENGTH, "i" * MAX_DISTINCT_ID_LENGTH
        assert queue.track(name, distinct_id=ident)
        assert queue.flush(timeout=10)
    finally:
        queue.shutdown(timeout=5)
    (event,) = [e for e in server.wait_for(1) if e.event == name]
    assert event.distinct_id == ident


HOSTILE_SCRIPT = textwrap.dedent(
    """
    import json, math, sys
    from analytics_queue import AnalyticsQueue

    class Forever:
        def __repr__(self):
            while True:
                pass
        __str__ = __format__ = __repr__

    class ForeverInt(int):
        __repr__ = __str__ = Forever.__repr__

    class ForeverFloat(float):
        __repr__ = __str__ = Forever.__repr__

    class ForeverKey(Forever):
        __hash__ = object.__hash__

    queue = AnalyticsQueue(api_key="phc_x", host="http://127.0.0.1:9", flush_interval=60)
    calls = [
        dict(event=Forever(), distinct_id="u"),
        dict(event=ForeverInt(1), distinct_id="u"),
        dict(event=ForeverFloat(1.5), distinct_id="u"),
        dict(event="e", distinct_id=ForeverFloat(2.5)),
        dict(event="e", distinct_id="u", uuid=Forever()),
        dict(event="e", distinct_id="u", properties={ForeverKey(): 1}),
        dict(event="e", distinct_id="u", properties={"v": ForeverFloat(math.nan)}),
    ]
    results = [queue.track(c.pop("event"), **c) for c in calls]
    print(json.dumps(results))
    sys.stdout.flush()
    queue.shutdown(timeout=0)
    """
)


def test_a_repr_that_never_returns_cannot_block_track() -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", HOSTILE_SCRIPT],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("track() blocked on an object whose __repr__ never returns")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [False] * 7
