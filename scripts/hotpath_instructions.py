"""User-space instructions per delivery of the fan-out, Airwave's against the floor's, by
callgrind: a count that does not move with the machine's load, where bench_fanout.py's CPU
seconds do.

    python scripts/hotpath_instructions.py                 # 200 listeners, 40 packets
    python scripts/hotpath_instructions.py --listeners 500 --packets 40

Each variant runs in its own process under ``valgrind --tool=callgrind`` twice: once with the
packets and once with none (the same set-up: sockets, a trio loop, the receivers drained), so
the difference divided by packets × listeners is what one delivery costs in user space:

* airwave: `MediaRouter.publish` over `Connection` sinks (`send_frame_nowait` → `socket.send`),
  the server's hot path exactly;
* floor: a bare loop of the bound `socket.send` of one pre-built frame, as
  scripts/fanout_baselines.py's floor does.

The kernel's work (the send itself, loopback delivery) is not counted by callgrind: what
this separates is Airwave's own Python from the kernel's share of bench_fanout's figure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import socket, sys
import trio
from airwave.actors.net import Connection, TransportSettings
from airwave.media.router import MediaRouter
from airwave.protocol import encode_client_media

variant, listeners, packets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


async def main():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(listeners)
    clients, accepted = [], []
    for _ in range(listeners):
        c = socket.create_connection(server.getsockname())
        a, _ = server.accept()
        a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients.append(c)
        accepted.append(a)
    client_frame = encode_client_media(1, 960, b"\xf8" + bytes(80), level=40)
    async with trio.open_nursery() as nursery:
        router = MediaRouter()
        router.add_member(1, None, publishing=True)
        for sid, sock in enumerate(accepted, start=2):
            router.add_member(sid, Connection(sock, settings=TransportSettings(), nursery=nursery), publishing=False)
        from airwave.protocol.media import relay_frame
        from airwave.protocol.wsframe import server_binary_frame
        frame = server_binary_frame(relay_frame(1, client_frame))
        sends = [sock.send for sock in accepted]
        for _ in range(packets):
            if variant == "airwave":
                router.publish(1, client_frame)
            else:
                for send in sends:
                    send(frame)
            for c in clients:
                c.recv(65536)
        nursery.cancel_scope.cancel()


trio.run(main)
"""


def instructions(variant: str, listeners: int, packets: int, tmp: Path) -> int:
    out = tmp / f"cg.{variant}.{packets}"
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", CHILD,
         variant, str(listeners), str(packets)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    summary = re.search(r"^summary:\s+(\d+)", out.read_text(errors="replace"), re.M)
    if summary is None:
        raise RuntimeError(f"no summary in {out}")
    return int(summary.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", type=int, default=200)
    parser.add_argument("--packets", type=int, default=40)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is needed: apt-get install valgrind", file=sys.stderr)
        return 2
    deliveries = args.listeners * args.packets
    with tempfile.TemporaryDirectory(prefix="hotpath-") as tmp:
        per = {}
        for variant in ("airwave", "floor"):
            work = instructions(variant, args.listeners, args.packets, Path(tmp))
            idle = instructions(variant, args.listeners, 0, Path(tmp))
            per[variant] = (work - idle) / deliveries
            print(f"{variant:>8}: {per[variant]:8.0f} instructions per delivery "
                  f"({work - idle:,} over {deliveries:,} deliveries, callgrind)")
    print(f"airwave - floor: {per['airwave'] - per['floor']:.0f} instructions per delivery "
          f"({per['airwave'] / per['floor']:.2f}x the floor's user-space work)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
