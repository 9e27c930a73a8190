"""Cluster mode's answer to "where does this channel live?", behind `registry.Placement`.

To decide for a channel a node must hold its lease (`lease.Leases`). Claiming a channel:

1. take the lease (compare-and-set in KV); held by another node: refuse with a reason;
2. read the channel's records from the stream and fence the log on the last of them
   (`jetlog.ChannelLog.take`);
3. if the stream says an instance is still live there (its owner died, or stepped down,
   with members): if some other node still follows it (it answers ``airwave.where``), go on
   with it as a follower's take-over does (the roll call ends the members nobody holds,
   after the grace); if none does, end it as a crash restart does: its members leave with
   server_restart and the channel stops (decision 7); the SDK rejoins by itself. Those
   records are also what fences a paused old owner, should it wake and try to append;
4. hand the registry an append function that refuses (`LogRefused`) once the lease is
   lost or the log is fenced, so the actor steps down without acting on anything unlogged.

A claim that finds the lease held by another node makes this node a *follower* of the
channel instead: it subscribes to the channel's live records, media and texts
(`link.ChannelLink.open`), then reads the channel's records from the stream and folds them
into the state its actor starts from. So the node that takes the lease first (the node of
the first joiner) owns the channel; the others forward to it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import nats.errors
import trio

from airwave.protocol import Reason
from airwave.protocol.sessiontoken import channel_key
from airwave.protocol.text import shown

from airwave.protocol import QueryInfo

from ..channel import ChannelActor, ChannelReply, Envelope, Forwarded, LogRefused
from ..clock import now
from ..core import Accepted, Channel, EndChannel, decide, event_from_record, event_to_record, evolve
from ..log.replay import fold_replayed, replay_records
from ..registry import Claimed, Registry
from ..rollcall import RollSettings
from .bridge import NatsBridge
from .jetlog import ChannelLog, ClusterLogError, Fenced, StreamSettings, ensure_stream, read_records
from .lease import HeldElsewhere, Lease, Leases, LeaseSettings, NumberPool, ensure_buckets
from .forwarded import unpack
from .link import ChannelLink, CommandInboxes, ask_owner
from .subjects import command_subject, where_subject

log = logging.getLogger("airwave.cluster.placement")

LOCATE_TIMEOUT = 1.0  # a node with the channel answers at once; none: NoResponders at once

LogAppend = Callable[[list[dict[str, object]]], Awaitable[object]]


@attrs.frozen
class ClusterSettings:
    servers: tuple[str, ...]  # NATS URLs (any server of the NATS cluster)
    node: str  # this server's name in the cluster: unique, stable across its restarts
    lease: LeaseSettings = LeaseSettings()
    stream: StreamSettings = StreamSettings()

    def __attrs_post_init__(self) -> None:
        if not self.servers:
            raise ValueError("give at least one NATS URL")
        if not self.node or len(self.node) > 64 or not self.node.isprintable():
            raise ValueError("a node name has 1-64 printable characters")


def current_instance(records: Sequence[Mapping[str, Any]]) -> Channel | None:
    """The channel as its records leave it (the last instance; None if there is none)."""
    channel: Channel | None = None
    for record in records:
        channel = evolve(channel, event_from_record(record))
    return channel


def closing_records(records: Sequence[Mapping[str, Any]], time: float) -> list[dict[str, Any]]:
    """The records that end an instance a previous owner left live in the stream."""
    channels = fold_replayed(list(replay_records(records, None)))
    closing: list[dict[str, Any]] = []
    for channel in channels.values():
        decision = decide(channel, EndChannel(time, Reason.SERVER_RESTART))
        if isinstance(decision, Accepted):
            closing.extend(event_to_record(event) for event in decision.events)
    return closing


class ClusterPlacement:
    """`registry.Placement` over NATS: leases, the fenced JetStream log, channel numbers."""

    def __init__(self, bridge: NatsBridge, settings: ClusterSettings, nursery: trio.Nursery, *, resume_grace: float = 15.0) -> None:
        self._bridge = bridge
        self.settings = settings
        # A node is announced as often as it renews its leases, and is taken for gone as
        # late as its leases would be: one TTL (`actors/rollcall.py`).
        self.roll = RollSettings(settings.lease.renew_every, settings.lease.ttl, resume_grace)
        self._nursery = nursery
        self.leases = Leases(bridge, settings.node, settings.lease, self._lease_lost)
        self.numbers = NumberPool(bridge)
        self.inboxes = CommandInboxes(bridge, nursery)
        self._logs: dict[str, ChannelLog] = {}
        self._registry: Registry | None = None
        self.takeovers = 0
        self.followed = 0  # channels this node started following (another node owned them)

    async def start(self, registry: Registry) -> None:
        """Makes the stream and buckets if missing, reserves channel numbers, starts renewing."""
        self._registry = registry
        await ensure_stream(self._bridge, self.settings.stream)
        await ensure_buckets(self._bridge, self.settings.lease)
        await self.numbers.refill()
        await self._nursery.start(self.leases.run)

    # --- registry.Placement ---

    async def claim(self, channel_id: str) -> LogAppend | ChannelReply:
        try:
            lease = await self.leases.acquire(channel_id)
        except Exception as exc:  # NATS away or failing: an answer, not a crash of the requester
            log.warning("cannot claim %s: %s", shown(channel_id), exc)
            return ChannelReply(Reason.SERVER_ERROR, "the cluster's NATS does not answer; try again")
        if isinstance(lease, HeldElsewhere):
            return await self._follow(channel_id, lease.holder)
        link: ChannelLink | None = None
        try:
            link = await ChannelLink.open(self._bridge, channel_id, node=self.node, roll=self.roll, inboxes=self.inboxes)
            channel_log, records = await ChannelLog.take(self._bridge, channel_id)
            closing = closing_records(records, now())
            if closing and await self.locate(channel_key(channel_id)) is not None:
                # Other nodes still have members of it: its instance goes on, decided here.
                self.takeovers += 1
                self._logs[channel_id] = channel_log
                link.published_from(channel_log.last_subject_seq)
                log.info("took over %s from a previous owner: its instance goes on", shown(channel_id))
                return Claimed(self._appender(channel_id, channel_log, link), link, current_instance(records), records[-1]["seq"])
            if closing:
                self.takeovers += 1
                prev = channel_log.last_subject_seq
                link.published(prev, closing, await channel_log.append(closing))  # followers end it too
                log.info("took over %s from a previous owner: ended its live instance (%d records)", shown(channel_id), len(closing))
        except Exception as exc:
            log.warning("cannot take the log of %s: %s", shown(channel_id), exc)
            if link is not None:
                await link.aclose()
            await self.leases.release(channel_id)
            return ChannelReply(Reason.SERVER_ERROR, "the cluster's event log could not be read; try again")
        self._logs[channel_id] = channel_log
        link.published_from(channel_log.last_subject_seq)
        return Claimed(self._appender(channel_id, channel_log, link), link)

    def _appender(self, channel_id: str, channel_log: ChannelLog, link: ChannelLink) -> LogAppend:
        """The owner's append: fenced in the stream, then published to the followers."""

        async def append(records: list[dict[str, object]]) -> object:
            if not self.leases.holds(channel_id) or self._logs.get(channel_id) is not channel_log:
                raise LogRefused(Reason.SERVER_RESTART, "this node no longer holds the channel's lease")
            prev = channel_log.last_subject_seq
            try:
                seqs = await channel_log.append(records)
            except Fenced as exc:
                raise LogRefused(Reason.SERVER_RESTART, str(exc)) from None
            except ClusterLogError as exc:
                raise LogRefused(Reason.SERVER_ERROR, f"the cluster's event log failed: {exc}") from None
            link.published(prev, records, seqs)
            return seqs

        return append

    async def _take_over(self, link: ChannelLink, actor: ChannelActor) -> LogAppend | None:
        """A follower's owner is gone (nobody answers the channel's commands): if its lease
        is free, this node takes it, reads the stream after what the follower applied, and
        owns the channel from now on. Unlike a claim, the instance goes on: the followers'
        members keep listening, and the media between them never stopped."""
        channel_id = link.channel_id
        try:
            lease = await self.leases.acquire(channel_id)
        except Exception as exc:
            log.warning("cannot take over %s: %s", shown(channel_id), exc)
            return None
        if isinstance(lease, HeldElsewhere):
            return None  # the dead owner's lease has not expired yet, or another node was quicker
        try:
            channel_log, records = await ChannelLog.take(self._bridge, channel_id)
            await link.become_owner(actor, self.inboxes)
        except Exception as exc:
            log.warning("cannot take over %s: %s", shown(channel_id), exc)
            await self.leases.release(channel_id)
            return None
        actor.apply_now(tuple(record for record in records if record["seq"] > actor.applied_seq))
        self._logs[channel_id] = channel_log
        link.published_from(channel_log.last_subject_seq)
        self.takeovers += 1
        return self._appender(channel_id, channel_log, link)

    async def _follow(self, channel_id: str, holder: str) -> Claimed | ChannelReply:
        """Another node owns the channel: follow it from the stream's last record on."""
        link: ChannelLink | None = None
        try:
            link = await ChannelLink.open(self._bridge, channel_id, node=self.node, roll=self.roll)
            records = await read_records(self._bridge, channel=channel_id)
            channel = current_instance(records)
        except Exception as exc:
            log.warning("cannot follow %s (owned by %s): %s", shown(channel_id), shown(holder), exc)
            if link is not None:
                await link.aclose()
            return ChannelReply(Reason.SERVER_ERROR, "the cluster's event log could not be read; try again")
        seq = records[-1]["seq"] if records else 0
        link.follow_from(seq)
        link.on_take_over = self._take_over
        self.followed += 1
        return Claimed(None, link, channel, seq)

    async def query(self, channel_id: str) -> QueryInfo | ChannelReply:
        answer = await ask_owner(self._bridge, command_subject(channel_id), {"op": "query"})
        if isinstance(answer, Forwarded):
            if answer.moved:  # nobody owns it: no such channel
                return ChannelReply(Reason.NOT_FOUND)
            return ChannelReply(answer.reason, answer.message)
        if answer.get("moved"):  # its owner just let it go: ended
            return ChannelReply(Reason.NOT_FOUND)
        if answer.get("r") != 0:
            return ChannelReply(Reason(answer["r"]), str(answer.get("m", "")))
        try:
            channel, number, count, members = answer["q"]
            return QueryInfo(channel, number, count, tuple(members))
        except Exception:
            return ChannelReply(Reason.SERVER_ERROR, "the channel's owner answered something unreadable")

    @property
    def node(self) -> str:
        return self.settings.node

    async def locate(self, channel_key: str) -> str | None:
        try:
            data = await self._bridge.request(where_subject(channel_key), b"", LOCATE_TIMEOUT)
            channel_id = unpack(data)["c"]
        except nats.errors.NoRespondersError:
            return None  # no node has the channel
        except Exception as exc:
            log.warning("cannot ask the cluster where channel key %s is: %s", channel_key, exc or type(exc).__name__)
            return None
        return channel_id if isinstance(channel_id, str) else None

    def allocate_number(self) -> int:
        return self.numbers.peek()

    def claim_number(self, number: int) -> None:
        self.numbers.consume(number)
        if self.numbers.needs_refill():
            self._nursery.start_soon(self._refill)

    def released(self, channel_id: str) -> None:
        self._logs.pop(channel_id, None)
        lease = self.leases.forget(channel_id)  # now: a claim that comes next takes it anew
        if lease is not None:
            self._nursery.start_soon(self._give_up, lease)

    # --- background ---

    async def _refill(self) -> None:
        try:
            await self.numbers.refill()
        except Exception as exc:
            log.warning("cannot reserve channel numbers: %s", exc)

    async def _give_up(self, lease: Lease) -> None:
        try:
            await self.leases.give_up(lease)
        except Exception as exc:  # it expires after its TTL anyway
            log.warning("cannot release the lease on %s: %s", shown(lease.channel_id), exc)

    def _lease_lost(self, channel_id: str) -> None:
        """Another node decides for the channel now: end ours without logging anything (the
        append is refused, so the actor steps down and tells its members server_restart)."""
        self._logs.pop(channel_id, None)
        registry = self._registry
        actor = registry.find(channel_id) if registry is not None else None
        if actor is not None:
            self._nursery.start_soon(self._step_down, channel_id)

    async def _step_down(self, channel_id: str) -> None:
        assert self._registry is not None
        actor = self._registry.find(channel_id)
        if actor is not None:
            try:
                await actor.mailbox.send(Envelope(EndChannel(now(), Reason.SERVER_RESTART), None, None))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
