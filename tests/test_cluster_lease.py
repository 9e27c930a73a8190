"""The channel lease in JetStream KV (compare-and-set and a TTL) and the cluster-wide channel
numbers, against a real nats-server. Timers are short real ones (TTL 0.6 s)."""

from __future__ import annotations

import pytest
import trio

from airwave.actors.cluster import NatsBridge
from airwave.actors.cluster.lease import HeldElsewhere, Lease, Leases, LeaseSettings, NumberPool, ensure_buckets

from natsserver import bridge, nats_server  # noqa: F401 (fixtures)

FAST = LeaseSettings(ttl=0.6, renew_every=0.15)


async def leases_for(bridge: NatsBridge, *nodes: str, settings: LeaseSettings = FAST) -> tuple[list[Leases], list[tuple[str, str]]]:
    await ensure_buckets(bridge, settings)
    lost: list[tuple[str, str]] = []
    return [Leases(bridge, node, settings, lambda channel, node=node: lost.append((node, channel))) for node in nodes], lost


def test_cluster_lease_settings_refuse_a_renewal_slower_than_the_ttl() -> None:
    with pytest.raises(ValueError, match="below the ttl"):
        LeaseSettings(ttl=1.0, renew_every=1.0)


async def test_cluster_lease_two_nodes_racing_one_wins_the_other_learns_the_holder(bridge: NatsBridge) -> None:
    (a, b), _ = await leases_for(bridge, "node-a", "node-b")
    with trio.fail_after(5):
        outcomes: dict[str, object] = {}

        async def take(leases: Leases) -> None:
            outcomes[leases.node] = await leases.acquire("show")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, a)
            nursery.start_soon(take, b)
    winners = [node for node, outcome in outcomes.items() if isinstance(outcome, Lease)]
    assert len(winners) == 1
    loser = "node-b" if winners == ["node-a"] else "node-a"
    assert outcomes[loser] == HeldElsewhere("show", winners[0])
    other = await a.acquire("other room")  # leases are per channel
    assert isinstance(other, Lease) and await a.acquire("other room") is other  # held: no second write


async def test_cluster_lease_renewed_outlives_its_ttl(bridge: NatsBridge) -> None:
    (a, b), lost = await leases_for(bridge, "node-a", "node-b")
    with trio.fail_after(10):
        assert isinstance(await a.acquire("show"), Lease)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await trio.sleep(3 * FAST.ttl)
            assert await b.acquire("show") == HeldElsewhere("show", "node-a")
            nursery.cancel_scope.cancel()
    assert a.holds("show") and lost == []


async def test_cluster_lease_of_a_silent_holder_expires_and_its_renewal_then_fails(bridge: NatsBridge) -> None:
    """A paused owner (no renewals past the TTL): another node takes the lease; the old
    holder's next renewal finds a revision it did not write and reports the loss."""
    (a, b), lost = await leases_for(bridge, "node-a", "node-b")
    with trio.fail_after(10):
        assert isinstance(await a.acquire("show"), Lease)
        assert await b.acquire("show") == HeldElsewhere("show", "node-a")
        taken = None
        waited = 0.0
        while not isinstance(taken, Lease):
            await trio.sleep(0.05)
            waited += 0.05
            taken = await b.acquire("show")
        assert FAST.ttl * 0.8 <= waited <= FAST.ttl + 1.0
        assert await a.renew("show") is False
    assert lost == [("node-a", "show")] and not a.holds("show") and b.holds("show")


async def test_cluster_lease_released_is_free_at_once(bridge: NatsBridge) -> None:
    (a, b), _ = await leases_for(bridge, "node-a", "node-b", settings=LeaseSettings(ttl=30, renew_every=10))
    with trio.fail_after(5):
        assert isinstance(await a.acquire("show"), Lease)
        await a.release("show")
        assert isinstance(await b.acquire("show"), Lease)
        await a.release("show")  # not ours any more: nothing happens to b's
        assert await a.acquire("show") == HeldElsewhere("show", "node-b")


async def test_cluster_lease_a_restarted_node_takes_back_its_own_lease(bridge: NatsBridge) -> None:
    settings = LeaseSettings(ttl=30, renew_every=10)
    (before, other), _ = await leases_for(bridge, "node-a", "node-b", settings=settings)
    with trio.fail_after(5):
        first = await before.acquire("show")
        (after,), _ = await leases_for(bridge, "node-a", settings=settings)
        again = await after.acquire("show")
        assert isinstance(first, Lease) and isinstance(again, Lease) and again.revision > first.revision
        assert await before.renew("show") is False  # the earlier run's revision is gone
        assert await other.acquire("show") == HeldElsewhere("show", "node-a")


async def test_cluster_channel_numbers_are_unique_across_nodes(bridge: NatsBridge) -> None:
    await ensure_buckets(bridge, FAST)
    pools = [NumberPool(bridge, block=8, low=2) for _ in range(3)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for pool in pools:
                for _ in range(3):
                    nursery.start_soon(pool.refill)
    numbers = []
    for pool in pools:
        while pool.available():
            number = pool.peek()
            pool.consume(number)
            numbers.append(number)
    assert sorted(numbers) == list(range(1, 1 + 9 * 8))  # none lost, even when blocks came back out of order
    with pytest.raises(RuntimeError, match="no channel numbers"):
        pools[0].peek()


def test_cluster_channel_numbers_from_blocks_added_out_of_order_are_all_used() -> None:
    """Regression: a later block taken in before an earlier one made `consume` drop the earlier."""
    pool = NumberPool(None, block=4, low=1)  # type: ignore[arg-type]  # no NATS needed to add blocks
    pool.add_block(9)
    pool.add_block(1)
    used = []
    while pool.available():
        used.append(pool.peek())
        pool.consume(used[-1])
    assert used == [1, 2, 3, 4, 9, 10, 11, 12]
