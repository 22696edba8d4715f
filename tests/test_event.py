"""Capturing properties on the caller's thread and encoding events on the worker's."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics_queue.errors import InvalidEventError, OversizeError, UnserializableError
from analytics_queue.event import (
    MAX_EVENT_BYTES,
    EventEncoder,
    QueuedEvent,
    capture_properties,
    check_distinct_id,
    check_timestamp,
    check_uuid,
    format_uuid4,
    isoformat,
)


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: float


def test_properties_are_copied_deeply() -> None:
    nested = {"a": [1, {"b": 2}], "c": {"d": [3]}}
    copy = capture_properties("e", nested)
    nested["a"][1]["b"] = 99  # type: ignore[index]
    nested["c"]["d"].append(4)  # type: ignore[index]
    nested["new"] = 1
    assert copy == {"a": [1, {"b": 2}], "c": {"d": [3]}}


def test_values_json_cannot_carry_are_converted() -> None:
    when = dt.datetime(2026, 11, 29, 2, 44, 48, tzinfo=dt.timezone.utc)
    ident = uuid.UUID("7724780a-220e-43c8-9314-5e9043a3d2d6")
    props = capture_properties(
        "e",
        {
            "when": when,
            "day": dt.date(2026, 11, 29),
            "price": Decimal("9.50"),
            "id": ident,
            "tags": {"x"},
            "frozen": frozenset({1}),
            "pair": (1, 2),
            "colour": Colour.RED,
            "point": Point(1, 2.5),
        },
    )
    assert props == {
        "when": "2026-11-29T02:44:48+00:00",
        "day": "2026-11-29",
        "price": "9.50",
        "id": str(ident),
        "tags": ["x"],
        "frozen": [1],
        "pair": [1, 2],
        "colour": "red",
        "point": {"x": 1, "y": 2.5},
    }
    json.dumps(props, allow_nan=False)


@pytest.mark.parametrize(
    ("properties", "error", "path"),
    [
        ({"n": math.nan}, InvalidEventError, 'properties["n"]'),
        ({"when": {"at": math.inf}}, InvalidEventError, 'properties["when"]["at"]'),
        ({"l": [1, -math.inf]}, InvalidEventError, 'properties["l"][1]'),
        ({"o": object()}, UnserializableError, 'properties["o"]'),
        ({"when": {"at": object()}}, UnserializableError, 'properties["when"]["at"]'),
        ({"d": Decimal("NaN")}, InvalidEventError, 'properties["d"]'),
        ({"b": b"bytes"}, UnserializableError, 'properties["b"]'),
        ({1: "int key"}, UnserializableError, "properties[1]"),
    ],
)
def test_bad_values_are_refused_with_the_event_and_the_path(
    properties: dict[Any, Any], error: type[Exception], path: str
) -> None:
    with pytest.raises(error) as raised:
        capture_properties("signup", properties)
    assert "'signup'" in str(raised.value)
    assert path in str(raised.value)


def test_reference_cycles_are_refused_not_crashing() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidEventError, match="nested deeper"):
        capture_properties("e", {"loop": loop})


def test_an_event_far_over_the_size_limit_is_refused_on_the_callers_thread() -> None:
    with pytest.raises(OversizeError, match="limit"):
        capture_properties("e", {"blob": "x" * (2 * 1024 * 1024)})


def test_the_encoder_refuses_what_only_serialization_reveals() -> None:
    encoder = EventEncoder()
    # Under the cheap estimate, over the limit once escaped: every control char takes 6 bytes.
    sneaky = QueuedEvent("e", "u", {"s": "\x01" * (MAX_EVENT_BYTES // 2)}, None, 1, 0.0)
    with pytest.raises(OversizeError):
        encoder.encode(sneaky)
    with pytest.raises(InvalidEventError, match="surrogate"):
        encoder.encode(QueuedEvent("e", "u", {"s": "\ud800"}, None, 1, 0.0))


def test_encoded_event_is_a_posthog_batch_element() -> None:
    encoder = EventEncoder(app_version="2.0.0", environment="test")
    tracked_at = 1_780_000_000.25
    element = json.loads(
        encoder.encode(QueuedEvent("signup", "user-1", {"plan": "pro"}, None, 12345, tracked_at))
    )
    assert set(element) == {"event", "distinct_id", "properties", "timestamp", "uuid"}
    assert element["timestamp"] == element["properties"]["queued_at"]
    assert dt.datetime.fromisoformat(element["timestamp"]).timestamp() == tracked_at
    assert element["properties"]["$lib"] == "analytics_queue"
    assert element["properties"]["app_version"] == "2.0.0"
    assert element["properties"]["environment"] == "test"
    assert element["properties"]["plan"] == "pro"
    assert uuid.UUID(element["uuid"]).version == 4


def test_caller_properties_win_over_enrichment() -> None:
    element = json.loads(
        EventEncoder(app_version="2.0.0").encode(
            QueuedEvent("e", "u", {"app_version": "mine"}, None, 1, 0.0)
        )
    )
    assert element["properties"]["app_version"] == "mine"


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_format_uuid4_is_a_valid_version_4_uuid(bits: int) -> None:
    text = format_uuid4(bits)
    parsed = uuid.UUID(text)
    assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


ENRICHMENT_THAT_WINS = set(
    json.loads(EventEncoder().encode(QueuedEvent("e", "u", {}, None, 1, 0.0)))["properties"]
) - {"queued_at"}


@given(st.dictionaries(st.text(), json_values, max_size=8))
def test_any_json_properties_survive_capture_and_encoding(properties: dict[str, Any]) -> None:
    copy = capture_properties("e", properties)
    assert copy == properties
    try:
        data = EventEncoder().encode(QueuedEvent("e", "u", copy, None, 1, 0.0))
    except InvalidEventError:  # a lone surrogate from st.text(): refused, never sent
        return
    sent = json.loads(data)["properties"]
    # posthog-python's enrichment ($lib, $is_server, the runtime...) wins over the caller's.
    ours = {k: v for k, v in properties.items() if k not in ENRICHMENT_THAT_WINS}
    assert {k: sent[k] for k in ours} == ours


def test_distinct_id_timestamp_and_uuid_checks() -> None:
    assert check_distinct_id("e", 42) == "42"
    ident = uuid.uuid4()
    assert check_distinct_id("e", ident) == str(ident)
    for bad in ("", None, True, 1.5, ["x"]):
        with pytest.raises(InvalidEventError, match="distinct_id"):
            check_distinct_id("e", bad)
    assert check_timestamp("e", "2026-11-29T02:44:48Z").isoformat() == "2026-11-29T02:44:48+00:00"
    eastern = dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert check_timestamp("e", eastern).hour == 17
    assert check_timestamp("e", dt.datetime(2026, 1, 1)).tzinfo == dt.timezone.utc
    for bad in ("yesterday", 12345):
        with pytest.raises(InvalidEventError, match="timestamp"):
            check_timestamp("e", bad)
    assert check_uuid("e", str(ident).upper()) == str(ident)
    with pytest.raises(InvalidEventError, match="uuid"):
        check_uuid("e", "not-a-uuid")


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_the_cached_isoformat_matches_datetimes_own(epoch: float) -> None:
    expected = dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="microseconds")
    assert isoformat(epoch) == expected


FLAT = {"topic": "t", "words": 412, "ms": 812.5, "ok": True, "ref": None, "ü": "ö"}


def test_a_flat_dict_is_copied_and_sized_like_the_general_path() -> None:
    from analytics_queue.event import _capture_general, capture_sized

    original = dict(FLAT)
    copy, size = capture_sized("e", original)
    original["topic"] = "changed"
    original["new"] = 1
    assert copy == FLAT and copy is not original
    assert (copy, size) == _capture_general("e", FLAT)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (math.nan, InvalidEventError),
        (math.inf, InvalidEventError),
        (-math.inf, InvalidEventError),
        (object(), UnserializableError),
    ],
)
def test_the_flat_path_refuses_what_the_general_path_refuses(
    value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r'properties\["bad"\]'):
        capture_properties("e", {**FLAT, "bad": value})


def test_the_flat_path_leaves_subclasses_to_the_general_path() -> None:
    class Key(str, enum.Enum):
        PLAN = "plan"

    class Flag(int):
        pass

    copy = capture_properties("e", {Key.PLAN: "pro", "flag": Flag(3), "f": 1.5})
    assert copy == {"plan": "pro", "flag": 3, "f": 1.5}
    assert [type(k) for k in copy] == [str, str, str]
    assert type(copy["flag"]) is int


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_format_uuid4_sets_the_bits_uuid_itself_sets(bits: int) -> None:
    assert format_uuid4(bits) == str(uuid.UUID(int=bits, version=4))


def test_queued_event_has_the_fields_track_builds_it_with() -> None:
    # track() builds QueuedEvent with tuple.__new__ and every field in order (no defaults
    # apply): a new field must be added there too.
    assert QueuedEvent._fields == (
        "event",
        "distinct_id",
        "properties",
        "timestamp",
        "uuid",
        "tracked_at",
        "options",
        "size",
    )
