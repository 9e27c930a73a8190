"""A channel's other nodes, as its actor on this node sees them (`channel.Link`).

Every node with an actor of the channel (its owner, and a follower on every node with
members of it) holds one `ChannelLink`, made by `placement.ClusterPlacement.claim`:

- **media**: ``relay`` is one more listener of this node's publishers in the channel's
  `MediaRouter`; it publishes each frame, as built once, to ``airwave.media.<channel>``
  (core NATS, fire and forget). The link subscribes to the same subject and hands what
  other nodes publish to ``router.deliver``: one message per packet per node, whatever the
  number of listeners. The bridge's connection is ``no_echo``, so a node never gets its own.
- **texts**: ``airwave.text.<channel>`` carries text messages for members on other nodes.
- **roll call**: ``airwave.roll.<channel>`` carries each node's members of the channel, every
  ``roll.every`` seconds and after a change (`actors/rollcall.py`), and the owner's word that
  a member resumed on another node (every other node lets its session of it go).
- **where**: ``airwave.where.<channel key>`` (a queue group: one node answers) tells a node
  that never saw a session which channel its token's key names (a resume elsewhere).
- **owner**: subscribes to ``airwave.cmd.<channel>``; a forwarded command goes into the
  actor's mailbox as a command without a session, and is answered once decided and
  appended, with the seq of the last record published to the followers. After each append
  the records go to ``airwave.live.<channel>`` with the channel's record before them.
- **follower**: forwards commands to the owner (NATS request/reply), and applies the
  owner's records from ``airwave.live.<channel>`` in order; a message whose previous record
  is not the last one applied here means some were missed, and the follower re-reads the
  stream from there (JetStream has every record).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import nats.errors
import trio

from airwave.protocol import Reason
from airwave.protocol.sessiontoken import channel_key
from airwave.protocol.text import shown

from ..channel import Apply, ChannelReply, Envelope, Forwarded, LetGo, OneShot, ResumeElsewhere
from ..core import Command
from ..rollcall import RollSettings
from .bridge import BridgeClosed, Delivery, NatsBridge, Subscription
from .forwarded import decode_command, encode_command, pack, pack_records, unpack, unpack_records
from .jetlog import read_records
from .subjects import command_subject, live_subject, media_subject, roll_subject, text_subject, where_subject

if TYPE_CHECKING:
    from ..channel import ChannelActor

log = logging.getLogger("airwave.cluster.link")

FORWARD_TIMEOUT = 2.0  # an owner that does not answer this soon is paused, partitioned or dead (outcome unknown)
_MOVED = pack({"r": int(Reason.SERVER_ERROR), "m": "the channel ended here", "moved": True})


class RelaySink:
    """The media router's listener that stands for every other node: one publish per frame."""

    __slots__ = ("_publish", "_subject")

    def __init__(self, bridge: NatsBridge, subject: str) -> None:
        self._publish = bridge.publish_nowait
        self._subject = subject

    def send_frame_nowait(self, frame: bytes, *, droppable: bool) -> None:
        self._publish(self._subject, frame)


class ChannelLink:
    """One channel's NATS side on this node; ``owner`` or follower (see the module docstring)."""

    def __init__(
        self,
        bridge: NatsBridge,
        channel_id: str,
        subscriptions: dict[str, Subscription],
        *,
        owner: bool,
        node: str,
        roll: RollSettings,
        inboxes: CommandInboxes | None = None,
        last_seen: int = 0,
    ) -> None:
        self._bridge = bridge
        self.node = node
        self.roll = roll
        self._roll_subject = roll_subject(channel_id)
        self._inboxes = inboxes
        self.channel_id = channel_id
        self.owner = owner
        self._subscriptions = subscriptions  # "media", "texts", and "commands" (owner) or "live" (follower)
        self.relay = RelaySink(bridge, media_subject(channel_id))
        self._text_subject = text_subject(channel_id)
        self._live_subject = live_subject(channel_id)
        self._command_subject = command_subject(channel_id)
        self._last_seen = last_seen  # follower: the last record handed to the actor
        self._published = last_seen  # owner: the last record published to the followers
        self._catching_up = trio.Lock()  # follower: records go to the actor in order
        self.forwarded = 0
        self.caught_up = 0  # follower: times it re-read the stream after missing a message
        self._nursery: trio.Nursery | None = None
        self._following: trio.CancelScope | None = None
        # Follower: set by the placement; takes the channel over when its owner is gone.
        self.on_take_over: Callable[[ChannelLink, ChannelActor], Awaitable[Any]] | None = None

    @classmethod
    async def open(
        cls, bridge: NatsBridge, channel_id: str, *, node: str, roll: RollSettings, inboxes: CommandInboxes | None = None
    ) -> ChannelLink:
        """An owner's link (given this node's command inboxes) or a follower's. Subscribes
        first, so nothing published from now on is missed (a follower reads the stream after
        this, and skips what it has read when the live messages come)."""
        subjects = {"media": media_subject(channel_id), "texts": text_subject(channel_id), "roll": roll_subject(channel_id)}
        if inboxes is None:
            subjects["live"] = live_subject(channel_id)
        subscriptions: dict[str, Subscription] = {}
        try:
            for name, subject in subjects.items():
                subscriptions[name] = await bridge.subscribe(subject)
            subscriptions["where"] = await bridge.subscribe(where_subject(channel_key(channel_id)), queue="where")
            if inboxes is not None:
                subscriptions["commands"] = await inboxes.take(channel_id)
        except BaseException:
            with trio.CancelScope(shield=True):
                for subscription in subscriptions.values():
                    await subscription.aclose()
            raise
        return cls(bridge, channel_id, subscriptions, owner=inboxes is not None, node=node, roll=roll, inboxes=inboxes)

    def published_from(self, seq: int) -> None:
        """Owner: the channel's last record when this node took it."""
        self._published = seq

    def follow_from(self, seq: int) -> None:
        """Follower: the stream was read up to ``seq`` (the actor adopts that state)."""
        self._last_seen = seq

    async def aclose(self) -> None:
        """Ends the subscriptions; an owner gives its command inbox back to linger."""
        commands = self._subscriptions.pop("commands", None)
        if commands is not None and self._inboxes is not None:
            self._inboxes.give_back(self.channel_id, commands)
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            for subscription in self._subscriptions.values():
                await subscription.aclose()
        self._subscriptions.clear()

    # --- channel.Link ---

    async def run(self, actor: ChannelActor) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._relay_media, actor)
            nursery.start_soon(self._relay_texts, actor)
            nursery.start_soon(self._hear_roll_calls, actor)
            nursery.start_soon(self._answer_where)
            if self.owner:
                nursery.start_soon(self._serve_commands, actor)
            else:
                self._following = trio.CancelScope()
                nursery.start_soon(self._follow, actor, self._following)

    async def take_over(self, actor: ChannelActor) -> Any:
        if self.owner or self.on_take_over is None:
            return None
        return await self.on_take_over(self, actor)

    async def become_owner(self, actor: ChannelActor, inboxes: CommandInboxes) -> None:
        """Follower to owner (a take-over): serve the channel's commands, stop following."""
        self._subscriptions["commands"] = await inboxes.take(self.channel_id)
        self._inboxes = inboxes
        self.owner = True
        if self._following is not None:
            self._following.cancel()
        live = self._subscriptions.pop("live", None)
        if live is not None:
            await live.aclose()
        if self._nursery is not None:
            self._nursery.start_soon(self._serve_commands, actor)
    def send_text(self, frame: bytes, to: str | None, sender: str) -> None:
        self._bridge.publish_nowait(self._text_subject, pack([to, sender, frame]))

    async def forward(self, command: Command) -> Forwarded:
        self.forwarded += 1
        answer = await self.ask({"op": "cmd", "c": encode_command(command)})
        if isinstance(answer, Forwarded):
            return answer
        return Forwarded(Reason(answer.get("r", Reason.SERVER_ERROR)), str(answer.get("m", "")), int(answer.get("s", 0)), bool(answer.get("moved")))

    async def forward_resume(self, key: str) -> Forwarded:
        answer = await self.ask({"op": "resume", "k": key, "n": self.node})
        if isinstance(answer, Forwarded):
            return answer
        return Forwarded(
            Reason(answer.get("r", Reason.SERVER_ERROR)), str(answer.get("m", "")), int(answer.get("s", 0)),
            bool(answer.get("moved")), str(answer.get("u", "")), _expiry(answer.get("x")),
        )

    def announce(self, members: list[tuple[str, str, float | None]], *, owner: bool) -> None:
        self._bridge.publish_nowait(self._roll_subject, pack({"n": self.node, "o": owner, "m": members}))

    def release(self, user_id: str, to: str) -> None:
        self._bridge.publish_nowait(self._roll_subject, pack({"n": self.node, "let_go": user_id, "to": to}))

    async def catch_up(self, actor: ChannelActor) -> None:
        async with self._catching_up:
            await self._read_after(actor)

    # --- requests to the owner (also used without a link, for query) ---

    async def ask(self, request: dict[str, Any]) -> dict[str, Any] | Forwarded:
        return await ask_owner(self._bridge, self._command_subject, request)

    # --- owner ---

    def published(self, prev: int, records: list[dict[str, object]], seqs: list[int]) -> None:
        """Owner: ``records`` are in the stream with ``seqs``; tell the followers."""
        self._bridge.publish_nowait(self._live_subject, pack_records(prev, records, seqs))
        self._published = seqs[-1]

    async def _serve_commands(self, actor: ChannelActor) -> None:
        commands = self._subscriptions["commands"]
        async with trio.open_nursery() as nursery:
            while True:
                for delivery in await commands.receive_batch():
                    if delivery.reply:
                        nursery.start_soon(self._answer, actor, delivery)

    async def _answer(self, actor: ChannelActor, delivery: Delivery) -> None:
        respond = self._bridge.publish_nowait  # after the records it answers for: same outbox, same order
        try:
            request = unpack(delivery.data)
            op = request["op"]
            command: Command | ResumeElsewhere | None = decode_command(request["c"]) if op == "cmd" else None
            if op == "resume":
                command = ResumeElsewhere(str(request["k"]), str(request["n"]))
        except Exception as exc:
            respond(delivery.reply, pack({"r": int(Reason.PROTOCOL_ERROR), "m": f"bad forwarded request: {exc}"[:200]}))
            return
        if op == "query":
            channel = actor.channel
            if channel is None or not actor.live:
                respond(delivery.reply, pack({"r": int(Reason.NOT_FOUND)}))
            else:
                members = [m.user_id for m in channel.members_in_join_order()]
                respond(delivery.reply, pack({"r": 0, "q": [channel.channel_id, channel.number, len(members), members]}))
            return
        reply = OneShot()
        try:
            await actor.mailbox.send(Envelope(command, None, reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            respond(delivery.reply, _MOVED)
            return
        answer: ChannelReply = await reply.wait()
        respond(
            delivery.reply,
            pack({
                "r": int(answer.reason), "m": answer.message, "s": self._published, "moved": answer.moved,
                "u": answer.user_id, "x": answer.token_expires_at,
            }),
        )

    # --- follower ---

    async def _follow(self, actor: ChannelActor, scope: trio.CancelScope) -> None:
        with scope:
            await self._follow_live(actor)

    async def _follow_live(self, actor: ChannelActor) -> None:
        live = self._subscriptions["live"]
        while True:
            for delivery in await live.receive_batch():
                try:
                    prev, records = unpack_records(delivery.data)
                except ValueError as exc:
                    log.warning("%s: %s", shown(self.channel_id), exc)
                    continue
                async with self._catching_up:
                    if prev > self._last_seen:  # missed a message (or more): the stream has them
                        await self._read_after(actor)
                    fresh = tuple(record for record in records if record["seq"] > self._last_seen)
                    if fresh:
                        await self._hand(actor, fresh)

    async def _read_after(self, actor: ChannelActor) -> None:
        try:
            records = await read_records(self._bridge, channel=self.channel_id, after=self._last_seen)
        except Exception as exc:  # NATS away: the next live message or forward tries again
            log.warning("%s: cannot re-read the stream: %s", shown(self.channel_id), exc)
            return
        self.caught_up += 1
        if records:
            await self._hand(actor, tuple(records))

    async def _hand(self, actor: ChannelActor, records: tuple[dict[str, Any], ...]) -> None:
        self._last_seen = records[-1]["seq"]
        try:
            await actor.mailbox.send(Envelope(Apply(records), None, None))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the actor ended

    # --- both: what other nodes relay ---

    async def _relay_media(self, actor: ChannelActor) -> None:
        media = self._subscriptions["media"]
        while True:
            batch = await media.receive_batch()
            deliver = actor.router.deliver
            for delivery in batch:
                deliver(delivery.data)

    async def _relay_texts(self, actor: ChannelActor) -> None:
        texts = self._subscriptions["texts"]
        while True:
            for delivery in await texts.receive_batch():
                try:
                    to, sender, frame = unpack(delivery.data)
                except Exception:
                    continue
                if isinstance(frame, bytes) and isinstance(sender, str) and (to is None or isinstance(to, str)):
                    actor.deliver_text(frame, to, sender)

    async def _hear_roll_calls(self, actor: ChannelActor) -> None:
        """Other nodes' roll calls to the actor; the owner's "let go" as a `LetGo` command."""
        roll = self._subscriptions["roll"]
        while True:
            for delivery in await roll.receive_batch():
                try:
                    message = unpack(delivery.data)
                    if "let_go" in message:
                        if message["to"] != self.node:
                            await actor.mailbox.send(Envelope(LetGo(str(message["let_go"])), None, None))
                        continue
                    members = [(str(user_id), str(key), _expiry(expires)) for user_id, key, expires in message["m"]]
                    owner = bool(message["o"])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the actor ended
                except Exception as exc:
                    log.warning("%s: unreadable roll call: %s", shown(self.channel_id), exc)
                    continue
                actor.heard_roll(owner, members)

    async def _answer_where(self) -> None:
        where = self._subscriptions["where"]
        answer = pack({"c": self.channel_id})
        while True:
            for delivery in await where.receive_batch():
                if delivery.reply:
                    self._bridge.publish_nowait(delivery.reply, answer)


def _expiry(value: object) -> float | None:
    """A token expiry off the wire: epoch seconds, or None (open mode)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class CommandInboxes:
    """This node's subscriptions to its channels' command subjects, one per channel.

    When the channel's actor here ends, its inbox is drained (UNSUB, then a round trip, so
    every request NATS routed here before is received) and each request left in it is
    answered "moved": its sender looks for the channel again at once instead of waiting for
    a timeout. A claim of the channel before that takes the same inbox over, so this node
    never has two (which would race to answer one request)."""

    def __init__(self, bridge: NatsBridge, nursery: trio.Nursery) -> None:
        self._bridge = bridge
        self._nursery = nursery
        self._closing: dict[str, Subscription] = {}

    async def take(self, channel_id: str) -> Subscription:
        inbox = self._closing.pop(channel_id, None)
        if inbox is not None:
            return inbox
        return await self._bridge.subscribe(command_subject(channel_id))

    def give_back(self, channel_id: str, inbox: Subscription) -> None:
        self._closing[channel_id] = inbox
        self._nursery.start_soon(self._close, channel_id, inbox)

    async def _close(self, channel_id: str, inbox: Subscription) -> None:
        if self._closing.get(channel_id) is not inbox:
            return  # taken over by a new claim
        del self._closing[channel_id]
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            for delivery in await inbox.unsubscribe():
                if delivery.reply:
                    self._bridge.publish_nowait(delivery.reply, _MOVED)
            await inbox.aclose()


async def ask_owner(bridge: NatsBridge, subject: str, request: dict[str, Any]) -> dict[str, Any] | Forwarded:
    """The owner's answer to ``request``, or a `Forwarded` saying why there is none."""
    try:
        data = await bridge.request(subject, pack(request), FORWARD_TIMEOUT)
    except nats.errors.NoRespondersError:
        return Forwarded(Reason.SERVER_ERROR, "no node serves this channel now; try again", moved=True)
    except nats.errors.TimeoutError:
        return Forwarded(Reason.SERVER_ERROR, "the channel's owner does not answer; try again")
    except (BridgeClosed, nats.errors.Error, ConnectionError) as exc:
        return Forwarded(Reason.SERVER_ERROR, f"the cluster's NATS does not answer ({exc or type(exc).__name__}); try again")
    try:
        answer = unpack(data)
        if not isinstance(answer, dict):
            raise ValueError("not a map")
        Reason(answer.get("r", Reason.SERVER_ERROR))
    except Exception:
        return Forwarded(Reason.SERVER_ERROR, "the channel's owner answered something unreadable")
    return answer
