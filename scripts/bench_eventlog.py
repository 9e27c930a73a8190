"""Benchmark the event log: appends/s per fsync mode, and replay events/s.

    python scripts/bench_eventlog.py [--events N] [--json]

Appends: --tasks concurrent tasks (64) each append single events (~130-byte records)
until N events are written; every mode writes N events except "always" (one fsync per
append), which writes min(N, --always-events). Replay: read_events over a log of
--replay-events events, against a naive baseline measured in the same run (read a
header, zlib.crc32, msgpack.unpackb, build a small attrs object, per record). Every figure
is the median of --repeat runs. Files go to a temporary directory under --dir.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import attrs
import msgpack
import trio

from airwave.actors.log import EventLog, FsyncMode, read_events
from airwave.actors.log.format import encode_record, mask_crc

TARGET_BATCH_APPENDS_PER_S = 50_000
TARGET_REPLAY_EVENTS_PER_S = 150_000


def make_event(i: int) -> dict[str, Any]:
    """A participant_joined event of realistic size (~130 bytes as a record)."""
    return {
        "type": "participant_joined",
        "time": 1764000000.123 + i * 0.001,
        "channel": "room1",
        "number": 3,
        "user_id": f"user-{i:06d}",
        "role": 4096,
        "display_name": "Listener",
    }


# ---------------------------------------------------------------------- appends


async def append_run(directory: Path, mode: FsyncMode, events: int, tasks: int) -> dict[str, Any]:
    log, _ = EventLog.open(directory, mode)
    per_task = [events // tasks + (1 if t < events % tasks else 0) for t in range(tasks)]

    async def appender(task: int, count: int) -> None:
        append = log.append
        for i in range(count):
            await append([make_event(task * 1_000_000 + i)])

    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        start = time.perf_counter()
        async with trio.open_nursery() as workers:
            for task, count in enumerate(per_task):
                workers.start_soon(appender, task, count)
        elapsed = time.perf_counter() - start
        stats = log.statistics()
        await log.aclose()
    return {
        "events": events,
        "seconds": elapsed,
        "appends_per_s": events / elapsed,
        "fsyncs": stats.fsyncs,
        "groups": stats.groups,
        "mean_group": stats.appends / stats.groups,
        "record_bytes": stats.bytes_written / stats.records,
    }


def bench_appends(root: Path, mode: FsyncMode, events: int, tasks: int, repeat: int) -> dict:
    runs = []
    for rep in range(repeat):
        directory = root / f"append-{mode.value}-{rep}"
        runs.append(trio.run(append_run, directory, mode, events, tasks))
    median = statistics.median(r["appends_per_s"] for r in runs)
    return {
        "mode": mode.value,
        "events": events,
        "tasks": tasks,
        "appends_per_s": median,
        "runs_appends_per_s": [round(r["appends_per_s"]) for r in runs],
        "mean_group": statistics.median(r["mean_group"] for r in runs),
        "fsyncs": statistics.median(r["fsyncs"] for r in runs),
        "record_bytes": runs[0]["record_bytes"],
    }


# ---------------------------------------------------------------------- replay


@attrs.frozen
class NaiveRecord:
    seq: int
    type: str
    body: dict


def naive_replay(directory: Path) -> int:
    """The straightforward reader the fast path is measured against."""
    count = 0
    for path in sorted(directory.glob("events-*.log")):
        with open(path, "rb") as file:
            while True:
                header = file.read(8)
                if len(header) < 8:
                    break
                length, stored = struct.unpack("<II", header)
                body = file.read(length)
                if len(body) < length or mask_crc(zlib.crc32(body)) != stored:
                    break
                value = msgpack.unpackb(body, raw=False, strict_map_key=True)
                NaiveRecord(seq=value["seq"], type=value["type"], body=value)
                count += 1
    return count


def time_it(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def write_replay_log(directory: Path, events: int) -> int:
    directory.mkdir(parents=True)
    data = b"".join(
        encode_record({"seq": i + 1, **make_event(i)}) for i in range(events)
    )
    (directory / "events-00000001.log").write_bytes(data)
    return len(data)


def bench_replay(root: Path, events: int, repeat: int) -> dict:
    directory = root / "replay"
    size = write_replay_log(directory, events)

    def fast() -> None:
        collections.deque(read_events(directory), maxlen=0)

    def fast_with_objects() -> None:
        for value in read_events(directory):
            NaiveRecord(seq=value["seq"], type=value["type"], body=value)

    # The floor: msgpack decoding alone, bodies back to back in memory (no framing, no CRC,
    # no file read). Shows how much of read_events' time is left to the framing loop.
    blob = b"".join(
        msgpack.packb({"seq": i + 1, **make_event(i)}, use_bin_type=True) for i in range(events)
    )

    def msgpack_floor() -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=len(blob))
        unpacker.feed(blob)
        collections.deque(unpacker, maxlen=0)

    assert sum(1 for _ in read_events(directory)) == events
    assert naive_replay(directory) == events
    variants = {"read_events": fast, "read_events+attrs": fast_with_objects,
                "naive": lambda: naive_replay(directory), "floor": msgpack_floor}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm the page cache and the allocator
    for _ in range(repeat):  # interleaved, so a noisy neighbour hits every variant alike
        for name, fn in variants.items():
            times[name].append(time_it(fn))
    results = {name: events / statistics.median(t) for name, t in times.items()}
    return {
        "events": events,
        "file_bytes": size,
        "read_events_per_s": results["read_events"],
        "read_events_with_attrs_per_s": results["read_events+attrs"],
        "naive_per_s": results["naive"],
        "msgpack_floor_per_s": results["floor"],
        "speedup_vs_naive": results["read_events"] / results["naive"],
    }


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000,
                        help="events appended per run (batch, never modes)")
    parser.add_argument("--always-events", type=int, default=2_000,
                        help="cap for the 'always' mode (one fsync per append)")
    parser.add_argument("--tasks", type=int, default=64, help="concurrent appending tasks")
    parser.add_argument("--replay-events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to put the temporary log files (default: system temp)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-eventlog-", dir=args.dir) as tmp:
        root = Path(tmp)
        appends = [
            bench_appends(root, mode, min(args.events, args.always_events)
                          if mode is FsyncMode.ALWAYS else args.events,
                          args.tasks, args.repeat)
            for mode in (FsyncMode.ALWAYS, FsyncMode.BATCH, FsyncMode.NEVER)
        ]
        replay = bench_replay(root, args.replay_events, max(args.repeat, 5))
        filesystem = os.statvfs(root)

    batch = next(a for a in appends if a["mode"] == "batch")
    result = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "block_size": filesystem.f_bsize,
        "append": appends,
        "replay": replay,
        "targets": {
            "batch_appends_per_s": TARGET_BATCH_APPENDS_PER_S,
            "batch_met": batch["appends_per_s"] >= TARGET_BATCH_APPENDS_PER_S,
            "replay_events_per_s": TARGET_REPLAY_EVENTS_PER_S,
            "replay_met": replay["read_events_per_s"] >= TARGET_REPLAY_EVENTS_PER_S,
        },
    }
    if args.json:
        print(json.dumps(result, indent=None))
        return 0

    print(f"event log benchmark (Python {result['python']}, {result['cpus']} CPUs; "
          f"median of {args.repeat} runs for appends, {max(args.repeat, 5)} for replay)")
    print()
    print(f"{'mode':<8}{'events':>9}{'tasks':>7}{'appends/s':>12}{'fsyncs':>9}"
          f"{'mean group':>12}{'record B':>10}   runs")
    for a in appends:
        print(f"{a['mode']:<8}{a['events']:>9}{a['tasks']:>7}{a['appends_per_s']:>12,.0f}"
              f"{a['fsyncs']:>9.0f}{a['mean_group']:>12.1f}{a['record_bytes']:>10.0f}   "
              f"{a['runs_appends_per_s']}")
    print()
    print(f"replay of {replay['events']:,} events ({replay['file_bytes'] / 2**20:.1f} MiB):")
    print(f"  read_events                  {replay['read_events_per_s']:>12,.0f} events/s")
    print(f"  read_events + attrs object   {replay['read_events_with_attrs_per_s']:>12,.0f}"
          " events/s")
    print(f"  naive loop (+ attrs object)  {replay['naive_per_s']:>12,.0f} events/s")
    print(f"  msgpack decode alone (floor) {replay['msgpack_floor_per_s']:>12,.0f} events/s")
    print(f"  read_events / naive          {replay['speedup_vs_naive']:>12.2f}x")
    print()
    t = result["targets"]
    print(f"targets: batch >= {t['batch_appends_per_s']:,}/s: "
          f"{'met' if t['batch_met'] else 'NOT met'}; replay >= "
          f"{t['replay_events_per_s']:,}/s: {'met' if t['replay_met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
