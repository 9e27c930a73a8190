"""What the trio/asyncio bridge (actors/cluster/bridge.py) costs per media packet.

Starts a real `nats-server` on a free loopback port, then, in this one process, sends
paced media-sized packets (``--speakers`` packets every 20 ms tick, 160 bytes each) through
NATS to a subscriber in two ways, alternating rounds so both see the same machine:

- **baseline**: plain asyncio nats-py, publisher and subscriber on one asyncio loop: what
  NATS and nats-py cost with no bridge at all;
- **bridged**: a trio publisher calling ``bridge.publish_nowait`` and a trio task reading
  ``bridge.subscribe`` in bursts (``receive_batch``): the server's real path (trio -> NATS thread -> NATS -> NATS thread
  -> trio).

For each round it reports CPU time per packet (the process's, every thread) and the
publish-to-receive latency (p50, p99); the summary prints the median over rounds and the
bridge's extra cost (bridged minus baseline).

    .venv/bin/python scripts/bench_bridge.py [--speakers 50] [--seconds 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import trio

from airwave.actors.cluster import open_bridge

TICK = 0.020
PAYLOAD = 160


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def packet(sent_ns: int) -> bytes:
    return sent_ns.to_bytes(8, "big") + bytes(PAYLOAD - 8)


def summary(name: str, cpu: float, latencies_ns: list[int], expected: int) -> dict[str, float]:
    received = len(latencies_ns)
    return {
        "cpu_us": cpu / max(1, received) * 1e6,
        "p50_ms": percentile(latencies_ns, 0.50) / 1e6 if received else float("nan"),
        "p99_ms": percentile(latencies_ns, 0.99) / 1e6 if received else float("nan"),
        "loss": 1 - received / expected,
    }


async def baseline_round(url: str, speakers: int, seconds: float) -> dict[str, float]:
    nc = await nats.connect(url)
    latencies: list[int] = []
    done = asyncio.Event()
    ticks = int(seconds / TICK)
    expected = ticks * speakers

    async def on_message(msg: nats.aio.msg.Msg) -> None:
        latencies.append(time.perf_counter_ns() - int.from_bytes(msg.data[:8], "big"))
        if len(latencies) >= expected:
            done.set()

    await nc.subscribe("bench.media", cb=on_message)
    await nc.flush()
    cpu0 = time.process_time()
    start = time.perf_counter()
    for tick in range(ticks):
        for _ in range(speakers):
            await nc.publish("bench.media", packet(time.perf_counter_ns()))
        await asyncio.sleep(max(0.0, start + (tick + 1) * TICK - time.perf_counter()))
    try:
        await asyncio.wait_for(done.wait(), 2)
    except asyncio.TimeoutError:
        pass
    cpu = time.process_time() - cpu0
    await nc.close()
    return summary("baseline", cpu, latencies, expected)


async def bridged_round(url: str, speakers: int, seconds: float) -> dict[str, float]:
    latencies: list[int] = []
    ticks = int(seconds / TICK)
    expected = ticks * speakers
    async with open_bridge(url, name="bench") as bridge:
        sub = await bridge.subscribe("bench.media", buffer=65536)
        await bridge.flush()

        async def receive(cancel: trio.CancelScope) -> None:
            while len(latencies) < expected:
                for delivery in await sub.receive_batch():
                    latencies.append(time.perf_counter_ns() - int.from_bytes(delivery.data[:8], "big"))
            cancel.cancel()

        cpu0 = time.process_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, nursery.cancel_scope)
            start = trio.current_time()
            for tick in range(ticks):
                for _ in range(speakers):
                    bridge.publish_nowait("bench.media", packet(time.perf_counter_ns()))
                await trio.sleep_until(start + (tick + 1) * TICK)
            await trio.sleep(2)  # the receiver cancels this once everything arrived
            nursery.cancel_scope.cancel()
        cpu = time.process_time() - cpu0
        await sub.aclose()
    return summary("bridged", cpu, latencies, expected)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", type=int, default=50, help="packets per 20 ms tick (default 50: 2,500/s)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each round (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each kind, alternating (default 5)")
    parser.add_argument(
        "--switch-interval", type=float, metavar="MS",
        help="sys.setswitchinterval in ms for this run (Python's default is 5): how long a thread may wait for the GIL",
    )
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval / 1000)
    binary = shutil.which("nats-server")
    if binary is None:
        print("bench_bridge: nats-server is not installed (apt-get install nats-server)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as store:
        port = free_port()
        server = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port), "-sd", store], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            url = f"nats://127.0.0.1:{port}"
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            results: dict[str, list[dict[str, float]]] = {"baseline": [], "bridged": []}
            for round_number in range(args.rounds):
                base = asyncio.run(baseline_round(url, args.speakers, args.seconds))
                bridged = trio.run(bridged_round, url, args.speakers, args.seconds)
                results["baseline"].append(base)
                results["bridged"].append(bridged)
                print(
                    f"round {round_number + 1}: baseline {base['cpu_us']:.1f} us/packet p50 {base['p50_ms']:.3f} ms "
                    f"p99 {base['p99_ms']:.3f} ms loss {base['loss']:.2%} | bridged {bridged['cpu_us']:.1f} us/packet "
                    f"p50 {bridged['p50_ms']:.3f} ms p99 {bridged['p99_ms']:.3f} ms loss {bridged['loss']:.2%}",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(5)
    rate = args.speakers / TICK
    print(
        f"\n{args.speakers} packets per 20 ms ({rate:,.0f}/s), {PAYLOAD} B, {args.rounds} rounds of {args.seconds:g} s, "
        f"GIL switch interval {sys.getswitchinterval() * 1000:g} ms; medians:"
    )
    medians = {kind: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]} for kind, rounds in results.items()}
    for kind, values in medians.items():
        print(
            f"  {kind:8}  CPU {values['cpu_us']:6.1f} us/packet (publish + receive, all threads)  "
            f"latency p50 {values['p50_ms']:.3f} ms  p99 {values['p99_ms']:.3f} ms  loss {values['loss']:.2%}"
        )
    extra = {key: medians["bridged"][key] - medians["baseline"][key] for key in ("cpu_us", "p50_ms", "p99_ms")}
    print(
        f"  bridge adds {extra['cpu_us']:+.1f} us CPU per packet, {extra['p50_ms']:+.3f} ms at p50, "
        f"{extra['p99_ms']:+.3f} ms at p99"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
