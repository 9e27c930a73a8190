"""The SDK's values, apart from the engine that produces them (client.py).

What a caller hands in (JoinParam, ReconnectPolicy), who is in the channel (Participant), and
what happens: one frozen event per callback of MediaChannelCallback, so the vendor's callback
face and the trio face (``MediaChannel.events()``) carry the same values. Everything here is a
plain value: no trio, no sockets, nothing that changes after it is made.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import ClassVar

import attrs

from airwave.protocol import (
    ChannelState,
    CustomRole,
    CustomState,
    NetStatus,
    ParticipantChange,
    ParticipantInfo,
    ParticipantType,
    PropertyChange,
    QueryInfo,
    Reason,
    VolumeStatus,
)

__all__ = [
    "ChannelEvent",
    "ConnectionState",
    "ConnectionStateEvent",
    "JoinParam",
    "JoinResult",
    "LeaveEvent",
    "MediaChannelCallback",
    "MemberCountEvent",
    "MessageEvent",
    "OperationError",
    "Participant",
    "ParticipantJoinEvent",
    "ParticipantLeftEvent",
    "ParticipantUpdateEvent",
    "PropertyChangeEvent",
    "QueryResult",
    "ReconnectPolicy",
    "StateChangeEvent",
    "StopResult",
    "VolumeChangeEvent",
]


# --- what a caller hands in, and who is in the channel -------------------------------------


@attrs.frozen
class JoinParam:
    """The vendor's JoinParam. The first joiner's values configure the channel."""

    uri_mode: bool = False
    password: str | None = None
    capacity: int | None = None
    heartbeat_time: int | None = None
    heartbeat_timeout: int | None = None
    display_name: str = ""
    title: str = ""
    custom_property: str = ""
    max_senders: int | None = None
    token: str | None = None  # required by a server with a secret


@attrs.frozen
class Participant:
    """Someone in the channel as this client sees them: the server's ParticipantInfo plus
    what only this client knows (``is_self``, ``audio_subscribe``)."""

    user_id: str
    sid: int
    display_name: str
    custom_role: CustomRole
    custom_state: CustomState
    audio: bool  # uploading audio
    volume_status: VolumeStatus
    net_status: NetStatus
    type: ParticipantType
    is_creator: bool
    is_self: bool
    audio_subscribe: bool = True  # whether this client receives their audio

    @classmethod
    def from_info(cls, info: ParticipantInfo, *, is_self: bool, audio_subscribe: bool = True) -> Participant:
        return cls(
            user_id=info.user_id,
            sid=info.sid,
            display_name=info.display_name,
            custom_role=info.role,
            custom_state=info.state,
            audio=info.audio,
            volume_status=info.volume_status,
            net_status=info.net_status,
            type=info.type,
            is_creator=info.is_creator,
            is_self=is_self,
            audio_subscribe=audio_subscribe,
        )


# --- the connection -----------------------------------------------------------------------


class ConnectionState(enum.Enum):
    """The client's connection to the server, as ConnectionStateEvent reports it."""

    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"  # reconnection gave up


@attrs.frozen
class ReconnectPolicy:
    """How a dropped connection is retried: exponential backoff with full jitter (so a
    server restart is not met by every client at once), bounded in total time."""

    first_delay: float = 0.1
    max_delay: float = 2.0
    give_up_after: float = 30.0

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        """Seconds to wait before retry ``attempt`` (0 first); ``random`` gives [0, 1)."""
        return random() * min(self.max_delay, self.first_delay * 2.0**attempt)


# --- events: what the callbacks receive, as values for the trio face -----------------------
# Each names its callback (CALLBACK); the callback gets the event's fields, in order.


@attrs.frozen
class JoinResult:
    CALLBACK: ClassVar[str] = "on_join"
    result: bool
    reason: Reason
    channel_id: str


@attrs.frozen
class LeaveEvent:
    CALLBACK: ClassVar[str] = "on_leave"
    reason: Reason
    channel_id: str


@attrs.frozen
class StopResult:
    CALLBACK: ClassVar[str] = "on_stop"
    result: bool
    reason: Reason


@attrs.frozen
class QueryResult:
    CALLBACK: ClassVar[str] = "on_query"
    operation_id: int
    result: bool
    reason: Reason
    info: QueryInfo | None


@attrs.frozen
class ParticipantJoinEvent:
    CALLBACK: ClassVar[str] = "on_participant_join"
    participant: Participant


@attrs.frozen
class ParticipantLeftEvent:
    CALLBACK: ClassVar[str] = "on_participant_left"
    participant: Participant
    reason: Reason


@attrs.frozen
class ParticipantUpdateEvent:
    CALLBACK: ClassVar[str] = "on_participant_update"
    participant: Participant
    change: ParticipantChange


@attrs.frozen
class VolumeChangeEvent:
    CALLBACK: ClassVar[str] = "on_participant_volume_change"
    participant: Participant


@attrs.frozen
class MessageEvent:
    CALLBACK: ClassVar[str] = "on_message_receive"
    type: str
    content: str
    from_user_id: str


@attrs.frozen
class StateChangeEvent:
    CALLBACK: ClassVar[str] = "on_media_channel_state_change"
    state: ChannelState
    old_state: ChannelState


@attrs.frozen
class PropertyChangeEvent:
    CALLBACK: ClassVar[str] = "on_media_channel_property_change"
    change: PropertyChange


@attrs.frozen
class MemberCountEvent:
    """Airwave addition: the audience learns the member count (at most once a second)."""

    CALLBACK: ClassVar[str] = "on_member_count_change"
    count: int


@attrs.frozen
class ConnectionStateEvent:
    """Airwave addition: the connection dropped, came back (and resumed), or was given up."""

    CALLBACK: ClassVar[str] = "on_connection_state_change"
    state: ConnectionState


@attrs.frozen
class OperationError:
    """Airwave addition: a call the server refused, or an error it pushed (e.g. media refused)."""

    CALLBACK: ClassVar[str] = "on_error"
    operation: str
    reason: Reason
    message: str


ChannelEvent = (
    JoinResult | LeaveEvent | StopResult | QueryResult | ParticipantJoinEvent | ParticipantLeftEvent
    | ParticipantUpdateEvent | VolumeChangeEvent | MessageEvent | StateChangeEvent | PropertyChangeEvent
    | MemberCountEvent | ConnectionStateEvent | OperationError
)


class MediaChannelCallback:
    """Override the callbacks you need; each receives the fields of its event, in order."""

    def on_join(self, result: bool, reason: Reason, channel_id: str) -> None: ...
    def on_leave(self, reason: Reason, channel_id: str) -> None: ...
    def on_stop(self, result: bool, reason: Reason) -> None: ...
    def on_query(self, operation_id: int, result: bool, reason: Reason, info: QueryInfo | None) -> None: ...
    def on_participant_join(self, participant: Participant) -> None: ...
    def on_participant_left(self, participant: Participant, reason: Reason) -> None: ...
    def on_participant_update(self, participant: Participant, change: ParticipantChange) -> None: ...
    def on_participant_volume_change(self, participant: Participant) -> None: ...
    def on_message_receive(self, type: str, content: str, from_user_id: str) -> None: ...
    def on_media_channel_state_change(self, state: ChannelState, old_state: ChannelState) -> None: ...
    def on_media_channel_property_change(self, change: PropertyChange) -> None: ...
    def on_member_count_change(self, count: int) -> None: ...
    def on_connection_state_change(self, state: ConnectionState) -> None: ...
    def on_error(self, operation: str, reason: Reason, message: str) -> None: ...
