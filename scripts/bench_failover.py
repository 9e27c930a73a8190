"""How long a channel is unavailable when its owner node is killed, with the default lease TTL.

Starts a real `nats-server -js` and two `airwave serve --cluster` node processes on
loopback; a host joins channel "show" on node a; node a is SIGKILLed; a client then asks
node b to join "show" every 50 ms until it is accepted. Prints, per round, the seconds from
the kill to the accepted join, and the median. (First layer of issue 16: the channel passes
to node b once a's lease has expired; see docs/operations.md, section 10.)

    .venv/bin/python scripts/bench_failover.py [--rounds 3] [--lease-ttl 3]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from airwave.protocol import CustomRole, Join
from airwave.wire import open_wire


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def node(nats_url: str, name: str, port: int, ttl: float, store: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "airwave.cli", "serve", "--port", str(port), "--data", str(store / name),
         "--cluster", nats_url, "--node", name, "--lease-ttl", str(ttl)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def one_round(nats_url: str, ttl: float, store: Path, channel: str) -> float:
    port_a, port_b = free_port(), free_port()
    a = node(nats_url, "a", port_a, ttl, store)
    b = node(nats_url, "b", port_b, ttl, store)
    try:
        wait_port(port_a)
        wait_port(port_b)
        async with open_wire(f"ws://127.0.0.1:{port_a}/") as host:
            reply = await host.request(Join, channel=channel, user_id="host", role=CustomRole.ROLE_0)
            assert reply.ok, reply
            a.send_signal(signal.SIGKILL)
            killed = time.monotonic()
        a.wait(5)
        while True:
            async with open_wire(f"ws://127.0.0.1:{port_b}/") as probe:
                if (await probe.request(Join, channel=channel, user_id="carol")).ok:
                    return time.monotonic() - killed
            await trio.sleep(0.05)
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.terminate()
                process.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lease-ttl", type=float, default=3.0, help="the nodes' --lease-ttl (default: the default, 3)")
    args = parser.parse_args()
    binary = shutil.which("nats-server")
    if binary is None:
        print("bench_failover: nats-server is not installed (apt-get install nats-server)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as directory:
        store = Path(directory)
        port = free_port()
        nats = subprocess.Popen([binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store / "nats")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            times = []
            for round_number in range(args.rounds):
                took = trio.run(one_round, f"nats://127.0.0.1:{port}", args.lease_ttl, store, f"show-{round_number}")
                times.append(took)
                print(f"round {round_number + 1}: owner killed -> join accepted on another node in {took:.2f} s", flush=True)
        finally:
            nats.terminate()
            nats.wait(5)
    print(f"median {statistics.median(times):.2f} s over {args.rounds} rounds (lease TTL {args.lease_ttl:g} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
