"""What streaming to the CDN costs the server: process CPU with N channels talking, CDN off
then on (Icecast and/or HLS), in one run.

    python scripts/bench_cdn.py [--channels 5] [--seconds 10] [--hls] [--icecast-url icecast://source:PW@127.0.0.1:8000]

Each channel has one host sending a 20 ms Opus packet every 20 ms (the same packet, so the
senders cost the same in both phases) and one listener. The server runs in this process;
the CPU figure is this process's (``time.process_time``) over each phase, so the senders'
and listeners' cost is in both and the difference is the CDN's: per channel, a decode, a mix,
one encode and the muxing every 20 ms, on the CDN recorder's worker thread (and the Icecast
source's own thread). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

from airwave.actors.core import CdnSettings
from airwave.actors.server import ServerSettings, serve
from airwave.media.opus import FRAME_SAMPLES, OpusEncoder
from airwave.media.sources import tone_frames
from airwave.protocol import CustomRole, EnableCdn, Join, encode_client_media
from airwave.wire import Wire, open_wire


async def talk(wire: Wire, packet: bytes, until: float) -> None:
    seq, start = 0, trio.current_time()
    while trio.current_time() < until:
        await wire.send_bytes(encode_client_media(seq & 0xFFFF, seq * FRAME_SAMPLES, packet, level=50))
        seq += 1
        await trio.sleep_until(start + seq * 0.020)


async def drain(wire: Wire) -> None:
    async for _ in wire.media:
        pass


async def phase(hosts: list[Wire], packet: bytes, seconds: float) -> float:
    """CPU seconds this process spent while every host talked for ``seconds``."""
    cpu = time.process_time()
    async with trio.open_nursery() as talking:
        until = trio.current_time() + seconds
        for host in hosts:
            talking.start_soon(talk, host, packet, until)
    return time.process_time() - cpu


async def main(args: argparse.Namespace) -> None:
    cdn = CdnSettings(icecast_url=args.icecast_url, hls=args.hls)
    if not cdn.enabled:
        raise SystemExit("give --hls and/or --icecast-url")
    packet = OpusEncoder().encode(next(iter(tone_frames(440.0, 0.02))).astype(np.int16))
    with tempfile.TemporaryDirectory(prefix="bench-cdn-") as data:
        settings = ServerSettings(port=0, data_dir=Path(data), cdn=cdn)
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, settings)
            hosts, listeners = [], []
            for index in range(args.channels):
                host = await nursery.start(_open, server.url)
                listener = await nursery.start(_open, server.url)
                channel = f"bench-{index}"
                assert (await host.request(Join, channel=channel, user_id="host", role=CustomRole.ROLE_0, upload=True)).ok
                assert (await listener.request(Join, channel=channel, user_id="lis")).ok
                nursery.start_soon(drain, listener)
                hosts.append(host)
                listeners.append(listener)
            await phase(hosts, packet, 1.0)  # warm up: imports, first allocations
            off = await phase(hosts, packet, args.seconds)
            for host in hosts:
                assert (await host.request(EnableCdn, enabled=True)).ok
            await phase(hosts, packet, 1.0)  # the CDN's PyAV load and first segments
            on = await phase(hosts, packet, args.seconds)
            for host in hosts:
                assert (await host.request(EnableCdn, enabled=False)).ok
            print(json.dumps({
                "channels": args.channels, "seconds": args.seconds, "hls": args.hls, "icecast": args.icecast_url is not None,
                "cpu_percent_off": round(100 * off / args.seconds, 1), "cpu_percent_on": round(100 * on / args.seconds, 1),
                "cdn_cpu_percent_per_channel": round(100 * (on - off) / args.seconds / args.channels, 2),
            }))
            server.shutdown()
            nursery.cancel_scope.cancel()


async def _open(url: str, task_status: trio.TaskStatus[Wire] = trio.TASK_STATUS_IGNORED) -> None:
    async with open_wire(url) as wire:
        task_status.started(wire)
        await trio.sleep_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--hls", action="store_true")
    parser.add_argument("--icecast-url")
    trio.run(main, parser.parse_args())
