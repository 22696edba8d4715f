"""The JSON backends: orjson and the standard library give the same outcome for every event."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics_queue import _json
from analytics_queue.errors import RefusedError
from analytics_queue.event import EventEncoder, QueuedEvent, capture_properties

needs_orjson = pytest.mark.skipif(
    _json.orjson_backend() is None,
    reason="orjson is not installed (pip install 'analytics-queue[fast]')",
)


def outcome(backend: _json.Backend, item: QueuedEvent) -> tuple[str, Any]:
    """What encoding ``item`` gives: ("sent", the parsed element) or ("refused", the error)."""
    try:
        data = EventEncoder(app_version="1.0", backend=backend).encode(item)
    except RefusedError as exc:
        return "refused", f"{type(exc).__name__}: {exc}"
    return "sent", json.loads(data)


def dumps_outcome(backend: _json.Backend, obj: Any) -> tuple[str, Any]:
    try:
        return "sent", json.loads(backend.dumps(obj))
    except (TypeError, ValueError, RecursionError) as exc:
        return "refused", type(exc).__name__


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


big_ints = st.integers(min_value=-(2**80), max_value=2**80)
floats = st.floats(allow_nan=False, allow_infinity=False)
leaves = st.none() | st.booleans() | st.integers() | big_ints | floats | st.text()
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@needs_orjson
@given(
    st.text(min_size=1),
    st.text(min_size=1),
    st.dictionaries(st.text(), values, max_size=10),
)
def test_both_backends_give_the_same_outcome_for_any_captured_event(
    event: str, distinct_id: str, properties: dict[str, Any]
) -> None:
    try:
        properties = capture_properties(event, properties)
    except RefusedError:  # a lone surrogate: track() refuses it; the encoder must as well
        pass
    item = QueuedEvent(event, distinct_id, properties, None, 7, 1.5)
    assert _json.orjson_backend() is not None
    assert outcome(_json.orjson_backend(), item) == outcome(_json.STDLIB, item)


@needs_orjson
@pytest.mark.parametrize(
    "properties",
    [
        {"big": 2**64},  # past orjson's 64-bit range
        {"small": -(2**63) - 1},
        {"edge": 2**64 - 1, "neg": -(2**63)},
        {"lone": "a\ud800b"},
        {"\udfffkey": 1},
        {"nested": {"deeper": ["x", "\ud83d"]}},
        {"text": 'héllo ✓ 😀 \u2028 \x00 \x1f "quoted" \\'},
        {"float": 1e16, "tiny": 1e-7, "neg_zero": -0.0, "max": 1.7976931348623157e308},
        {"deep": nested(60)},
        {},
    ],
    ids=lambda p: ",".join(p) or "empty",
)
def test_where_orjson_differs_the_outcome_is_the_standard_librarys(
    properties: dict[str, Any],
) -> None:
    assert _json.orjson_backend() is not None
    for name, distinct_id in (("e", "u"), ("e\ud800", "u"), ("e", "\udc00")):
        # As they are, not captured: capture refuses lone surrogates before the encoder sees them.
        item = QueuedEvent(name, distinct_id, properties, None, 7, 1.5)
        assert outcome(_json.orjson_backend(), item) == outcome(_json.STDLIB, item)


class Text(str):
    pass


@dataclasses.dataclass
class Point:
    x: int


@needs_orjson
@pytest.mark.parametrize(
    "obj",
    [
        {2: "int key", None: "none key", True: "bool key", 2.5: "float key"},
        {"sub": Text("x"), Text("k"): 1},
        {"when": dt.datetime(2026, 1, 1), "day": dt.date(2026, 1, 1)},
        {"point": Point(1)},
        {"set": {1, 2}},
        {"deep": nested(300)},  # deeper than orjson's own limit
    ],
    ids=["non-str keys", "str subclass", "datetimes", "dataclass", "set", "deep"],
)
def test_values_capture_would_have_converted_still_meet_the_standard_librarys_answer(
    obj: Any,
) -> None:
    assert _json.orjson_backend() is not None
    assert dumps_outcome(_json.orjson_backend(), obj) == dumps_outcome(_json.STDLIB, obj)


def test_the_standard_library_refuses_nan() -> None:
    with pytest.raises(ValueError):
        _json.STDLIB.dumps({"x": float("nan")})


def test_select_names_the_backend_and_refuses_unknown_names() -> None:
    assert _json.select("stdlib") is _json.STDLIB
    assert _json.select("") is (_json.orjson_backend() or _json.STDLIB)
    with pytest.raises(ValueError, match="'orjson' or 'stdlib'"):
        _json.select("simplejson")


def test_a_bad_environment_value_is_logged_and_replaced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(_json.ENV_VAR, "fastest")
    _json.default.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="analytics_queue._json"):
            backend = _json.default()
    finally:
        _json.default.cache_clear()
    assert backend is (_json.orjson_backend() or _json.STDLIB)
    assert "fastest" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["stdlib", "auto"])
def test_the_encoder_uses_the_backend_the_environment_names(choice: str) -> None:
    env = dict(os.environ, **{_json.ENV_VAR: choice})
    code = "from analytics_queue.event import EventEncoder; print(EventEncoder().backend.name)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    expected = (
        "stdlib" if choice == "stdlib" else ("orjson" if _json.orjson_backend() else "stdlib")
    )
    assert out.stdout.strip() == expected
