"""Domain events: what happened to a channel, as appended to the event log.

Events are frozen values validated by their constructors. In the log each is a msgpack map
with its wire ``type``, a schema version ``v`` and its fields (roles and states as the
vendor's bit flags, reasons as numbers, time as UTC epoch seconds); the log adds ``seq``.
Decoding goes through the constructors, after upcasting older schema versions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from airwave.protocol import CustomRole, CustomState, Reason

SCHEMA_VERSION = 1


def _enum(enum_type: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        # bool is an int in Python (True would become value 1) and 4096.0 would find ROLE_0:
        # a log record must carry the exact integer.
        if type(value) is not int and type(value) is not enum_type:
            raise ValueError(f"{enum_type.__name__} must be an integer, not {value!r}")
        return enum_type(value)

    return convert


def _optional_enum(enum_type: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        return None if value is None else enum_type(value)

    return convert


# Each field's annotation names the only types its value may have: a record from the log is
# checked as strictly as a message from the wire, so a wrong type fails at decode instead of
# surfacing later as a replay that differs from the live state. ``float`` takes ints too
# (msgpack keeps 5 as an int) but never NaN or infinity, which would not compare equal.
_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: type(v) is str,
    "int": lambda v: type(v) is int,
    "bool": lambda v: type(v) is bool,
    "bytes": lambda v: type(v) is bytes,
    "float": lambda v: type(v) in (int, float) and math.isfinite(v),
    "None": lambda v: v is None,
    "CustomRole": lambda v: type(v) is CustomRole,
    "CustomState": lambda v: type(v) is CustomState,
    "Reason": lambda v: type(v) is Reason,
}


def _type_validator(annotation: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    checks = [_TYPE_CHECKS[part.strip()] for part in annotation.split("|")]  # KeyError: add it

    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not any(accepts(value) for accepts in checks):
            raise ValueError(f"{attribute.name} must be {annotation}, not {value!r}")

    return check


def _typed_fields(cls: type, fields: list[attrs.Attribute[Any]]) -> list[attrs.Attribute[Any]]:
    return [
        f.evolve(validator=attrs.validators.and_(*filter(None, (f.validator, _type_validator(str(f.type))))))
        for f in fields
    ]


def _event(cls: type) -> type:
    """``attrs.frozen`` plus a type check of every field from its annotation."""
    return attrs.frozen(cls, field_transformer=_typed_fields)


@_event
class ChannelCreated:
    TYPE: ClassVar[str] = "channel_created"
    time: float
    channel: str
    number: int
    created_by: str
    capacity: int
    heartbeat_time: float
    heartbeat_timeout: float
    title: str = ""
    custom_property: str = ""
    max_senders: int | None = None
    # salt + PBKDF2 digest, never the password; replay does not print it.
    password_hash: bytes | None = attrs.field(default=None, repr=False)


@_event
class MemberJoined:
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
    # With tokens: the roles the token grants, OR-ed as the vendor's bit flags; None in open mode.
    granted_roles: int | None = None


@_event
class RoleChanged:
    TYPE: ClassVar[str] = "role_changed"
    time: float
    channel: str
    number: int
    user_id: str
    role: CustomRole = attrs.field(converter=_enum(CustomRole))
    by: str | None = None


@_event
class StateChanged:
    TYPE: ClassVar[str] = "state_changed"
    time: float
    channel: str
    number: int
    user_id: str
    state: CustomState = attrs.field(converter=_enum(CustomState))
    by: str | None = None


@_event
class AudioUploadChanged:
    TYPE: ClassVar[str] = "audio_upload_changed"
    time: float
    channel: str
    number: int
    user_id: str
    enabled: bool


@_event
class CustomPropertyChanged:
    TYPE: ClassVar[str] = "custom_property_changed"
    time: float
    channel: str
    number: int
    value: str
    by: str | None = None


@_event
class RecordingStarted:
    """The server records the channel from ``time`` into ``directory`` (relative to the data
    directory): ``mix`` is the mixed file's name in it ("" when not asked for); with
    ``tracks``, one file per speaker (docs/operations.md: file layout)."""

    TYPE: ClassVar[str] = "recording_started"
    time: float
    channel: str
    number: int
    directory: str
    mix: str
    tracks: bool
    by: str


@_event
class RecordingStopped:
    """The recording in ``directory`` ended: disabled (reason none, ``by`` who), the channel
    ended (over), or the server stopped (server_shutdown) or crashed (server_restart)."""

    TYPE: ClassVar[str] = "recording_stopped"
    time: float
    channel: str
    number: int
    directory: str
    reason: Reason = attrs.field(converter=_enum(Reason))
    by: str | None = None


@_event
class CdnStarted:
    """The channel's mix streams from ``time`` to its CDN outputs: ``icecast`` the listen URL
    of its mount (no credentials), ``hls`` the HTTP path of its playlist ("" for an output
    the server does not have), HLS segments ``segment_ms`` long."""

    TYPE: ClassVar[str] = "cdn_started"
    time: float
    channel: str
    number: int
    icecast: str
    hls: str
    segment_ms: int
    by: str


@_event
class CdnStopped:
    """The CDN stream ended: disabled (reason none, ``by`` who), the channel ended (over), or
    the server stopped (server_shutdown) or crashed (server_restart)."""

    TYPE: ClassVar[str] = "cdn_stopped"
    time: float
    channel: str
    number: int
    reason: Reason = attrs.field(converter=_enum(Reason))
    by: str | None = None


@_event
class MemberLeft:
    TYPE: ClassVar[str] = "participant_left"
    time: float
    channel: str
    number: int
    user_id: str
    reason: Reason = attrs.field(converter=_enum(Reason))
    by: str | None = None
    operator: str | None = None  # an admin request's operator (kicked through airwave admin)


@_event
class MuteChanged:
    """An operator revoked (muted) or gave back a member's right to upload."""

    TYPE: ClassVar[str] = "mute_changed"
    time: float
    channel: str
    number: int
    user_id: str
    muted: bool
    operator: str


@_event
class ChannelStopped:
    """The channel instance ended: stopped by ``by`` (reason over), or emptied (by None)."""

    TYPE: ClassVar[str] = "channel_stopped"
    time: float
    channel: str
    number: int
    reason: Reason = attrs.field(converter=_enum(Reason))
    by: str | None = None
    operator: str | None = None  # stopped through airwave admin


Event = (
    ChannelCreated | MemberJoined | RoleChanged | StateChanged | AudioUploadChanged
    | CustomPropertyChanged | MemberLeft | MuteChanged | ChannelStopped | RecordingStarted | RecordingStopped
    | CdnStarted | CdnStopped
)
EVENT_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (
        ChannelCreated, MemberJoined, RoleChanged, StateChanged, AudioUploadChanged,
        CustomPropertyChanged, MemberLeft, MuteChanged, ChannelStopped, RecordingStarted, RecordingStopped,
        CdnStarted, CdnStopped,
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
    if not isinstance(record, Mapping):
        raise EventDecodeError(f"an event record is a map, not {type(record).__name__}")
    event_type = record.get("type")
    version = record.get("v", SCHEMA_VERSION)
    # A non-string type (a list, say) would be unhashable; version 1 is the oldest there is.
    cls = EVENT_TYPES.get(event_type) if type(event_type) is str else None
    if type(version) is int and version > SCHEMA_VERSION:
        raise EventDecodeError(
            f"{event_type!r} was written by a newer Airwave (event schema v{version}; "
            f"this version reads up to v{SCHEMA_VERSION}): upgrade Airwave to read this log"
        )
    if cls is None or type(version) is not int or version < 1:
        raise EventDecodeError(f"unknown event {event_type!r} (schema v{version})")
    fields = {key: value for key, value in record.items() if key not in ("seq", "type", "v")}
    try:
        while version < SCHEMA_VERSION:
            fields = UPCASTERS[version](fields)
            version += 1
        return cls(**fields)  # type: ignore[no-any-return]
    except (KeyError, TypeError, ValueError) as exc:
        raise EventDecodeError(f"bad {cls.TYPE} event: {exc}") from None
