"""The channel's rules as a pure state machine: ``decide(state, command)`` and ``evolve``.

``decide`` looks at the current state and a command and answers either the events that the
command causes or the reason it is refused; it never changes anything. ``evolve`` applies one
event. The channel actor and replay both fold ``evolve`` over the same events, so live state
and replayed state cannot drift apart. No I/O, no clock, no randomness: time and salts arrive
inside the commands.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

import attrs
import immutables

from airwave.protocol import (
    AUDIENCE_ROLE,
    DEFAULT_POLICY,
    CustomRole,
    CustomState,
    Permission,
    Reason,
    RolePolicy,
    limits,
)

from .events import (
    AudioUploadChanged,
    ChannelCreated,
    ChannelStopped,
    CustomPropertyChanged,
    Event,
    ParticipantJoined,
    ParticipantLeft,
    RoleChanged,
    StateChanged,
)

PASSWORD_HASH_ITERATIONS = 2_000  # a join is on the hot path of a join storm
SALT_BYTES = 16
URI_PREFIX = "airwave:"


def hash_password(password: str, salt: bytes) -> bytes:
    """salt + PBKDF2-SHA256(password): what the log keeps instead of the password."""
    if len(salt) != SALT_BYTES:
        # password_matches reads the salt back as the first SALT_BYTES bytes; any other length
        # would store a hash that no password ever matches again.
        raise ValueError(f"the salt must be {SALT_BYTES} bytes, not {len(salt)}")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PASSWORD_HASH_ITERATIONS)
    return salt + digest


def password_matches(password: str, stored: bytes) -> bool:
    return hmac.compare_digest(hash_password(password, stored[:SALT_BYTES]), stored)


def channel_uri(channel_id: str) -> str:
    return URI_PREFIX + channel_id


# --- state ----------------------------------------------------------------------------------


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

    def may_take(self, role: CustomRole) -> bool:
        """Whether this member's credentials allow ``role`` (no role is always allowed)."""
        return self.granted_roles is None or role is CustomRole.NONE or bool(self.granted_roles & role)


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

    @property
    def uri(self) -> str:
        return channel_uri(self.channel_id)

    def members_in_join_order(self) -> list[Member]:
        return sorted(self.members.values(), key=_join_order)


def _join_order(member: Member) -> int:
    return member.sid


# --- commands -------------------------------------------------------------------------------


@attrs.frozen
class JoinChannel:
    """``new_number`` and ``salt`` are used only if this join creates the channel.
    ``allowed_roles`` None means open mode: any role and state may be asked for at join."""

    time: float
    channel_id: str
    user_id: str
    new_number: int
    salt: bytes
    role: CustomRole = AUDIENCE_ROLE
    state: CustomState = CustomState.NONE
    upload: bool = False
    display_name: str = ""
    uri_mode: bool = False
    password: str | None = None
    capacity: int | None = None
    heartbeat_time: float | None = None
    heartbeat_timeout: float | None = None
    title: str = ""
    custom_property: str = ""
    max_senders: int | None = None
    allowed_roles: frozenset[CustomRole] | None = None


@attrs.frozen
class LeaveChannel:
    """A member leaves: by choice (quit) or forced by the server (timeout, slow_consumer, ...)."""

    time: float
    user_id: str
    reason: Reason = Reason.QUIT


@attrs.frozen
class StopChannel:
    time: float
    user_id: str


@attrs.frozen
class EndChannel:
    """The server ends the channel for everyone (shutdown, or recovery after a crash)."""

    time: float
    reason: Reason


@attrs.frozen
class SetRole:
    time: float
    actor: str
    target: str
    role: CustomRole


@attrs.frozen
class SetState:
    time: float
    actor: str
    target: str
    state: CustomState


@attrs.frozen
class EnableUpload:
    time: float
    user_id: str
    enabled: bool


@attrs.frozen
class Kick:
    time: float
    actor: str
    target: str


@attrs.frozen
class SetCustomProperty:
    time: float
    actor: str
    value: str


Command = (
    JoinChannel | LeaveChannel | StopChannel | EndChannel | SetRole | SetState | EnableUpload | Kick
    | SetCustomProperty
)


@attrs.frozen
class Accepted:
    events: tuple[Event, ...]


@attrs.frozen
class Rejected:
    reason: Reason
    message: str


Decision = Accepted | Rejected


# --- decide ---------------------------------------------------------------------------------


def decide(channel: Channel | None, command: Command, policy: RolePolicy = DEFAULT_POLICY) -> Decision:
    """The events ``command`` causes on ``channel`` (None: no live channel with that id)."""
    if isinstance(command, JoinChannel):
        return _decide_join(channel, command, policy)
    if channel is None or channel.ended:
        return Rejected(Reason.NOT_FOUND, "no such channel")
    if isinstance(command, EndChannel):
        return Accepted(_end_events(channel, command.time, command.reason))
    actor_id = command.actor if isinstance(command, SetRole | SetState | Kick | SetCustomProperty) else command.user_id
    actor = channel.members.get(actor_id)
    if actor is None:
        return Rejected(Reason.NOT_FOUND, f"{actor_id!r} is not in channel {channel.channel_id!r}")
    granted = policy.permissions(actor.role, actor.state)
    match command:
        case LeaveChannel():
            return Accepted(_leave_events(channel, command.time, actor.user_id, command.reason, None))
        case StopChannel():
            if not granted & Permission.STOP:
                return Rejected(Reason.NO_PERMISSION, "only a host may stop the channel")
            return Accepted((ChannelStopped(command.time, channel.channel_id, channel.number, Reason.OVER, actor.user_id),))
        case Kick():
            if not granted & Permission.KICK:
                return Rejected(Reason.NO_PERMISSION, "only a host may kick")
            if command.target == actor.user_id:
                return Rejected(Reason.INVALID_PARAM, "use leave() to leave; you cannot kick yourself")
            if command.target not in channel.members:
                return Rejected(Reason.NOT_FOUND, f"{command.target!r} is not in the channel")
            return Accepted(_leave_events(channel, command.time, command.target, Reason.KICKED, actor.user_id))
        case SetRole():
            return _decide_role(channel, command, actor, granted, policy)
        case SetState():
            return _decide_state(channel, command, actor, granted, policy)
        case EnableUpload():
            if command.enabled == actor.upload:
                return Accepted(())
            if command.enabled and not policy.may_publish(actor.role, actor.state):
                return Rejected(Reason.NO_PERMISSION, "your role may not publish audio")
            if command.enabled and _senders_full(channel, actor.user_id):
                return Rejected(Reason.FULL, f"channel already has {channel.max_senders} senders")
            return Accepted((AudioUploadChanged(command.time, channel.channel_id, channel.number, actor.user_id, command.enabled),))
        case SetCustomProperty():
            if not granted & Permission.MANAGE:
                return Rejected(Reason.NO_PERMISSION, "only a host may set the custom property")
            return Accepted((CustomPropertyChanged(command.time, channel.channel_id, channel.number, command.value, actor.user_id),))
    raise TypeError(f"not a channel command: {command!r}")  # pragma: no cover


def _decide_join(channel: Channel | None, cmd: JoinChannel, policy: RolePolicy) -> Decision:
    if cmd.allowed_roles is not None and cmd.role not in cmd.allowed_roles:
        return Rejected(Reason.NO_PERMISSION, f"role {cmd.role.index} is not granted to you")
    if cmd.allowed_roles is not None and policy.permissions(cmd.role, cmd.state) & ~policy.permissions(
        cmd.role, CustomState.NONE
    ):
        # Decision 2: outside open mode a state that raises privileges (on the mic) takes a host.
        return Rejected(Reason.NO_PERMISSION, "going on the mic takes a host")
    if channel is None or channel.ended:
        if cmd.uri_mode:
            return Rejected(Reason.NOT_FOUND, f"no channel {cmd.channel_id!r}")
        created = ChannelCreated(
            time=cmd.time,
            channel=cmd.channel_id,
            number=cmd.new_number,
            created_by=cmd.user_id,
            capacity=cmd.capacity or limits.DEFAULT_CAPACITY,
            heartbeat_time=cmd.heartbeat_time or limits.DEFAULT_HEARTBEAT_TIME,
            heartbeat_timeout=cmd.heartbeat_timeout or limits.DEFAULT_HEARTBEAT_TIMEOUT,
            title=cmd.title,
            custom_property=cmd.custom_property,
            max_senders=cmd.max_senders,
            password_hash=None if cmd.password is None else hash_password(cmd.password, cmd.salt),
        )
        channel = evolve(None, created)
        return Accepted((created, _joined(channel, cmd, policy)))
    if channel.password_hash is not None and (
        cmd.password is None or not password_matches(cmd.password, channel.password_hash)
    ):
        return Rejected(Reason.INVALID_PASSWORD, "wrong channel password")
    events: list[Event] = []
    if cmd.user_id in channel.members:
        # Decision 8: the newer session wins; the older one leaves with duplicate_session.
        events.append(ParticipantLeft(cmd.time, channel.channel_id, channel.number, cmd.user_id, Reason.DUPLICATE_SESSION))
    elif len(channel.members) >= channel.capacity:
        return Rejected(Reason.FULL, f"channel is full ({channel.capacity} members)")
    if cmd.upload and policy.may_publish(cmd.role, cmd.state) and _senders_full(channel, cmd.user_id):
        return Rejected(Reason.FULL, f"channel already has {channel.max_senders} senders")
    events.append(_joined(channel, cmd, policy))
    return Accepted(tuple(events))


def _joined(channel: Channel, cmd: JoinChannel, policy: RolePolicy) -> ParticipantJoined:
    return ParticipantJoined(
        time=cmd.time,
        channel=channel.channel_id,
        number=channel.number,
        user_id=cmd.user_id,
        sid=channel.next_sid,
        role=cmd.role,
        state=cmd.state,
        upload=cmd.upload and policy.may_publish(cmd.role, cmd.state),
        display_name=cmd.display_name,
        granted_roles=None if cmd.allowed_roles is None else _role_mask(cmd.allowed_roles),
    )


def _role_mask(roles: frozenset[CustomRole]) -> int:
    mask = 0
    for role in roles:
        mask |= role
    return mask


def _senders_full(channel: Channel, joining_user: str) -> bool:
    if channel.max_senders is None:
        return False
    senders = sum(1 for m in channel.members.values() if m.upload and m.user_id != joining_user)
    return senders >= channel.max_senders


def _decide_role(channel: Channel, cmd: SetRole, actor: Member, granted: Permission, policy: RolePolicy) -> Decision:
    target = channel.members.get(cmd.target)
    if target is None:
        return Rejected(Reason.NOT_FOUND, f"{cmd.target!r} is not in the channel")
    manages = bool(granted & Permission.MANAGE)
    if target is not actor and not manages:
        return Rejected(Reason.NO_PERMISSION, "only a host may change another participant's role")
    if not target.may_take(cmd.role):
        return Rejected(Reason.NO_PERMISSION, f"role {cmd.role.index} is not granted to {target.user_id!r} by their token")
    if target.role is cmd.role:
        return Accepted(())
    if not manages:
        # Decision 2: anyone may lower their own privileges; raising them takes a host, or a
        # role the member's token grants.
        old, new = policy.roles.get(actor.role, Permission.NONE), policy.roles.get(cmd.role, Permission.NONE)
        if new & ~old and actor.granted_roles is None:
            return Rejected(Reason.NO_PERMISSION, "raising your own role takes a host")
    events: list[Event] = [RoleChanged(cmd.time, channel.channel_id, channel.number, target.user_id, cmd.role, actor.user_id)]
    if target.upload and not policy.may_publish(cmd.role, target.state):
        events.append(AudioUploadChanged(cmd.time, channel.channel_id, channel.number, target.user_id, False))
    return Accepted(tuple(events))


def _decide_state(channel: Channel, cmd: SetState, actor: Member, granted: Permission, policy: RolePolicy) -> Decision:
    target = channel.members.get(cmd.target)
    if target is None:
        return Rejected(Reason.NOT_FOUND, f"{cmd.target!r} is not in the channel")
    if target is not actor and not granted & Permission.MANAGE:
        return Rejected(Reason.NO_PERMISSION, "only a host may change another participant's state")
    if target.state is cmd.state:
        return Accepted(())
    if not granted & Permission.MANAGE:
        gains = policy.permissions(actor.role, cmd.state) & ~policy.permissions(actor.role, actor.state)
        if gains:
            return Rejected(Reason.NO_PERMISSION, "going on the mic takes a host")
    events: list[Event] = [StateChanged(cmd.time, channel.channel_id, channel.number, target.user_id, cmd.state, actor.user_id)]
    if target.upload and not policy.may_publish(target.role, cmd.state):
        events.append(AudioUploadChanged(cmd.time, channel.channel_id, channel.number, target.user_id, False))
    return Accepted(tuple(events))


def _leave_events(channel: Channel, time: float, user_id: str, reason: Reason, by: str | None) -> tuple[Event, ...]:
    left = ParticipantLeft(time, channel.channel_id, channel.number, user_id, reason, by)
    if len(channel.members) == 1:
        # Decision 9: the channel ends with its last member.
        return (left, ChannelStopped(time, channel.channel_id, channel.number, Reason.NONE, None))
    return (left,)


def _end_events(channel: Channel, time: float, reason: Reason) -> tuple[Event, ...]:
    lefts = tuple(
        ParticipantLeft(time, channel.channel_id, channel.number, m.user_id, reason) for m in channel.members_in_join_order()
    )
    return (*lefts, ChannelStopped(time, channel.channel_id, channel.number, Reason.NONE, None))


# --- evolve ---------------------------------------------------------------------------------


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
        raise ValueError(f"{event.TYPE} for channel #{event.number} without its channel_created")
    match event:
        case ParticipantJoined():
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
            return _with_member(channel, event.user_id, role=event.role)
        case StateChanged():
            return _with_member(channel, event.user_id, state=event.state)
        case AudioUploadChanged():
            return _with_member(channel, event.user_id, upload=event.enabled)
        case CustomPropertyChanged():
            return attrs.evolve(channel, custom_property=event.value)
        case ParticipantLeft():
            if event.user_id not in channel.members:
                return channel
            return attrs.evolve(channel, members=channel.members.delete(event.user_id))
        case ChannelStopped():
            return attrs.evolve(channel, members=immutables.Map(), ended=True, ended_reason=event.reason, ended_by=event.by)
    raise TypeError(f"not an event: {event!r}")  # pragma: no cover


def _with_member(channel: Channel, user_id: str, **changes: object) -> Channel:
    member = channel.members.get(user_id)
    if member is None:
        raise ValueError(f"{user_id!r} is not a member of channel #{channel.number}")
    return attrs.evolve(channel, members=channel.members.set(user_id, attrs.evolve(member, **changes)))


def fold(events: Iterable[Event]) -> dict[int, Channel]:
    """Every channel instance in ``events``, by channel number: the replayed world."""
    channels: dict[int, Channel] = {}
    for event in events:
        channels[event.number] = evolve(channels.get(event.number), event)
    return channels
