"""Who decides for a channel: a lease in JetStream KV, taken by compare-and-set, kept by renewal.

The bucket's TTL (its streams's max age) is the lease's TTL: every renewal writes a new
revision, so a key lives ``ttl`` seconds past its holder's last renewal. Taking a lease is
``create`` (succeeds only if the key does not exist: free, expired or released); renewing is
``update`` with the revision we hold, so a holder that was paused past the TTL, and whose
key another node has since created, fails its renewal and knows it lost the lease.

The lease says who *should* decide (so commands go to one place); it is not what keeps the
log right. That is the event log's fencing (`jetlog.ChannelLog`): an append is accepted only
on top of the last record its writer knows. A stale holder that appends before noticing it
lost the lease is either still right (nothing was appended since, so its decision was made
on the latest state) or fenced.

Channel numbers, unique over the whole event stream (decision 9), come from a counter in a
second bucket without TTL, reserved in blocks by compare-and-set (`NumberPool`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import nats.errors
import nats.js.api
import nats.js.errors
import nats.js.kv
import trio

from .bridge import NatsBridge
from .subjects import LEASE_BUCKET, channel_token

log = logging.getLogger("airwave.cluster.lease")

COUNTER_BUCKET = "airwave_counters"
CHANNEL_NUMBER_KEY = "channel-number"


@attrs.frozen
class LeaseSettings:
    ttl: float = 3.0  # a dead owner's channels are free this long after its last renewal
    renew_every: float = 1.0  # three tries within one TTL
    replicas: int = 1

    def __attrs_post_init__(self) -> None:
        if not 0 < self.renew_every < self.ttl:
            raise ValueError(f"renew_every ({self.renew_every}) must be above 0 and below the ttl ({self.ttl})")


@attrs.frozen
class Lease:
    channel_id: str
    node: str
    revision: int  # the KV revision we wrote last; the next renewal must find it unchanged


@attrs.frozen
class HeldElsewhere:
    channel_id: str
    holder: str


async def ensure_buckets(bridge: NatsBridge, settings: LeaseSettings) -> None:
    """Creates the lease and counter buckets if missing (existing ones are used as they are)."""

    async def ensure() -> None:
        js = bridge.js
        for bucket, ttl in ((LEASE_BUCKET, settings.ttl), (COUNTER_BUCKET, None)):
            try:
                await js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                await js.create_key_value(bucket=bucket, history=1, ttl=ttl, replicas=settings.replicas)

    await bridge.run(ensure)


class Leases:
    """This node's leases: take, renew (a background task), release; a lost one is reported."""

    def __init__(self, bridge: NatsBridge, node: str, settings: LeaseSettings, on_lost: Callable[[str], None]) -> None:
        self._bridge = bridge
        self.node = node
        self.settings = settings
        self._on_lost = on_lost
        self._held: dict[str, Lease] = {}
        self._bucket: nats.js.kv.KeyValue | None = None
        self.lost = 0

    async def _kv(self) -> nats.js.kv.KeyValue:  # NATS thread
        """The lease bucket's handle, looked up once (each lookup is a round trip)."""
        if self._bucket is None:
            self._bucket = await self._bridge.js.key_value(LEASE_BUCKET)
        return self._bucket

    def holds(self, channel_id: str) -> bool:
        return channel_id in self._held

    def held(self) -> list[str]:
        return list(self._held)

    async def acquire(self, channel_id: str) -> Lease | HeldElsewhere:
        """Takes the channel's lease if nobody holds it (ours already: returned as it is)."""
        if channel_id in self._held:
            return self._held[channel_id]
        key = channel_token(channel_id)
        node = self.node.encode()

        async def take() -> Lease | HeldElsewhere:
            kv = await self._kv()
            try:
                revision = await kv.create(key, node)
                return Lease(channel_id, self.node, revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # expired between the two calls: try once more
                try:
                    return Lease(channel_id, self.node, await kv.create(key, node))
                except nats.js.errors.KeyWrongLastSequenceError:
                    entry = await kv.get(key)
            holder = (entry.value or b"").decode(errors="replace")
            if holder == self.node:
                # A lease of this node's name from an earlier run of it (a restart within the
                # TTL): take it over by compare-and-set on the revision we just read.
                try:
                    return Lease(channel_id, self.node, await kv.update(key, node, last=entry.revision))
                except nats.js.errors.KeyWrongLastSequenceError:
                    entry = await kv.get(key)
                    holder = (entry.value or b"").decode(errors="replace")
            return HeldElsewhere(channel_id, holder)

        outcome = await self._bridge.run(take)
        if isinstance(outcome, Lease):
            self._held[channel_id] = outcome
            log.info("lease on %r taken by %s (revision %d)", channel_id, self.node, outcome.revision)
        return outcome

    async def renew(self, channel_id: str) -> bool:
        """One renewal; False (and the lease forgotten, ``on_lost`` called) if it was lost."""
        lease = self._held.get(channel_id)
        if lease is None:
            return False

        async def update() -> int | None:
            kv = await self._kv()
            try:
                return await kv.update(channel_token(channel_id), self.node.encode(), last=lease.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                return None

        revision = await self._bridge.run(update)
        if self._held.get(channel_id) is not lease:  # released meanwhile
            return False
        if revision is None:
            self._lose(channel_id, "another node holds it now, or it expired")
            return False
        self._held[channel_id] = attrs.evolve(lease, revision=revision)
        return True

    def forget(self, channel_id: str) -> Lease | None:
        """Stops renewing the channel's lease (at once, so that a claim made meanwhile takes it
        anew); `give_up` then deletes the key, unless it was written again since."""
        return self._held.pop(channel_id, None)

    async def give_up(self, lease: Lease) -> None:
        """Deletes the lease's key if it still holds ``lease``'s revision (else: not ours)."""

        async def delete() -> None:
            kv = await self._kv()
            try:
                await kv.delete(channel_token(lease.channel_id), last=lease.revision)
            except nats.js.errors.APIError:  # written since (by another node, or by us anew)
                pass

        await self._bridge.run(delete)

    async def release(self, channel_id: str) -> None:
        """Gives the lease up at once (the channel ended here), if we still hold it."""
        lease = self.forget(channel_id)
        if lease is not None:
            await self.give_up(lease)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renews every held lease every ``renew_every`` seconds. While NATS is away a
        renewal fails with an error, not a verdict: the lease is kept and tried again; if
        the TTL passes meanwhile, the first renewal after NATS returns finds it lost."""
        task_status.started()
        while True:
            await trio.sleep(self.settings.renew_every)
            for channel_id in list(self._held):
                try:
                    with trio.fail_after(self.settings.renew_every):
                        await self.renew(channel_id)
                except (trio.TooSlowError, nats.errors.Error, ConnectionError) as exc:
                    log.warning("lease on %r: renewal failed (%s); trying again", channel_id, exc or type(exc).__name__)

    def _lose(self, channel_id: str, why: str) -> None:
        self._held.pop(channel_id, None)
        self.lost += 1
        log.warning("lease on %r lost by %s: %s", channel_id, self.node, why)
        self._on_lost(channel_id)


class NumberPool:
    """Channel numbers unique over the event stream: blocks reserved from a KV counter.

    ``peek`` is synchronous (the channel actor asks for a number on every join and uses it
    only if the join creates the channel); ``refill`` keeps at least ``low`` in hand."""

    def __init__(self, bridge: NatsBridge, *, block: int = 64, low: int = 16) -> None:
        self._bridge = bridge
        self._block = block
        self._low = low
        self._numbers: list[int] = []  # ascending
        self._refilling = False
        self.exhausted = 0

    def available(self) -> int:
        return len(self._numbers)

    def peek(self) -> int:
        if not self._numbers:
            self.exhausted += 1
            raise RuntimeError("no channel numbers reserved (NATS unreachable?)")
        return self._numbers[0]

    def consume(self, number: int) -> None:
        """``number`` was used by a channel_created that is now in the log."""
        self._numbers = [n for n in self._numbers if n > number]

    def needs_refill(self) -> bool:
        return len(self._numbers) < self._low and not self._refilling

    def add_block(self, first: int) -> None:
        """Takes the reserved numbers ``first`` .. ``first + block - 1`` into the pool.
        Concurrent refills may finish out of order: the pool stays ascending, so `consume`
        (which drops every number up to the one used) never drops a fresh block."""
        self._numbers = sorted([*self._numbers, *range(first, first + self._block)])

    async def refill(self) -> None:
        """Reserves the next block by compare-and-set on the counter (retrying on a race)."""
        self._refilling = True
        try:

            async def reserve() -> int:
                kv = await self._bridge.js.key_value(COUNTER_BUCKET)
                while True:
                    try:
                        entry = await kv.get(CHANNEL_NUMBER_KEY)
                        first, revision = int(entry.value or b"1"), entry.revision
                    except nats.js.errors.KeyNotFoundError:
                        first, revision = 1, 0
                    try:
                        if revision:
                            await kv.update(CHANNEL_NUMBER_KEY, str(first + self._block).encode(), last=revision)
                        else:
                            await kv.create(CHANNEL_NUMBER_KEY, str(first + self._block).encode())
                        return first
                    except nats.js.errors.KeyWrongLastSequenceError:
                        continue  # another node reserved meanwhile

            self.add_block(await self._bridge.run(reserve))
        finally:
            self._refilling = False
