"""A bounded soak run on loopback: does the server leak tasks or memory under listener churn?

    python scripts/soak.py [--seconds 60] [--channels 2] [--listeners 10] [--cycle 10] [--json]

It starts ``airwave serve --stats-interval 1 --port 0 --data TMP`` as a subprocess and reads
its stats lines (tasks, connections, channels, members, rss_kb, log_seq) as they come, once a
second. Against it, in this process:

- one host per channel joins (custom role 0, upload on) and sends a real Opus packet every
  20 ms (a 440 Hz tone encoded once with ``airwave.media.OpusEncoder``, 50 packets cycled);
- ``--listeners`` listener slots per channel churn: each connects (``airwave.wire``), says
  hello, joins as audience under a fresh user id, counts the media it receives for a random
  1-5 s (``--stay``), leaves, disconnects, and starts over.

The run is cut into churn cycles of ``--cycle`` seconds. At the end of each cycle every slot
finishes its stay and leaves, and the script waits for a quiet point: two stats lines in a row
showing only the hosts connected. That sample is the cycle's end; the same clients are
connected at every cycle end, so its figures are comparable. The first ``--warmup-cycles``
cycles (default 1) are warm-up (allocator pools, imports, caches); the end of the last of
them is the baseline.

Verdict (the thresholds are printed with it):

- tasks: the count at a quiet point is exact, so any cycle end above the baseline is a leak.
- memory: the least-squares slope of RSS over the cycle ends after warm-up, in KiB per
  minute; a leak is suspected above ``--rss-slope-limit`` (default 512 KiB/min) when the last
  cycle end is also above the baseline. With fewer than three cycle ends after warm-up the
  memory verdict is "too short to tell".

``--seconds`` is capped at 600. Loopback only: the server binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import trio

from airwave.actors.log.format import read_events
from airwave.media import OpusEncoder, tone_frames
from airwave.protocol import CustomRole, Join, Leave, encode_client_media
from airwave.wire import open_wire

MAX_SECONDS = 600.0
FRAME_SECONDS = 0.020
# Anchored to the whole line the server's logger writes ("DATE TIME LEVEL LOGGER: message"),
# so no client-chosen string elsewhere in the log can pass for one (issue 13, 3).
LISTENING = re.compile(r"^\S+ \S+ INFO airwave\.server: listening on ws://127\.0\.0\.1:(\d+)/$")
STATS = re.compile(r"^\S+ \S+ INFO airwave\.server: stats ((?:\w+=-?\d+)(?: \w+=-?\d+)*)$")


@attrs.define
class Sample:
    t: float  # seconds since the server started listening
    stats: dict[str, int]


@attrs.define
class CycleEnd:
    cycle: int
    t: float
    tasks: int
    rss_kb: int
    connections: int
    members: int
    log_seq: int
    joins: int  # client joins so far


@attrs.define
class ClientTotals:
    joins: int = 0
    leaves: int = 0
    packets_received: int = 0
    packets_sent: int = 0
    listener_seconds: float = 0.0
    errors: Counter[str] = attrs.field(factory=Counter)


class ServerProcess:
    """The `airwave serve` subprocess and what it says on stderr."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.port = 0
        self.started_at = 0.0
        self.listening = trio.Event()
        self.samples: list[Sample] = []
        self.new_sample = trio.Event()
        self.error_lines: list[str] = []
        self.tail: list[str] = []

    async def read_stderr(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                self._line(raw.decode(errors="replace"))

    def _line(self, line: str) -> None:
        self.tail = (self.tail + [line])[-20:]
        if " ERROR " in line or "Traceback" in line or " CRITICAL " in line:
            self.error_lines.append(line)
        if not self.listening.is_set() and (match := LISTENING.search(line)):
            self.port = int(match.group(1))
            self.started_at = trio.current_time()
            self.listening.set()
        elif match := STATS.search(line):
            stats = {key: int(value) for key, value in re.findall(r"(\w+)=(-?\d+)", match.group(1))}
            self.samples.append(Sample(trio.current_time() - self.started_at, stats))
            self.new_sample.set()
            self.new_sample = trio.Event()


class Soak:
    def __init__(self, args: argparse.Namespace, server: ServerProcess, packets: list[bytes]) -> None:
        self.args = args
        self.server = server
        self.url = f"ws://127.0.0.1:{server.port}/"
        self.packets = packets
        self.totals = ClientTotals()
        self.rng = random.Random(args.seed)
        self.ids = itertools.count(1)
        self.cycle_ends: list[CycleEnd] = []

    async def host(self, channel: str, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Joins as host and sends one packet every 20 ms until cancelled."""
        async with open_wire(self.url) as wire:
            reply = await wire.request(Join, channel=channel, user_id=f"host-{channel}", role=CustomRole.ROLE_0, upload=True)
            if not reply.ok:
                raise RuntimeError(f"host of {channel} could not join: {reply.reason.reason_name} {reply.message}")
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drain_pushes, wire)
                deadline = trio.current_time()
                for seq in itertools.count():
                    deadline += FRAME_SECONDS
                    await trio.sleep_until(deadline)
                    if trio.current_time() - deadline > 10 * FRAME_SECONDS:
                        deadline = trio.current_time()  # fell behind: do not burst to catch up
                    packet = self.packets[seq % len(self.packets)]
                    await wire.send_bytes(encode_client_media(seq, seq * 960, packet, 30))
                    self.totals.packets_sent += 1

    @staticmethod
    async def _drain_pushes(wire: Any) -> None:
        async for _ in wire.pushes:
            pass

    async def listener_slot(self, channel: str, churn_until: float) -> None:
        """Joins, listens for a random stay, leaves; again until ``churn_until``."""
        low, high = self.args.stay
        while (remaining := churn_until - trio.current_time()) > 0.2:
            stay = min(self.rng.uniform(low, high), remaining)
            user_id = f"fan-{next(self.ids)}"
            try:
                async with open_wire(self.url) as wire:
                    reply = await wire.request(Join, channel=channel, user_id=user_id)
                    if not reply.ok:
                        self.totals.errors[f"join {reply.reason.reason_name}"] += 1
                        await trio.sleep(0.2)
                        continue
                    self.totals.joins += 1
                    joined_at = trio.current_time()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._drain_pushes, wire)
                        with trio.move_on_after(stay):
                            async for _ in wire.media:
                                self.totals.packets_received += 1
                        nursery.cancel_scope.cancel()
                    self.totals.listener_seconds += trio.current_time() - joined_at
                    if wire.media_dropped:
                        self.totals.errors["media dropped by the client (not reading fast enough)"] += wire.media_dropped
                    reply = await wire.request(Leave)
                    if reply.ok:
                        self.totals.leaves += 1
                    else:
                        self.totals.errors[f"leave {reply.reason.reason_name}"] += 1
            except Exception as exc:  # a soak counts failures and goes on
                self.totals.errors[type(exc).__name__] += 1
                await trio.sleep(0.2)

    async def quiet_point(self, cycle: int) -> CycleEnd:
        """Two stats lines in a row with only the hosts connected and in channels."""
        hosts = self.args.channels
        seen = len(self.server.samples)
        quiet: list[Sample] = []
        with trio.move_on_after(15):
            while len(quiet) < 2:
                while len(self.server.samples) == seen:
                    await self.server.new_sample.wait()
                sample = self.server.samples[seen]
                seen += 1
                ok = sample.stats.get("connections") == hosts and sample.stats.get("members") == hosts
                quiet = quiet + [sample] if ok else []
        if len(quiet) < 2:
            tail = "\n    ".join(self.server.tail[-8:])
            raise RuntimeError(f"no quiet point within 15 s at the end of cycle {cycle} "
                               f"(server exit code {self.server.process.returncode}); its last lines:\n    {tail}")
        tasks = min(s.stats["tasks"] for s in quiet)  # a ping in flight adds a task for a moment
        last = quiet[-1]
        return CycleEnd(
            cycle, last.t, tasks, last.stats["rss_kb"], last.stats["connections"], last.stats["members"],
            last.stats["log_seq"], self.totals.joins,
        )

    async def run(self) -> None:
        channels = [f"soak-{i}" for i in range(self.args.channels)]
        cycles = max(2, round(self.args.seconds / self.args.cycle))
        async with trio.open_nursery() as hosts:
            for channel in channels:
                await hosts.start(self.host, channel)
            for cycle in range(1, cycles + 1):
                cycle_start = trio.current_time()
                churn_until = cycle_start + self.args.cycle - 3.0  # the rest: leaving, then the quiet point
                async with trio.open_nursery() as slots:
                    for channel in channels:
                        for _ in range(self.args.listeners):
                            slots.start_soon(self.listener_slot, channel, churn_until)
                end = await self.quiet_point(cycle)
                self.cycle_ends.append(end)
                if not self.args.json:
                    print(f"  cycle {cycle}/{cycles} ended at {end.t:6.1f} s: tasks={end.tasks} rss_kb={end.rss_kb} "
                          f"joins so far={self.totals.joins}", file=sys.stderr)
                await trio.sleep_until(cycle_start + self.args.cycle)
            hosts.cancel_scope.cancel()


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    return 60.0 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var


def verdict(cycle_ends: list[CycleEnd], args: argparse.Namespace) -> dict[str, Any]:
    warm = min(args.warmup_cycles, len(cycle_ends)) - 1
    baseline, after = cycle_ends[warm], cycle_ends[warm + 1 :]
    minutes = (after[-1].t - baseline.t) / 60 if after else 0.0
    task_growth = [end.tasks - baseline.tasks for end in after]
    rss_slope = slope_per_minute([(end.t, end.rss_kb) for end in [baseline, *after]])
    rss_growth = after[-1].rss_kb - baseline.rss_kb if after else 0
    tasks_leak = any(growth > 0 for growth in task_growth)
    if len(after) < 2 or rss_slope is None:
        memory = "too short to tell"
    elif rss_slope > args.rss_slope_limit and rss_growth > 0:
        memory = "leak suspected"
    else:
        memory = "no leak seen"
    joins_after = after[-1].joins - baseline.joins if after else 0
    return {
        "baseline": attrs.asdict(baseline),
        "last": attrs.asdict(after[-1]) if after else None,
        "measured_minutes": round(minutes, 2),
        "warmup_cycles": warm + 1,
        "tasks_at_cycle_ends": [end.tasks for end in cycle_ends],
        "task_growth_per_cycle_end": task_growth,
        "tasks": "leak" if tasks_leak else "no leak",
        "tasks_threshold": "any cycle end above the baseline (exact count at a quiet point)",
        "rss_kb_at_cycle_ends": [end.rss_kb for end in cycle_ends],
        "rss_growth_kb": rss_growth,
        "rss_slope_kb_per_min": None if rss_slope is None else round(rss_slope, 1),
        "rss_growth_kb_per_1000_joins": round(1000 * rss_growth / joins_after, 1) if joins_after else None,
        "memory": memory,
        "memory_threshold": f"slope over the cycle ends > {args.rss_slope_limit:g} KiB/min and the last above the baseline",
    }


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    cycle_ends = result["cycle_ends"]
    ends = {end["t"] for end in cycle_ends}
    print(f"airwave soak: {args.channels} channels x (1 host + {args.listeners} churning listeners), "
          f"{args.seconds:g} s, cycles of {args.cycle:g} s, stays {args.stay[0]:g}-{args.stay[1]:g} s")
    print()
    print(f"{'t (s)':>7} {'tasks':>6} {'conns':>6} {'chans':>6} {'members':>8} {'rss_kb':>8} {'log_seq':>8}")
    for s in result["samples"]:
        mark = "  <- cycle end" if s["t"] in ends else ""
        print(f"{s['t']:7.1f} {s.get('tasks', 0):6d} {s.get('connections', 0):6d} {s.get('channels', 0):6d} "
              f"{s.get('members', 0):8d} {s.get('rss_kb', 0):8d} {s.get('log_seq', 0):8d}{mark}")
    print()
    c = result["clients"]
    print("clients:")
    print(f"  joins {c['joins']}, leaves {c['leaves']}, packets sent {c['packets_sent']}, "
          f"packets received {c['packets_received']}")
    rate = c["packets_received"] / c["listener_seconds"] if c["listener_seconds"] else 0.0
    print(f"  listener time {c['listener_seconds']:.0f} s, {rate:.1f} packets per listener-second (50 expected)")
    errors = c["errors"]
    print(f"  errors {sum(errors.values())}" + (f": {errors}" if errors else ""))
    print()
    print("cycle ends (quiet points: only the hosts connected):")
    for end in cycle_ends:
        label = "  baseline (end of warm-up)" if end["cycle"] == result["verdict"]["warmup_cycles"] else ""
        print(f"  cycle {end['cycle']}: t={end['t']:6.1f} s tasks={end['tasks']} rss_kb={end['rss_kb']} "
              f"log_seq={end['log_seq']}{label}")
    v = result["verdict"]
    print()
    print(f"verdict over {v['measured_minutes']} min after warm-up:")
    print(f"  tasks : {v['tasks']} (growth at each cycle end {v['task_growth_per_cycle_end']}; "
          f"threshold: {v['tasks_threshold']})")
    print(f"  memory: {v['memory']} (RSS {v['rss_growth_kb']:+d} KiB, slope {v['rss_slope_kb_per_min']} KiB/min, "
          f"{v['rss_growth_kb_per_1000_joins']} KiB per 1000 joins; threshold: {v['memory_threshold']})")
    srv = result["server"]
    print(f"  server: exit code {srv['exit_code']}, {srv['error_lines']} error lines, "
          f"event log verified: {srv['log_records']} records")
    for line in srv.get("first_error_lines", []):
        print(f"    {line}")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="airwave-soak-")) / "data"
    command = [sys.executable, "-m", "airwave.cli", "serve", "--stats-interval", "1", "--port", "0",
               "--data", str(data), "--fsync", args.fsync]
    encoder = OpusEncoder(32_000)
    packets = [encoder.encode(pcm) for pcm in tone_frames(440.0, 1.0)]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    server = ServerProcess(process)
    exit_code: int | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.read_stderr)
            with trio.fail_after(15):
                await server.listening.wait()
            soak = Soak(args, server, packets)
            with trio.fail_after(args.seconds + 120):
                await soak.run()
            process.send_signal(signal.SIGINT)  # graceful: members told, log flushed
            with trio.fail_after(15):
                exit_code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    records = sum(1 for _ in read_events(data))
    if not args.keep_data:
        shutil.rmtree(data.parent, ignore_errors=True)
    result = {
        "config": {key: value for key, value in vars(args).items()},
        "samples": [{"t": round(s.t, 3), **s.stats} for s in server.samples],
        "cycle_ends": [{**attrs.asdict(end), "t": round(end.t, 3)} for end in soak.cycle_ends],
        "clients": {
            "joins": soak.totals.joins, "leaves": soak.totals.leaves, "packets_sent": soak.totals.packets_sent,
            "packets_received": soak.totals.packets_received, "listener_seconds": round(soak.totals.listener_seconds, 1),
            "errors": dict(soak.totals.errors),
        },
        "server": {"exit_code": exit_code, "error_lines": len(server.error_lines), "log_records": records,
                   "data": str(data) if args.keep_data else None},
        "verdict": verdict(soak.cycle_ends, args),
    }
    if server.error_lines:
        result["server"]["first_error_lines"] = server.error_lines[:10]
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help=f"run length (default 60, at most {MAX_SECONDS:g})")
    parser.add_argument("--channels", type=int, default=2, help="channels, one streaming host each (default 2)")
    parser.add_argument("--listeners", type=int, default=10, help="churning listener slots per channel (default 10)")
    parser.add_argument("--cycle", type=float, default=10.0, help="churn cycle length in seconds (default 10, at least the longest stay + 3)")
    parser.add_argument("--stay", type=float, nargs=2, default=(1.0, 5.0), metavar=("MIN", "MAX"),
                        help="a listener stays a random MIN-MAX seconds (default 1 5)")
    parser.add_argument("--warmup-cycles", type=int, default=1, metavar="N",
                        help="cycles before the baseline; the baseline is the end of cycle N (default 1)")
    parser.add_argument("--rss-slope-limit", type=float, default=512.0, metavar="KIB_PER_MIN",
                        help="RSS growth per minute above which a leak is suspected (default 512)")
    parser.add_argument("--fsync", choices=["always", "batch", "never"], default="batch")
    parser.add_argument("--seed", type=int, default=1, help="random seed for the stays")
    parser.add_argument("--keep-data", action="store_true", help="keep the event log directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS:g}]")
    if args.cycle < args.stay[1] + 3:
        parser.error(f"--cycle must be at least {args.stay[1] + 3:g} s (stays of up to {args.stay[1]:g} s, then leaving and a quiet point)")
    if args.warmup_cycles < 1:
        parser.error("--warmup-cycles must be at least 1")
    if args.channels < 1 or args.listeners < 1:
        parser.error("--channels and --listeners must be at least 1")
    if not 0 < args.stay[0] <= args.stay[1]:
        parser.error("--stay needs 0 < MIN <= MAX")
    return args


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = trio.run(main, args)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result, args)
    leak = result["verdict"]["tasks"] == "leak" or result["verdict"]["memory"] == "leak suspected"
    failed = result["server"]["exit_code"] != 0 or result["server"]["error_lines"] > 0
    return 1 if leak or failed else 0


if __name__ == "__main__":
    sys.exit(run())
