"""The channel's rules: ``decide(state, command)`` answers the events a command causes, or why
it is refused, and never changes anything. The product decisions of design.md section 2 are
enforced here, so they are tested without any I/O.
"""

from __future__ import annotations

import attrs

from airwave.protocol import DEFAULT_POLICY, CustomRole, CustomState, Permission, Reason, RolePolicy, limits

from .commands import (
    ChangeCdn,
    ChangeCustomProperty,
    ChangeRecording,
    ChangeRole,
    ChangeState,
    ChangeUpload,
    Command,
    EndChannel,
    JoinChannel,
    KickMember,
    LeaveChannel,
    OperatorKick,
    OperatorMute,
    OperatorStop,
    OutputFailed,
    StopChannel,
)
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
from .cdn import DEFAULT_SEGMENT_MS
from .passwords import hash_password, password_matches
from .recordings import MIX_FILE, recording_directory
from .state import Channel, Member, evolve


@attrs.frozen
class Accepted:
    events: tuple[Event, ...]


@attrs.frozen
class Rejected:
    reason: Reason
    message: str


Decision = Accepted | Rejected


def decide(channel: Channel | None, command: Command, policy: RolePolicy = DEFAULT_POLICY) -> Decision:
    """The events ``command`` causes on ``channel`` (None: no live channel with that id)."""
    if isinstance(command, JoinChannel):
        return _decide_join(channel, command, policy)
    if channel is None or channel.ended:
        return Rejected(Reason.NOT_FOUND, "no such channel")
    if isinstance(command, EndChannel):
        return Accepted(_end_events(channel, command.time, command.reason))
    if isinstance(command, OperatorKick | OperatorStop | OperatorMute):
        return _decide_operator(channel, command)
    if isinstance(command, OutputFailed):
        return _decide_output_failed(channel, command)
    actor_id = (
        command.actor
        if isinstance(command, ChangeRole | ChangeState | KickMember | ChangeCustomProperty | ChangeRecording | ChangeCdn)
        else command.user_id
    )
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
            stopped = ChannelStopped(command.time, channel.channel_id, channel.number, Reason.OVER, actor.user_id)
            return Accepted((*_stream_stops(channel, command.time, Reason.OVER), stopped))
        case KickMember():
            if not granted & Permission.KICK:
                return Rejected(Reason.NO_PERMISSION, "only a host may kick")
            if command.target == actor.user_id:
                return Rejected(Reason.INVALID_PARAM, "use leave() to leave; you cannot kick yourself")
            if command.target not in channel.members:
                return Rejected(Reason.NOT_FOUND, f"{command.target!r} is not in the channel")
            return Accepted(_leave_events(channel, command.time, command.target, Reason.KICKED, actor.user_id))
        case ChangeRole():
            return _decide_role(channel, command, actor, granted, policy)
        case ChangeState():
            return _decide_state(channel, command, actor, granted, policy)
        case ChangeUpload():
            if command.enabled == actor.upload:
                return Accepted(())
            if command.enabled and actor.muted:
                return Rejected(Reason.NO_PERMISSION, "muted by an administrator")
            if command.enabled and not policy.may_publish(actor.role, actor.state):
                return Rejected(Reason.NO_PERMISSION, "your role may not publish audio")
            if command.enabled and _senders_full(channel, actor.user_id):
                return Rejected(Reason.FULL, f"channel already has {channel.max_senders} senders")
            return Accepted((AudioUploadChanged(command.time, channel.channel_id, channel.number, actor.user_id, command.enabled),))
        case ChangeCustomProperty():
            if not granted & Permission.MANAGE:
                return Rejected(Reason.NO_PERMISSION, "only a host may set the custom property")
            return Accepted((CustomPropertyChanged(command.time, channel.channel_id, channel.number, command.value, actor.user_id),))
        case ChangeRecording():
            if not granted & Permission.RECORD:
                return Rejected(Reason.NO_PERMISSION, "your role may not record the channel")
            if command.enabled == (channel.recording is not None):
                return Accepted(())  # already as asked: nothing to log, nobody to tell
            if not command.enabled:
                assert channel.recording is not None
                directory = channel.recording.directory
                return Accepted((RecordingStopped(command.time, channel.channel_id, channel.number, directory, Reason.NONE, actor.user_id),))
            if not (command.mix or command.tracks):
                return Rejected(Reason.INVALID_PARAM, "a recording needs the mix, the tracks, or both")
            directory = recording_directory(channel.channel_id, channel.number, command.time)
            started = RecordingStarted(
                command.time, channel.channel_id, channel.number, directory, MIX_FILE if command.mix else "",
                command.tracks, actor.user_id,
            )
            return Accepted((started,))
        case ChangeCdn():
            return _decide_cdn(channel, command, actor, granted)
    raise TypeError(f"not a channel command: {command!r}")  # pragma: no cover


def _decide_join(channel: Channel | None, cmd: JoinChannel, policy: RolePolicy) -> Decision:
    if cmd.allowed_roles is not None and cmd.role is not CustomRole.NONE and cmd.role not in cmd.allowed_roles:
        # Role 0 grants nothing, so every token allows it (as Member.may_take does).
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
        events.append(MemberLeft(cmd.time, channel.channel_id, channel.number, cmd.user_id, Reason.DUPLICATE_SESSION))
    elif len(channel.members) >= channel.capacity:
        return Rejected(Reason.FULL, f"channel is full ({channel.capacity} members)")
    if cmd.upload and policy.may_publish(cmd.role, cmd.state) and _senders_full(channel, cmd.user_id):
        return Rejected(Reason.FULL, f"channel already has {channel.max_senders} senders")
    events.append(_joined(channel, cmd, policy))
    return Accepted(tuple(events))


def _joined(channel: Channel, cmd: JoinChannel, policy: RolePolicy) -> MemberJoined:
    return MemberJoined(
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


def _decide_role(channel: Channel, cmd: ChangeRole, actor: Member, granted: Permission, policy: RolePolicy) -> Decision:
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


def _decide_state(channel: Channel, cmd: ChangeState, actor: Member, granted: Permission, policy: RolePolicy) -> Decision:
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


def _decide_operator(channel: Channel, command: OperatorKick | OperatorStop | OperatorMute) -> Decision:
    """An operator is no member and has every permission; only the target must exist."""
    if isinstance(command, OperatorStop):
        stopped = ChannelStopped(command.time, channel.channel_id, channel.number, Reason.OVER, None, command.operator)
        return Accepted((*_stream_stops(channel, command.time, Reason.OVER), stopped))
    target = channel.members.get(command.target)
    if target is None:
        return Rejected(Reason.NOT_FOUND, f"{command.target!r} is not in channel {channel.channel_id!r}")
    if isinstance(command, OperatorKick):
        return Accepted(_leave_events(channel, command.time, target.user_id, Reason.KICKED, None, command.operator))
    if command.muted == target.muted:
        return Accepted(())
    events: list[Event] = [MuteChanged(command.time, channel.channel_id, channel.number, target.user_id, command.muted, command.operator)]
    if command.muted and target.upload:
        events.append(AudioUploadChanged(command.time, channel.channel_id, channel.number, target.user_id, False))
    return Accepted(tuple(events))


def _decide_output_failed(channel: Channel, command: OutputFailed) -> Decision:
    """The writer that failed is stopped in the log, if it is still the one running (a newer
    recording, started since, goes on)."""
    if command.recording:
        if channel.recording is None or channel.recording.directory != command.directory:
            return Accepted(())
        return Accepted((RecordingStopped(command.time, channel.channel_id, channel.number, command.directory, Reason.SERVER_ERROR, None),))
    if channel.cdn is None:
        return Accepted(())
    return Accepted((CdnStopped(command.time, channel.channel_id, channel.number, Reason.SERVER_ERROR, None),))


def _leave_events(
    channel: Channel, time: float, user_id: str, reason: Reason, by: str | None, operator: str | None = None
) -> tuple[Event, ...]:
    left = MemberLeft(time, channel.channel_id, channel.number, user_id, reason, by, operator)
    if len(channel.members) == 1:
        # Decision 9: the channel ends with its last member, and so do its recording and CDN.
        stopped = ChannelStopped(time, channel.channel_id, channel.number, Reason.NONE, None)
        return (left, *_stream_stops(channel, time, Reason.OVER), stopped)
    return (left,)


def _end_events(channel: Channel, time: float, reason: Reason) -> tuple[Event, ...]:
    lefts = tuple(
        MemberLeft(time, channel.channel_id, channel.number, m.user_id, reason) for m in channel.members_in_join_order()
    )
    return (
        *lefts, *_stream_stops(channel, time, reason), ChannelStopped(time, channel.channel_id, channel.number, Reason.NONE, None)
    )


def _recording_stops(channel: Channel, time: float, reason: Reason) -> tuple[Event, ...]:
    """The recording_stopped a channel's end logs, if it was recording (none otherwise)."""
    if channel.recording is None:
        return ()
    return (RecordingStopped(time, channel.channel_id, channel.number, channel.recording.directory, reason, None),)


def _cdn_stops(channel: Channel, time: float, reason: Reason) -> tuple[Event, ...]:
    """The cdn_stopped a channel's end logs, if it was streaming (none otherwise)."""
    if channel.cdn is None:
        return ()
    return (CdnStopped(time, channel.channel_id, channel.number, reason, None),)


def _stream_stops(channel: Channel, time: float, reason: Reason) -> tuple[Event, ...]:
    """What a channel's end stops first: its recording, then its CDN stream."""
    return (*_recording_stops(channel, time, reason), *_cdn_stops(channel, time, reason))


def _decide_cdn(channel: Channel, cmd: ChangeCdn, actor: Member, granted: Permission) -> Decision:
    if not granted & Permission.CDN:
        return Rejected(Reason.NO_PERMISSION, "your role may not stream the channel to the CDN")
    if cmd.enabled == (channel.cdn is not None):
        return Accepted(())  # already as asked: nothing to log, nobody to tell
    if not cmd.enabled:
        return Accepted((CdnStopped(cmd.time, channel.channel_id, channel.number, Reason.NONE, actor.user_id),))
    if not (cmd.icecast or cmd.hls):
        return Rejected(Reason.INVALID_PARAM, "a CDN stream needs Icecast, HLS or both")
    started = CdnStarted(
        cmd.time, channel.channel_id, channel.number, cmd.icecast, cmd.hls, cmd.segment_ms or DEFAULT_SEGMENT_MS, actor.user_id,
    )
    return Accepted((started,))
