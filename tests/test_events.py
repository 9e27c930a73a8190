"""Domain events and their log records: ``event_to_record`` / ``event_from_record``.

A record is a msgpack map of plain types (the vendor's numbers for roles, states and
reasons), and decoding goes through the constructors, so anything the log cannot vouch for
is an ``EventDecodeError``, never a half-built event or another exception.
"""

from __future__ import annotations

from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from airwave.actors.core.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    AudioUploadChanged,
    ChannelCreated,
    ChannelStopped,
    CustomPropertyChanged,
    EventDecodeError,
    MemberJoined,
    MemberLeft,
    MuteChanged,
    CdnStarted,
    CdnStopped,
    RecordingStarted,
    RecordingStopped,
    RoleChanged,
    StateChanged,
    event_from_record,
    event_to_record,
)
from airwave.protocol import CustomRole, CustomState, Reason

PLAIN_TYPES = (str, int, float, bool, bytes, type(None))

# One strategy per annotation: every field of every event type is generated from its declared
# type, so a new field (or a new event type) is covered without editing this table, and a new
# kind of annotation fails here loudly (KeyError) instead of going untested.
_BY_ANNOTATION: dict[str, st.SearchStrategy[Any]] = {
    "str": st.text(max_size=20),
    "int": st.integers(min_value=0, max_value=2**63 - 1),
    "bool": st.booleans(),
    "bytes": st.binary(max_size=48),
    "float": st.floats(min_value=0, max_value=2**40, allow_nan=False) | st.integers(0, 2**40),
    "None": st.none(),
    "CustomRole": st.sampled_from(CustomRole),
    "CustomState": st.sampled_from(CustomState),
    "Reason": st.sampled_from(Reason),
}


def _strategy_for(annotation: str) -> st.SearchStrategy[Any]:
    return st.one_of(*(_BY_ANNOTATION[part.strip()] for part in annotation.split("|")))


def events_of(cls: type) -> st.SearchStrategy[Any]:
    return st.builds(cls, **{f.name: _strategy_for(str(f.type)) for f in attrs.fields(cls)})


any_event = st.one_of(*(events_of(cls) for cls in EVENT_TYPES.values()))


def packed_round_trip(record: dict[str, Any]) -> Any:
    return msgpack.unpackb(msgpack.packb(record), raw=False)


def a_joined_record(**changes: Any) -> dict[str, Any]:
    record = event_to_record(MemberJoined(1.5, "222", 1, "bob", 2, CustomRole.ROLE_1, CustomState.NONE))
    record.update(changes)
    return record


# --- the record format ----------------------------------------------------------------------


def test_event_types_cover_every_event_class_under_its_wire_tag() -> None:
    classes = (
        ChannelCreated, MemberJoined, RoleChanged, StateChanged, AudioUploadChanged,
        CustomPropertyChanged, MemberLeft, MuteChanged, ChannelStopped, RecordingStarted, RecordingStopped,
        CdnStarted, CdnStopped,
    )

    assert EVENT_TYPES == {cls.TYPE: cls for cls in classes}
    assert len({cls.TYPE for cls in classes}) == len(classes)


@given(any_event)
def test_event_record_round_trip_gives_equal_event(event: Any) -> None:
    assert event_from_record(event_to_record(event)) == event


@given(any_event)
def test_event_record_through_msgpack_gives_equal_event_with_enums(event: Any) -> None:
    decoded = event_from_record(packed_round_trip(event_to_record(event)))

    assert decoded == event
    for field in attrs.fields(type(event)):
        assert type(getattr(decoded, field.name)) is type(getattr(event, field.name)), field.name


@given(any_event)
def test_event_record_holds_only_plain_types(event: Any) -> None:
    record = event_to_record(event)

    assert (record["type"], record["v"]) == (event.TYPE, SCHEMA_VERSION)
    assert all(type(value) in PLAIN_TYPES for value in record.values()), record
    # strict_types refuses int subclasses: an IntEnum left in the record would fail here.
    assert packed_round_trip(record) == msgpack.unpackb(msgpack.packb(record, strict_types=True), raw=False)


@given(any_event)
def test_event_record_after_msgpack_round_trip_is_unchanged(event: Any) -> None:
    record = event_to_record(event)

    back = packed_round_trip(record)

    assert back == record
    assert {key: type(value) for key, value in back.items()} == {key: type(value) for key, value in record.items()}


def test_event_record_carries_vendor_numbers_for_roles_states_and_reasons() -> None:
    joined = event_to_record(MemberJoined(1.0, "222", 1, "bob", 2, CustomRole.ROLE_0, CustomState.STATE_0))
    left = event_to_record(MemberLeft(2.0, "222", 1, "bob", Reason.DUPLICATE_SESSION))

    assert (joined["role"], joined["state"]) == (4096, 4096)
    assert type(joined["role"]) is int and type(joined["state"]) is int
    assert left["reason"] == 210 and type(left["reason"]) is int


def test_event_from_record_ignores_seq_added_by_log() -> None:
    event = MemberLeft(2.0, "222", 1, "bob", Reason.QUIT)

    assert event_from_record({**event_to_record(event), "seq": 41}) == event


# --- what the decoder refuses ---------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["participant_exploded", "", None, 5, ["participant_left"], b"channel_created"])
def test_event_from_record_of_unknown_type_is_refused_event_decode_error(event_type: Any) -> None:
    with pytest.raises(EventDecodeError):
        event_from_record(a_joined_record(type=event_type))


def test_event_from_record_without_type_is_refused_event_decode_error() -> None:
    record = a_joined_record()
    del record["type"]

    with pytest.raises(EventDecodeError):
        event_from_record(record)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 99, 0, -1, "1", 1.0, True, None])
def test_event_from_record_of_future_or_unknown_schema_version_is_refused_event_decode_error(version: Any) -> None:
    with pytest.raises(EventDecodeError):
        event_from_record(a_joined_record(v=version))


@pytest.mark.parametrize(
    "changes",
    [
        {"role": 12345},
        {"role": True},
        {"role": 4096.0},
        {"role": "custom_role_0"},
        {"state": 1},
        {"user_id": 5},
        {"sid": "2"},
        {"sid": True},
        {"number": None},
        {"time": "noon"},
        {"time": float("nan")},
        {"upload": 1},
        {"display_name": None},
        {"surprise": 1},
    ],
    ids=repr,
)
def test_event_from_record_with_bad_field_is_refused_event_decode_error(changes: dict[str, Any]) -> None:
    with pytest.raises(EventDecodeError):
        event_from_record(a_joined_record(**changes))


@pytest.mark.parametrize("missing", ["time", "channel", "number", "user_id", "sid", "role", "state"])
def test_event_from_record_with_missing_field_is_refused_event_decode_error(missing: str) -> None:
    record = a_joined_record()
    del record[missing]

    with pytest.raises(EventDecodeError):
        event_from_record(record)


def test_event_from_record_with_bad_reason_is_refused_event_decode_error() -> None:
    record = {**event_to_record(ChannelStopped(1.0, "222", 1, Reason.OVER, "host")), "reason": 999}

    with pytest.raises(EventDecodeError):
        event_from_record(record)


@pytest.mark.parametrize("record", [[], "participant_left", None, 7, b"\x80"])
def test_event_from_record_of_non_map_is_refused_event_decode_error(record: Any) -> None:
    with pytest.raises(EventDecodeError):
        event_from_record(record)


_field_names = sorted({name for cls in EVENT_TYPES.values() for name in attrs.fields_dict(cls)})
_garbage_value = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8),
    st.binary(max_size=8), st.sampled_from([4096, 8192, 0, 6, 210]), st.lists(st.integers(), max_size=2),
)
_garbage_record = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(EVENT_TYPES)) | _garbage_value, "v": st.just(SCHEMA_VERSION) | _garbage_value},
    optional={name: _garbage_value for name in _field_names},
)


@given(_garbage_record)
def test_event_from_record_of_garbage_gives_event_or_event_decode_error_only(record: dict[str, Any]) -> None:
    try:
        event = event_from_record(record)
    except EventDecodeError:
        return
    assert event_from_record(event_to_record(event)) == event
