"""A client for tests/test_cluster_netns.py, run inside a network namespace (`ip netns exec`).

The test process cannot open sockets in another namespace, so each "host" of the test runs
this script there and reads one JSON object from its stdout. Times are CLOCK_MONOTONIC
nanoseconds, which every namespace of the machine shares, so the test compares them.

    python netns_probe.py host URL CHANNEL    # joins as host with a near listener; streams
                                              # numbered frames every 20 ms until stdin closes
    python netns_probe.py listen URL CHANNEL FRAMES   # joins as audience; takes FRAMES frames

``host`` prints ``{"joined": true}`` once both of its members joined, then, at the end,
``{"sent": [[seq, ns], ...], "near": [[seq, ns], ...]}``; ``listen`` prints
``{"join_ms": ..., "received": [[seq, ns], ...], "dropped": N}``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import trio

from airwave.protocol import CustomRole, Join, encode_client_media
from airwave.wire import Wire, open_wire

INTERVAL = 0.020  # one Opus frame's worth, as a real publisher sends
LIMIT = 20.0  # no probe outlives a broken test


def say(value: object) -> None:
    print(json.dumps(value), flush=True)


async def collect(wire: Wire, into: list[list[int]], count: int | None = None) -> None:
    async for packet in wire.media:
        into.append([packet.seq, time.monotonic_ns()])
        if count is not None and len(into) >= count:
            return


async def host(url: str, channel: str) -> None:
    sent: list[list[int]] = []
    near: list[list[int]] = []
    async with open_wire(url) as sender, open_wire(url) as listener:
        joined = await sender.request(Join, channel=channel, user_id="host", role=CustomRole.ROLE_0, upload=True)
        assert joined.ok, joined
        assert (await listener.request(Join, channel=channel, user_id="near")).ok
        say({"joined": True})
        stdin = trio.lowlevel.FdStream(os.dup(0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, listener, near)

            async def until_stdin_closes() -> None:
                while await stdin.receive_some():
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_stdin_closes)
            seq = 0
            next_at = trio.current_time()
            while True:
                sent.append([seq, time.monotonic_ns()])
                await sender.send_bytes(encode_client_media(seq, seq * 960, b"\xf8" + seq.to_bytes(4, "big"), level=40))
                seq += 1
                next_at += INTERVAL
                await trio.sleep_until(next_at)
    say({"sent": sent, "near": near})


async def listen(url: str, channel: str, frames: int) -> None:
    received: list[list[int]] = []
    started = time.monotonic()
    async with open_wire(url) as wire:
        assert (await wire.request(Join, channel=channel, user_id="far")).ok
        join_ms = round(1000 * (time.monotonic() - started), 1)
        await collect(wire, received, frames)
        say({"join_ms": join_ms, "received": received, "dropped": wire.media_dropped})


async def main(argv: list[str]) -> None:
    with trio.fail_after(LIMIT):
        if argv[0] == "host":
            await host(argv[1], argv[2])
        else:
            await listen(argv[1], argv[2], int(argv[3]))


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
