"""The channel actor: one trio task per live channel, the only writer of its state.

Its loop is the house pattern: take a batch from the mailbox, ``decide`` each command against
the current state, ``evolve`` the accepted events, append them to the event log in one go
(one group commit for a whole join storm), and only then act: tell the members, update the
media router, answer the requests. Nothing here decides policy; the pure core (`core/decide.py`) does.

In cluster mode the same actor runs on every node with members of the channel. On the
owner (the node holding the channel's lease) it decides as above. On any other node it is
a *follower*: it forwards each command to the owner (`Link.forward`), applies the events the
owner appended (``Apply``, in their log order) with the same ``evolve`` and acts on them for
this node's sessions, so presence, member counts and forced leaves reach them as on one
server; a forwarded request is answered once the follower has applied the owner's answer.
The actor knows nothing of NATS: `Link` (`actors/cluster/link.py`) stands for the others.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from airwave.media.router import FrameSink, MediaRouter
from airwave.protocol import (
    DEFAULT_POLICY,
    ChannelInfo,
    MemberCount,
    ParticipantChange,
    ParticipantInfo,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    PropertyChange,
    PropertyChanged,
    Reason,
    RolePolicy,
    ServerMessage,
    VolumeChanged,
    VolumeStatus,
    volume_status_for_level,
)
from airwave.protocol.text import shown

from .core import (
    Accepted,
    AudioUploadChanged,
    CdnSettings,
    CdnStarted,
    CdnStopped,
    Channel,
    ChannelCreated,
    ChangeCdn,
    ChangeRecording,
    ChannelStopped,
    Command,
    CustomPropertyChanged,
    EndChannel,
    Event,
    JoinChannel,
    LeaveChannel,
    Member,
    MemberJoined,
    MemberLeft,
    MuteChanged,
    RecordingStarted,
    RecordingStopped,
    Rejected,
    RoleChanged,
    StateChanged,
    decide,
    event_from_record,
    event_to_record,
    evolve,
    hls_folder,
    OutputFailed,
)
from .clock import now as wall_clock
from .logcontext import LOG_SUBJECT
from .net import frame_of
from .rollcall import RollCall, RollSettings

if TYPE_CHECKING:
    from airwave.media.recorder_process import RecorderProcess, RecordingFeed

log = logging.getLogger("airwave.channel")

MAILBOX_SIZE = 256  # commands waiting for one channel; senders block beyond it (backpressure)
MAX_BATCH = 512  # commands decided per log append
TICK_SECONDS = 0.25  # volume updates at most 4/s per publisher
MEMBER_COUNT_EVERY_TICKS = 4  # the audience's member count at most once a second
# ... and at most this many member_count messages per second per channel: a channel of N
# listeners gets its count every max(1, N / budget) seconds. Once a second to everyone would
# make a join storm cost O(N x its duration) = O(N^2) messages (design: scale rule).
MEMBER_COUNT_MESSAGES_PER_SECOND = 1000
# The recorder's key in the media router: members' sids start at 1, so it is nobody's.
RECORDER_SID = 0
CDN_SID = -1  # the CDN's recorder: another key that is nobody's
# How long an actor that is cancelled (shutdown, crash) waits for its recording's files to be
# finalised by the worker (it writes 150 ms behind the clock: well under a second).
FINALISE_WITHIN = 10.0
# A follower answers a forwarded request once it has applied the owner's events up to the
# answer's seq; they normally arrive before the answer (same NATS connection, same order).
# Not there this soon: the live message was lost, so the follower re-reads the stream.
CATCH_UP_AFTER = 0.5
CATCH_UP_WITHIN = 5.0


class Session(Protocol):
    """What the channel needs from a connected participant (the participant actor)."""

    user_id: str
    output: FrameSink  # the connection's one ordered output, fed directly by the media router
    resume_key: str  # its session token's resume key (`protocol/sessiontoken.py`); "" before the join reply
    token_expires_at: float | None  # token mode: when its join token expires (epoch seconds)

    def send_frame(self, frame: bytes) -> None:
        """Queue a control frame; never blocks (a backlogged session becomes a slow consumer)."""

    def attached(self, channel: ChannelActor, sid: int) -> None:
        """This session is now the member with media sender id ``sid``."""

    def removed(self, channel_id: str, reason: Reason) -> None:
        """The server took this session out of the channel (kicked, over, timeout, ...)."""


class OneShot:
    """A reply slot: set once by the channel actor, awaited once by the requester."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: ChannelReply | None = None

    def set(self, value: ChannelReply) -> None:
        self._value = value
        self._event.set()

    async def wait(self) -> ChannelReply:
        await self._event.wait()
        assert self._value is not None
        return self._value


class LogRefused(Exception):
    """The log will not take this channel's events here, and says why to the requesters
    (cluster mode: the channel's authority moved to another node). The actor ends."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message


@attrs.frozen
class ChannelReply:
    reason: Reason
    message: str = ""
    info: ChannelInfo | None = None
    sid: int | None = None
    user_id: str = ""  # a resume by resume key: whose membership it took
    token_expires_at: float | None = None  # ... and when that member's join token expires (token mode)
    # Cluster mode: no owner answered a forwarded command (the channel ended there, or its
    # owner is gone): the registry looks the channel up again before answering.
    moved: bool = False


@attrs.frozen
class Forwarded:
    """The owner's answer to a command a follower forwarded (cluster mode)."""

    reason: Reason
    message: str = ""
    seq: int = 0  # the owner's last record when it answered: applied here before replying
    moved: bool = False  # no owner answered
    user_id: str = ""  # a resume: the member it took over
    token_expires_at: float | None = None  # ... and its join token's expiry (token mode)


@attrs.frozen
class Apply:
    """The owner's records (each with its ``seq``), for a follower to apply in order."""

    records: tuple[Mapping[str, Any], ...]


@attrs.frozen
class Nudge:
    """Nothing to do: wakes the actor's loop so it sees it has become idle."""


class Link(Protocol):
    """Cluster mode: the channel's other nodes, as the actor sees them."""

    relay: FrameSink  # carries this node's publishers' frames to the other nodes, once each
    node: str  # this node's name
    roll: RollSettings  # the roll call's timing (`actors/rollcall.py`)

    async def run(self, actor: ChannelActor) -> None:
        """Feeds the actor what other nodes send (relayed media and texts; on a follower the
        owner's records as ``Apply``; on the owner the forwarded commands) until cancelled."""

    def send_text(self, frame: bytes, to: str | None, sender: str) -> None:
        """A text message for members on other nodes (``to`` None: everyone)."""

    async def forward(self, command: Command) -> Forwarded:
        """Follower: the owner's answer to ``command``, once its records are appended."""

    async def catch_up(self, actor: ChannelActor) -> None:
        """Follower: re-reads the owner's records after the last one applied."""

    async def aclose(self) -> None:
        """Ends the link's subscriptions (the actor ended)."""

    def announce(self, members: list[tuple[str, str, float | None]], *, owner: bool) -> None:
        """This node's roll call: the members it holds, each with its resume key and token expiry."""

    def release(self, user_id: str, to: str) -> None:
        """Owner: ``user_id`` resumed on node ``to``: every other node lets its hold go."""

    async def forward_resume(self, key: str) -> Forwarded:
        """Follower: the owner's answer to a resume by resume key (``user_id``: whose)."""

    async def take_over(self, actor: ChannelActor) -> Callable[[list[dict[str, object]]], object] | None:
        """Follower whose owner is gone: takes the channel's lease if it is free, brings the
        actor up to the stream's last record and returns the fenced append (this node owns
        the channel from now on); None if another node holds the lease."""


@attrs.frozen
class Reattach:
    """A resumed connection takes over a dropped session's membership: nothing is logged,
    nobody else is told (decision 7)."""

    user_id: str
    dropped: Session


@attrs.frozen
class ResumeElsewhere:
    """Cluster mode: a connection resumes a session this node does not hold (its node died,
    or the client moved to another node), named by its token's resume key. The owner finds
    the member by the key its node announced (`rollcall.RollCall`) and moves it to the new
    connection: same member, same sid, nothing logged, nobody told (decision 7); the node
    that held it lets it go. ``node``: where the session resumes."""

    key: str
    node: str


@attrs.frozen
class Attach:
    """Follower: the owner gave ``user_id``'s membership to this envelope's session."""

    user_id: str
    token_expires_at: float | None = None


@attrs.frozen
class LetGo:
    """Follower: ``user_id`` resumed on another node; this node's session of it ends (no log)."""

    user_id: str


@attrs.frozen
class Envelope:
    """A command for the channel; ``session`` is None for the server's own commands."""

    command: Command | Reattach | Apply | Nudge | ResumeElsewhere | Attach | LetGo
    session: Session | None
    reply: OneShot | None


def participant_info(member: Member, volume: VolumeStatus = VolumeStatus.NONE) -> ParticipantInfo:
    return ParticipantInfo(
        user_id=member.user_id,
        sid=member.sid,
        display_name=member.display_name,
        role=member.role,
        state=member.state,
        audio=member.upload,
        volume_status=volume if member.upload else VolumeStatus.NONE,
        is_creator=member.is_creator,
    )


class ChannelActor:
    def __init__(
        self,
        channel_id: str,
        *,
        log_append: Callable[[list[dict[str, object]]], object],
        allocate_number: Callable[[], int],
        claim_number: Callable[[int], None],
        on_idle: Callable[[ChannelActor], None],
        policy: RolePolicy = DEFAULT_POLICY,
        data_dir: Path | None = None,
        recordings: RecorderProcess | None = None,
        cdn: CdnSettings | None = None,
        link: Link | None = None,
        follower: bool = False,
    ) -> None:
        """``data_dir`` is where recordings go (under ``recordings/``), ``recordings`` the
        server's recording worker; either None: this server does not record, and
        enable_record is refused with server_error. ``cdn``: where enable_cdn streams the mix
        (HLS under ``data_dir``, through the same worker); None: refused, server_error."""
        self.channel_id = channel_id
        self.channel: Channel | None = None
        self.router = MediaRouter()
        self.link = link
        self.follower = follower  # cluster mode: another node decides; this one applies
        if link is not None:
            self.router.relay = link.relay
        self.applied_seq = 0  # follower: the last of the owner's records applied here
        self._applied = trio.Event()  # set (and replaced) whenever applied_seq moves
        self._pending: dict[str, Session] = {}  # follower: joins forwarded, not yet applied
        self._forwarding = 0  # follower: forwarded commands not answered yet
        self._taking_over: trio.Event | None = None  # follower: a take-over is being tried
        self._nursery: trio.Nursery | None = None
        self._policy = policy
        self._log_append = log_append
        self._allocate_number = allocate_number
        self._claim_number = claim_number
        self._on_idle = on_idle
        self._sessions: dict[str, Session] = {}
        # Who owns each membership as of the last decision (ahead of _sessions while a batch is
        # being made durable): a command from a session that no longer owns it is stale.
        self._owners: dict[str, Session] = {}
        self._hosts: dict[str, Session] = {}
        self._count_dirty = False
        self._count_sent_at = -math.inf
        self._volumes: dict[int, VolumeStatus] = {}
        self._announced: set[str] = set()  # hosts and publishers: who everyone sees
        # Cluster mode: the members other nodes hold, as their roll calls say (`actors/rollcall.py`).
        self.roll = RollCall(trio.current_time())
        self._roll_due = True  # announce this node's members at the next tick
        self._rolled_at = -math.inf
        self._ticked_at = trio.current_time()
        self._data_dir = data_dir
        self._recordings = recordings
        self._cdn = cdn if cdn is not None and cdn.enabled and data_dir is not None and recordings is not None else None
        self.recorder: RecordingFeed | None = None
        self.cdn_recorder: RecordingFeed | None = None  # the mix for Icecast and HLS (enable_cdn)
        self._nursery: trio.Nursery | None = None
        self.mailbox, self._inbox = trio.open_memory_channel[Envelope](MAILBOX_SIZE)

    # --- queries (plain reads of the current immutable state) ---

    @property
    def policy(self) -> RolePolicy:
        return self._policy

    @property
    def live(self) -> bool:
        return self.channel is not None and not self.channel.ended

    def session(self, user_id: str) -> Session | None:
        return self._sessions.get(user_id)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def adopt(self, channel: Channel | None, seq: int) -> None:
        """Starts from the channel as the stream has it up to ``seq`` (every member is on
        another node so far), before the actor runs: a follower, or an owner that goes on
        with an instance whose owner died."""
        self.channel, self.applied_seq = channel, seq
        if channel is None or channel.ended:
            return
        for member in channel.members_in_join_order():
            self.router.add_member(member.sid, None, publishing=member.upload)
            if self._is_announced(member):
                self._announced.add(member.user_id)

    def deliver_text(self, frame: bytes, to: str | None, sender: str) -> None:
        """A text message sent on another node (cluster mode): to this node's recipients."""
        if to is None:
            for user_id, session in self._sessions.items():
                if user_id != sender:
                    session.send_frame(frame)
        else:
            target = self._sessions.get(to)
            if target is not None:
                target.send_frame(frame)

    # --- the actor ---

    def log_fields(self) -> dict[str, str]:
        return {"channel": self.channel_id}

    async def run(self) -> None:
        # Set, not inherited: the task that started this actor was a session's.
        LOG_SUBJECT.set(self)
        try:
            await self._run()
        finally:
            if self.link is not None:
                await self.link.aclose()  # shielded: also when the actor is cancelled or crashed

    async def _run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._ticker)
            try:
                if self.link is not None:
                    nursery.start_soon(self.link.run, self)
                async with self._inbox:
                    while True:
                        batch = [await self._inbox.receive()]
                        while len(batch) < MAX_BATCH:
                            try:
                                batch.append(self._inbox.receive_nowait())
                            except trio.WouldBlock:
                                break
                        if self.follower:
                            self._follow(batch)
                        else:
                            await self._process(batch)
                        if self._idle() and self._inbox.statistics().current_buffer_used == 0:
                            # Unregister before closing, so no new sender finds this mailbox.
                            self._on_idle(self)
                            break
            finally:
                # However the actor ends (a crash, a cancelled server), a recording still
                # running is finalised: the nursery waits for its worker to close the files.
                self._stop_recorder()
                self._stop_cdn()
            nursery.cancel_scope.cancel()

    def _idle(self) -> bool:
        """Nothing left to do here: the channel ended; a follower also once no member of
        its node is left and nothing it forwarded is unanswered."""
        if self.follower:
            return self._forwarding == 0 and (not self.live or not self._sessions)
        return not self.live

    async def _process(self, batch: list[Envelope]) -> None:
        outcomes: list[tuple[Envelope, Accepted | Rejected, list[tuple[Event, Channel | None, Channel]]]] = []
        resumed: list[tuple[Envelope, ChannelReply]] = []
        records: list[dict[str, object]] = []
        for envelope in batch:
            command = envelope.command
            if isinstance(command, Nudge | Apply | Attach):  # a follower's business, never an owner's
                continue
            if isinstance(command, LetGo):
                self._let_go(command.user_id, keep=None)
                continue
            if isinstance(command, Reattach):
                outcomes.append((envelope, self._reattach(command, envelope.session), []))
                continue
            if isinstance(command, ResumeElsewhere):
                resumed.append((envelope, self._resume_member(command, envelope.session)))
                continue
            if isinstance(command, JoinChannel):
                command = attrs.evolve(command, new_number=self._allocate_number())
                if _runs_the_kdf(self.channel, command):
                    # PBKDF2 takes ~1.5 ms and releases the GIL: on a worker thread it costs
                    # this channel's mailbox that long, not the whole server's loop. decide is
                    # pure and the state immutable, so the thread shares nothing mutable.
                    decision = await trio.to_thread.run_sync(decide, self.channel, command, self._policy)
                else:
                    decision = decide(self.channel, command, self._policy)
            elif envelope.session is not None and self._owners.get(envelope.session.user_id) is not envelope.session:
                decision = Rejected(Reason.NOT_FOUND, "this session is no longer in the channel")
            elif isinstance(command, ChangeRecording) and command.enabled and (self._data_dir is None or self._recordings is None):
                decision = Rejected(Reason.SERVER_ERROR, "this server does not record (no data directory)")
            elif isinstance(command, ChangeCdn) and command.enabled and self._cdn is None:
                decision = Rejected(Reason.SERVER_ERROR, "this server has no CDN output (serve --icecast-url or --hls)")
            elif isinstance(command, ChangeCdn):
                decision = decide(self.channel, self._with_cdn_outputs(command), self._policy)
            else:
                decision = decide(self.channel, command, self._policy)
            applied = []
            if isinstance(decision, Accepted):
                for event in decision.events:
                    if isinstance(event, ChannelCreated):
                        self._claim_number(event.number)
                    before, self.channel = self.channel, evolve(self.channel, event)
                    self._track_owner(event, envelope.session)
                    applied.append((event, before, self.channel))
                    records.append(event_to_record(event))
            outcomes.append((envelope, decision, applied))
        if records:
            # Answer only once the records are as durable as the fsync mode promises.
            try:
                await self._log_append(records)  # type: ignore[misc]
            except Exception as exc:
                # Nothing was acted on; the requesters learn it, then the supervisor logs it.
                refused = exc if isinstance(exc, LogRefused) else LogRefused(Reason.INTERNAL_ERROR, "the event log failed")
                for envelope, _, _ in outcomes:
                    if envelope.reply is not None:
                        envelope.reply.set(ChannelReply(refused.reason, refused.message))
                raise
        for envelope, decision, applied in outcomes:
            for event, before, after in applied:
                self._act(envelope.session, event, before, after)
            if envelope.reply is not None:
                envelope.reply.set(self._reply_for(envelope, decision))
        for envelope, answer in resumed:
            if envelope.reply is not None:
                envelope.reply.set(answer)

    def _reattach(self, command: Reattach, session: Session | None) -> Accepted | Rejected:
        member = self.channel.members.get(command.user_id) if self.live and self.channel else None
        if member is None or session is None or self._owners.get(command.user_id) is not command.dropped:
            return Rejected(Reason.NOT_FOUND, "that session is no longer in the channel")
        self._owners[member.user_id] = self._sessions[member.user_id] = session
        if member.user_id in self._hosts:
            self._hosts[member.user_id] = session
        self.router.add_member(member.sid, session.output, publishing=member.upload)
        session.attached(self, member.sid)
        return Accepted(())

    # --- resume on another node (cluster mode): the member moves, nothing is logged ---

    def _resume_member(self, command: ResumeElsewhere, session: Session | None) -> ChannelReply:
        """Owner: gives the member whose resume key is ``command.key`` to the resuming
        connection (``session``, on this node; None: on node ``command.node``). The node that
        held it lets it go; a session still connected there ends with duplicate_session, as
        an older session does when the same user joins again (decision 8)."""
        user_id = self.roll.member_with_key(command.key) or next(
            (u for u, s in self._sessions.items() if s.resume_key == command.key), None
        )
        member = self.channel.members.get(user_id) if user_id and self.live and self.channel else None
        if member is None:
            return ChannelReply(Reason.NOT_FOUND, "no dropped session to resume (grace period over?)")
        held = self._sessions.get(member.user_id)
        expires = held.token_expires_at if held is not None else self.roll.token_expiry(member.user_id)
        self.roll.resumed(member.user_id, trio.current_time())
        if self.link is not None:
            self.link.release(member.user_id, to=command.node)
        if session is None:
            self._let_go(member.user_id, keep=None)
            return ChannelReply(Reason.NONE, sid=member.sid, user_id=member.user_id, token_expires_at=expires)
        return self._attach_resumed(member.user_id, session, expires)

    def _attach_resumed(self, user_id: str, session: Session | None, token_expires_at: float | None) -> ChannelReply:
        """The member ``user_id`` is ``session``'s from now on (the owner said so)."""
        member = self.channel.members.get(user_id) if self.live and self.channel else None
        if member is None or session is None:
            return ChannelReply(Reason.NOT_FOUND, "left the channel while resuming")
        self._let_go(user_id, keep=session)
        self.roll.resumed(user_id, trio.current_time())
        self._owners[user_id] = self._sessions[user_id] = session
        if self._policy.is_host(member.role):
            self._hosts[user_id] = session
        self.router.add_member(member.sid, session.output, publishing=member.upload)
        session.attached(self, member.sid)
        self._roll_due = True
        return ChannelReply(Reason.NONE, info=self._channel_info(member), sid=member.sid, user_id=user_id, token_expires_at=token_expires_at)

    def _let_go(self, user_id: str, keep: Session | None) -> None:
        """This node's session of ``user_id`` (unless it is ``keep``) no longer holds the
        membership: the member is on another connection now. Nothing is logged; the old
        session is told duplicate_session (a dropped one never hears it, and its grace
        timer's leave is refused as stale)."""
        old = self._sessions.get(user_id)
        if old is None or old is keep:
            return
        del self._sessions[user_id]
        self._owners.pop(user_id, None)
        self._hosts.pop(user_id, None)
        member = self.channel.members.get(user_id) if self.channel else None
        if member is not None:
            self.router.add_member(member.sid, None, publishing=member.upload)
        old.removed(self.channel_id, Reason.DUPLICATE_SESSION)
        log.info("%s in %s resumed on another connection", shown(user_id), shown(self.channel_id))

    def heard_roll(self, owner: bool, members: list[tuple[str, str, float | None]]) -> None:
        """Another node's roll call (cluster mode): it holds ``members`` (user id, resume key,
        token expiry)."""
        at = trio.current_time()
        if owner:
            self.roll.owner_heard_at = at
        channel = self.channel
        if channel is None:
            return
        for user_id, key, expires in members:
            if user_id in channel.members:
                self.roll.heard(user_id, key, at, expires)

    def _roll_call(self, at: float) -> None:
        """Each roll call (cluster mode: every ``every`` seconds, and at the tick after a
        change): announce this node's members; the owner ends
        members nobody announced for silent_after + grace (network, as a drop past its grace);
        a follower takes over from an owner silent for silent_after."""
        assert self.link is not None and self.channel is not None
        settings = self.link.roll
        if at - self._ticked_at > settings.silent_after:
            self.roll.rebase(at)  # this node was away itself (paused): hear the others anew first
        self._ticked_at = at
        if not (self._roll_due or at - self._rolled_at >= settings.every):
            return
        self._roll_due, self._rolled_at = False, at
        self.link.announce([(u, s.resume_key, s.token_expires_at) for u, s in self._sessions.items()], owner=not self.follower)
        if self.follower:
            if at - self.roll.owner_heard_at > settings.silent_after and self._taking_over is None and self._nursery is not None:
                self.roll.owner_heard_at = at - settings.silent_after + settings.every  # next try: one interval on
                self._nursery.start_soon(self._take_over)
            return
        remote = [u for u in self.channel.members if u not in self._sessions]
        for user_id in remote:
            self.roll.expect(user_id, at)  # a member nobody announced yet counts from now
        for user_id in self.roll.unheard(remote, at, settings.silent_after + settings.grace):
            try:
                self.mailbox.send_nowait(Envelope(LeaveChannel(wall_clock(), user_id, Reason.NETWORK), None, None))
            except trio.WouldBlock:
                return  # a full mailbox: the next roll call tries again
            log.info("%s in %s: no node announced it past the grace: it leaves (network)", shown(user_id), shown(self.channel_id))
            self.roll.forget(user_id)
            self.roll.expect(user_id, at)  # not asked to leave again before another wait

    def _track_owner(self, event: Event, session: Session | None) -> None:
        if isinstance(event, MemberJoined) and session is not None:
            self._owners[event.user_id] = session
        elif isinstance(event, MemberLeft):
            self._owners.pop(event.user_id, None)
        elif isinstance(event, ChannelStopped):
            self._owners.clear()

    def _reply_for(self, envelope: Envelope, decision: Accepted | Rejected) -> ChannelReply:
        if isinstance(decision, Rejected):
            return ChannelReply(decision.reason, decision.message)
        if isinstance(envelope.command, JoinChannel | Reattach) and self.channel is not None:
            member = self.channel.members.get(envelope.command.user_id)
            if member is not None and self._sessions.get(member.user_id) is envelope.session:
                return ChannelReply(Reason.NONE, info=self._channel_info(member), sid=member.sid)
            return ChannelReply(Reason.OTHER, "left the channel while joining")
        return ChannelReply(Reason.NONE)

    def _channel_info(self, viewer: Member) -> ChannelInfo:
        assert self.channel is not None
        channel = self.channel
        if self._policy.is_host(viewer.role):
            visible = channel.members_in_join_order()
        else:  # the scale rule: the audience sees publishers, hosts and itself, and a count
            # Kept incrementally (hosts and publishers are few): a join costs O(1), not O(members).
            visible = [channel.members[user_id] for user_id in self._announced if user_id in channel.members]
            if viewer.user_id not in self._announced:
                visible.append(viewer)
        return ChannelInfo(
            channel_id=channel.channel_id,
            channel_uri=channel.uri,
            channel_number=channel.number,
            title=channel.title,
            custom_property=channel.custom_property,
            capacity=channel.capacity,
            has_password=channel.password_hash is not None,
            member_count=len(channel.members),
            heartbeat_time=channel.heartbeat_time,
            heartbeat_timeout=channel.heartbeat_timeout,
            self_sid=viewer.sid,
            participants=[participant_info(m, self._volumes.get(m.sid, VolumeStatus.ZERO)) for m in visible],
            record_state=channel.record_state,
            cdn_state=channel.cdn_state,
        )

    def _is_announced(self, member: Member) -> bool:
        """Publishers and hosts are announced to everyone; the rest of the audience to hosts only."""
        return self._policy.may_publish(member.role, member.state) or self._policy.is_host(member.role)

    # --- acting on durable events ---

    def _broadcast(self, message: ServerMessage, *, to_hosts_only: bool = False, skip: str | None = None) -> None:
        frame = frame_of(message)
        for user_id, session in (self._hosts if to_hosts_only else self._sessions).items():
            if user_id != skip:
                session.send_frame(frame)

    def _broadcast_update(self, member: Member, update: ParticipantUpdated) -> None:
        """Everyone gets the update (decision 5). The audience, which hears of a member's
        leave only while the member is announced, is told by ``in_view`` whether it still
        sees ``member``, so no client needs to know the server's role policy. At most two
        distinct frames, each encoded once."""
        if member.user_id in self._announced:
            self._broadcast(update)
            return
        seen, unseen = frame_of(update), frame_of(attrs.evolve(update, in_view=False))
        for user_id, session in self._sessions.items():
            session.send_frame(seen if user_id in self._hosts or user_id == member.user_id else unseen)

    def _act(self, joining: Session | None, event: Event, before: Channel | None, after: Channel) -> None:
        """Acts on one durable event for this node's sessions. ``joining``: the session a
        member_joined brings in, if it is connected here (None: on another node)."""
        match event:
            case ChannelCreated():
                log.info("channel %s #%d created by %s", shown(event.channel), event.number, shown(event.created_by))
            case MemberJoined():
                member = after.members[event.user_id]
                if joining is not None:
                    self._sessions[member.user_id] = joining
                    joining.attached(self, member.sid)
                    self._roll_due = True
                    if self._policy.is_host(member.role):
                        self._hosts[member.user_id] = joining
                self.router.add_member(member.sid, joining.output if joining is not None else None, publishing=member.upload)
                for recorder in (self.recorder, self.cdn_recorder):
                    if recorder is not None:
                        recorder.name(member.sid, member.user_id)
                self._count_dirty = True
                announced = self._is_announced(member)
                if announced:
                    self._announced.add(member.user_id)
                self._broadcast(
                    ParticipantJoined(participant_info(member, VolumeStatus.ZERO)),
                    to_hosts_only=not announced,
                    skip=member.user_id,
                )
                log.info(
                    "join %s #%d %s role=%s", shown(event.channel), event.number, shown(event.user_id), member.role.index,
                    extra={"user": event.user_id},
                )
            case MemberLeft():
                assert before is not None
                member = before.members[event.user_id]
                session = self._sessions.pop(member.user_id, None)
                self._hosts.pop(member.user_id, None)
                self._volumes.pop(member.sid, None)
                self._announced.discard(member.user_id)
                self.router.remove_member(member.sid)
                self.roll.forget(member.user_id)
                self._count_dirty = True
                if session is not None and event.reason is not Reason.QUIT:
                    session.removed(after.channel_id, event.reason)
                self._broadcast(
                    ParticipantLeft(member.user_id, event.reason), to_hosts_only=not self._is_announced(member)
                )
                operator = f" operator={shown(event.operator)}" if event.operator else ""
                log.info(
                    "leave %s #%d %s reason=%s%s", shown(event.channel), event.number, shown(event.user_id), event.reason.reason_name, operator,
                    extra={"user": event.user_id},
                )
            case MuteChanged():
                member = after.members[event.user_id]
                session = self._sessions.get(member.user_id)
                if session is not None and not event.muted:
                    # Their right to upload is back: an SDK holding an upload wish asks again.
                    volume = self._volumes.get(member.sid, VolumeStatus.ZERO)
                    session.send_frame(frame_of(ParticipantUpdated(participant_info(member, volume), int(ParticipantChange.AUDIO))))
                log.info(
                    "%s %s #%d %s operator=%s", "mute" if event.muted else "unmute", shown(event.channel), event.number,
                    shown(event.user_id), shown(event.operator), extra={"user": event.user_id},
                )
            case RoleChanged() | StateChanged() | AudioUploadChanged():
                member = after.members[event.user_id]
                session = self._sessions.get(member.user_id)
                if session is not None:
                    if self._policy.is_host(member.role):
                        self._hosts[member.user_id] = session
                    else:
                        self._hosts.pop(member.user_id, None)
                self.router.set_publishing(member.sid, member.upload)
                if self._is_announced(member):
                    self._announced.add(member.user_id)
                else:
                    self._announced.discard(member.user_id)
                changes = {
                    RoleChanged: ParticipantChange.CUSTOM_ROLE,
                    StateChanged: ParticipantChange.CUSTOM_STATE,
                    AudioUploadChanged: ParticipantChange.AUDIO,
                }[type(event)]
                volume = self._volumes.get(member.sid, VolumeStatus.ZERO)
                self._broadcast_update(member, ParticipantUpdated(participant_info(member, volume), int(changes)))
            case CustomPropertyChanged():
                self._broadcast(self._property_changed(PropertyChange.CUSTOM_PROPERTY, after))
            case RecordingStarted() | RecordingStopped():
                if isinstance(event, RecordingStarted):
                    self._start_recorder(event, after)
                else:
                    self._stop_recorder(event.time)
                self._broadcast(self._property_changed(PropertyChange.RECORD_STATE, after))
                log.info(
                    "recording %s %s #%d %s reason=%s", "started" if isinstance(event, RecordingStarted) else "stopped",
                    shown(event.channel), event.number, shown(event.directory), getattr(event, "reason", Reason.NONE).reason_name,
                )
            case CdnStarted() | CdnStopped():
                if isinstance(event, CdnStarted):
                    self._start_cdn(event, after)
                else:
                    self._stop_cdn(event.time)
                self._broadcast(self._property_changed(PropertyChange.CDN_STATE, after))
                where = f"icecast={shown(event.icecast)} hls={shown(event.hls)}" if isinstance(event, CdnStarted) else f"reason={event.reason.reason_name}"
                log.info("cdn %s %s #%d %s", "started" if isinstance(event, CdnStarted) else "stopped", shown(event.channel), event.number, where)
            case ChannelStopped():
                for user_id, session in self._sessions.items():
                    if user_id != event.by:
                        session.removed(after.channel_id, Reason.OVER)
                for member in (before.members.values() if before else ()):
                    self.router.remove_member(member.sid)
                self._sessions.clear()
                self._hosts.clear()
                self._volumes.clear()
                self._announced.clear()
                by = f"operator={shown(event.operator)}" if event.operator else f"by={shown(event.by) if event.by else '-'}"
                log.info("stop %s #%d %s reason=%s", shown(event.channel), event.number, by, event.reason.reason_name)

    # --- follower (cluster mode): forward commands, apply the owner's records ---

    def _follow(self, batch: list[Envelope]) -> None:
        assert self._nursery is not None and self.link is not None
        for envelope in batch:
            command = envelope.command
            if isinstance(command, Nudge):
                continue
            if isinstance(command, Apply):
                self._apply(command.records)
                continue
            if isinstance(command, Reattach):  # a resume on this node: local, as on one server
                decision = self._reattach(command, envelope.session)
                if envelope.reply is not None:
                    envelope.reply.set(self._reply_for(envelope, decision))
                continue
            if isinstance(command, Attach):  # the owner accepted a resume on this node
                answer = self._attach_resumed(command.user_id, envelope.session, command.token_expires_at)
                if envelope.reply is not None:
                    envelope.reply.set(answer)
                continue
            if isinstance(command, LetGo):
                self._let_go(command.user_id, keep=None)
                continue
            if (
                not isinstance(command, JoinChannel | ResumeElsewhere)
                and envelope.session is not None
                and self._owners.get(envelope.session.user_id) is not envelope.session
            ):
                if envelope.reply is not None:
                    envelope.reply.set(ChannelReply(Reason.NOT_FOUND, "this session is no longer in the channel"))
                continue
            if isinstance(command, JoinChannel) and envelope.session is not None:
                self._pending[command.user_id] = envelope.session
            self._forwarding += 1
            if isinstance(command, EndChannel):
                # This node ends (shutdown): its members leave; the channel goes on elsewhere.
                leaves = [LeaveChannel(command.time, user_id, command.reason) for user_id in self._sessions]
                self._nursery.start_soon(self._forward_all, envelope, leaves)
            else:
                self._nursery.start_soon(self._forward, envelope, command)

    async def _forward(self, envelope: Envelope, command: Command | ResumeElsewhere) -> None:
        try:
            answer = await self._answer_of(command)
            if answer.moved and await self._take_over():
                # The owner is gone and this node took the channel: decide it here, as owner.
                await self.mailbox.send(envelope)
                return
            if isinstance(command, ResumeElsewhere) and answer.reason is Reason.NONE:
                # The member is this session's now: the actor attaches it in its own loop.
                await self.mailbox.send(Envelope(Attach(answer.user_id, answer.token_expires_at), envelope.session, envelope.reply))
                return
        except trio.Cancelled:  # the actor ends: the requester looks for the channel again
            if envelope.reply is not None:
                envelope.reply.set(ChannelReply(Reason.SERVER_RESTART, "the channel moved", moved=True))
            raise
        finally:
            self._forwarding -= 1
            if isinstance(command, JoinChannel) and self._pending.get(command.user_id) is envelope.session:
                del self._pending[command.user_id]
            self._nudge()
        if envelope.reply is None:
            return
        if answer.reason is not Reason.NONE:
            envelope.reply.set(ChannelReply(answer.reason, answer.message, moved=answer.moved))
        else:
            envelope.reply.set(self._reply_for(envelope, Accepted(())))

    async def _forward_all(self, envelope: Envelope, commands: list[Command]) -> None:
        try:
            for command in commands:
                await self._answer_of(command)
        finally:
            self._forwarding -= 1
            self._nudge()
        if envelope.reply is not None:
            envelope.reply.set(ChannelReply(Reason.NONE))

    async def _take_over(self) -> bool:
        """Whether this node now owns the channel (taken over from an owner that is gone:
        the instance goes on, nothing is ended; a second forward that finds the owner gone
        waits for the first one's attempt)."""
        assert self.link is not None
        if not self.follower:
            return True
        if self._taking_over is not None:
            await self._taking_over.wait()
            return not self.follower
        self._taking_over = done = trio.Event()
        try:
            append = await self.link.take_over(self)
            if append is not None:
                self._log_append = append
                self.follower = False
                self._roll_due = True  # tell the others at once who decides now
                log.warning("took over channel %s: its owner is gone", shown(self.channel_id))
        finally:
            self._taking_over = None
            done.set()
        return not self.follower

    def apply_now(self, records: tuple[Mapping[str, Any], ...]) -> None:
        """Follower: applies records read from the stream at once (a take-over's catch-up)."""
        self._apply(records)

    async def _answer_of(self, command: Command | ResumeElsewhere) -> Forwarded:
        """The owner's answer, once this follower has applied the records it answered after."""
        assert self.link is not None
        if isinstance(command, ResumeElsewhere):
            answer = await self.link.forward_resume(command.key)
        else:
            answer = await self.link.forward(command)
        with trio.move_on_after(CATCH_UP_AFTER):
            await self._caught_up(answer.seq)
            return answer
        await self.link.catch_up(self)
        with trio.move_on_after(CATCH_UP_WITHIN):
            await self._caught_up(answer.seq)
            return answer
        return Forwarded(Reason.SERVER_ERROR, "the channel's events did not reach this node; try again")

    async def _caught_up(self, seq: int) -> None:
        while self.applied_seq < seq:
            await self._applied.wait()

    def _nudge(self) -> None:
        if self._forwarding == 0:
            try:
                self.mailbox.send_nowait(Envelope(Nudge(), None, None))
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # full: the loop wakes anyway; closed: it ended

    def _apply(self, records: tuple[Mapping[str, Any], ...]) -> None:
        """The owner's records in log order; those applied already (a re-read) are skipped."""
        for record in records:
            seq = record["seq"]
            if seq <= self.applied_seq:
                continue
            event = event_from_record(record)
            before = self.channel
            self.channel = evolve(before, event)
            joining = self._pending.pop(event.user_id, None) if isinstance(event, MemberJoined) else None
            self._track_owner(event, joining)
            self._act(joining, event, before, self.channel)
            self.applied_seq = seq
        self._applied.set()
        self._applied = trio.Event()

    # --- recording: a recorder is one more member of the router, fed like a socket ---

    def _start_recorder(self, event: RecordingStarted, channel: Channel) -> None:
        from functools import partial

        from airwave.media.recorder_worker import channel_recorder  # no PyAV here: it loads in the worker

        assert self._data_dir is not None and self._recordings is not None and self._nursery is not None
        factory = partial(
            channel_recorder, str(self._data_dir / event.directory), mix=event.mix, tracks=event.tracks,
            description={"channel": event.channel, "number": event.number, "started_by": event.by},
            started_at=event.time,
        )
        recorder = self._recordings.start(event.directory, factory)
        for member in channel.members.values():
            recorder.name(member.sid, member.user_id)
        self.recorder = recorder
        self.router.add_member(RECORDER_SID, recorder, publishing=False)
        self._nursery.start_soon(self._run_recorder, recorder)

    def _with_cdn_outputs(self, command: ChangeCdn) -> ChangeCdn:
        """The command with where this server's CDN outputs put the channel's stream (none
        configured: nowhere, which decide refuses)."""
        if self._cdn is None or not command.enabled:
            return command
        return attrs.evolve(
            command, icecast=self._cdn.listen_url(self.channel_id), hls=self._cdn.playlist(self.channel_id),
            segment_ms=command.segment_ms or self._cdn.segment_ms,
        )

    def _start_cdn(self, event: CdnStarted, channel: Channel) -> None:
        """The CDN's recorder: one more member of the router, built by the picklable factory
        (media/cdn.py) from the event and the settings, run like a recording's."""
        from functools import partial

        from airwave.media.recorder_worker import cdn_recorder  # no PyAV here: it loads in the worker

        assert self._cdn is not None and self._data_dir is not None and self._recordings is not None and self._nursery is not None
        factory = partial(
            cdn_recorder,
            str(self._data_dir / hls_folder(event.channel)) if event.hls else None,
            self._cdn.source_url(event.channel) if event.icecast else None,
            started_at=event.time, segment_seconds=event.segment_ms / 1000, name=event.channel,
        )
        recorder = self._recordings.start(f"cdn:{event.channel}#{event.number}@{event.time!r}", factory)  # one per start
        for member in channel.members.values():
            recorder.name(member.sid, member.user_id)
        self.cdn_recorder = recorder
        self.router.add_member(CDN_SID, recorder, publishing=False)
        self._nursery.start_soon(self._run_recorder, recorder)

    def _stop_cdn(self, at: float | None = None) -> None:
        """As `_stop_recorder`, for the CDN's recorder (its outputs close with it)."""
        recorder, self.cdn_recorder = self.cdn_recorder, None
        if recorder is not None:
            self.router.remove_member(CDN_SID)
            recorder.stop(at)

    async def _run_recorder(self, recorder: RecordingFeed) -> None:
        """Until the worker closed the recording's files. Not abandoned when the actor is
        cancelled (a shutdown, a crash): its `run` stopped the recorder, and the actor's
        nursery waits (bounded) for the files to be finalised, as the log says they are."""
        try:
            failed = await recorder.finished()
        except trio.Cancelled:
            with trio.move_on_after(FINALISE_WITHIN, shield=True):
                await recorder.finished()
            raise
        if failed:
            log.error("recording of %s stopped writing: %s", shown(self.channel_id), failed)
            # It records nothing more: out of the fan-out, and stopped in the log (server_error),
            # so record_state / cdn_state tell everyone so.
            failure: OutputFailed | None = None
            if self.recorder is recorder:
                self.recorder = None
                self.router.remove_member(RECORDER_SID)
                if self.channel is not None and self.channel.recording is not None:
                    failure = OutputFailed(wall_clock(), recording=True, directory=self.channel.recording.directory)
            elif self.cdn_recorder is recorder:
                self.cdn_recorder = None
                self.router.remove_member(CDN_SID)
                failure = OutputFailed(wall_clock(), recording=False)
            if failure is not None:
                await self.mailbox.send(Envelope(failure, None, None))

    def _stop_recorder(self, at: float | None = None) -> None:
        """Takes the recorder out of the router and stops it at ``at`` (the recording_stopped
        event's time; None: now)."""
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            self.router.remove_member(RECORDER_SID)
            recorder.stop(at)

    @staticmethod
    def _property_changed(change: PropertyChange, channel: Channel) -> PropertyChanged:
        return PropertyChanged(int(change), channel.custom_property, channel.title, channel.record_state, channel.cdn_state)

    # --- periodic presence: volume changes and the audience's member count ---

    async def _ticker(self) -> None:
        ticks = 0
        while True:
            await trio.sleep(TICK_SECONDS)
            ticks += 1
            if self.channel is None or self.channel.ended:
                continue
            if self.link is not None:
                self._roll_call(trio.current_time())
            self._announce_volumes()
            if ticks % MEMBER_COUNT_EVERY_TICKS == 0 and self._count_dirty:
                self._push_member_count(trio.current_time())

    def _push_member_count(self, now: float) -> None:
        assert self.channel is not None
        audience = len(self._sessions) - len(self._hosts)  # hosts are a subset of the sessions
        if now - self._count_sent_at < audience / MEMBER_COUNT_MESSAGES_PER_SECOND:
            return
        self._count_dirty = False
        self._count_sent_at = now
        frame = frame_of(MemberCount(len(self.channel.members)))
        for user_id, session in self._sessions.items():
            if user_id not in self._hosts:
                session.send_frame(frame)

    def _announce_volumes(self) -> None:
        assert self.channel is not None
        members = self.channel.members
        by_sid = {m.sid: m for m in (members[u] for u in self._announced if u in members) if m.upload}
        for sid, member in by_sid.items():
            level = self.router.levels.get(sid)
            status = VolumeStatus.ZERO if level is None else volume_status_for_level(level)
            if self._volumes.get(sid, VolumeStatus.ZERO) is not status:
                self._volumes[sid] = status
                self._broadcast(VolumeChanged(member.user_id, status))


def _runs_the_kdf(channel: Channel | None, command: JoinChannel) -> bool:
    """Whether deciding this join hashes a password: it creates a channel with one, or it
    offers one to a channel that has one."""
    if command.password is None:
        return False
    return channel is None or channel.ended or channel.password_hash is not None
