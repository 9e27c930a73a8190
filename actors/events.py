"""Domain events: what happened to a channel, as appended to the event log.

Events are frozen values validated by their constructors. In the log each is a msgpack map
with its wire ``type``, a schema version ``v`` and its fields (roles and states as the
vendor's bit flags, reasons as numbers, time as UTC epoch seconds); the log adds ``seq``.
Decoding goes through the constructors, after upcasting older schema versions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from airwave.protocol import CustomRole, CustomState, Reason

SCHEMA_VERSION = 1


def _enum(enum_type: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        return enum_type(value)

    return convert


def _optional_enum(enum_type: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        return None if value is None else enum_type(value)

    return convert


@attrs.frozen
class ChannelCreated:
    TYPE: ClassVar[str] = "channel_created"
    time: float
    channel: str
    number: int
    created_by: str
    capacity: int
    heartbeat_time: int
    heartbeat_timeout: int
    title: str = ""
    custom_property: str = ""
    max_senders: int | None = None
    # salt + PBKDF2 digest, never the password; replay does not print it.
    password_hash: bytes | None = attrs.field(default=None, repr=False)


@attrs.frozen
class ParticipantJoined:
    TYPE: ClassVar[str] = "participant_joined"
    time: float
    channel: str
    number: int
    user_id: str
    sid: int
    role: CustomRole = attrs.field(converter=_enum(CustomRole))
    state: CustomState = attrs.field(converter=_enum(CustomState))
    upload: bool = False
    display_name: str = ""


@attrs.frozen
class RoleChanged:
    TYPE: ClassVar[str] = "role_changed"
    time: float
    channel: str
    number: int
    user_id: str
    role: CustomRole = attrs.field(converter=_enum(CustomRole))
    by: str | None = None


@attrs.frozen
class StateChanged:
    TYPE: ClassVar[str] = "state_changed"
    time: float
    channel: str
    number: int
    user_id: str
    state: CustomState = attrs.field(converter=_enum(CustomState))
    by: str | None = None


@attrs.frozen
class AudioUploadChanged:
    TYPE: ClassVar[str] = "audio_upload_changed"
    time: float
    channel: str
    number: int
    user_id: str
    enabled: bool


@attrs.frozen
class CustomPropertyChanged:
    TYPE: ClassVar[str] = "custom_property_changed"
    time: float
    channel: str
    number: int
    value: str
    by: str | None = None


@attrs.frozen
class ParticipantLeft:
    TYPE: ClassVar[str] = "participant_left"
    time: float
    channel: str
    number: int
    user_id: str
    reason: Reason = attrs.field(converter=_enum(Reason))
    by: str | None = None


@attrs.frozen
class ChannelStopped:
    """The channel instance ended: stopped by ``by`` (reason over), or emptied (by None)."""

    TYPE: ClassVar[str] = "channel_stopped"
    time: float
    channel: str
    number: int
    reason: Reason = attrs.field(converter=_enum(Reason))
    by: str | None = None


Event = (
    ChannelCreated | ParticipantJoined | RoleChanged | StateChanged | AudioUploadChanged
    | CustomPropertyChanged | ParticipantLeft | ChannelStopped
)
EVENT_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (
        ChannelCreated, ParticipantJoined, RoleChanged, StateChanged, AudioUploadChanged,
        CustomPropertyChanged, ParticipantLeft, ChannelStopped,
    )
}

# Upcasters run on decode, oldest first: UPCASTERS[v] turns a version-v map into version v+1.
UPCASTERS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


class EventDecodeError(ValueError):
    """A log record that is intact on disk but is not an event this version understands."""


def event_to_record(event: Event) -> dict[str, Any]:
    record: dict[str, Any] = {"type": event.TYPE, "v": SCHEMA_VERSION}
    for name in attrs.fields_dict(type(event)):
        value = getattr(event, name)
        record[name] = int(value) if isinstance(value, int) and not isinstance(value, bool) else value
    return record


def event_from_record(record: Mapping[str, Any]) -> Event:
    """Builds the event through its constructor; ``seq`` (added by the log) is not a field."""
    fields = {key: value for key, value in record.items() if key not in ("seq", "type", "v")}
    version = record.get("v", SCHEMA_VERSION)
    cls = EVENT_TYPES.get(record.get("type"))  # type: ignore[arg-type]
    if cls is None or type(version) is not int or version > SCHEMA_VERSION:
        raise EventDecodeError(f"unknown event {record.get('type')!r} (schema v{version})")
    while version < SCHEMA_VERSION:
        fields = UPCASTERS[version](fields)
        version += 1
    try:
        return cls(**fields)  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise EventDecodeError(f"bad {cls.TYPE} event: {exc}") from None
