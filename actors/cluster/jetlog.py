"""The event log in JetStream: one stream, one subject per channel, fenced appends.

The records are the file log's records (`actors/log/format.py`): each message's payload is
the event's msgpack map exactly as the file writer packs it (`format.pack_event`, so the
same refusals apply), and a record read back is ``{"seq": stream_sequence, **event}``. The
stream sequence is global over every channel and rises by one per record, like the file
log's seq, so replay, recovery's fold and `airwave replay` read both logs the same way.

**Fencing, not timing.** A channel's owner appends with
``Nats-Expected-Last-Subject-Sequence`` set to the stream sequence of the last record it
knows on that channel's subject. A stale owner (paused, partitioned) that wakes after
another node took over and appended meets a different last sequence, JetStream refuses the
append (error 10071), and `Fenced` tells it to step down. No clock is trusted.

A batch is appended record by record, each awaiting its acknowledgement (the next record's
expected sequence is the previous one's acknowledged sequence); ``append`` returns only when
every record of the batch is acknowledged, and the channel actor answers only then. A batch
fenced half way leaves its first records in the stream: the new owner, which folds the
stream, sees them as the truth.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import msgpack
import nats.errors
import nats.js.api
import nats.js.errors

from ..log.format import pack_event
from .bridge import NatsBridge
from .subjects import EVENT_STREAM, EVENT_SUBJECTS, channel_of_event_subject, event_subject

log = logging.getLogger("airwave.cluster.jetlog")

WRONG_LAST_SEQUENCE = 10071  # JetStream's JSStreamWrongLastSequenceErrF
READ_BATCH = 256  # records fetched per request when reading a stream back


class Fenced(Exception):
    """Another owner appended to this channel since we last did: we are no longer its owner."""

    def __init__(self, channel_id: str, expected: int, detail: str) -> None:
        super().__init__(channel_id, expected, detail)
        self.channel_id = channel_id
        self.expected = expected
        self.detail = detail

    def __str__(self) -> str:
        return f"channel {self.channel_id!r}: fenced (expected last sequence {self.expected}: {self.detail})"


class ClusterLogError(Exception):
    """The JetStream event log cannot be used: no stream, NATS away, a record it cannot read."""


@attrs.frozen
class StreamSettings:
    """How the event stream is made when it does not exist yet (an existing one is kept)."""

    replicas: int = 1  # 3 on a 3-server NATS cluster (docs/operations.md)
    storage: str = "file"


async def ensure_stream(bridge: NatsBridge, settings: StreamSettings = StreamSettings()) -> None:
    """Creates the event stream if it is missing; an existing one is used as it is."""

    async def ensure() -> None:
        js = bridge.js
        try:
            await js.stream_info(EVENT_STREAM)
            return
        except nats.js.errors.NotFoundError:
            pass
        config = nats.js.api.StreamConfig(
            name=EVENT_STREAM,
            subjects=[EVENT_SUBJECTS],
            storage=nats.js.api.StorageType(settings.storage),
            num_replicas=settings.replicas,
            retention=nats.js.api.RetentionPolicy.LIMITS,
            discard=nats.js.api.DiscardPolicy.NEW,  # never drop old events to make room
            allow_direct=True,
        )
        await js.add_stream(config)
        log.info("created JetStream stream %s (%s, replicas %d)", EVENT_STREAM, settings.storage, settings.replicas)

    await bridge.run(ensure)


class ChannelLog:
    """The owner's appender for one channel's subject; create it with `ChannelLog.take`."""

    def __init__(self, bridge: NatsBridge, channel_id: str, last_subject_seq: int) -> None:
        self._bridge = bridge
        self.channel_id = channel_id
        self.subject = event_subject(channel_id)
        self._last = last_subject_seq
        self.fenced = False

    @property
    def last_subject_seq(self) -> int:
        """The stream sequence of the last record on this channel's subject (0: none yet)."""
        return self._last

    @classmethod
    async def take(cls, bridge: NatsBridge, channel_id: str) -> tuple[ChannelLog, list[dict[str, Any]]]:
        """The channel's records so far and an appender fenced on the last of them.

        Call it after taking the channel's lease: anything appended before the lease
        changed hands is read, and anything a stale owner appends afterwards fences us."""
        records = await read_records(bridge, channel=channel_id)
        last = records[-1]["seq"] if records else 0
        return cls(bridge, channel_id, last), records

    async def append(self, events: Sequence[Mapping[str, Any]]) -> list[int]:
        """Appends the events in order; returns their seqs once every one is acknowledged.

        Raises `InvalidRecordBody` (nothing appended) as the file log does, `Fenced` if
        another owner appended meanwhile (this log then refuses every later append), and
        `ClusterLogError` if NATS does not acknowledge."""
        if self.fenced:
            raise Fenced(self.channel_id, self._last, "this owner was fenced earlier")
        packed = [pack_event(event) for event in events]
        return await self._bridge.run(self._publish_all, packed)

    async def _publish_all(self, packed: list[bytes]) -> list[int]:  # NATS thread
        js = self._bridge.js
        seqs: list[int] = []
        for payload in packed:
            headers = {nats.js.api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(self._last)}
            try:
                ack = await js.publish(self.subject, payload, stream=EVENT_STREAM, headers=headers)
            except nats.js.errors.APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    self.fenced = True
                    raise Fenced(self.channel_id, self._last, exc.description or "wrong last sequence") from None
                raise ClusterLogError(f"JetStream refused an append to {self.subject}: {exc}") from None
            except (nats.errors.TimeoutError, nats.errors.Error) as exc:
                # Unknown outcome: it may have been stored. The next append's expected
                # sequence tells: if it was, that append is fenced and the owner re-reads.
                raise ClusterLogError(f"no acknowledgement for an append to {self.subject}: {exc or type(exc).__name__}") from None
            self._last = ack.seq
            seqs.append(ack.seq)
        return seqs


def decode_payload(seq: int, payload: bytes) -> dict[str, Any]:
    """A stream message as the file log's record body: ``{"seq": seq, **event}``."""
    try:
        event = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ClusterLogError(f"{EVENT_STREAM} sequence {seq}: not a msgpack record ({exc})") from None
    if not isinstance(event, dict) or "seq" in event:
        raise ClusterLogError(f"{EVENT_STREAM} sequence {seq}: not an event map")
    return {"seq": seq, **event}


async def read_records(
    bridge: NatsBridge, *, channel: str | None = None, until: int | None = None, after: int = 0
) -> list[dict[str, Any]]:
    """Every record in the stream (or of one channel), in seq order, after ``after`` and up to
    ``until`` (a follower catching up reads from the last record it applied)."""

    async def read() -> list[dict[str, Any]]:
        js = bridge.js
        subject = event_subject(channel) if channel is not None else EVENT_SUBJECTS
        try:
            info = await js.stream_info(EVENT_STREAM)
        except nats.js.errors.NotFoundError:
            raise ClusterLogError(f"no JetStream stream {EVENT_STREAM} on this NATS (no cluster node has run here)") from None
        if info.state.messages == 0 or after >= info.state.last_seq:
            return []
        name = "airwave-read-" + secrets.token_hex(8)
        config = nats.js.api.ConsumerConfig(
            name=name,
            filter_subject=subject,
            ack_policy=nats.js.api.AckPolicy.NONE,
            deliver_policy=nats.js.api.DeliverPolicy.BY_START_SEQUENCE if after else nats.js.api.DeliverPolicy.ALL,
            opt_start_seq=after + 1 if after else None,
            inactive_threshold=30.0,  # a reader that dies leaves nothing behind for long
            mem_storage=True,
        )
        consumer = await js.add_consumer(EVENT_STREAM, config)
        records: list[dict[str, Any]] = []
        sub = await js.pull_subscribe_bind(durable=None, stream=EVENT_STREAM, name=name)
        try:
            remaining = consumer.num_pending or 0
            while remaining > 0:
                try:
                    messages = await sub.fetch(min(READ_BATCH, remaining), timeout=5)
                except nats.errors.TimeoutError:
                    raise ClusterLogError(f"timed out reading {EVENT_STREAM}") from None
                for message in messages:
                    meta = message.metadata
                    remaining = meta.num_pending
                    seq = meta.sequence.stream
                    if until is not None and seq > until:
                        return records
                    body = decode_payload(seq, message.data)
                    body_channel = channel_of_event_subject(message.subject)
                    if body.get("channel") != body_channel:
                        raise ClusterLogError(
                            f"{EVENT_STREAM} sequence {seq}: a record of channel {body.get('channel')!r} "
                            f"on the subject of {body_channel!r}"
                        )
                    records.append(body)
        finally:
            try:
                await sub.unsubscribe()
                await js.delete_consumer(EVENT_STREAM, name)
            except nats.errors.Error:
                pass
        return records

    return await bridge.run(read)
