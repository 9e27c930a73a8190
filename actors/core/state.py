"""Channel state and how events change it: ``evolve(state, event) -> state``, and ``fold``.

Live channel actors, crash recovery and replay all build state with this one ``evolve`` (and
``fold`` over many events), so live state and replayed state cannot drift apart. Pure: no
I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs
import immutables

from airwave.protocol import CdnState, CustomRole, CustomState, Reason, RecordState

from .events import (
    AudioUploadChanged,
    CdnStarted,
    CdnStopped,
    ChannelCreated,
    ChannelStopped,
    CustomPropertyChanged,
    Event,
    MemberJoined,
    MemberLeft,
    MuteChanged,
    RecordingStarted,
    RecordingStopped,
    RoleChanged,
    StateChanged,
)

URI_PREFIX = "airwave:"


class EventOutOfPlace(ValueError):
    """An event that cannot follow the state it meets (live actors never produce one; a log
    written by hand, or by another program, may hold one)."""

    def __init__(self, event: Event, message: str) -> None:
        super().__init__(message)
        self.event = event


def channel_uri(channel_id: str) -> str:
    return URI_PREFIX + channel_id


@attrs.frozen
class Member:
    user_id: str
    sid: int
    role: CustomRole
    state: CustomState
    upload: bool
    display_name: str
    joined_at: float
    is_creator: bool = False
    granted_roles: int | None = None  # token grants as a role bit mask; None: open mode
    muted: bool = False  # by an operator: may not upload until unmuted (for this membership)

    def may_take(self, role: CustomRole) -> bool:
        """Whether this member's credentials allow ``role`` (no role is always allowed)."""
        return self.granted_roles is None or role is CustomRole.NONE or bool(self.granted_roles & role)


@attrs.frozen
class Recording:
    """A recording in progress: where its files are (relative to the data directory)."""

    directory: str
    mix: str
    tracks: bool
    started_at: float
    by: str


@attrs.frozen
class Cdn:
    """The mix streaming to the CDN: where listeners find it (cdn_started's fields)."""

    icecast: str
    hls: str
    segment_ms: int
    started_at: float
    by: str


@attrs.frozen
class Channel:
    """One channel instance.

    ``members`` is a persistent hash map (HAMT): evolve derives a new one in O(log n) that
    shares all but a path with the old. A dict copied per join made joining N members
    O(N^2) in time and left the heap fragmented by N growing copies (~10 KB per member of
    resident memory after a join storm). It has no order; ``members_in_join_order`` does.
    """

    channel_id: str
    number: int
    created_at: float
    created_by: str
    capacity: int
    heartbeat_time: float
    heartbeat_timeout: float
    title: str
    custom_property: str
    max_senders: int | None
    password_hash: bytes | None = attrs.field(repr=False)
    members: Mapping[str, Member] = attrs.field(factory=immutables.Map)
    next_sid: int = 1
    ended: bool = False
    ended_reason: Reason | None = None
    ended_by: str | None = None
    recording: Recording | None = None
    cdn: Cdn | None = None

    @property
    def uri(self) -> str:
        return channel_uri(self.channel_id)

    @property
    def record_state(self) -> RecordState:
        return RecordState.IDLE if self.recording is None else RecordState.RECORDING

    @property
    def cdn_state(self) -> CdnState:
        return CdnState.IDLE if self.cdn is None else CdnState.STREAMING

    def members_in_join_order(self) -> list[Member]:
        return sorted(self.members.values(), key=_join_order)


def _join_order(member: Member) -> int:
    return member.sid


def evolve(channel: Channel | None, event: Event) -> Channel:
    """The channel after ``event``. Only channel_created may start from None."""
    if isinstance(event, ChannelCreated):
        return Channel(
            channel_id=event.channel,
            number=event.number,
            created_at=event.time,
            created_by=event.created_by,
            capacity=event.capacity,
            heartbeat_time=event.heartbeat_time,
            heartbeat_timeout=event.heartbeat_timeout,
            title=event.title,
            custom_property=event.custom_property,
            max_senders=event.max_senders,
            password_hash=event.password_hash,
        )
    if channel is None or channel.number != event.number:
        raise EventOutOfPlace(event, f"{event.TYPE} for channel #{event.number} without its channel_created")
    match event:
        case MemberJoined():
            member = Member(
                user_id=event.user_id,
                sid=event.sid,
                role=event.role,
                state=event.state,
                upload=event.upload,
                display_name=event.display_name,
                joined_at=event.time,
                is_creator=event.user_id == channel.created_by,
                granted_roles=event.granted_roles,
            )
            return attrs.evolve(
                channel, members=channel.members.set(event.user_id, member), next_sid=max(channel.next_sid, event.sid + 1)
            )
        case RoleChanged():
            return _with_member(channel, event, event.user_id, role=event.role)
        case StateChanged():
            return _with_member(channel, event, event.user_id, state=event.state)
        case AudioUploadChanged():
            return _with_member(channel, event, event.user_id, upload=event.enabled)
        case CustomPropertyChanged():
            return attrs.evolve(channel, custom_property=event.value)
        case MuteChanged():
            return _with_member(channel, event, event.user_id, muted=event.muted)
        case MemberLeft():
            if event.user_id not in channel.members:
                return channel
            return attrs.evolve(channel, members=channel.members.delete(event.user_id))
        case RecordingStarted():
            if channel.recording is not None:
                raise EventOutOfPlace(event, f"recording_started while channel #{channel.number} records")
            recording = Recording(event.directory, event.mix, event.tracks, event.time, event.by)
            return attrs.evolve(channel, recording=recording)
        case RecordingStopped():
            if channel.recording is None or channel.recording.directory != event.directory:
                raise EventOutOfPlace(event, f"recording_stopped of {event.directory!r}, not the one channel #{channel.number} records")
            return attrs.evolve(channel, recording=None)
        case CdnStarted():
            if channel.cdn is not None:
                raise EventOutOfPlace(event, f"cdn_started while channel #{channel.number} streams")
            return attrs.evolve(channel, cdn=Cdn(event.icecast, event.hls, event.segment_ms, event.time, event.by))
        case CdnStopped():
            if channel.cdn is None:
                raise EventOutOfPlace(event, f"cdn_stopped while channel #{channel.number} does not stream")
            return attrs.evolve(channel, cdn=None)
        case ChannelStopped():
            return attrs.evolve(
                channel, members=immutables.Map(), ended=True, ended_reason=event.reason, ended_by=event.by,
                recording=None, cdn=None,
            )
    raise TypeError(f"not an event: {event!r}")  # pragma: no cover


def _with_member(channel: Channel, event: Event, user_id: str, **changes: object) -> Channel:
    member = channel.members.get(user_id)
    if member is None:
        raise EventOutOfPlace(event, f"{event.TYPE} for {user_id!r}, who is not a member of channel #{channel.number}")
    return attrs.evolve(channel, members=channel.members.set(user_id, attrs.evolve(member, **changes)))


def fold(events: Iterable[Event]) -> dict[int, Channel]:
    """Every channel instance in ``events``, by channel number: the replayed world."""
    channels: dict[int, Channel] = {}
    for event in events:
        channels[event.number] = evolve(channels.get(event.number), event)
    return channels
