"""The channel rules as a specification: design.md section 2 and its numbered decisions.

Everything here is a pure call: ``decide`` answers events or a refusal, ``evolve`` applies
the events the way the channel actor does. A refusal is checked to carry no events at all.
"""

from __future__ import annotations

import msgpack
import pytest

from airwave.actors.core import (
    OutputFailed,
    SALT_BYTES,
    Accepted,
    Channel,
    Decision,
    ChangeUpload,
    EndChannel,
    JoinChannel,
    KickMember,
    LeaveChannel,
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
    channel_uri,
    decide,
    evolve,
    fold,
    hash_password,
    password_matches,
)
from airwave.actors.core.events import (
    AudioUploadChanged,
    ChannelCreated,
    ChannelStopped,
    CustomPropertyChanged,
    MemberJoined,
    MemberLeft,
    MuteChanged,
    RecordingStarted,
    RecordingStopped,
    CdnStarted,
    CdnStopped,
    RoleChanged,
    StateChanged,
    event_to_record,
)
from airwave.protocol import (
    DEFAULT_POLICY,
    CustomRole,
    CustomState,
    Permission,
    Reason,
    RecordState,
    CdnState,
    RolePolicy,
    limits,
)

HOST = CustomRole.ROLE_0
AUDIENCE = CustomRole.ROLE_1
ON_MIC = CustomState.STATE_0
SALT = bytes(range(SALT_BYTES))
CID = "222"


# --- helpers: a channel is built by deciding and evolving, never by hand ----------------------


def join(channel: Channel | None, user: str, *, number: int = 1, t: float = 1.0, **params: object) -> Decision:
    return decide(channel, JoinChannel(time=t, channel_id=CID, user_id=user, new_number=number, salt=SALT, **params))


def accepted(decision: Decision) -> tuple:
    assert isinstance(decision, Accepted), decision
    return decision.events


def refused(decision: Decision, reason: Reason) -> None:
    assert isinstance(decision, Rejected), decision
    assert decision.reason is reason, decision


def applied(channel: Channel | None, decision: Decision) -> Channel:
    for event in accepted(decision):
        channel = evolve(channel, event)
    assert channel is not None
    return channel


def hosted(*audience: str, **params: object) -> Channel:
    """Channel 222 created by "host" (custom_role_0), then joined by ``audience`` in order."""
    channel = applied(None, join(None, "host", role=HOST, **params))
    for user in audience:
        channel = applied(channel, join(channel, user))
    return channel


def on_the_mic(channel: Channel, user: str) -> Channel:
    """The co-host flow up to uploading: a host puts ``user`` on the mic, ``user`` uploads."""
    channel = applied(channel, decide(channel, ChangeState(2.0, "host", user, ON_MIC)))
    return applied(channel, decide(channel, ChangeUpload(3.0, user, True)))


# --- 1. the seed's call sequence ------------------------------------------------------------


def test_join_by_id_creates_channel_on_first_join() -> None:
    events = accepted(join(None, "host", role=HOST, t=10.0))

    assert [type(e) for e in events] == [ChannelCreated, MemberJoined]
    created, joined = events
    assert (created.channel, created.number, created.created_by) == (CID, 1, "host")
    assert (joined.user_id, joined.sid, joined.role) == ("host", 1, HOST)
    channel = applied(None, Accepted(events))
    member = channel.members["host"]
    assert member.sid == 1
    assert member.is_creator
    assert channel.uri == channel_uri(CID) == "airwave:222"
    assert not channel.ended


def test_join_by_id_without_parameters_uses_airwave_defaults() -> None:
    created = accepted(join(None, "host"))[0]

    assert created.capacity == limits.DEFAULT_CAPACITY
    assert created.heartbeat_time == limits.DEFAULT_HEARTBEAT_TIME
    assert created.heartbeat_timeout == limits.DEFAULT_HEARTBEAT_TIMEOUT
    assert created.max_senders is None
    assert created.password_hash is None


def test_join_first_joiner_parameters_configure_channel_later_ones_are_ignored() -> None:
    channel = hosted(capacity=5, heartbeat_time=2, heartbeat_timeout=6, title="Talk", custom_property="p")

    channel = applied(channel, join(channel, "bob", capacity=99, title="Other", custom_property="x"))

    assert (channel.capacity, channel.heartbeat_time, channel.heartbeat_timeout) == (5, 2, 6)
    assert (channel.title, channel.custom_property) == ("Talk", "p")


def test_join_without_role_joins_as_audience_custom_role_1() -> None:
    channel = hosted()

    events = accepted(join(channel, "bob"))

    assert events == (MemberJoined(1.0, CID, 1, "bob", 2, AUDIENCE, CustomState.NONE, False, ""),)
    member = applied(channel, Accepted(events)).members["bob"]
    assert member.role is AUDIENCE
    assert member.sid == 2
    assert not member.is_creator


def test_join_uri_mode_of_missing_channel_is_refused_not_found() -> None:
    refused(join(None, "bob", uri_mode=True), Reason.NOT_FOUND)


def test_join_uri_mode_of_ended_channel_is_refused_not_found() -> None:
    channel = hosted()
    channel = applied(channel, decide(channel, StopChannel(2.0, "host")))

    refused(join(channel, "bob", uri_mode=True), Reason.NOT_FOUND)


def test_join_uri_mode_of_existing_channel_joins_it() -> None:
    channel = hosted()

    events = accepted(join(channel, "bob", uri_mode=True))

    assert [type(e) for e in events] == [MemberJoined]
    assert "bob" in applied(channel, Accepted(events)).members


def test_join_by_id_of_ended_channel_creates_new_instance_with_new_number() -> None:
    first = hosted()
    first = applied(first, decide(first, StopChannel(2.0, "host")))

    events = accepted(join(first, "bob", number=2))

    assert [type(e) for e in events] == [ChannelCreated, MemberJoined]
    second = applied(first, Accepted(events))
    assert second.number == 2
    assert second.created_by == "bob"
    assert second.members["bob"].sid == 1
    assert second.members["bob"].is_creator


def test_members_in_join_order_follows_sids_and_evolve_leaves_the_old_state_untouched() -> None:
    names = [f"user-{i}" for i in range(40)]  # enough that hash order differs from join order
    channel = hosted(*names)
    before = channel

    channel = applied(channel, Accepted(accepted(decide(channel, LeaveChannel(2.0, "user-7")))))

    assert [m.user_id for m in channel.members_in_join_order()] == ["host"] + [n for n in names if n != "user-7"]
    assert "user-7" in before.members and len(before.members) == 41


def test_set_role_by_host_promotes_audience_to_host() -> None:
    channel = hosted("bob")

    events = accepted(decide(channel, ChangeRole(2.0, "host", "bob", HOST)))

    assert events == (RoleChanged(2.0, CID, 1, "bob", HOST, "host"),)
    assert applied(channel, Accepted(events)).members["bob"].role is HOST


def test_leave_by_member_emits_participant_left_quit() -> None:
    channel = hosted("bob")

    events = accepted(decide(channel, LeaveChannel(2.0, "bob")))

    assert events == (MemberLeft(2.0, CID, 1, "bob", Reason.QUIT, None),)
    channel = applied(channel, Accepted(events))
    assert list(channel.members) == ["host"]
    assert not channel.ended


def test_leave_of_last_member_ends_channel_with_channel_stopped_by_none_reason_none() -> None:
    channel = hosted()

    events = accepted(decide(channel, LeaveChannel(2.0, "host")))

    assert events == (
        MemberLeft(2.0, CID, 1, "host", Reason.QUIT, None),
        ChannelStopped(2.0, CID, 1, Reason.NONE, None),
    )
    channel = applied(channel, Accepted(events))
    assert channel.ended
    assert not channel.members
    assert (channel.ended_reason, channel.ended_by) == (Reason.NONE, None)


def test_leave_of_last_publisher_keeps_channel_open_for_listeners() -> None:
    channel = hosted("bob")

    channel = applied(channel, decide(channel, LeaveChannel(2.0, "host")))

    assert not channel.ended
    assert list(channel.members) == ["bob"]


def test_stop_by_host_ends_channel_reason_over_by_host() -> None:
    channel = hosted("bob", "carol")

    events = accepted(decide(channel, StopChannel(2.0, "host")))

    assert events == (ChannelStopped(2.0, CID, 1, Reason.OVER, "host"),)
    channel = applied(channel, Accepted(events))
    assert channel.ended
    assert not channel.members
    assert (channel.ended_reason, channel.ended_by) == (Reason.OVER, "host")


def test_stop_by_audience_is_refused_no_permission() -> None:
    channel = hosted("bob")

    refused(decide(channel, StopChannel(2.0, "bob")), Reason.NO_PERMISSION)


def test_seed_call_sequence_runs_from_create_to_stop() -> None:
    """join by id -> audience joins -> uri join -> role change -> leave -> stop refused -> stop."""
    channel = applied(None, join(None, "host", role=HOST))
    channel = applied(channel, join(channel, "bob"))
    channel = applied(channel, join(channel, "carol", uri_mode=True))
    channel = applied(channel, decide(channel, ChangeRole(2.0, "host", "carol", HOST)))
    channel = applied(channel, decide(channel, LeaveChannel(3.0, "host")))
    refused(decide(channel, StopChannel(4.0, "bob")), Reason.NO_PERMISSION)
    channel = applied(channel, decide(channel, StopChannel(5.0, "carol")))

    assert channel.ended
    assert (channel.ended_reason, channel.ended_by) == (Reason.OVER, "carol")


# --- 2. every reason code the rules produce -------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        LeaveChannel(2.0, "bob"),
        StopChannel(2.0, "host"),
        ChangeUpload(2.0, "host", True),
        ChangeRole(2.0, "host", "host", AUDIENCE),
        ChangeState(2.0, "host", "host", ON_MIC),
        KickMember(2.0, "host", "bob"),
        ChangeCustomProperty(2.0, "host", "x"),
        EndChannel(2.0, Reason.SERVER_SHUTDOWN),
    ],
    ids=lambda c: type(c).__name__,
)
def test_command_on_missing_or_ended_channel_is_refused_not_found(command: object) -> None:
    ended = hosted("bob")
    ended = applied(ended, decide(ended, StopChannel(1.5, "host")))

    refused(decide(None, command), Reason.NOT_FOUND)
    refused(decide(ended, command), Reason.NOT_FOUND)


@pytest.mark.parametrize(
    "command",
    [
        LeaveChannel(2.0, "zed"),
        StopChannel(2.0, "zed"),
        ChangeUpload(2.0, "zed", True),
        ChangeRole(2.0, "zed", "host", AUDIENCE),
        ChangeState(2.0, "zed", "host", CustomState.STATE_1),
        KickMember(2.0, "zed", "host"),
        ChangeCustomProperty(2.0, "zed", "x"),
    ],
    ids=lambda c: type(c).__name__,
)
def test_command_from_non_member_is_refused_not_found(command: object) -> None:
    refused(decide(hosted("bob"), command), Reason.NOT_FOUND)


@pytest.mark.parametrize(
    "command",
    [ChangeRole(2.0, "host", "zed", AUDIENCE), ChangeState(2.0, "host", "zed", ON_MIC), KickMember(2.0, "host", "zed")],
    ids=lambda c: type(c).__name__,
)
def test_command_on_non_member_target_is_refused_not_found(command: object) -> None:
    refused(decide(hosted("bob"), command), Reason.NOT_FOUND)


def test_kick_yourself_is_refused_invalid_param() -> None:
    refused(decide(hosted("bob"), KickMember(2.0, "host", "host")), Reason.INVALID_PARAM)


def test_kick_by_host_removes_target_with_reason_kicked_by_host() -> None:
    channel = hosted("bob")

    events = accepted(decide(channel, KickMember(2.0, "host", "bob")))

    assert events == (MemberLeft(2.0, CID, 1, "bob", Reason.KICKED, "host"),)
    assert list(applied(channel, Accepted(events)).members) == ["host"]


def test_kick_by_audience_is_refused_no_permission() -> None:
    refused(decide(hosted("bob", "carol"), KickMember(2.0, "bob", "carol")), Reason.NO_PERMISSION)


# --- an operator (admin requests): not a member, every permission, named in the events ---


def test_operator_kick_removes_any_member_and_the_last_one_ends_the_channel() -> None:
    channel = hosted("bob")

    events = accepted(decide(channel, OperatorKick(2.0, "ops", "host")))
    assert events == (MemberLeft(2.0, CID, 1, "host", Reason.KICKED, None, "ops"),)
    alone = applied(channel, Accepted(events))
    assert accepted(decide(alone, OperatorKick(3.0, "ops", "bob"))) == (
        MemberLeft(3.0, CID, 1, "bob", Reason.KICKED, None, "ops"),
        ChannelStopped(3.0, CID, 1, Reason.NONE, None),
    )
    refused(decide(alone, OperatorKick(3.0, "ops", "nobody")), Reason.NOT_FOUND)


def test_operator_stop_ends_the_channel_with_over_by_no_member() -> None:
    events = accepted(decide(hosted("bob"), OperatorStop(2.0, "ops")))

    assert events == (ChannelStopped(2.0, CID, 1, Reason.OVER, None, "ops"),)
    refused(decide(applied(hosted("bob"), Accepted(events)), OperatorStop(3.0, "ops")), Reason.NOT_FOUND)


def test_operator_mute_revokes_upload_until_unmuted() -> None:
    channel = applied(hosted(), decide(hosted(), ChangeUpload(1.5, "host", True)))

    events = accepted(decide(channel, OperatorMute(2.0, "ops", "host", True)))
    assert events == (MuteChanged(2.0, CID, 1, "host", True, "ops"), AudioUploadChanged(2.0, CID, 1, "host", False))
    muted = applied(channel, Accepted(events))
    assert muted.members["host"].muted and not muted.members["host"].upload
    assert accepted(decide(muted, OperatorMute(2.5, "ops", "host", True))) == ()
    refused(decide(muted, ChangeUpload(3.0, "host", True)), Reason.NO_PERMISSION)
    unmuted = applied(muted, decide(muted, OperatorMute(4.0, "ops", "host", False)))
    assert not unmuted.members["host"].muted and not unmuted.members["host"].upload  # theirs to ask for
    assert accepted(decide(unmuted, ChangeUpload(5.0, "host", True))) == (AudioUploadChanged(5.0, CID, 1, "host", True),)


def test_join_with_wrong_password_is_refused_invalid_password() -> None:
    channel = hosted(password="open sesame")

    refused(join(channel, "bob", password="open barley"), Reason.INVALID_PASSWORD)


def test_join_without_password_of_protected_channel_is_refused_invalid_password() -> None:
    channel = hosted(password="open sesame")

    refused(join(channel, "bob"), Reason.INVALID_PASSWORD)


def test_join_with_right_password_joins() -> None:
    channel = hosted(password="open sesame")

    assert "bob" in applied(channel, join(channel, "bob", password="open sesame")).members


def test_join_with_password_of_channel_without_password_ignores_it() -> None:
    channel = hosted()

    assert "bob" in applied(channel, join(channel, "bob", password="anything")).members


def test_join_of_channel_at_capacity_is_refused_full() -> None:
    channel = hosted("bob", capacity=2)

    refused(join(channel, "carol"), Reason.FULL)


def test_join_with_upload_when_max_senders_upload_is_refused_full() -> None:
    channel = hosted(max_senders=1, upload=True)

    refused(join(channel, "cohost", role=HOST, upload=True), Reason.FULL)
    # Without upload there is no sender slot to take.
    assert "cohost" in applied(channel, join(channel, "cohost", role=HOST)).members


def test_enable_upload_when_max_senders_upload_is_refused_full() -> None:
    channel = hosted(max_senders=1, upload=True)
    channel = applied(channel, join(channel, "cohost", role=HOST))

    refused(decide(channel, ChangeUpload(2.0, "cohost", True)), Reason.FULL)


def test_enable_upload_after_sender_stops_takes_freed_slot() -> None:
    channel = hosted(max_senders=1, upload=True)
    channel = applied(channel, join(channel, "cohost", role=HOST))
    channel = applied(channel, decide(channel, ChangeUpload(2.0, "host", False)))

    assert applied(channel, decide(channel, ChangeUpload(3.0, "cohost", True))).members["cohost"].upload


def test_join_with_same_user_id_replaces_older_session_with_duplicate_session() -> None:
    channel = hosted("bob")

    events = accepted(join(channel, "bob", t=5.0, display_name="Bob 2"))

    assert events == (
        MemberLeft(5.0, CID, 1, "bob", Reason.DUPLICATE_SESSION, None),
        MemberJoined(5.0, CID, 1, "bob", 3, AUDIENCE, CustomState.NONE, False, "Bob 2"),
    )
    channel = applied(channel, Accepted(events))
    assert len(channel.members) == 2
    assert channel.members["bob"].sid == 3
    assert channel.members["bob"].display_name == "Bob 2"


def test_join_with_same_user_id_at_capacity_is_not_counted_twice() -> None:
    channel = hosted("bob", capacity=2)

    channel = applied(channel, join(channel, "bob"))

    assert len(channel.members) == 2


def test_join_with_same_user_id_of_only_member_keeps_channel_open() -> None:
    channel = hosted()

    channel = applied(channel, join(channel, "host", role=HOST))

    assert not channel.ended
    assert channel.members["host"].sid == 2


def test_join_with_same_user_id_that_uploads_does_not_count_own_old_slot() -> None:
    channel = hosted(max_senders=1, upload=True)

    channel = applied(channel, join(channel, "host", role=HOST, upload=True))

    assert channel.members["host"].upload


@pytest.mark.parametrize("reason", [Reason.TIMEOUT, Reason.SLOW_CONSUMER, Reason.OFFLINE])
def test_leave_forced_by_server_passes_reason_through(reason: Reason) -> None:
    channel = hosted("bob")

    events = accepted(decide(channel, LeaveChannel(2.0, "bob", reason)))

    assert events == (MemberLeft(2.0, CID, 1, "bob", reason, None),)


@pytest.mark.parametrize("reason", [Reason.SERVER_SHUTDOWN, Reason.SERVER_RESTART])
def test_end_channel_by_server_leaves_every_member_then_stops(reason: Reason) -> None:
    channel = hosted("bob", "carol")

    events = accepted(decide(channel, EndChannel(9.0, reason)))

    assert events == (
        MemberLeft(9.0, CID, 1, "host", reason, None),
        MemberLeft(9.0, CID, 1, "bob", reason, None),
        MemberLeft(9.0, CID, 1, "carol", reason, None),
        ChannelStopped(9.0, CID, 1, Reason.NONE, None),
    )
    channel = applied(channel, Accepted(events))
    assert channel.ended
    assert not channel.members


# --- 3. decisions 2, 3 and 4: roles, states, upload -------------------------------------------


@pytest.mark.parametrize("role", list(CustomRole))
def test_join_in_open_mode_may_ask_for_any_role(role: CustomRole) -> None:
    channel = hosted()

    assert applied(channel, join(channel, "bob", role=role)).members["bob"].role is role


def test_join_in_open_mode_may_ask_to_be_on_the_mic() -> None:
    channel = hosted()

    member = applied(channel, join(channel, "bob", state=ON_MIC, upload=True)).members["bob"]

    assert (member.state, member.upload) == (ON_MIC, True)


def test_join_with_allowed_roles_refuses_role_not_granted_no_permission() -> None:
    channel = hosted()

    refused(join(channel, "bob", role=HOST, allowed_roles=frozenset({AUDIENCE})), Reason.NO_PERMISSION)
    refused(join(None, "bob", role=HOST, allowed_roles=frozenset({AUDIENCE})), Reason.NO_PERMISSION)


def test_join_with_allowed_roles_accepts_granted_role() -> None:
    channel = hosted()

    channel = applied(channel, join(channel, "bob", role=HOST, allowed_roles=frozenset({HOST, AUDIENCE})))

    assert channel.members["bob"].role is HOST


def test_join_with_allowed_roles_refuses_on_the_mic_state_no_permission() -> None:
    """Decision 2: custom_state_0 raises privileges, so outside open mode it takes a host."""
    channel = hosted()

    refused(join(channel, "bob", state=ON_MIC, allowed_roles=frozenset({AUDIENCE})), Reason.NO_PERMISSION)
    # A listen-only state raises nothing.
    ok = join(channel, "bob", state=CustomState.STATE_1, allowed_roles=frozenset({AUDIENCE}))
    assert applied(channel, ok).members["bob"].state is CustomState.STATE_1


def test_join_with_upload_as_audience_joins_with_upload_off() -> None:
    channel = hosted()

    events = accepted(join(channel, "bob", upload=True))

    assert events[0].upload is False
    assert applied(channel, Accepted(events)).members["bob"].upload is False


def test_join_with_upload_as_host_joins_uploading() -> None:
    assert hosted(upload=True).members["host"].upload is True


@pytest.mark.parametrize("lower", [AUDIENCE, CustomRole.ROLE_2, CustomRole.NONE])
def test_set_role_lowering_own_role_is_accepted(lower: CustomRole) -> None:
    channel = hosted("bob")
    channel = applied(channel, decide(channel, ChangeRole(2.0, "host", "bob", HOST)))

    channel = applied(channel, decide(channel, ChangeRole(3.0, "bob", "bob", lower)))

    assert channel.members["bob"].role is lower


def test_set_role_to_listen_only_role_by_audience_is_accepted() -> None:
    channel = hosted("bob")

    channel = applied(channel, decide(channel, ChangeRole(2.0, "bob", "bob", CustomRole.ROLE_3)))

    assert channel.members["bob"].role is CustomRole.ROLE_3


def test_set_role_raising_own_role_without_host_is_refused_no_permission() -> None:
    refused(decide(hosted("bob"), ChangeRole(2.0, "bob", "bob", HOST)), Reason.NO_PERMISSION)


def test_set_role_of_another_by_audience_is_refused_no_permission() -> None:
    channel = hosted("bob", "carol")

    refused(decide(channel, ChangeRole(2.0, "bob", "carol", CustomRole.ROLE_2)), Reason.NO_PERMISSION)
    refused(decide(channel, ChangeRole(2.0, "bob", "host", AUDIENCE)), Reason.NO_PERMISSION)


def test_set_role_by_host_demotes_another_host() -> None:
    channel = hosted("bob")
    channel = applied(channel, decide(channel, ChangeRole(2.0, "host", "bob", HOST)))

    events = accepted(decide(channel, ChangeRole(3.0, "bob", "host", AUDIENCE)))

    assert events == (RoleChanged(3.0, CID, 1, "host", AUDIENCE, "bob"),)


def test_set_state_by_host_sets_anyones_state() -> None:
    channel = hosted("bob")

    events = accepted(decide(channel, ChangeState(2.0, "host", "bob", CustomState.STATE_2)))

    assert events == (StateChanged(2.0, CID, 1, "bob", CustomState.STATE_2, "host"),)


def test_set_state_replaces_previous_state() -> None:
    """Decision 3: one value per participant, never a set."""
    channel = hosted("bob")
    channel = applied(channel, decide(channel, ChangeState(2.0, "host", "bob", CustomState.STATE_1)))

    channel = applied(channel, decide(channel, ChangeState(3.0, "host", "bob", CustomState.STATE_3)))

    assert channel.members["bob"].state is CustomState.STATE_3


def test_set_state_going_on_the_mic_yourself_is_refused_no_permission() -> None:
    refused(decide(hosted("bob"), ChangeState(2.0, "bob", "bob", ON_MIC)), Reason.NO_PERMISSION)


def test_set_state_own_listen_only_state_by_audience_is_accepted() -> None:
    channel = hosted("bob")

    channel = applied(channel, decide(channel, ChangeState(2.0, "bob", "bob", CustomState.STATE_1)))

    assert channel.members["bob"].state is CustomState.STATE_1


def test_set_state_of_another_by_audience_is_refused_no_permission() -> None:
    refused(decide(hosted("bob", "carol"), ChangeState(2.0, "bob", "carol", CustomState.STATE_1)), Reason.NO_PERMISSION)


def test_cohost_flow_host_puts_audience_on_the_mic_then_upload_is_accepted() -> None:
    channel = hosted("bob")
    refused(decide(channel, ChangeUpload(1.5, "bob", True)), Reason.NO_PERMISSION)

    put_on = accepted(decide(channel, ChangeState(2.0, "host", "bob", ON_MIC)))
    channel = applied(channel, Accepted(put_on))
    upload = accepted(decide(channel, ChangeUpload(3.0, "bob", True)))
    channel = applied(channel, Accepted(upload))

    assert put_on == (StateChanged(2.0, CID, 1, "bob", ON_MIC, "host"),)
    assert upload == (AudioUploadChanged(3.0, CID, 1, "bob", True),)
    assert channel.members["bob"].upload is True


def test_set_state_off_the_mic_while_uploading_also_stops_upload() -> None:
    channel = on_the_mic(hosted("bob"), "bob")

    events = accepted(decide(channel, ChangeState(4.0, "host", "bob", CustomState.NONE)))

    assert events == (
        StateChanged(4.0, CID, 1, "bob", CustomState.NONE, "host"),
        AudioUploadChanged(4.0, CID, 1, "bob", False),
    )
    assert applied(channel, Accepted(events)).members["bob"].upload is False


def test_set_state_off_the_mic_by_yourself_is_accepted_and_stops_upload() -> None:
    channel = on_the_mic(hosted("bob"), "bob")

    events = accepted(decide(channel, ChangeState(4.0, "bob", "bob", CustomState.NONE)))

    assert AudioUploadChanged(4.0, CID, 1, "bob", False) in events


def test_set_role_demoting_uploading_host_also_stops_upload() -> None:
    channel = hosted("bob")
    channel = applied(channel, decide(channel, ChangeRole(2.0, "host", "bob", HOST)))
    channel = applied(channel, decide(channel, ChangeUpload(3.0, "bob", True)))

    events = accepted(decide(channel, ChangeRole(4.0, "host", "bob", AUDIENCE)))

    assert events == (
        RoleChanged(4.0, CID, 1, "bob", AUDIENCE, "host"),
        AudioUploadChanged(4.0, CID, 1, "bob", False),
    )


def test_set_role_demoting_host_on_the_mic_keeps_upload() -> None:
    """The on-the-mic state alone lets them publish, so the upload goes on."""
    channel = hosted("bob")
    channel = applied(channel, decide(channel, ChangeRole(2.0, "host", "bob", HOST)))
    channel = on_the_mic(channel, "bob")

    events = accepted(decide(channel, ChangeRole(4.0, "host", "bob", AUDIENCE)))

    assert events == (RoleChanged(4.0, CID, 1, "bob", AUDIENCE, "host"),)


def test_enable_upload_by_audience_is_refused_no_permission() -> None:
    channel = hosted("bob")

    decision = decide(channel, ChangeUpload(2.0, "bob", True))

    refused(decision, Reason.NO_PERMISSION)
    assert not hasattr(decision, "events")


def test_enable_upload_off_is_accepted_for_anyone_uploading() -> None:
    channel = hosted(upload=True)

    events = accepted(decide(channel, ChangeUpload(2.0, "host", False)))

    assert events == (AudioUploadChanged(2.0, CID, 1, "host", False),)


@pytest.mark.parametrize(
    "command",
    [
        ChangeRole(2.0, "host", "bob", AUDIENCE),
        ChangeRole(2.0, "bob", "bob", AUDIENCE),
        ChangeState(2.0, "host", "bob", CustomState.NONE),
        ChangeState(2.0, "bob", "bob", CustomState.NONE),
        ChangeUpload(2.0, "bob", False),
        ChangeUpload(2.0, "host", True),
    ],
    ids=repr,
)
def test_change_to_same_value_produces_no_events(command: object) -> None:
    channel = hosted("bob", upload=True)

    assert accepted(decide(channel, command)) == ()


def test_set_custom_property_by_host_replaces_it() -> None:
    channel = hosted(custom_property="old")

    events = accepted(decide(channel, ChangeCustomProperty(2.0, "host", "new")))

    assert events == (CustomPropertyChanged(2.0, CID, 1, "new", "host"),)
    assert applied(channel, Accepted(events)).custom_property == "new"


def test_set_custom_property_by_audience_is_refused_no_permission() -> None:
    refused(decide(hosted("bob"), ChangeCustomProperty(2.0, "bob", "x")), Reason.NO_PERMISSION)


def test_role_policy_of_server_may_let_role_2_publish() -> None:
    """Decision 2: roles 2 and 3 listen only, unless the server's role policy says otherwise."""
    policy = RolePolicy(roles={**DEFAULT_POLICY.roles, CustomRole.ROLE_2: Permission.PUBLISH})
    channel = hosted("bob")
    channel = applied(channel, decide(channel, ChangeRole(2.0, "host", "bob", CustomRole.ROLE_2), policy))

    assert accepted(decide(channel, ChangeUpload(3.0, "bob", True), policy))
    refused(decide(channel, ChangeUpload(3.0, "bob", True)), Reason.NO_PERMISSION)
    # Raising yourself to that role still takes a host.
    channel = applied(channel, join(channel, "carol"))
    refused(decide(channel, ChangeRole(4.0, "carol", "carol", CustomRole.ROLE_2), policy), Reason.NO_PERMISSION)


# --- 4. secrets (decision 11) ----------------------------------------------------------------


def test_password_never_appears_in_clear_in_event_records() -> None:
    password = "correct horse battery staple"
    channel = hosted(password=password)
    events = accepted(join(channel, "bob", password=password))
    all_events = (*accepted(join(None, "host", role=HOST, password=password)), *events)

    for event in all_events:
        record = event_to_record(event)
        packed = msgpack.packb(record)
        assert password.encode() not in packed, event.TYPE
        assert password not in repr(event)
        assert all(value != password for value in record.values())
    assert password not in repr(channel)


def test_password_hash_verifies_only_the_password() -> None:
    stored = hash_password("open sesame", SALT)

    assert password_matches("open sesame", stored)
    assert not password_matches("open sesame ", stored)
    assert not password_matches("", stored)
    assert stored.startswith(SALT)
    assert b"open sesame" not in stored


def test_password_hash_with_different_salts_differs() -> None:
    other_salt = bytes(reversed(SALT))

    first, second = hash_password("open sesame", SALT), hash_password("open sesame", other_salt)

    assert first != second
    assert first[SALT_BYTES:] != second[SALT_BYTES:]
    assert password_matches("open sesame", first) and password_matches("open sesame", second)


def test_password_hash_with_salt_of_wrong_length_is_refused() -> None:
    """A shorter salt would be read back wrongly and lock everyone out of the channel."""
    with pytest.raises(ValueError):
        hash_password("open sesame", b"short")


def test_channel_created_keeps_salted_hash_of_joiners_salt() -> None:
    created = accepted(join(None, "host", password="open sesame"))[0]

    assert created.password_hash == hash_password("open sesame", SALT)


# --- evolve and fold ------------------------------------------------------------------------


def test_evolve_event_without_channel_created_is_refused() -> None:
    with pytest.raises(ValueError):
        evolve(None, MemberJoined(1.0, CID, 1, "bob", 1, AUDIENCE, CustomState.NONE))


def test_evolve_event_of_another_channel_number_is_refused() -> None:
    with pytest.raises(ValueError):
        evolve(hosted(), MemberLeft(1.0, CID, 2, "host", Reason.QUIT))


def test_evolve_change_of_non_member_is_refused() -> None:
    with pytest.raises(ValueError):
        evolve(hosted(), RoleChanged(1.0, CID, 1, "zed", HOST, "host"))


def test_fold_keeps_recreated_channel_apart_by_number() -> None:
    log = [*accepted(join(None, "host", role=HOST))]
    first = fold(log)[1]
    log += accepted(decide(first, LeaveChannel(2.0, "host")))
    ended = fold(log)[1]
    log += accepted(join(ended, "bob", number=2, t=3.0))

    world = fold(log)

    assert sorted(world) == [1, 2]
    assert world[1].ended and not world[1].members
    assert list(world[2].members) == ["bob"]
    assert world[2].created_by == "bob"


# --- credentials: what a token grants bounds every role change --------------------------------


def test_token_member_may_raise_own_role_to_a_granted_role() -> None:
    channel = hosted()
    channel = applied(channel, join(channel, "cohost", allowed_roles=frozenset({HOST, AUDIENCE})))
    events = accepted(decide(channel, ChangeRole(2.0, "cohost", "cohost", HOST)))
    assert [type(e) for e in events] == [RoleChanged]


def test_open_mode_member_may_not_raise_own_role_without_a_host() -> None:
    channel = hosted("alice")
    refused(decide(channel, ChangeRole(2.0, "alice", "alice", HOST)), Reason.NO_PERMISSION)


def test_host_may_not_give_a_role_beyond_the_members_token() -> None:
    channel = hosted()
    channel = applied(channel, join(channel, "fan", allowed_roles=frozenset({AUDIENCE})))
    refused(decide(channel, ChangeRole(2.0, "host", "fan", HOST)), Reason.NO_PERMISSION)
    refused(decide(channel, ChangeRole(2.0, "host", "fan", CustomRole.ROLE_2)), Reason.NO_PERMISSION)
    # Lowering to no role is always allowed.
    assert accepted(decide(channel, ChangeRole(2.0, "host", "fan", CustomRole.NONE)))


def test_token_grants_survive_the_log_path_and_replay() -> None:
    channel = hosted()
    decision = join(channel, "fan", allowed_roles=frozenset({AUDIENCE, CustomRole.ROLE_2}))
    (joined,) = accepted(decision)
    assert joined.granted_roles == int(AUDIENCE) | int(CustomRole.ROLE_2)
    record = msgpack.unpackb(msgpack.packb(event_to_record(joined)))
    from airwave.actors.core.events import event_from_record

    assert event_from_record(record) == joined
    assert applied(channel, decision).members["fan"].may_take(CustomRole.ROLE_2)


def test_same_value_role_change_of_someone_else_by_audience_is_refused_not_a_no_op() -> None:
    channel = hosted("alice")
    refused(decide(channel, ChangeRole(2.0, "alice", "host", HOST)), Reason.NO_PERMISSION)
    refused(decide(channel, ChangeState(2.0, "alice", "host", CustomState.NONE)), Reason.NO_PERMISSION)


# --- recording (issue 18): enable_record, and a channel's end stops it ----------------------


def test_enable_record_by_host_starts_a_recording_named_by_channel_number_and_time() -> None:
    channel = hosted("bob")

    events = accepted(decide(channel, ChangeRecording(1_700_000_000.25, "host", True)))

    assert [type(e) for e in events] == [RecordingStarted]
    started = events[0]
    assert started.directory == "recordings/222/1-20231114T221320.250Z"
    assert (started.mix, started.tracks, started.by) == ("mix.opus", True, "host")
    recording = applied(channel, Accepted(events)).recording
    assert recording is not None and recording.directory == started.directory
    assert applied(channel, Accepted(events)).record_state is RecordState.RECORDING


def test_enable_record_by_audience_is_refused_no_permission() -> None:
    channel = hosted("bob")

    refused(decide(channel, ChangeRecording(2.0, "bob", True)), Reason.NO_PERMISSION)


def test_enable_record_permission_comes_from_the_role_policy() -> None:
    policy = RolePolicy(roles={**DEFAULT_POLICY.roles, AUDIENCE: Permission.RECORD})
    channel = hosted("bob")

    assert isinstance(decide(channel, ChangeRecording(2.0, "bob", True), policy), Accepted)
    host_without = RolePolicy(roles={**DEFAULT_POLICY.roles, HOST: Permission.host() & ~Permission.RECORD})
    refused(decide(channel, ChangeRecording(2.0, "host", True), host_without), Reason.NO_PERMISSION)


def test_enable_record_twice_or_disable_when_idle_changes_nothing() -> None:
    channel = hosted()
    assert accepted(decide(channel, ChangeRecording(2.0, "host", False))) == ()
    channel = applied(channel, decide(channel, ChangeRecording(2.0, "host", True)))

    assert accepted(decide(channel, ChangeRecording(3.0, "host", True))) == ()


def test_enable_record_with_neither_mix_nor_tracks_is_invalid_param() -> None:
    refused(decide(hosted(), ChangeRecording(2.0, "host", True, mix=False, tracks=False)), Reason.INVALID_PARAM)


def test_disable_record_stops_it_with_reason_none_by_the_host() -> None:
    channel = hosted()
    channel = applied(channel, decide(channel, ChangeRecording(2.0, "host", True)))

    events = accepted(decide(channel, ChangeRecording(3.0, "host", False)))

    assert [type(e) for e in events] == [RecordingStopped]
    assert (events[0].reason, events[0].by, events[0].directory) == (Reason.NONE, "host", channel.recording.directory)
    assert applied(channel, Accepted(events)).record_state is RecordState.IDLE


@pytest.mark.parametrize(
    ("ending", "reason"),
    [
        (lambda: StopChannel(5.0, "host"), Reason.OVER),
        (lambda: LeaveChannel(5.0, "host"), Reason.OVER),
        (lambda: EndChannel(5.0, Reason.SERVER_SHUTDOWN), Reason.SERVER_SHUTDOWN),
        (lambda: EndChannel(5.0, Reason.SERVER_RESTART), Reason.SERVER_RESTART),
    ],
)
def test_a_channel_that_ends_stops_its_recording_first(ending: object, reason: Reason) -> None:
    channel = hosted()
    channel = applied(channel, decide(channel, ChangeRecording(2.0, "host", True)))

    events = accepted(decide(channel, ending()))  # type: ignore[operator]

    stops = [e for e in events if isinstance(e, RecordingStopped)]
    assert [s.reason for s in stops] == [reason]
    assert isinstance(events[-1], ChannelStopped) and events.index(stops[0]) == len(events) - 2
    assert applied(channel, Accepted(events)).recording is None


# --- CDN (issue 18): enable_cdn streams the mix to Icecast and HLS; a channel's end stops it -


ICE, HLS = "http://127.0.0.1:8000/222.opus", "/hls/222/index.m3u8"


def test_enable_cdn_by_host_starts_the_stream_where_the_server_put_it() -> None:
    channel = hosted("bob")

    events = accepted(decide(channel, ChangeCdn(2.0, "host", True, ICE, HLS)))

    assert [type(e) for e in events] == [CdnStarted]
    assert (events[0].icecast, events[0].hls, events[0].segment_ms, events[0].by) == (ICE, HLS, 1000, "host")
    after = applied(channel, Accepted(events))
    assert after.cdn_state is CdnState.STREAMING and after.cdn is not None and after.cdn.hls == HLS


def test_enable_cdn_by_audience_is_refused_no_permission_even_without_outputs() -> None:
    channel = hosted("bob")

    refused(decide(channel, ChangeCdn(2.0, "bob", True, ICE, HLS)), Reason.NO_PERMISSION)
    refused(decide(channel, ChangeCdn(2.0, "bob", True)), Reason.NO_PERMISSION)
    no_cdn = RolePolicy(roles={**DEFAULT_POLICY.roles, HOST: Permission.host() & ~Permission.CDN})
    refused(decide(channel, ChangeCdn(2.0, "host", True, ICE, HLS), no_cdn), Reason.NO_PERMISSION)


def test_enable_cdn_with_neither_icecast_nor_hls_is_invalid_param() -> None:
    # The channel actor refuses first, with server_error, on a server without CDN outputs.
    refused(decide(hosted(), ChangeCdn(2.0, "host", True)), Reason.INVALID_PARAM)


def test_enable_cdn_key_interval_sets_the_segment_length() -> None:
    events = accepted(decide(hosted(), ChangeCdn(2.0, "host", True, "", HLS, segment_ms=2000)))

    assert events[0].segment_ms == 2000


def test_enable_cdn_twice_changes_nothing_and_disable_stops_it_by_the_host() -> None:
    channel = hosted()
    assert accepted(decide(channel, ChangeCdn(2.0, "host", False))) == ()
    channel = applied(channel, decide(channel, ChangeCdn(2.0, "host", True, ICE, "")))
    assert accepted(decide(channel, ChangeCdn(3.0, "host", True, ICE, ""))) == ()

    events = accepted(decide(channel, ChangeCdn(4.0, "host", False)))

    assert [(type(e), e.reason, e.by) for e in events] == [(CdnStopped, Reason.NONE, "host")]
    assert applied(channel, Accepted(events)).cdn_state is CdnState.IDLE


@pytest.mark.parametrize(
    ("ending", "reason"),
    [
        (lambda: StopChannel(5.0, "host"), Reason.OVER),
        (lambda: LeaveChannel(5.0, "host"), Reason.OVER),
        (lambda: EndChannel(5.0, Reason.SERVER_SHUTDOWN), Reason.SERVER_SHUTDOWN),
        (lambda: EndChannel(5.0, Reason.SERVER_RESTART), Reason.SERVER_RESTART),
    ],
)
def test_a_channel_that_ends_stops_its_cdn_after_its_recording(ending: object, reason: Reason) -> None:
    channel = hosted()
    channel = applied(channel, decide(channel, ChangeRecording(2.0, "host", True)))
    channel = applied(channel, decide(channel, ChangeCdn(2.0, "host", True, ICE, HLS)))

    events = accepted(decide(channel, ending()))  # type: ignore[operator]

    assert [type(e) for e in events[-3:]] == [RecordingStopped, CdnStopped, ChannelStopped]
    assert events[-2].reason is reason
    assert applied(channel, Accepted(events)).cdn is None


def test_an_output_that_failed_is_stopped_server_error_unless_a_newer_one_runs_and_idle_is_a_no_op() -> None:
    channel = hosted("bob")
    assert accepted(decide(channel, OutputFailed(3.0, recording=True, directory="recordings/222/x"))) == ()
    assert accepted(decide(channel, OutputFailed(3.0, recording=False))) == ()
    recording = applied(channel, Accepted(accepted(decide(channel, ChangeRecording(2.0, "host", True)))))
    streaming = applied(recording, Accepted(accepted(decide(recording, ChangeCdn(2.0, "host", True, ICE, HLS)))))
    assert streaming.recording is not None

    # A failure of an older recording (since stopped, a new one started) changes nothing.
    assert accepted(decide(streaming, OutputFailed(3.0, recording=True, directory="recordings/222/older"))) == ()
    (stopped,) = accepted(decide(streaming, OutputFailed(3.0, recording=True, directory=streaming.recording.directory)))
    assert isinstance(stopped, RecordingStopped) and (stopped.reason, stopped.by) == (Reason.SERVER_ERROR, None)
    (cdn_stopped,) = accepted(decide(streaming, OutputFailed(3.0, recording=False)))
    assert isinstance(cdn_stopped, CdnStopped) and cdn_stopped.reason is Reason.SERVER_ERROR
    after = applied(applied(streaming, Accepted((stopped,))), Accepted((cdn_stopped,)))
    assert after.record_state is RecordState.IDLE and after.cdn_state is CdnState.IDLE
