"""Replay equals live: a property over random sessions of channel commands.

A small world of one to three channel ids is driven the way the server drives it: each
command goes to ``decide`` against that id's current channel, a join that creates a channel
gets the next channel number, and accepted events are applied live with ``evolve`` (as the
channel actor does) and appended to one log. At every step:

- folding the log gives exactly the live channels, also after every event went through the
  log's path (``event_to_record`` -> msgpack -> ``event_from_record``);
- the channel invariants hold (publishing only with permission, unique sids, capacity,
  max_senders, ended channels empty);
- a refused command changed nothing and carried a reason the rules may give.
"""

from __future__ import annotations

from collections.abc import Callable
import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import event as note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from airwave.actors.core import (
    SALT_BYTES,
    Accepted,
    Channel,
    Command,
    ChangeUpload,
    EndChannel,
    JoinChannel,
    KickMember,
    LeaveChannel,
    Member,
    OperatorKick,
    OperatorMute,
    OperatorStop,
    Rejected,
    ChangeCustomProperty,
    ChangeCdn,
    ChangeRecording,
    ChangeRole,
    ChangeState,
    StopChannel,
    decide,
    evolve,
    fold,
)
from airwave.actors.core.events import (
    ChannelCreated,
    Event,
    ChannelStopped,
    MemberJoined,
    MemberLeft,
    RecordingStarted,
    RecordingStopped,
    event_from_record,
    event_to_record,
)
from airwave.protocol import DEFAULT_POLICY, CustomRole, CustomState, Permission, Reason, RolePolicy

CHANNEL_IDS = ("222", "333", "444")
USERS = ("ann", "ben", "cat", "dan")
# The default policy, and one where the server lets custom_role_2 publish and kick (decision 2).
POLICIES = (
    DEFAULT_POLICY,
    RolePolicy(roles={**DEFAULT_POLICY.roles, CustomRole.ROLE_2: Permission.PUBLISH | Permission.KICK}),
)
REASONS_OF_RULES = {
    Reason.NOT_FOUND, Reason.NO_PERMISSION, Reason.INVALID_PARAM, Reason.INVALID_PASSWORD, Reason.FULL,
}

users = st.sampled_from(USERS)
roles = st.sampled_from(CustomRole)
# custom_state_0 ("on the mic") is the state that matters to publishing: ask for it more often.
states = st.sampled_from([*CustomState, CustomState.STATE_0, CustomState.STATE_0])
passwords = st.sampled_from([None, None, None, "pw", "other"])
# Any role may be asked for; hosts and the audience are the common ones.
join_roles = st.sampled_from([*CustomRole, CustomRole.ROLE_0, CustomRole.ROLE_0, CustomRole.ROLE_1])
# Mostly open mode; sometimes a token that grants the audience role only, or host and audience.
allowed_roles = st.sampled_from(
    [None, None, None, frozenset({CustomRole.ROLE_1}), frozenset({CustomRole.ROLE_0, CustomRole.ROLE_1})]
)


def through_log(event: Event) -> Event:
    """The path every event takes to disk and back."""
    return event_from_record(msgpack.unpackb(msgpack.packb(event_to_record(event)), raw=False))


class ChannelWorld(RuleBasedStateMachine):
    @initialize(id_count=st.integers(1, len(CHANNEL_IDS)), policy=st.sampled_from(POLICIES))
    def open_world(self, id_count: int, policy: RolePolicy) -> None:
        self.policy = policy
        self.channel_ids = st.sampled_from(CHANNEL_IDS[:id_count])
        self.live: dict[str, Channel] = {}  # channel id -> its current instance (maybe ended)
        self.instances: dict[int, Channel] = {}  # channel number -> live state of that instance
        self.log: list[Event] = []
        self.log_after_disk: list[Event] = []
        self.next_number = 1
        self.clock = 1_700_000_000.0

    # --- the server's side: decide, append, evolve ------------------------------------------

    def run(self, channel_id: str, make: Callable[[float], Command]) -> None:
        self.clock += 0.25
        command = make(self.clock)
        before = self.live.get(channel_id)
        members_before = None if before is None else dict(before.members)

        decision = decide(before, command, self.policy)

        # decide is pure: whatever it answered, the channel it looked at is untouched.
        assert self.live.get(channel_id) is before
        assert members_before == (None if before is None else dict(before.members))
        if isinstance(decision, Rejected):
            assert decision.reason in REASONS_OF_RULES, decision
            note(f"{type(command).__name__} refused: {decision.reason.reason_name}")
            return
        assert isinstance(decision, Accepted)
        note(f"{type(command).__name__} accepted" + ("" if decision.events else " (no events)"))
        channel = before
        for event in decision.events:
            self.check_well_formed(channel_id, channel, event)
            if isinstance(event, ChannelCreated):
                self.next_number += 1
            note(f"event {event.TYPE}" + (f" {event.reason.reason_name}" if hasattr(event, "reason") else ""))
            channel = evolve(channel, event)
            self.log.append(event)
            self.log_after_disk.append(through_log(event))
        if channel is not None:
            self.live[channel_id] = channel
            self.instances[channel.number] = channel

    def check_well_formed(self, channel_id: str, channel: Channel | None, event: Event) -> None:
        """What the log may say next about ``channel``, the instance the event applies to."""
        assert event.channel == channel_id
        if isinstance(event, ChannelCreated):
            assert channel is None or channel.ended, "a live channel is never created again"
            assert event.number == self.next_number, "each created channel takes the next number"
            return
        assert channel is not None and not channel.ended, f"{event.TYPE} after the channel ended"
        assert event.number == channel.number
        if isinstance(event, MemberJoined):
            # Decision 8: a session is never replaced silently; the older one leaves first.
            assert event.user_id not in channel.members, f"{event.user_id} joined twice"
        if isinstance(event, MemberLeft):
            assert event.user_id in channel.members, f"{event.user_id} left without being there"
        if isinstance(event, RecordingStarted):
            assert channel.recording is None, "a recording starts only when none runs"
        if isinstance(event, RecordingStopped):
            assert channel.recording is not None and channel.recording.directory == event.directory
        if isinstance(event, ChannelStopped):
            assert channel.recording is None, "a channel's end stops its recording first (recording_stopped)"

    def someone(self, data: st.DataObject, channel_id: str, prefer: Callable[[Member], bool] = bool) -> str:
        """Usually a member of the channel (so commands get past not_found), half the time one
        that ``prefer`` picks if there is one (so commands reach the interesting cases);
        sometimes anyone."""
        channel = self.live.get(channel_id)
        if channel is not None and channel.members and data.draw(st.integers(0, 4), label="member?"):
            members = sorted(channel.members.values(), key=lambda m: m.user_id)
            if data.draw(st.booleans(), label="preferred?"):
                members = [m for m in members if prefer(m)] or members
            return data.draw(st.sampled_from(members)).user_id
        return data.draw(users)

    def a_host(self, member: Member) -> bool:
        return bool(self.policy.permissions(member.role, member.state) & Permission.MANAGE)

    # --- commands ---------------------------------------------------------------------------

    @rule(
        data=st.data(), user=users, role=join_roles, state=states, upload=st.booleans(), password=passwords,
        capacity=st.sampled_from([None, 1, 2, 3]), max_senders=st.sampled_from([None, 1, 1, 2]),
        uri_mode=st.sampled_from([False, False, False, True]), allowed_roles=allowed_roles,
    )
    def join(self, data: st.DataObject, user: str, role: CustomRole, state: CustomState, upload: bool,
             password: str | None, capacity: int | None, max_senders: int | None, uri_mode: bool,
             allowed_roles: frozenset[CustomRole] | None) -> None:
        channel_id = data.draw(self.channel_ids)
        salt = self.next_number.to_bytes(SALT_BYTES, "big")
        self.run(channel_id, lambda t: JoinChannel(
            time=t, channel_id=channel_id, user_id=user, new_number=self.next_number, salt=salt, role=role,
            state=state, upload=upload, display_name=user.title(), uri_mode=uri_mode, password=password,
            capacity=capacity, max_senders=max_senders, allowed_roles=allowed_roles,
        ))

    @rule(data=st.data(), user=users, role=st.sampled_from([CustomRole.ROLE_0, CustomRole.ROLE_1]),
          upload=st.booleans(), max_senders=st.sampled_from([None, 1]))
    def join_plainly(
        self, data: st.DataObject, user: str, role: CustomRole, upload: bool, max_senders: int | None
    ) -> None:
        """The common join: by id, as a host or the audience, no password, default capacity."""
        channel_id = data.draw(self.channel_ids)
        salt = self.next_number.to_bytes(SALT_BYTES, "big")
        self.run(channel_id, lambda t: JoinChannel(
            t, channel_id, user, self.next_number, salt, role=role, upload=upload, max_senders=max_senders
        ))

    @rule(data=st.data(),
          reason=st.sampled_from([Reason.QUIT, Reason.QUIT, Reason.TIMEOUT, Reason.SLOW_CONSUMER, Reason.OFFLINE]))
    def leave(self, data: st.DataObject, reason: Reason) -> None:
        channel_id = data.draw(self.channel_ids)
        user = self.someone(data, channel_id)
        self.run(channel_id, lambda t: LeaveChannel(t, user, reason))

    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        channel_id = data.draw(self.channel_ids)
        user = self.someone(data, channel_id)
        self.run(channel_id, lambda t: StopChannel(t, user))

    @rule(data=st.data(), reason=st.sampled_from([Reason.SERVER_SHUTDOWN, Reason.SERVER_RESTART]))
    def end(self, data: st.DataObject, reason: Reason) -> None:
        self.run(data.draw(self.channel_ids), lambda t: EndChannel(t, reason))

    @rule(data=st.data(), role=roles)
    def set_role(self, data: st.DataObject, role: CustomRole) -> None:
        channel_id = data.draw(self.channel_ids)
        actor = self.someone(data, channel_id, prefer=self.a_host)
        subject = self.someone(data, channel_id, prefer=lambda m: m.upload)
        self.run(channel_id, lambda t: ChangeRole(t, actor, subject, role))

    @rule(data=st.data(), state=states)
    def set_state(self, data: st.DataObject, state: CustomState) -> None:
        channel_id = data.draw(self.channel_ids)
        actor = self.someone(data, channel_id, prefer=self.a_host)
        subject = self.someone(data, channel_id, prefer=lambda m: m.upload)
        self.run(channel_id, lambda t: ChangeState(t, actor, subject, state))

    @rule(data=st.data(), enabled=st.sampled_from([True, True, False]))
    def enable_upload(self, data: st.DataObject, enabled: bool) -> None:
        channel_id = data.draw(self.channel_ids)
        user = self.someone(data, channel_id, prefer=lambda m: m.upload != enabled)
        self.run(channel_id, lambda t: ChangeUpload(t, user, enabled))

    @rule(data=st.data())
    def kick(self, data: st.DataObject) -> None:
        channel_id = data.draw(self.channel_ids)
        actor = self.someone(data, channel_id, prefer=self.a_host)
        subject = self.someone(data, channel_id)
        self.run(channel_id, lambda t: KickMember(t, actor, subject))

    @rule(data=st.data(), action=st.sampled_from(["kick", "stop", "mute", "mute", "unmute"]))
    def operator(self, data: st.DataObject, action: str) -> None:
        """An admin request: decided on the channel alone, the events naming the operator."""
        channel_id = data.draw(self.channel_ids)
        subject = self.someone(data, channel_id, prefer=lambda m: m.upload)
        commands: dict[str, Callable[[float], Command]] = {
            "kick": lambda t: OperatorKick(t, "ops", subject),
            "stop": lambda t: OperatorStop(t, "ops"),
            "mute": lambda t: OperatorMute(t, "ops", subject, True),
            "unmute": lambda t: OperatorMute(t, "ops", subject, False),
        }
        self.run(channel_id, commands[action])

    @rule(data=st.data(), value=st.sampled_from(["", "topic", "ünïcode"]))
    def set_custom_property(self, data: st.DataObject, value: str) -> None:
        channel_id = data.draw(self.channel_ids)
        actor = self.someone(data, channel_id)
        self.run(channel_id, lambda t: ChangeCustomProperty(t, actor, value))

    @rule(data=st.data(), enabled=st.sampled_from([True, True, False]), mix=st.booleans(), tracks=st.booleans())
    def enable_record(self, data: st.DataObject, enabled: bool, mix: bool, tracks: bool) -> None:
        channel_id = data.draw(self.channel_ids)
        actor = self.someone(data, channel_id, prefer=self.a_host)
        self.run(channel_id, lambda t: ChangeRecording(t, actor, enabled, mix, tracks))

    @rule(data=st.data(), enabled=st.sampled_from([True, True, False]), outputs=st.sampled_from([("", ""), ("http://ice/a.opus", ""), ("", "/hls/a/index.m3u8")]))
    def enable_cdn(self, data: st.DataObject, enabled: bool, outputs: tuple[str, str]) -> None:
        channel_id = data.draw(self.channel_ids)
        actor = self.someone(data, channel_id, prefer=self.a_host)
        self.run(channel_id, lambda t: ChangeCdn(t, actor, enabled, *outputs))

    # --- what must hold after every step ----------------------------------------------------

    @invariant()
    def replay_of_log_equals_live_state(self) -> None:
        assert fold(self.log) == self.instances

    @invariant()
    def replay_of_log_after_disk_equals_live_state(self) -> None:
        assert self.log_after_disk == self.log
        assert fold(self.log_after_disk) == self.instances

    @invariant()
    def every_live_channel_is_the_newest_instance_of_its_id(self) -> None:
        for channel_id, channel in self.live.items():
            assert channel.channel_id == channel_id
            newest = max(n for n, c in self.instances.items() if c.channel_id == channel_id)
            assert self.instances[newest] is channel

    @invariant()
    def channel_invariants_hold(self) -> None:
        for channel in self.instances.values():
            members = channel.members.values()
            if channel.ended:
                assert not channel.members
                assert channel.recording is None
            assert len(channel.members) <= channel.capacity
            sids = [m.sid for m in members]
            assert len(sids) == len(set(sids))
            assert all(sid < channel.next_sid for sid in sids)
            for user_id, member in channel.members.items():
                assert member.user_id == user_id
                assert member.is_creator == (user_id == channel.created_by)
                if member.upload:
                    assert self.policy.may_publish(member.role, member.state), member
                    assert not member.muted, member
            if channel.max_senders is not None:
                assert sum(m.upload for m in members) <= channel.max_senders


TestChannelWorld = ChannelWorld.TestCase
TestChannelWorld.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
