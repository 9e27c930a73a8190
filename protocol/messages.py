"""Every control message of the wire protocol, as frozen attrs values.

Each class has a wire ``TYPE``; its fields are the map's other keys. Constructors validate
everything, so a decoded message is always well formed: the codec decodes by calling them.
Requests (client to server) carry an ``id`` and get exactly one ``Reply``; the other server
messages are pushed.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from . import limits
from .model import CdnState, CustomRole, CustomState, NetStatus, ParticipantType, RecordState, VolumeStatus
from .reasons import Reason

# What ``from .messages import *`` re-exports from airwave.protocol: the messages and the values
# they carry, never this module's helpers or its imports (typing names, attrs).
__all__ = [
    "ADMIN_REQUEST_TYPES",
    "REQUEST_TYPES",
    "AdminChannels",
    "AdminEndSession",
    "AdminKick",
    "AdminMembers",
    "AdminMute",
    "AdminStop",
    "ChannelSummary",
    "MemberSummary",
    "SERVER_MESSAGE_TYPES",
    "ChannelInfo",
    "EnableCdn",
    "EnableRecord",
    "EnableUpload",
    "Error",
    "Hello",
    "Join",
    "Kick",
    "Leave",
    "Left",
    "MemberCount",
    "MessageReceived",
    "ParticipantInfo",
    "ParticipantJoined",
    "ParticipantLeft",
    "ParticipantUpdated",
    "Ping",
    "PropertyChanged",
    "Query",
    "RefreshToken",
    "QueryInfo",
    "Reply",
    "Resume",
    "Request",
    "SendMessage",
    "ServerMessage",
    "SetCustomProperty",
    "SetRole",
    "SetState",
    "Stop",
    "SubscribeAudio",
    "VolumeChanged",
]

# --- validators ---------------------------------------------------------------------------


def _int_in(low: int, high: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        # bool is an int in Python; on the wire it is a different type.
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"{attribute.name} must be an integer in {low}..{high}")

    return check


def _optional_int_in(low: int, high: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    check = _int_in(low, high)

    def optional(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            check(instance, attribute, value)

    return optional


# Unicode category Cc (C0, DEL, C1) and lone surrogates, which UTF-8 (msgpack str) cannot carry.
_FORBIDDEN_IN_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _text(
    max_chars: int, *, min_chars: int = 0, optional: bool = False
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if type(value) is not str:
            raise ValueError(f"{attribute.name} must be a string")
        if not min_chars <= len(value) <= max_chars:
            raise ValueError(f"{attribute.name} must have {min_chars}..{max_chars} characters")
        if _FORBIDDEN_IN_TEXT.search(value):
            raise ValueError(f"{attribute.name} must not contain control characters or lone surrogates")

    return check


def _utf8_bytes(max_bytes: int, *, min_bytes: int = 0) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is not str:
            raise ValueError(f"{attribute.name} must be a string")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            # A lone surrogate: the constructor would accept what encode() cannot write.
            raise ValueError(f"{attribute.name} must be valid Unicode (no lone surrogates)") from None
        if not min_bytes <= size <= max_bytes:
            raise ValueError(f"{attribute.name} must be {min_bytes}..{max_bytes} bytes of UTF-8")

    return check


def _boolean(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not bool:
        raise ValueError(f"{attribute.name} must be true or false")


def _enum_of(enum_type: type) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is not enum_type:
            raise ValueError(f"{attribute.name} must be a {enum_type.__name__}")

    return check


def _to_enum(enum_type: type) -> Callable[[Any], Any]:
    """Converter from the wire's integer; bools and other types fail validation."""

    def convert(value: Any) -> Any:
        if type(value) is int:
            try:
                return enum_type(value)
            except ValueError:
                raise ValueError(f"{value} is not a valid {enum_type.__name__}") from None
        return value

    return convert


def _role_field(default: CustomRole) -> Any:
    return attrs.field(default=default, converter=_to_enum(CustomRole), validator=_enum_of(CustomRole))


def _optional_enum(enum_type: type) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            _enum_of(enum_type)(instance, attribute, value)

    return attrs.field(default=None, converter=_to_enum(enum_type), validator=check)


def _seconds(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) not in (int, float) or not 0 < value <= limits.HEARTBEAT_TIMEOUT_RANGE[1]:
        raise ValueError(f"{attribute.name} must be a number of seconds in (0, 300]")


def _flags_to_int(value: Any) -> Any:
    """ParticipantChange / PropertyChange flags become the wire's plain integer (bools fail later)."""
    return int(value) if isinstance(value, enum.IntFlag) else value


def _to_tuple(value: Any) -> Any:
    """A wire array (list) or a tuple; a string is refused, not split into characters."""
    if isinstance(value, str | bytes | dict):
        raise ValueError(f"expected an array, not {type(value).__name__}")
    return tuple(value)


def _participant(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not ParticipantInfo:
        raise ValueError(f"{attribute.name} must be a participant map")


def _token_text(*, optional: bool) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """Tokens are printable ASCII (base64url and dots): anything else is not a token."""
    check = _text(limits.MAX_TOKEN_CHARS, min_chars=1, optional=optional)

    def token(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        check(instance, attribute, value)
        if value is not None and not value.isascii():
            raise ValueError(f"{attribute.name} must be ASCII")

    return token


_channel_id = _text(limits.MAX_ID_CHARS, min_chars=1)
_user_id = _text(limits.MAX_ID_CHARS, min_chars=1)
_optional_user_id = _text(limits.MAX_ID_CHARS, min_chars=1, optional=True)
_request_id = _int_in(1, limits.MAX_REQUEST_ID)


# --- values carried inside messages ---------------------------------------------------------


@attrs.frozen
class ParticipantInfo:
    """A participant as others see it. ``sid`` identifies the sender of media frames."""

    user_id: str = attrs.field(validator=_user_id)
    sid: int = attrs.field(validator=_int_in(0, 2**32 - 1))
    display_name: str = attrs.field(default="", validator=_text(limits.MAX_NAME_CHARS))
    role: CustomRole = _role_field(CustomRole.ROLE_1)
    state: CustomState = attrs.field(
        default=CustomState.NONE, converter=_to_enum(CustomState), validator=_enum_of(CustomState)
    )
    audio: bool = attrs.field(default=False, validator=_boolean)
    volume_status: VolumeStatus = attrs.field(
        default=VolumeStatus.NONE, converter=_to_enum(VolumeStatus), validator=_enum_of(VolumeStatus)
    )
    net_status: NetStatus = attrs.field(
        default=NetStatus.GOOD, converter=_to_enum(NetStatus), validator=_enum_of(NetStatus)
    )
    type: ParticipantType = attrs.field(
        default=ParticipantType.NORMAL,
        converter=_to_enum(ParticipantType),
        validator=_enum_of(ParticipantType),
    )
    is_creator: bool = attrs.field(default=False, validator=_boolean)


@attrs.frozen
class ChannelInfo:
    """What a joiner learns about the channel. ``participants`` lists everyone for a host and
    the publishers and hosts for an audience member (the scale rule); ``member_count`` is exact."""

    channel_id: str = attrs.field(validator=_channel_id)
    channel_uri: str = attrs.field(validator=_text(limits.MAX_ID_CHARS + 16, min_chars=1))
    channel_number: int = attrs.field(validator=_int_in(1, 2**63 - 1))
    title: str = attrs.field(validator=_utf8_bytes(limits.MAX_PROPERTY_BYTES))
    custom_property: str = attrs.field(validator=_utf8_bytes(limits.MAX_PROPERTY_BYTES))
    capacity: int = attrs.field(validator=_int_in(1, limits.MAX_CAPACITY))
    has_password: bool = attrs.field(validator=_boolean)
    member_count: int = attrs.field(validator=_int_in(0, limits.MAX_CAPACITY))
    # Seconds; may be fractional when the server's configured defaults are (tests use short timers).
    heartbeat_time: float = attrs.field(validator=_seconds)
    heartbeat_timeout: float = attrs.field(validator=_seconds)
    self_sid: int = attrs.field(validator=_int_in(0, 2**32 - 1))
    participants: tuple[ParticipantInfo, ...] = attrs.field(converter=tuple)
    # Presented by `resume` on a new connection within the grace period after a drop.
    session_token: str = attrs.field(default="", validator=_text(64))
    # Whether the server is recording the channel (a joiner learns it before saying a word).
    record_state: RecordState = attrs.field(
        default=RecordState.IDLE, converter=_to_enum(RecordState), validator=_enum_of(RecordState)
    )
    # Whether the channel's mix is streamed to Icecast and/or HLS (enable_cdn).
    cdn_state: CdnState = attrs.field(default=CdnState.IDLE, converter=_to_enum(CdnState), validator=_enum_of(CdnState))

    @participants.validator
    def _check_participants(self, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
        if not all(type(p) is ParticipantInfo for p in value):
            raise ValueError("participants must be participant maps")


@attrs.frozen
class QueryInfo:
    channel_id: str = attrs.field(validator=_channel_id)
    channel_number: int = attrs.field(validator=_int_in(1, 2**63 - 1))
    client_count: int = attrs.field(validator=_int_in(0, limits.MAX_CAPACITY))
    members: tuple[str, ...] = attrs.field(converter=_to_tuple)

    @members.validator
    def _check_members(self, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
        for user_id in value:
            _user_id(self, attribute, user_id)


# --- requests: client to server -------------------------------------------------------------


@attrs.frozen
class Hello:
    TYPE: ClassVar[str] = "hello"
    id: int = attrs.field(validator=_request_id)
    version: int = attrs.field(validator=_int_in(1, 2**16))
    client: str = attrs.field(default="", validator=_text(limits.MAX_NAME_CHARS))


@attrs.frozen
class Join:
    """Join by channel id (created on first join) or, with ``uri_mode``, an existing channel.

    The first joiner's parameters configure the channel; later joiners' are ignored.
    """

    TYPE: ClassVar[str] = "join"
    id: int = attrs.field(validator=_request_id)
    channel: str = attrs.field(validator=_text(limits.MAX_ID_CHARS + 16, min_chars=1))
    user_id: str = attrs.field(validator=_user_id)
    uri_mode: bool = attrs.field(default=False, validator=_boolean)
    display_name: str = attrs.field(default="", validator=_text(limits.MAX_NAME_CHARS))
    role: CustomRole = _role_field(CustomRole.ROLE_1)
    state: CustomState = attrs.field(
        default=CustomState.NONE, converter=_to_enum(CustomState), validator=_enum_of(CustomState)
    )
    upload: bool = attrs.field(default=False, validator=_boolean)
    password: str | None = attrs.field(
        default=None, validator=_text(limits.MAX_PASSWORD_CHARS, min_chars=1, optional=True)
    )
    capacity: int | None = attrs.field(default=None, validator=_optional_int_in(1, limits.MAX_CAPACITY))
    heartbeat_time: int | None = attrs.field(
        default=None, validator=_optional_int_in(*limits.HEARTBEAT_TIME_RANGE)
    )
    heartbeat_timeout: int | None = attrs.field(
        default=None, validator=_optional_int_in(*limits.HEARTBEAT_TIMEOUT_RANGE)
    )
    title: str = attrs.field(default="", validator=_utf8_bytes(limits.MAX_PROPERTY_BYTES))
    custom_property: str = attrs.field(default="", validator=_utf8_bytes(limits.MAX_PROPERTY_BYTES))
    max_senders: int | None = attrs.field(default=None, validator=_optional_int_in(1, 1000))
    # Required when the server has a secret (airwave token ...); ignored in open mode.
    token: str | None = attrs.field(default=None, validator=_token_text(optional=True))

    def __attrs_post_init__(self) -> None:
        if (
            self.heartbeat_time is not None
            and self.heartbeat_timeout is not None
            and self.heartbeat_timeout <= self.heartbeat_time
        ):
            raise ValueError("heartbeat_timeout must be longer than heartbeat_time")


@attrs.frozen
class Leave:
    TYPE: ClassVar[str] = "leave"
    id: int = attrs.field(validator=_request_id)


@attrs.frozen
class Stop:
    TYPE: ClassVar[str] = "stop"
    id: int = attrs.field(validator=_request_id)


@attrs.frozen
class SetRole:
    """Set your own role (``user_id`` None) or, with permission, another participant's."""

    TYPE: ClassVar[str] = "set_role"
    id: int = attrs.field(validator=_request_id)
    role: CustomRole = attrs.field(converter=_to_enum(CustomRole), validator=_enum_of(CustomRole))
    user_id: str | None = attrs.field(default=None, validator=_optional_user_id)


@attrs.frozen
class SetState:
    TYPE: ClassVar[str] = "set_state"
    id: int = attrs.field(validator=_request_id)
    state: CustomState = attrs.field(converter=_to_enum(CustomState), validator=_enum_of(CustomState))
    user_id: str | None = attrs.field(default=None, validator=_optional_user_id)


@attrs.frozen
class EnableUpload:
    TYPE: ClassVar[str] = "enable_upload"
    id: int = attrs.field(validator=_request_id)
    enabled: bool = attrs.field(validator=_boolean)


RECORD_PARAMS = {"mix": True, "tracks": True}  # what enable_record's params may say, and the defaults


def record_params(text: str) -> dict[str, bool]:
    """The recording options in an enable_record ``params`` text: a JSON object whose keys are
    those of RECORD_PARAMS with boolean values ("" means the defaults). Raises ValueError."""
    if text == "":
        return dict(RECORD_PARAMS)
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError("params must be a JSON object, e.g. {\"mix\": true, \"tracks\": false}") from None
    if type(value) is not dict:
        raise ValueError("params must be a JSON object")
    unknown = sorted(set(value) - set(RECORD_PARAMS))
    if unknown:
        raise ValueError(f"unknown recording parameter {unknown[0]!r}: known are {', '.join(RECORD_PARAMS)}")
    if any(type(v) is not bool for v in value.values()):
        raise ValueError("recording parameters are true or false")
    options = {**RECORD_PARAMS, **value}
    if not any(options.values()):
        raise ValueError("params turn off both the mix and the tracks: nothing would be recorded")
    return options


def _record_params_text(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _utf8_bytes(limits.MAX_PROPERTY_BYTES)(_, attribute, value)
    record_params(value)


@attrs.frozen
class EnableRecord:
    """The vendor's enableRecord(enable, params): start or stop the server's recording of the
    channel. ``params`` is a JSON object text (see `record_params`), used when starting."""

    TYPE: ClassVar[str] = "enable_record"
    id: int = attrs.field(validator=_request_id)
    enabled: bool = attrs.field(validator=_boolean)
    params: str = attrs.field(default="", validator=_record_params_text)


# enable_cdn's key_interval_ms: 0 (the server's segment length) or an HLS segment length.
CDN_KEY_INTERVAL_MS = (1_000, 10_000)


def _key_interval(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    low, high = CDN_KEY_INTERVAL_MS
    if type(value) is not int or not (value == 0 or low <= value <= high):
        raise ValueError(f"{attribute.name} must be 0 or an integer from {low} to {high}, not {value!r}")


@attrs.frozen
class EnableCdn:
    """The vendor's enableCdn(enable, keyInterval): start or stop streaming the channel's mix
    to the server's CDN outputs (Icecast, HLS). Audio has no key frames to space out (every
    Opus packet is one), so ``key_interval_ms`` is the HLS segment length: 0 takes the
    server's (docs/protocol.md, enable_cdn)."""

    TYPE: ClassVar[str] = "enable_cdn"
    id: int = attrs.field(validator=_request_id)
    enabled: bool = attrs.field(validator=_boolean)
    key_interval_ms: int = attrs.field(default=0, validator=_key_interval)


@attrs.frozen
class Kick:
    TYPE: ClassVar[str] = "kick"
    id: int = attrs.field(validator=_request_id)
    user_id: str = attrs.field(validator=_user_id)


@attrs.frozen
class Query:
    TYPE: ClassVar[str] = "query"
    id: int = attrs.field(validator=_request_id)
    channel: str = attrs.field(validator=_text(limits.MAX_ID_CHARS + 16, min_chars=1))


@attrs.frozen
class SendMessage:
    """A text message to everyone (``to`` None) or to one participant; only while joined."""

    TYPE: ClassVar[str] = "send_message"
    id: int = attrs.field(validator=_request_id)
    msg_type: str = attrs.field(validator=_text(limits.MAX_NAME_CHARS))
    content: str = attrs.field(validator=_utf8_bytes(limits.MAX_MESSAGE_CONTENT_BYTES, min_bytes=1))
    to: str | None = attrs.field(default=None, validator=_optional_user_id)


@attrs.frozen
class SetCustomProperty:
    TYPE: ClassVar[str] = "set_custom_property"
    id: int = attrs.field(validator=_request_id)
    value: str = attrs.field(validator=_utf8_bytes(limits.MAX_PROPERTY_BYTES))


@attrs.frozen
class SubscribeAudio:
    """Stop or resume receiving one participant's audio (only while joined)."""

    TYPE: ClassVar[str] = "subscribe_audio"
    id: int = attrs.field(validator=_request_id)
    user_id: str = attrs.field(validator=_user_id)
    enabled: bool = attrs.field(validator=_boolean)


@attrs.frozen
class Ping:
    TYPE: ClassVar[str] = "ping"
    id: int = attrs.field(validator=_request_id)


@attrs.frozen
class RefreshToken:
    """A fresh token for the same user and channel, before the current one expires."""

    TYPE: ClassVar[str] = "refresh_token"
    id: int = attrs.field(validator=_request_id)
    token: str = attrs.field(validator=_token_text(optional=False))


@attrs.frozen
class Resume:
    """Takes over a session whose connection dropped, within the grace period: no leave, no
    join, same role and upload state. The reply's result is a fresh ChannelInfo."""

    TYPE: ClassVar[str] = "resume"
    id: int = attrs.field(validator=_request_id)
    session_token: str = attrs.field(validator=_text(64, min_chars=1))


# --- admin requests: an operator's view and levers (docs/protocol.md section 3, admin requests) -------------
# Served to any connection after hello, joined or not. In open mode (no secret, loopback only)
# they need no credential, as nothing else does; with a secret each carries an admin token
# (`airwave token --admin`), checked on every request so a connection holds no admin state.


def _admin_token() -> Any:
    return attrs.field(default=None, validator=_token_text(optional=True), repr=False)


@attrs.frozen
class AdminChannels:
    """Every live channel of this server; the result is ``{"channels": [ChannelSummary]}``."""

    TYPE: ClassVar[str] = "admin_channels"
    id: int = attrs.field(validator=_request_id)
    token: str | None = _admin_token()


@attrs.frozen
class AdminMembers:
    """The members of one channel; the result is ``{"members": [MemberSummary]}``."""

    TYPE: ClassVar[str] = "admin_members"
    id: int = attrs.field(validator=_request_id)
    channel: str = attrs.field(validator=_channel_id)
    token: str | None = _admin_token()


@attrs.frozen
class AdminKick:
    """Removes a member (reason kicked, logged with the operator); they may join again."""

    TYPE: ClassVar[str] = "admin_kick"
    id: int = attrs.field(validator=_request_id)
    channel: str = attrs.field(validator=_channel_id)
    user_id: str = attrs.field(validator=_user_id)
    token: str | None = _admin_token()


@attrs.frozen
class AdminStop:
    """Ends the channel for everyone: every member gets left(over)."""

    TYPE: ClassVar[str] = "admin_stop"
    id: int = attrs.field(validator=_request_id)
    channel: str = attrs.field(validator=_channel_id)
    token: str | None = _admin_token()


@attrs.frozen
class AdminMute:
    """``muted`` true revokes a member's upload until unmuted (their own enable_upload is
    refused with no_permission meanwhile); false gives it back to ask for."""

    TYPE: ClassVar[str] = "admin_mute"
    id: int = attrs.field(validator=_request_id)
    channel: str = attrs.field(validator=_channel_id)
    user_id: str = attrs.field(validator=_user_id)
    muted: bool = attrs.field(default=True, validator=_boolean)
    token: str | None = _admin_token()


@attrs.frozen
class AdminEndSession:
    """A kick that also closes the member's connection (1008), or ends a session held for
    resume after a drop, so it cannot come back within the grace period."""

    TYPE: ClassVar[str] = "admin_end_session"
    id: int = attrs.field(validator=_request_id)
    channel: str = attrs.field(validator=_channel_id)
    user_id: str = attrs.field(validator=_user_id)
    token: str | None = _admin_token()


AdminRequest = AdminChannels | AdminMembers | AdminKick | AdminStop | AdminMute | AdminEndSession
ADMIN_REQUEST_TYPES: tuple[type, ...] = (AdminChannels, AdminMembers, AdminKick, AdminStop, AdminMute, AdminEndSession)


@attrs.frozen
class ChannelSummary:
    """One line of `admin_channels`. Times are UTC epoch seconds; ``uptime`` is seconds."""

    channel_id: str = attrs.field(validator=_channel_id)
    channel_number: int = attrs.field(validator=_int_in(1, 2**63 - 1))
    title: str = attrs.field(validator=_utf8_bytes(limits.MAX_PROPERTY_BYTES))
    members: int = attrs.field(validator=_int_in(0, limits.MAX_CAPACITY))
    hosts: int = attrs.field(validator=_int_in(0, limits.MAX_CAPACITY))
    speakers: int = attrs.field(validator=_int_in(0, limits.MAX_CAPACITY))
    created_at: float = attrs.field(validator=attrs.validators.instance_of((int, float)))
    uptime: float = attrs.field(validator=attrs.validators.instance_of((int, float)))
    # Media frames the channel's router took from speakers and frames it handed to listeners.
    packets_in: int = attrs.field(default=0, validator=_int_in(0, 2**63 - 1))
    deliveries: int = attrs.field(default=0, validator=_int_in(0, 2**63 - 1))
    # Frames refused (media from members who may not publish) plus frames dropped from the
    # backlogs of the members connected now.
    drops: int = attrs.field(default=0, validator=_int_in(0, 2**63 - 1))


@attrs.frozen
class MemberSummary:
    """One line of `admin_members`. ``session`` is "connected", or "held" while a dropped
    connection waits for its resume; ``address`` is the peer (or what a trusted proxy said)."""

    user_id: str = attrs.field(validator=_user_id)
    display_name: str = attrs.field(validator=_text(limits.MAX_NAME_CHARS))
    sid: int = attrs.field(validator=_int_in(0, 2**32 - 1))
    role: CustomRole = _role_field(CustomRole.ROLE_1)
    state: CustomState = attrs.field(
        default=CustomState.NONE, converter=_to_enum(CustomState), validator=_enum_of(CustomState)
    )
    audio: bool = attrs.field(default=False, validator=_boolean)
    muted: bool = attrs.field(default=False, validator=_boolean)
    session: str = attrs.field(default="connected", validator=attrs.validators.in_(("connected", "held")))
    address: str = attrs.field(default="", validator=_text(limits.MAX_ID_CHARS))
    joined_at: float = attrs.field(default=0.0, validator=attrs.validators.instance_of((int, float)))
    connected_since: float = attrs.field(default=0.0, validator=attrs.validators.instance_of((int, float)))


Request = (
    Hello | Join | Leave | Stop | SetRole | SetState | EnableUpload | Kick | Query | SendMessage
    | SetCustomProperty | SubscribeAudio | Ping | RefreshToken | Resume | EnableRecord | EnableCdn | AdminRequest
)

# --- server to client -----------------------------------------------------------------------


@attrs.frozen
class Reply:
    """The one answer to request ``id``: ``reason`` NONE means success.

    ``result`` depends on the request: hello -> {"version", "server"}; join and resume -> a ChannelInfo;
    query -> a QueryInfo; ping -> {"time"}; everything else -> None.
    """

    TYPE: ClassVar[str] = "reply"
    id: int = attrs.field(validator=_request_id)
    reason: Reason = attrs.field(default=Reason.NONE, converter=_to_enum(Reason), validator=_enum_of(Reason))
    message: str = attrs.field(default="", validator=_utf8_bytes(1024))
    result: Any = None

    @property
    def ok(self) -> bool:
        return self.reason is Reason.NONE


@attrs.frozen
class ParticipantJoined:
    TYPE: ClassVar[str] = "participant_joined"
    participant: ParticipantInfo = attrs.field(validator=_participant)


@attrs.frozen
class ParticipantLeft:
    TYPE: ClassVar[str] = "participant_left"
    user_id: str = attrs.field(validator=_user_id)
    reason: Reason = attrs.field(converter=_to_enum(Reason), validator=_enum_of(Reason))


@attrs.frozen
class ParticipantUpdated:
    """``changes`` is a ParticipantChange bit set.

    ``in_view`` false tells an audience recipient that the participant has left its view
    (no longer a host or publisher under the server's role policy): the server will not
    tell it when they leave, so it should drop them from its list now. Hosts, and the
    participant themselves, always get true; so does a client of a server that predates
    the field (absent on the wire reads as true).
    """

    TYPE: ClassVar[str] = "participant_updated"
    participant: ParticipantInfo = attrs.field(validator=_participant)
    changes: int = attrs.field(converter=_flags_to_int, validator=_int_in(0, 2**16))
    in_view: bool = attrs.field(default=True, validator=_boolean)


@attrs.frozen
class VolumeChanged:
    TYPE: ClassVar[str] = "volume_changed"
    user_id: str = attrs.field(validator=_user_id)
    volume_status: VolumeStatus = attrs.field(converter=_to_enum(VolumeStatus), validator=_enum_of(VolumeStatus))


@attrs.frozen
class PropertyChanged:
    """``changes`` is a PropertyChange bit set."""

    TYPE: ClassVar[str] = "property_changed"
    changes: int = attrs.field(converter=_flags_to_int, validator=_int_in(0, 2**16))
    custom_property: str = attrs.field(validator=_utf8_bytes(limits.MAX_PROPERTY_BYTES))
    title: str = attrs.field(default="", validator=_utf8_bytes(limits.MAX_PROPERTY_BYTES))
    record_state: RecordState = attrs.field(
        default=RecordState.IDLE, converter=_to_enum(RecordState), validator=_enum_of(RecordState)
    )
    cdn_state: CdnState = attrs.field(default=CdnState.IDLE, converter=_to_enum(CdnState), validator=_enum_of(CdnState))


@attrs.frozen
class MessageReceived:
    TYPE: ClassVar[str] = "message"
    msg_type: str = attrs.field(validator=_text(limits.MAX_NAME_CHARS))
    content: str = attrs.field(validator=_utf8_bytes(limits.MAX_MESSAGE_CONTENT_BYTES, min_bytes=1))
    from_user_id: str = attrs.field(validator=_user_id)
    to: str | None = attrs.field(default=None, validator=_optional_user_id)


@attrs.frozen
class Left:
    """You are no longer in ``channel``: kicked, over (stopped by a host), duplicate_session,
    token_expired, server_shutdown. (A timeout or slow consumer closes the connection instead.)
    Your own leave() is answered by its Reply."""

    TYPE: ClassVar[str] = "left"
    channel: str = attrs.field(validator=_channel_id)
    reason: Reason = attrs.field(converter=_to_enum(Reason), validator=_enum_of(Reason))


@attrs.frozen
class MemberCount:
    """Sent to the audience at most once a second instead of per-listener presence."""

    TYPE: ClassVar[str] = "member_count"
    count: int = attrs.field(validator=_int_in(0, limits.MAX_CAPACITY))


@attrs.frozen
class Error:
    """An error not tied to a request that could be read (malformed frame, refused media)."""

    TYPE: ClassVar[str] = "error"
    reason: Reason = attrs.field(converter=_to_enum(Reason), validator=_enum_of(Reason))
    message: str = attrs.field(default="", validator=_utf8_bytes(1024))
    ref: int | None = attrs.field(default=None, validator=_optional_int_in(1, limits.MAX_REQUEST_ID))


ServerMessage = (
    Reply | ParticipantJoined | ParticipantLeft | ParticipantUpdated | VolumeChanged | PropertyChanged
    | MessageReceived | Left | MemberCount | Error
)

REQUEST_TYPES: tuple[type, ...] = (
    Hello, Join, Leave, Stop, SetRole, SetState, EnableUpload, Kick, Query, SendMessage,
    SetCustomProperty, SubscribeAudio, Ping, RefreshToken, Resume, EnableRecord, EnableCdn, *ADMIN_REQUEST_TYPES,
)
SERVER_MESSAGE_TYPES: tuple[type, ...] = (
    Reply, ParticipantJoined, ParticipantLeft, ParticipantUpdated, VolumeChanged, PropertyChanged,
    MessageReceived, Left, MemberCount, Error,
)
