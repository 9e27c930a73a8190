"""Cluster mode, first layer: the trio/asyncio bridge, the event log in JetStream (the same
records as the file log, fenced appends) and `airwave replay nats://...`.

Everything runs against a real `nats-server -js` on loopback (one per module, see
`natsserver.py`); each test starts from an empty event stream.
"""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import msgpack
import pytest
import trio

from airwave.actors.cluster import (
    ChannelLog,
    ClusterLogError,
    Fenced,
    NatsBridge,
    channel_from_token,
    channel_token,
    open_bridge,
    read_records,
)
from airwave.actors.cluster.subjects import EVENT_STREAM, event_subject
from airwave.actors.log import InvalidRecordBody, read_events
from airwave.actors.server import RunningServer
from airwave.cli import main

from natsserver import NatsServer, bridge, nats_server  # noqa: F401 (fixtures)
from test_replay_cli import PASSWORD, scripted_session


def event(channel: str, kind: str = "ping", **fields: object) -> dict[str, object]:
    return {"type": kind, "channel": channel, **fields}


# --- names ---

@hypothesis.given(st.text(min_size=1, max_size=128))
def test_cluster_channel_token_is_one_subject_token_and_reverses(channel_id: str) -> None:
    token = channel_token(channel_id)
    assert token and not set(token) & set(". *>\t\r\n")
    assert channel_from_token(token) == channel_id


@pytest.mark.parametrize("token", ["", "a.b", "_41", "_5f", "_4", "x_ZZ", "_C3"])
def test_cluster_channel_token_refuses_what_no_id_escapes_to(token: str) -> None:
    with pytest.raises(ValueError):
        channel_from_token(token)


def test_cluster_channel_tokens_of_ids_that_look_alike_differ() -> None:
    assert len({channel_token(c) for c in ["a_b", "a.b", "a b", "a_5Fb", "A_B", "a-b"]}) == 6


# --- the bridge ---

async def test_cluster_bridge_run_returns_results_and_raises_errors(bridge: NatsBridge) -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    async def fail() -> None:
        raise KeyError("from the NATS thread")

    with trio.fail_after(5):
        assert await bridge.run(add, 2, 3) == 5
        with pytest.raises(KeyError, match="from the NATS thread"):
            await bridge.run(fail)


async def test_cluster_bridge_cancelling_the_trio_caller_cancels_the_coroutine(bridge: NatsBridge) -> None:
    import asyncio

    state = {"cancelled": False}

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    with trio.move_on_after(0.2) as scope:
        await bridge.run(forever)
    assert scope.cancelled_caught
    with trio.fail_after(5):
        while not state["cancelled"]:
            await trio.sleep(0.01)


async def test_cluster_bridge_publish_nowait_arrives_in_order(bridge: NatsBridge) -> None:
    sub = await bridge.subscribe("test.order", buffer=2000)
    for n in range(1000):
        bridge.publish_nowait("test.order", n.to_bytes(2, "big"))
    with trio.fail_after(5):
        got = [int.from_bytes((await sub.receive()).data, "big") for _ in range(1000)]
    assert got == list(range(1000))
    stats = bridge.statistics()
    assert stats.published >= 1000 and stats.dropped_outbox == 0
    assert stats.wakeups_to_nats < 1000  # bursts cross the thread boundary once
    await sub.aclose()


async def test_cluster_bridge_receive_batch_takes_a_burst_in_order(bridge: NatsBridge) -> None:
    sub = await bridge.subscribe("test.batch", buffer=1000)
    for n in range(300):
        bridge.publish_nowait("test.batch", n.to_bytes(2, "big"))
    await bridge.flush()
    got: list[int] = []
    calls = 0
    with trio.fail_after(5):
        while len(got) < 300:
            batch = await sub.receive_batch(limit=100)
            assert 1 <= len(batch) <= 100
            got += [int.from_bytes(d.data, "big") for d in batch]
            calls += 1
    assert got == list(range(300)) and calls < 300
    await sub.aclose()


async def test_cluster_bridge_full_subscriber_drops_newest_and_counts(bridge: NatsBridge) -> None:
    sub = await bridge.subscribe("test.full", buffer=10)
    for n in range(50):
        bridge.publish_nowait("test.full", bytes([n]))
    await bridge.flush()
    with trio.fail_after(5):
        while sub.dropped + 10 < 50:
            await trio.sleep(0.01)
    got = [(await sub.receive()).data[0] for _ in range(10)]
    assert got == list(range(10)) and sub.dropped == 40
    await sub.aclose()


async def test_cluster_bridge_refuses_an_address_with_no_server() -> None:
    with trio.fail_after(10), pytest.raises(ConnectionError, match="cannot connect to NATS at nats://127.0.0.1:1"):
        async with open_bridge("nats://127.0.0.1:1", connect_within=2):
            pass


# --- the JetStream event log ---

async def test_cluster_log_appends_and_reads_back_records_as_the_file_log(bridge: NatsBridge) -> None:
    with trio.fail_after(10):
        show, records = await ChannelLog.take(bridge, "show")
        side, _ = await ChannelLog.take(bridge, "side room")
        assert records == []
        assert await show.append([event("show", n=1), event("show", n=2)]) == [1, 2]
        assert await side.append([event("side room", n=3)]) == [3]
        assert await show.append([event("show", n=4)]) == [4]
        everything = await read_records(bridge)
        assert everything == [
            {"seq": 1, "type": "ping", "channel": "show", "n": 1},
            {"seq": 2, "type": "ping", "channel": "show", "n": 2},
            {"seq": 3, "type": "ping", "channel": "side room", "n": 3},
            {"seq": 4, "type": "ping", "channel": "show", "n": 4},
        ]
        assert [list(r)[0] for r in everything] == ["seq"] * 4  # seq first, as the file writer puts it
        assert [r["seq"] for r in await read_records(bridge, channel="show")] == [1, 2, 4]
        assert [r["seq"] for r in await read_records(bridge, until=2)] == [1, 2]
        again, known = await ChannelLog.take(bridge, "show")
        assert known == [r for r in everything if r["channel"] == "show"] and again.last_subject_seq == 4


async def test_cluster_log_stale_owner_is_fenced_and_appends_nothing(bridge: NatsBridge) -> None:
    """Fencing, not timing: the owner that took over appended, so the old one's next append
    meets a different last subject sequence and is refused; other channels do not fence it."""
    with trio.fail_after(10):
        old, _ = await ChannelLog.take(bridge, "show")
        await old.append([event("show", n=1)])
        new, known = await ChannelLog.take(bridge, "show")
        assert [r["n"] for r in known] == [1]
        other, _ = await ChannelLog.take(bridge, "other")
        await other.append([event("other", n=2)])
        await new.append([event("show", n=3)])
        with pytest.raises(Fenced, match="fenced"):
            await old.append([event("show", n=4), event("show", n=5)])
        with pytest.raises(Fenced):  # and stays fenced, even once nobody else appends
            await old.append([event("show", n=6)])
        assert [r["n"] for r in await read_records(bridge)] == [1, 2, 3]
        await new.append([event("show", n=7)])  # the new owner is not disturbed
        assert [r["n"] for r in await read_records(bridge, channel="show")] == [1, 3, 7]


async def test_cluster_log_refuses_what_the_file_log_refuses_and_appends_nothing(bridge: NatsBridge) -> None:
    with trio.fail_after(10):
        owner, _ = await ChannelLog.take(bridge, "show")
        for bad in ({"seq": 9, "type": "x", "channel": "show"}, {"type": "x", "channel": "show", "m": {1: 2}}):
            with pytest.raises(InvalidRecordBody):
                await owner.append([event("show", n=1), bad])
        assert await read_records(bridge) == []
        assert await owner.append([event("show", n=1)]) == [1]


async def test_cluster_log_reading_a_foreign_message_names_its_sequence(bridge: NatsBridge) -> None:
    async def put(subject: str, payload: bytes) -> None:
        await bridge.js.publish(subject, payload)

    await bridge.run(put, event_subject("show"), b"\xc1 not msgpack")
    with trio.fail_after(5), pytest.raises(ClusterLogError, match="sequence 1: not a msgpack record"):
        await read_records(bridge)


async def test_cluster_log_reading_without_a_stream_says_so(bridge: NatsBridge) -> None:
    await bridge.run(bridge.js.delete_stream, EVENT_STREAM)
    with trio.fail_after(5), pytest.raises(ClusterLogError, match="no JetStream stream AIRWAVE_EVENTS"):
        await read_records(bridge)


# --- airwave replay nats://... ---

def replay_output(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(["replay", *args]) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out
    return out


async def test_cluster_replay_of_the_stream_prints_what_the_file_log_prints(
    server: RunningServer, bridge: NatsBridge, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real session's records, appended to JetStream by channel owners in their order, give
    byte-identical replay output: text, JSON, --channel, --until."""
    await scripted_session(server)
    directory = server.event_log.directory
    owners: dict[str, ChannelLog] = {}
    with trio.fail_after(20):
        for body in read_events(directory):
            record = {k: v for k, v in body.items() if k != "seq"}
            channel = record["channel"]
            if channel not in owners:
                owners[channel], _ = await ChannelLog.take(bridge, channel)
            assert await owners[channel].append([record]) == [body["seq"]]
    for options in ([], ["--json"], ["--channel", "side"], ["--json", "--until", "8"], ["--channel", "nobody"]):
        from_file = await trio.to_thread.run_sync(replay_output, capsys, str(directory), *options)
        from_nats = await trio.to_thread.run_sync(replay_output, capsys, nats_server.url, *options)
        assert from_nats == from_file, options
        assert ("channel_created" in from_file) is ("nobody" not in options), options


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("nats://127.0.0.1", "give the port"),
        ("nats://127.0.0.1:99999", "the port is not a number"),
        ("nats://127.0.0.1:4222/x", "nothing after it"),
        ("nats://127.0.0.1:1", "cannot connect to NATS"),
    ],
)
def test_cluster_replay_bad_address_exits_2_with_the_reason(url: str, reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"airwave: cannot replay {url}: ") and reason in err and err.count("\n") == 1


async def test_cluster_replay_of_a_nats_without_the_stream_exits_2(
    bridge: NatsBridge, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    await bridge.run(bridge.js.delete_stream, EVENT_STREAM)
    code = await trio.to_thread.run_sync(main, ["replay", nats_server.url])
    assert code == 2
    assert "no JetStream stream AIRWAVE_EVENTS" in capsys.readouterr().err


def test_cluster_payload_is_the_file_writers_packing() -> None:
    """A stream message's payload is `pack_event`'s bytes: the record without its seq."""
    from airwave.actors.cluster.jetlog import decode_payload
    from airwave.actors.log.format import pack_event

    record = {"type": "participant_joined", "channel": "c", "v": 1, "blob": b"\x00\xff"}
    assert decode_payload(7, pack_event(record)) == {"seq": 7, **record}
    with pytest.raises(ClusterLogError, match="not an event map"):
        decode_payload(8, msgpack.packb([1, 2]))
