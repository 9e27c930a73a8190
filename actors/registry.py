"""The registry: the one place that knows where each live channel's actor is.

It starts a channel actor on the first command for a channel id and forgets it when the
channel ends. In cluster mode a `Placement` (`actors/cluster/placement.py`) stands behind it:
before starting an actor the registry asks it to claim the channel for this node. The claim
makes this node the channel's owner (its lease, its fenced log in JetStream) or, when
another node owns it, a follower (the actor forwards commands there and applies the owner's
events). The file-log server has no placement, and nothing changes there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from airwave.protocol import DEFAULT_POLICY, QueryInfo, Reason, RolePolicy
from airwave.protocol.sessiontoken import channel_key, channel_key_of, resume_key
from airwave.protocol.text import shown

from .channel import ChannelActor, ChannelReply, Envelope, Link, LogRefused, OneShot, ResumeElsewhere
from .core import CdnSettings, Channel, Command, EndChannel, LeaveChannel
from .core.guesses import PasswordGuesses

if TYPE_CHECKING:
    from airwave.media.recorder_process import RecorderProcess

log = logging.getLogger("airwave.registry")

LogAppend = Callable[[list[dict[str, object]]], Awaitable[object]]
MOVED_RETRIES = 3  # a forwarded command no owner answered: look the channel up this often again


@attrs.frozen(eq=False)
class Claimed:
    """How this node serves a channel it claimed (cluster mode)."""

    log_append: LogAppend | None  # the owner's fenced log; None: a follower, another node decides
    link: Link  # the channel's other nodes
    channel: Channel | None = None  # follower, or owner going on with a live instance: the channel as the stream has it
    seq: int = 0  # ... up to this record


class Placement(Protocol):
    """Where channels live when several server processes share them (cluster mode)."""

    async def claim(self, channel_id: str) -> Claimed | ChannelReply:
        """How this node serves the channel (owner or follower), or the refusal to answer."""

    async def query(self, channel_id: str) -> QueryInfo | ChannelReply:
        """The channel's facts from its owner, for a node with no actor of it."""

    async def locate(self, channel_key: str) -> str | None:
        """The id of the channel some node serves under ``channel_key``
        (`protocol/sessiontoken.py`), None if none does."""

    @property
    def node(self) -> str:
        """This node's name in the cluster."""

    def allocate_number(self) -> int:
        """The number a channel created now would get (unique over the shared log)."""

    def claim_number(self, number: int) -> None:
        """``number`` is in the log now."""

    def released(self, channel_id: str) -> None:
        """The channel's actor here ended: another node may decide for it."""


class Registry:
    def __init__(
        self,
        nursery: trio.Nursery,
        log_append: LogAppend,
        *,
        next_number: int = 1,
        policy: RolePolicy = DEFAULT_POLICY,
        max_channels: int = 10_000,
        guesses: PasswordGuesses | None = None,
        placement: Placement | None = None,
        data_dir: Path | None = None,
        cdn: CdnSettings | None = None,
        recordings: RecorderProcess | None = None,
    ) -> None:
        # Wrong channel passwords, per address and channel: the server-wide backoff.
        self.guesses = guesses or PasswordGuesses()
        self._max_channels = max_channels
        self.refused_channels = 0
        self._nursery = nursery
        self._log_append = log_append
        self._next_number = next_number
        self._policy = policy
        self._actors: dict[str, ChannelActor] = {}
        self._suspended: dict[str, Suspension] = {}
        self._placement = placement
        self._data_dir = data_dir  # where channels record; None: they do not
        self._cdn = cdn  # where enable_cdn streams; None: refused
        self._recordings = recordings  # the server's recording worker; None: no recording
        self._claims: dict[str, trio.Event] = {}  # channels being claimed (cluster mode)

    @property
    def clustered(self) -> bool:
        return self._placement is not None

    async def query_elsewhere(self, channel_id: str) -> QueryInfo | ChannelReply:
        """Cluster mode: asks the channel's owner (this node has no actor of it)."""
        assert self._placement is not None
        return await self._placement.query(channel_id)

    def find(self, channel_id: str) -> ChannelActor | None:
        actor = self._actors.get(channel_id)
        return actor if actor is not None and actor.live else None

    def channel_ids(self) -> list[str]:
        return [cid for cid, actor in self._actors.items() if actor.live]

    def _actor_for(self, channel_id: str, claimed: Claimed | None = None) -> ChannelActor:
        actor = self._actors.get(channel_id)
        if actor is None:
            placement = self._placement
            follower = claimed is not None and claimed.log_append is None
            actor = ChannelActor(
                channel_id,
                log_append=(claimed.log_append if claimed is not None else None) or self._log_append,
                allocate_number=placement.allocate_number if placement else lambda: self._next_number,
                claim_number=placement.claim_number if placement else self._claim_number,
                on_idle=self._forget,
                policy=self._policy,
                data_dir=self._data_dir,
                cdn=self._cdn,
                recordings=self._recordings,
                link=claimed.link if claimed is not None else None,
                follower=follower,
            )
            if claimed is not None and claimed.channel is not None:
                actor.adopt(claimed.channel, claimed.seq)  # a follower, or an owner going on with an instance
            self._actors[channel_id] = actor
            self._nursery.start_soon(self._supervise, actor)
        return actor

    def _claim_number(self, number: int) -> None:
        self._next_number = max(self._next_number, number + 1)

    def _forget(self, actor: ChannelActor) -> None:
        if self._actors.get(actor.channel_id) is actor:
            del self._actors[actor.channel_id]
            if self._placement is not None:
                self._placement.released(actor.channel_id)

    async def _supervise(self, actor: ChannelActor) -> None:
        """An actor that crashes is logged and forgotten; the server and other channels go on."""
        try:
            await actor.run()
        except Exception as exc:
            refused = _log_refusal(exc)
            if refused is not None:
                # Cluster mode: the channel's authority moved (another node's lease, a fenced
                # append). Nothing unlogged was acted on; the members rejoin wherever it lives.
                log.warning("channel actor %s stepped down: %s", shown(actor.channel_id), refused.message)
            else:
                log.exception("channel actor %s crashed", shown(actor.channel_id))
            self._forget(actor)
            for session in actor.sessions():
                session.removed(actor.channel_id, refused.reason if refused is not None else Reason.INTERNAL_ERROR)

    async def submit(self, channel_id: str, command: Command, session: object | None) -> ChannelReply:
        """Sends ``command`` to the channel's actor (starting one if needed) and awaits its answer."""
        moved = 0
        while True:
            if channel_id not in self._actors and len(self._actors) >= self._max_channels:
                self.refused_channels += 1
                return ChannelReply(Reason.FULL, f"this server already has its maximum of {self._max_channels} channels")
            claimed = None
            if self._placement is not None and channel_id not in self._actors:
                claiming = self._claims.get(channel_id)
                if claiming is not None:  # another request is claiming it: wait, then look again
                    await claiming.wait()
                    continue
                self._claims[channel_id] = claiming = trio.Event()
                try:
                    claim = await self._placement.claim(channel_id)
                finally:
                    del self._claims[channel_id]
                    claiming.set()
                if isinstance(claim, ChannelReply):
                    return claim
                claimed = claim
            actor = self._actor_for(channel_id, claimed)
            reply = OneShot()
            try:
                await actor.mailbox.send(Envelope(command, session, reply))  # type: ignore[arg-type]
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The actor ended between lookup and send: the next lookup starts a fresh one.
                self._forget(actor)
                continue
            answer = await reply.wait()
            if answer.moved and moved < MOVED_RETRIES:
                # Cluster mode: the owner this node forwarded to is gone (the channel ended
                # there, or it died): look again, as the first command did.
                moved += 1
                await trio.sleep(0.02 * moved)
                continue
            return answer

    async def resume_elsewhere(self, session_token: str, session: object) -> tuple[str, ChannelReply]:
        """Cluster mode: resumes a session this node does not hold. The token names its
        channel (by key); the channel's owner knows the member by the token's resume key."""
        assert self._placement is not None
        key = channel_key_of(session_token)
        channel_id = None
        if key is not None:
            channel_id = next((c for c in self._actors if channel_key(c) == key), None) or await self._placement.locate(key)
        if channel_id is None:
            return "", ChannelReply(Reason.NOT_FOUND, "no dropped session to resume (grace period over?)")
        command = ResumeElsewhere(resume_key(session_token), self._placement.node)
        return channel_id, await self.submit(channel_id, command, session)  # type: ignore[arg-type]

    # --- sessions whose connection dropped: held for a grace period (decision 7) ---

    def suspend(self, session_token: str, channel_id: str, session: object, user_id: str, grace: float, now: Callable[[], float]) -> None:
        """Holds a dropped session, unseen by the others; past ``grace`` it leaves with network."""
        suspension = Suspension(channel_id, user_id, session, trio.CancelScope())
        self._suspended[session_token] = suspension

        async def expire() -> None:
            with suspension.timer:
                await trio.sleep(grace)
                if self._suspended.pop(session_token, None) is suspension:
                    log.info("resume grace over for %s in %s", shown(user_id), shown(channel_id))
                    await self.submit(channel_id, LeaveChannel(now(), user_id, Reason.NETWORK), session)

        self._nursery.start_soon(expire)

    def claim(self, session_token: str) -> Suspension | None:
        """The suspended session for ``session_token`` (at most once), its grace timer stopped."""
        suspension = self._suspended.pop(session_token, None)
        if suspension is not None:
            suspension.timer.cancel()
        return suspension

    def suspensions(self, channel_id: str) -> dict[str, Suspension]:
        """The sessions of ``channel_id`` held for resume, by user id (the admin's view)."""
        return {s.user_id: s for s in self._suspended.values() if s.channel_id == channel_id}

    def end_suspension(self, suspension: Suspension) -> None:
        """No resume for this session any more (its membership was ended by an operator)."""
        for token, held in list(self._suspended.items()):
            if held is suspension:
                del self._suspended[token]
                suspension.timer.cancel()

    async def end_all(self, reason: Reason, now: float) -> None:
        """Ends every live channel for everyone (graceful shutdown), each logged as it goes."""
        async with trio.open_nursery() as nursery:
            for channel_id in self.channel_ids():
                nursery.start_soon(self.submit, channel_id, EndChannel(now, reason), None)


def _log_refusal(exc: BaseException) -> LogRefused | None:
    """The `LogRefused` that ended an actor, alone (inside the nurseries' groups), if it was one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, LogRefused) else None


@attrs.frozen(eq=False)
class Suspension:
    channel_id: str
    user_id: str
    session: object
    timer: trio.CancelScope
