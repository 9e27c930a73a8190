"""Benchmark the media fan-out: one publisher, N listeners, over real WebSockets on loopback.

    python scripts/bench_fanout.py                          # 500 listeners: airwave, naive, floor
    python scripts/bench_fanout.py --listeners 1000 --runs 3 --json
    python scripts/bench_fanout.py --sweep                  # largest N with 0 loss, p99 <= 20 ms
    python scripts/bench_fanout.py --channels 50 --listeners-per-channel 10
    python scripts/bench_fanout.py --listeners 500 --stalled 20
    python scripts/bench_fanout.py --join-storm 1000,2000 --existing 500
    python scripts/bench_fanout.py --listeners 750 --systems airwave --profile 10
    python scripts/bench_fanout.py --channels 10 --listeners-per-channel 50 --systems airwave,recording --runs 3
    python scripts/bench_fanout.py --listeners 1000 --nodes 2 --runs 3   # cluster: 2 nodes over NATS
    python scripts/bench_fanout.py --sweep --nodes 2 --sweep-start 1000  # largest N: one node and the cluster

Each run starts a fresh server as its own process (``airwave serve --port P --data TMPDIR``,
or one of the two baselines in scripts/fanout_baselines.py) pinned to one core, and the load
generator (scripts/fanout_loadgen.py) pinned to the other (--server-cpu, --loadgen-cpu; "none"
leaves a process unpinned). The load generator joins one host
per channel (role custom_role_0, upload true) that sends a real Opus packet every 20 ms, and
N listeners (custom_role_1) through the real join path, all at once; then it idles
(--settle), publishes a warm-up second, and measures a window of --seconds. Every system gets
the same load generator and the same N in the same invocation, and Airwave's CPU per delivery
is printed as ratios to the naive ``send_message`` loop and to the kernel floor.

Figures (docs/performance.md says how each is measured):
  packets_expected/received, loss_ratio   window packets x listeners; received by window end + grace
  latency_ms p50/p99/max                  publisher send -> listener recv (CLOCK_MONOTONIC, one process)
  server_cpu_percent                      /proc/PID/stat utime+stime over the window / wall time
  server_us_per_delivery                  server CPU seconds / media frames received in the window
  server_rss_mb, rss_kb_per_listener      VmRSS at window end; (idle with N - before N) / N
  join_seconds, messages_during_join      first connect -> last join reply; control messages all got

--nodes K (issue 16) adds the system "cluster": a fresh `nats-server -js` and K
`airwave serve --cluster` nodes (all pinned to the server's core, as is nats-server), the
publisher on node0 and the listeners spread over the nodes in turn; one channel. It reports
each node's listeners (loss, latency), each node's CPU per delivery to its own listeners,
nats-server's CPU, and the NATS hop: latency of the listeners on other nodes minus that of
node0's own listeners in the same run, and beside the single-node "airwave" run: each
relaying node's added p50/p99 and CPU per delivery as a ratio (medians of interleaved
rounds, and per round), deliveries per server CPU-second, and the issue's targets (≤ +2 ms
p50, ≤ +5 ms p99, ≤ 1.15× CPU). With --sweep, --nodes K searches the largest N at zero
loss and p99 ≤ 20 ms on every node for one node and for the cluster, their steps
interleaved, no step started after --sweep-budget seconds. Owner failover is measured by
scripts/bench_failover.py.

Every loop is bounded in count and time; children are stopped on exit and on Ctrl-C, and
die with this process (PR_SET_PDEATHSIG). Loopback only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "fanout_loadgen.py"
BASELINES = HERE / "fanout_baselines.py"
# "metrics" is Airwave with --metrics, scraped every second while it runs (issue 17: the hot
# path must not pay for metrics); "recording" is Airwave with every channel's host turning
# recording on (issue 18: recording must not cost the fan-out); each is measured only when
# --systems names it.
SYSTEMS = ("airwave", "metrics", "recording", "naive", "floor", "cluster")
DEFAULT_SYSTEMS = ("airwave", "naive", "floor")

TARGET_P99_MS = 20.0
TARGET_FLOOR_RATIO = 1.25
TARGET_KB_PER_LISTENER = 30.0
TARGET_JOIN_SECONDS = 3.0
# issue 16: a relaying node's listeners over one node's at 1,000 listeners
TARGET_HOP_P50_MS = 2.0
TARGET_HOP_P99_MS = 5.0
TARGET_CLUSTER_CPU_RATIO = 1.15

_children: list[subprocess.Popen] = []


# ---------------------------------------------------------------------- processes


def _child_setup(cpu: int | None) -> Any:
    """preexec_fn: pin to ``cpu``, raise RLIMIT_NOFILE to the hard limit, die with the parent."""

    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass

    return setup


def spawn(argv: list[str], cpu: int | None, **kwargs: Any) -> subprocess.Popen:
    proc = subprocess.Popen(argv, preexec_fn=_child_setup(cpu), start_new_session=True, **kwargs)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen | None, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only this child, by its pid."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(_children):
        stop(proc, grace=1.0)


class Scraper:
    """Fetches the server's /metrics once a second on its own thread, as Prometheus would
    (every 15 s by default): what a scrape costs the server shows in its CPU per delivery."""

    def __init__(self, port: int, interval: float = 1.0) -> None:
        self.port, self.interval = port, interval
        self.scrapes = self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
                    conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
                    response = b""
                    while data := conn.recv(65536):
                        response += data
                ok = response.startswith(b"HTTP/1.1 200")
            except OSError:
                ok = False
            self.scrapes += ok
            self.failures += not ok

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(timeout=10)
        return {"scrapes": self.scrapes, "failures": self.failures}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_busy_cores(seconds: float = 0.5) -> float:
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:8]]
        return sum(parts) - parts[3] - parts[4], sum(parts)

    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (b1 - b0) / os.sysconf("SC_CLK_TCK") / seconds


def wait_quiet(limit: float, verbose: bool) -> float:
    """Wait (at most ``limit`` s) until other processes use < 0.15 core; returns what was seen."""
    deadline = time.monotonic() + limit
    busy = machine_busy_cores()
    while busy > 0.15 and time.monotonic() < deadline:
        if verbose:
            print(f"  (machine busy: {busy:.2f} cores used by other processes; waiting)", file=sys.stderr)
        time.sleep(2.0)
        busy = machine_busy_cores()
    return busy


def ss_snapshot(port: int, stalled_ports: set[int] | None = None) -> dict[str, Any]:
    """Kernel queues of every connection to ``port``: clients' Recv-Q, the server's Send-Q."""
    try:
        out = subprocess.run(
            ["ss", "-tnmH", "state", "established", f"( sport = :{port} or dport = :{port} )"],
            capture_output=True, text=True, timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    client_rq: list[int] = []
    server_sq: list[int] = []
    stalled_server: list[dict[str, int]] = []
    current: tuple[int, int, int, int] | None = None
    for line in out.splitlines():
        if line.startswith(("\t", " ")) and "skmem" in line and current is not None:
            rq, sq, local_port, peer_port = current
            if local_port == port and stalled_ports and peer_port in stalled_ports:
                m = re.search(r"tb(\d+).*?w(\d+)", line)
                stalled_server.append({"send_q": sq, "sndbuf": int(m.group(1)) if m else -1})
            continue
        parts = line.split()
        if len(parts) < 4:
            continue
        rq, sq = int(parts[0]), int(parts[1])
        local_port = int(parts[2].rsplit(":", 1)[1])
        peer_port = int(parts[3].rsplit(":", 1)[1])
        current = (rq, sq, local_port, peer_port)
        if local_port == port:
            if not (stalled_ports and peer_port in stalled_ports):
                server_sq.append(sq)
        elif not (stalled_ports and local_port in stalled_ports):
            client_rq.append(rq)
    snap: dict[str, Any] = {
        "client_recv_q_max": max(client_rq, default=0),
        "client_recv_q_sum": sum(client_rq),
        "server_send_q_max": max(server_sq, default=0),
        "server_send_q_sum": sum(server_sq),
        "sockets": len(client_rq) + len(server_sq),
    }
    if stalled_server:
        snap["stalled_server_send_q"] = {
            "max": max(s["send_q"] for s in stalled_server),
            "sum": sum(s["send_q"] for s in stalled_server),
            "sndbuf_max": max(s["sndbuf"] for s in stalled_server),
        }
    return snap


# ---------------------------------------------------------------------- one run


class RunFailed(Exception):
    pass


# --gc-trace: run the unchanged server under gc.callbacks that log every collection of
# generation 2, and any collection over 1 ms, with its CLOCK_MONOTONIC time and duration.
GC_TRACE = r"""
import gc, sys, time
_start = [0.0]
def _trace(phase, info):
    if phase == "start":
        _start[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _start[0]) * 1000
    if info["generation"] == 2 or ms > 1.0:
        sys.stderr.write("GCTRACE %.6f %d %.3f %d\n" % (time.monotonic(), info["generation"], ms, info["collected"]))
gc.callbacks.append(_trace)
from airwave.cli import main
sys.argv = ["airwave"] + sys.argv[1:]
sys.exit(main())
"""


# --mem-trace: run the unchanged server under tracemalloc; each SIGUSR1 takes a snapshot, and
# from the second on the growth since the first is written to stderr by allocation site.
MEM_TRACE = r"""
import signal, sys, tracemalloc
tracemalloc.start(6)
_snaps = []
def _snap(signum, frame):
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    _snaps.append(snap)
    if len(_snaps) < 2:
        return
    stats = snap.compare_to(_snaps[0], "lineno")
    sys.stderr.write("MEMTRACE total %d %d\n" % (sum(s.size_diff for s in stats), sum(s.count_diff for s in stats)))
    for s in stats[:25]:
        f = s.traceback[0]
        sys.stderr.write("MEMTRACE site %d %d %s:%d\n" % (s.size_diff, s.count_diff, f.filename, f.lineno))
    for s in snap.compare_to(_snaps[0], "filename")[:20]:
        sys.stderr.write("MEMTRACE file %d %d %s\n" % (s.size_diff, s.count_diff, s.traceback[0].filename))
    for s in snap.compare_to(_snaps[0], "traceback")[:8]:
        frames = " <- ".join("%s:%d" % (f.filename.rsplit("/", 2)[-1], f.lineno) for f in s.traceback)
        sys.stderr.write("MEMTRACE stack %d %d %s\n" % (s.size_diff, s.count_diff, frames))
    sys.stderr.flush()
signal.signal(signal.SIGUSR1, _snap)
from airwave.cli import main
sys.argv = ["airwave"] + sys.argv[1:]
sys.exit(main())
"""


def mem_growth(log_path: Path, listeners: int) -> dict[str, Any] | None:
    """The MEMTRACE lines of --mem-trace: Python heap growth per listener, by allocation site."""
    total = None
    sites, stacks, files = [], [], []
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("MEMTRACE "):
            continue
        parts = line.split(" ", 4)
        if parts[1] == "total":
            total = (int(parts[2]), int(parts[3]))
        elif parts[1] == "site":
            where = parts[4].replace(str(Path(sys.prefix)), "<venv>")
            sites.append({"bytes_per_listener": round(int(parts[2]) / listeners), "objects_per_listener":
                          round(int(parts[3]) / listeners, 2), "site": where})
        elif parts[1] == "file":
            where = parts[4].replace(str(Path(sys.prefix)), "<venv>")
            files.append({"bytes_per_listener": round(int(parts[2]) / listeners), "objects_per_listener":
                          round(int(parts[3]) / listeners, 2), "file": where})
        elif parts[1] == "stack":
            stacks.append({"bytes_per_listener": round(int(parts[2]) / listeners), "stack": parts[4]})
    if total is None:
        return None
    return {"python_heap_bytes_per_listener": round(total[0] / listeners),
            "python_objects_per_listener": round(total[1] / listeners, 1), "top_files": files, "top_sites": sites, "top_stacks": stacks}


def server_argv(system: str, port: int, data: Path, log_level: str, gc_trace: bool = False,
                mem_trace: bool = False, metrics_port: int | None = None) -> list[str]:
    if system in ("airwave", "metrics", "recording"):
        rest = ["--log-level", log_level, "serve", "--port", str(port), "--data", str(data)]
        if metrics_port is not None:
            rest += ["--metrics", f"127.0.0.1:{metrics_port}"]
        if mem_trace:
            return [sys.executable, "-c", MEM_TRACE, *rest]
        if gc_trace:
            return [sys.executable, "-c", GC_TRACE, *rest]
        exe = shutil.which("airwave") or str(Path(sys.executable).with_name("airwave"))
        return [exe, *rest]
    return [sys.executable, str(BASELINES), system, "--port", str(port)]


def gc_pauses(log_path: Path, window: list[float] | None) -> dict[str, Any] | None:
    """The GCTRACE lines of --gc-trace that fall in the window: count, total and worst pause."""
    if not window:
        return None
    per_gen: dict[int, list[float]] = {0: [], 1: [], 2: []}
    times = []
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("GCTRACE "):
            continue
        _, t, gen, ms, _collected = line.split()
        if window[0] <= float(t) <= window[1]:
            per_gen[int(gen)].append(float(ms))
            if float(ms) > 5:
                times.append(round((float(t) - window[0]) * 1000, 1))
    return {
        f"gen{g}": {"count": len(v), "total_ms": round(sum(v), 1), "max_ms": round(max(v, default=0), 1)}
        for g, v in per_gen.items()
    } | {"pauses_over_5ms_at_ms": times[:20], "note": "gen0/1 listed only when over 1 ms"}


def recordings_of(data: Path) -> dict[str, Any]:
    """What the recording system's server wrote (read after its graceful stop): recordings,
    finalised ones, frames its recorders dropped (queue full) and bytes on disk."""
    manifests = [json.loads(p.read_text()) for p in data.glob("recordings/*/*/recording.json")]
    files = [p for p in data.glob("recordings/*/*/*.opus")]
    return {
        "recordings": len(manifests),
        "finalised": sum(1 for m in manifests if m.get("finalised")),
        "frames_in": sum(m["statistics"]["frames_in"] for m in manifests),
        "dropped": sum(m["statistics"]["dropped"] for m in manifests),
        "late": sum(m["statistics"]["late"] for m in manifests),
        "opus_files": len(files),
        "opus_bytes": sum(p.stat().st_size for p in files),
    }


class RecorderWorkerWatch:
    """The recording system's worker process (the server's child, started on the first
    recording): pinned away from the fan-out's core as it appears (--recorder-cpu), and its
    CPU over the window, which the server's own figures do not include."""

    def __init__(self, server_pid: int, cpus: set[int] | None) -> None:
        self.server_pid = server_pid
        self.cpus = cpus
        self.pid: int | None = None
        self.cpu_at: list[tuple[float, float]] = []  # (monotonic time, worker CPU seconds)
        self.rss_kb: int | None = None

    def poll(self) -> None:
        if self.pid is not None:
            return
        children: list[int] = []
        for path in Path(f"/proc/{self.server_pid}/task").glob("*/children"):
            try:
                children += [int(c) for c in path.read_text().split()]
            except OSError:
                pass
        if children:
            self.pid = children[0]
            if self.cpus:
                os.sched_setaffinity(self.pid, self.cpus)  # its threads were made on the server's core

    def mark(self) -> None:
        """One reading of the worker's CPU (call at the window's start and at the result)."""
        self.poll()
        if self.pid is None:
            return
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return
        self.cpu_at.append((time.monotonic(), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")))
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            self.rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
        except (OSError, StopIteration):
            pass

    def figures(self, deliveries: int | None) -> dict[str, Any]:
        if len(self.cpu_at) < 2:
            return {"pid": self.pid, "cpu_percent": None}
        (t0, c0), (t1, c1) = self.cpu_at[0], self.cpu_at[-1]
        return {"pid": self.pid, "cpus": sorted(self.cpus) if self.cpus else None,
                "cpu_percent": round(100 * (c1 - c0) / (t1 - t0), 1) if t1 > t0 else None,
                "us_per_delivery": round(1e6 * (c1 - c0) / deliveries, 2) if deliveries else None,
                "rss_mb": round(self.rss_kb / 1024, 1) if self.rss_kb else None}


def recorder_cpus(args: argparse.Namespace) -> set[int] | None:
    """--recorder-cpu: "other" (default) is every core but the server's, else N or none."""
    if args.recorder_cpu == "other":
        if args.server_cpu is None:
            return None
        return set(range(os.cpu_count() or 1)) - {args.server_cpu} or None
    return {args.recorder_cpu} if args.recorder_cpu is not None else None


def wait_listening(proc: subprocess.Popen, log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunFailed(f"server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        if "listening on" in log_path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RunFailed("server did not start listening in time")


def start_cluster(tmp: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, list[subprocess.Popen], list[int]]:
    """nats-server -js and args.nodes cluster nodes, all listening: (nats, nodes, their ports)."""
    nats_bin = shutil.which("nats-server")
    if not nats_bin:
        raise RunFailed("--nodes needs nats-server (Debian: apt-get install nats-server)")
    nats_port = free_port()
    (tmp / "nats").mkdir()
    nats = spawn([nats_bin, "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", str(tmp / "nats")], args.server_cpu,
                 stdout=subprocess.DEVNULL, stderr=open(tmp / "nats.log", "wb"))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", nats_port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or nats.poll() is not None:
                raise RunFailed("nats-server did not start") from None
            time.sleep(0.05)
    nodes, ports = [], []
    for k in range(args.nodes):
        port = free_port()
        log_path = tmp / f"node{k}.log"
        with open(log_path, "wb") as log_file:
            argv = server_argv("airwave", port, tmp / f"data{k}", args.server_log_level)
            node = spawn(argv + ["--cluster", f"nats://127.0.0.1:{nats_port}", "--node", f"node{k}"], args.server_cpu,
                         stdout=subprocess.DEVNULL, stderr=log_file)
        nodes.append(node)
        ports.append(port)
        wait_listening(node, log_path)
    return nats, nodes, ports


def run_once(system: str, scenario: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One fresh server, one load generator, one scenario; returns the flat figures."""
    if args.quiet_wait:
        wait_quiet(args.quiet_wait, args.verbose)
    tmp = Path(tempfile.mkdtemp(prefix=f"fanout-{system}-"))
    port = free_port()
    server_log = tmp / "server.log"
    server = loadgen = profiler = None
    nats: subprocess.Popen | None = None
    nodes: list[subprocess.Popen] = []
    scraper: Scraper | None = None
    try:
        extra: dict[str, Any] = {}
        if system == "cluster":
            nats, nodes, ports = start_cluster(tmp, args)
            server, port, server_log = nodes[0], ports[0], tmp / "node0.log"
            extra = {"ports": ports, "server_pids": [n.pid for n in nodes] + [nats.pid]}
        else:
            with open(server_log, "wb") as log_file:
                metrics_port = free_port() if system == "metrics" else None
                server = spawn(server_argv(system, port, tmp / "data", args.server_log_level, args.gc_trace,
                                           args.mem_trace, metrics_port), args.server_cpu,
                               stdout=subprocess.DEVNULL, stderr=log_file)
            wait_listening(server, server_log)
            if metrics_port is not None:
                scraper = Scraper(metrics_port)
        cfg = dict(scenario, port=port, server_pid=server.pid, server_cpu=args.server_cpu, loadgen_cpu=args.loadgen_cpu,
                   record=system == "recording", **extra)
        worker_watch = RecorderWorkerWatch(server.pid, recorder_cpus(args)) if system == "recording" else None
        if args.mem_trace and system == "airwave":
            cfg["snapshot_pause"] = 8.0  # the load generator idles while the server snapshots its heap
        with open(tmp / "loadgen.err", "wb") as err_file:
            loadgen = spawn([sys.executable, str(LOADGEN), json.dumps(cfg)], args.loadgen_cpu,
                            stdout=subprocess.PIPE, stderr=err_file)
        budget = (float(cfg.get("join_timeout", 60)) * (2 if cfg.get("storm") else 1) + cfg.get("settle", 1)
                  + cfg.get("idle_seconds", 0)
                  + cfg.get("warmup", 1) + cfg.get("seconds", 5) + cfg.get("stall_seconds", 0)
                  + cfg.get("grace", 1) + 60)
        deadline = time.monotonic() + budget
        result: dict[str, Any] | None = None
        ss_at: list[tuple[float, str, set[int] | None]] = []
        snapshots: dict[str, Any] = {}
        buffered = b""
        assert loadgen.stdout is not None
        fd = loadgen.stdout.fileno()
        while result is None:
            now = time.monotonic()
            if now > deadline:
                raise RunFailed(f"load generator did not finish within {budget:.0f} s")
            timeout = min([deadline - now] + [max(0.0, t - now) for t, _, _ in ss_at])
            if worker_watch is not None and worker_watch.pid is None:
                worker_watch.poll()
                timeout = min(timeout, 0.05)  # look again soon: pin it before the window
            ready, _, _ = select.select([fd], [], [], timeout)
            now = time.monotonic()
            for item in [x for x in ss_at if x[0] <= now]:
                ss_at.remove(item)
                snapshots[item[1]] = ss_snapshot(port, item[2])
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                err = (tmp / "loadgen.err").read_text(errors="replace")[-3000:]
                raise RunFailed(f"load generator exited early: {err}")
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                event = json.loads(line)
                if event["event"] == "window":
                    if worker_watch is not None:
                        worker_watch.mark()
                    seconds = event.get("seconds") or 1.0
                    stalled_ports = set(event.get("stalled_ports") or ()) or None
                    # In the grace after the window, not in it: `ss` walks every socket for
                    # some 20-30 ms of a core, and on two cores it takes them from the server's
                    # or the load generator's: the window's worst packets were at its moment.
                    grace = float(scenario.get("grace", 1.0))
                    ss_at.append((now + seconds + min(grace / 2, 0.5), "after_window", stalled_ports))
                    if event.get("stall_at") is not None:
                        ss_at.append((now + event["stall_at"] + event["stall_seconds"] - 0.3, "end_of_stall", stalled_ports))
                    if args.profile and args.profile_phase == "window" and system == "airwave" and profiler is None:
                        profiler = start_profiler(server.pid, args, tmp)
                elif event["event"] == "idle":
                    if args.profile and args.profile_phase == "idle" and system == "airwave" and profiler is None:
                        profiler = start_profiler(server.pid, args, tmp)
                elif event["event"] in ("before_listeners", "listeners_idle"):
                    if args.mem_trace and system == "airwave":
                        server.send_signal(signal.SIGUSR1)
                elif event["event"] == "result":
                    if worker_watch is not None:
                        worker_watch.mark()
                    result = event
        loadgen.wait(timeout=10)
        if profiler is not None:
            profiler.wait(timeout=args.profile + 30)
        server_alive = server.poll() is None
        scrapes = scraper.stop() if scraper is not None else None
        scraper = None
        stop(server)
        figures = figures_of(system, scenario, result, snapshots)
        if scrapes is not None:
            figures["metrics_scrapes"] = scrapes
        figures["server_alive_at_end"] = server_alive
        if system == "recording":
            figures["recordings"] = recordings_of(tmp / "data")
            if worker_watch is not None:
                worker = figures["recorder_worker"] = worker_watch.figures(result.get("deliveries_in_window"))
                if worker["cpu_percent"] is not None and figures.get("background_cpu_percent") is not None:
                    # the loadgen counts the worker as another process: it is the server's
                    figures["background_cpu_percent"] = round(max(0.0, figures["background_cpu_percent"] - worker["cpu_percent"]), 1)
        figures["server_log"] = scan_server_log(server_log)
        if args.mem_trace and system == "airwave":
            figures["memory"] = mem_growth(server_log, figures["listeners"])
        if args.gc_trace and system == "airwave":
            figures["gc"] = gc_pauses(server_log, result.get("t_window"))
        if profiler is not None:
            figures["profile"] = summarize_profile(tmp / "profile.txt", args)
        return figures
    finally:
        if scraper is not None:
            scraper.stop()
        stop(profiler)
        stop(loadgen)
        stop(server)
        for node in nodes:
            stop(node)
        stop(nats)
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        elif args.verbose:
            print(f"  (kept {tmp})", file=sys.stderr)


def scan_server_log(path: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        if "slow consumer" in line:
            counts["slow_consumer_closes"] += 1
        if "timed out" in line:
            counts["heartbeat_timeouts"] += 1
        if " ERROR " in line or "Traceback" in line:
            counts["errors"] += 1
        if " WARNING " in line:
            counts["warnings"] += 1
    return dict(counts)


def figures_of(system: str, scenario: dict[str, Any], r: dict[str, Any], snapshots: dict[str, Any]) -> dict[str, Any]:
    if "error" in r:
        raise RunFailed(f"{system}: {r['error']}")
    groups = r.get("groups", {})
    main = groups.get("listeners") or groups.get("healthy") or groups.get("existing") or {}
    n = int(scenario["channels"]) * int(scenario["listeners_per_channel"])
    wall = r["wall_seconds"]
    cpu = r["server_cpu_seconds"]
    deliveries = r["deliveries_in_window"]
    per_listener = None
    if r.get("rss_idle_kb") and r.get("rss_before_kb") is not None and n:
        per_listener = round((r["rss_idle_kb"] - r["rss_before_kb"]) / n, 2)
    messages = r.get("messages", {})
    figures: dict[str, Any] = {
        "system": system,
        "listeners": n,
        "channels": int(scenario["channels"]),
        "seconds": wall,
        "packets_expected": main.get("packets_expected"),
        "packets_received": main.get("packets_received"),
        "loss_ratio": main.get("loss_ratio"),
        "latency_ms": {k: main.get("latency_ms", {}).get(k) for k in ("p50", "p99", "max")},
        "server_cpu_percent": round(100 * cpu / wall, 1) if wall else None,
        "server_us_per_delivery": round(1e6 * cpu / deliveries, 2) if deliveries else None,
        # the server's main thread only: the fan-out and everything on the trio loop, without
        # worker threads (a recorder's, PBKDF2's)
        "server_main_thread_us_per_delivery": round(1e6 * r["server_main_thread_cpu_seconds"] / deliveries, 2)
        if deliveries and r.get("server_main_thread_cpu_seconds") is not None else None,
        # the server's CPU with the same listeners connected but no media (heartbeat pings,
        # member counts, timers), and the per-delivery cost with that idle rate taken out
        "server_idle_cpu_percent": r.get("idle_cpu_percent"),
        "server_us_per_delivery_above_idle": round(1e6 * (cpu - wall * r["idle_cpu_percent"] / 100) / deliveries, 2)
        if deliveries and r.get("idle_cpu_percent") is not None else None,
        # plus interrupt + softirq time on the server's core: the loopback TCP receive work that
        # the kernel does in the sender's softirq and charges to no process
        "server_core_us_per_delivery": round(1e6 * (cpu + (r.get("server_core") or {}).get("softirq_seconds", 0)) / deliveries, 2)
        if deliveries and r.get("server_core") else None,
        "server_core": r.get("server_core"),
        "loadgen_core": r.get("loadgen_core"),
        "deliveries_per_second": round(deliveries / wall) if wall else None,
        "server_rss_mb": round(r["server_rss_kb"] / 1024, 1) if r.get("server_rss_kb") else None,
        "rss_kb_per_listener": per_listener,
        "join_seconds": r.get("join_seconds"),
        "join_each_ms": r.get("join_each_ms"),
        "join_failures": r.get("join_failures"),
        "join_server_cpu_ms_per_listener": round(1000 * r["join_server_cpu_seconds"] / n, 3)
        if r.get("join_server_cpu_seconds") is not None and n else None,
        "messages_during_join": r.get("join_messages"),
        "messages_during_join_by_type": r.get("join_messages_by_type"),
        "messages_in_settle_after_join": sum(messages.get("settle", {}).values()),
        "loadgen_cpu_percent": r.get("loadgen_cpu_percent"),
        "loadgen_loop_busy_percent": r.get("loadgen_loop_busy_percent"),
        "loadgen_wakeups_per_second": r.get("loadgen_wakeups_per_second"),
        "loadgen_rx_queue": r.get("loadgen_rx_queue"),
        "background_cpu_percent": r.get("background_cpu_percent"),
        "publisher_send_lateness_ms": r.get("publisher", {}).get("send_lateness_ms"),
        "kernel_queues": snapshots,
        "packets_over_20ms": r.get("packets_over_20ms"),
        "packets_in_window": r.get("packets_in_window"),
        "worst_packets": r.get("worst_packets"),
        "groups": groups,
        "connect_errors": r.get("connect_errors"),
    }
    if "stalled" in groups:
        stalled = groups["stalled"]
        figures["stalled"] = {
            "listeners": stalled["listeners"],
            "missing_frames": stalled["missing"],  # TCP loses nothing: every gap is a server drop
            "gap_events": stalled["gap_events"],
            "reorders": stalled["reorders"],
            "torn": stalled["torn"],
            "truncated_at_close": stalled["truncated_at_close"],
            "closed": stalled["closed"],
            "loss_ratio": stalled["loss_ratio"],
            "latency_ms": stalled["latency_ms"],
        }
        figures["stalled_detail"] = r.get("stalled_detail")
    if r.get("servers_cpu_seconds"):
        figures.update(cluster_figures(r, groups, wall))
    if scenario.get("storm"):
        storm_msgs = r.get("storm_messages", 0)
        tail = sum(messages.get("storm_tail", {}).values())
        figures.update({
            "storm_listeners": int(scenario["storm"]),
            "existing_listeners": n,
            "storm_seconds": r.get("storm_seconds"),
            "storm_joined": r.get("storm_joined"),
            "storm_each_ms": r.get("storm_each_ms"),
            "storm_failures": r.get("storm_failures"),
            "storm_messages": storm_msgs,
            "storm_messages_by_type": r.get("storm_messages_by_type"),
            "storm_messages_with_tail": storm_msgs + tail,
            "storm_tail_seconds": scenario.get("storm_tail"),
            "storm_messages_per_joiner": round(storm_msgs / int(scenario["storm"]), 3),
            "storm_server_cpu_seconds": r.get("storm_server_cpu_seconds"),
        })
    return figures


def cluster_figures(r: dict[str, Any], groups: dict[str, Any], wall: float) -> dict[str, Any]:
    """--nodes: each node's listeners and CPU; the whole cluster's loss and CPU per delivery.
    A node's CPU per delivery is its CPU over the deliveries to its own listeners (node0's
    includes publishing each packet to NATS once; the others' receiving it once)."""
    cpus = r["servers_cpu_seconds"]
    nats_cpu = cpus[-1]
    per_node = []
    for k, cpu in enumerate(cpus[:-1]):
        g = groups.get(f"node{k}") or {}
        received = g.get("packets_received") or 0
        per_node.append({
            "node": f"node{k}", "listeners": g.get("listeners"), "loss_ratio": g.get("loss_ratio"),
            "latency_ms": {q: (g.get("latency_ms") or {}).get(q) for q in ("p50", "p99", "max")},
            "cpu_percent": round(100 * cpu / wall, 1) if wall else None,
            "us_per_delivery": round(1e6 * cpu / received, 2) if received else None,
            "deliveries_per_cpu_second": round(received / cpu) if cpu else None,
        })
    expected = sum((groups.get(f"node{k}") or {}).get("packets_expected") or 0 for k in range(len(per_node)))
    received = sum((groups.get(f"node{k}") or {}).get("packets_received") or 0 for k in range(len(per_node)))
    node_cpu = sum(cpus[:-1])
    far = per_node[1] if len(per_node) > 1 else per_node[0]
    return {
        "nodes": per_node,
        "packets_expected": expected,
        "packets_received": received,
        "loss_ratio": round(1 - received / expected, 6) if expected else None,
        "latency_ms": far["latency_ms"],  # node1's listeners: across the NATS hop
        "server_cpu_percent": round(100 * node_cpu / wall, 1) if wall else None,
        "server_us_per_delivery": round(1e6 * node_cpu / received, 2) if received else None,
        "nats_cpu_percent": round(100 * nats_cpu / wall, 1) if wall else None,
        "cluster_us_per_delivery_with_nats": round(1e6 * (node_cpu + nats_cpu) / received, 2) if received else None,
        # what one CPU-second of the servers buys: the nodes alone, and with nats-server's share
        "deliveries_per_cpu_second": round(received / node_cpu) if node_cpu else None,
        "deliveries_per_cpu_second_with_nats": round(received / (node_cpu + nats_cpu)) if node_cpu + nats_cpu else None,
        # the worst node's p99: a cluster holds N only if every node's listeners do
        "worst_node_p99_ms": max((n["latency_ms"]["p99"] for n in per_node if n["latency_ms"]["p99"] is not None), default=None),
        "hop_added_ms": {q: round(far["latency_ms"][q] - per_node[0]["latency_ms"][q], 3)
                         if far["latency_ms"][q] is not None and per_node[0]["latency_ms"][q] is not None else None
                         for q in ("p50", "p99")},
    }


# ---------------------------------------------------------------------- profiling


def start_profiler(pid: int, args: argparse.Namespace, tmp: Path) -> subprocess.Popen | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return None
    argv = [exe, "record", "-p", str(pid), "-d", str(max(1, round(args.profile))), "-r", "200", "-F", "-f", "raw",
            "-o", str(tmp / "profile.txt")] + (["--native"] if args.profile_native else [])
    return spawn(argv, args.loadgen_cpu, stdout=subprocess.DEVNULL, stderr=open(tmp / "py-spy.err", "wb"))


def summarize_profile(path: Path, args: argparse.Namespace, top: int = 18) -> dict[str, Any]:
    """Self and inclusive shares of the sampled (non-idle) time, from py-spy's raw stacks."""
    if not path.exists():
        return {"error": "no profile written"}
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = other_threads = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        weight = int(count)
        frames = [_short_frame(f) for f in stack.split(";")]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if not frames:
            continue
        if any(f.startswith("Thread._bootstrap") for f in frames):
            # trio's idle thread-cache worker (the event log's writer thread) blocked in
            # lock.acquire: py-spy does not see that wait as idle; it is not the event loop.
            other_threads += weight
            continue
        total += weight
        self_counts[frames[-1]] += weight
        for name in set(frames):
            incl_counts[name] += weight
    if args.profile_out:
        shutil.copy(path, args.profile_out)
    if not total:
        return {"error": "no samples of the main thread"}
    return {
        "samples": total,
        "other_thread_samples": other_threads,
        "rate_hz": 200,
        "self_percent": [(name, round(100 * c / total, 1)) for name, c in self_counts.most_common(top)],
        "inclusive_percent": [(name, round(100 * c / total, 1)) for name, c in incl_counts.most_common(top)],
    }


def _short_frame(frame: str) -> str:
    # "send_frame_nowait (airwave/actors/transport.py:249)" -> "send_frame_nowait (transport.py)"
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame.strip())
    if not m:
        return frame.strip()
    return f"{m.group(1)} ({Path(m.group(2)).name})"


# ---------------------------------------------------------------------- aggregation


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric figure over runs (nested dicts, and lists of dicts of equal
    length, too); others from the first run."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        values = [r.get(key) for r in runs]
        if isinstance(value, bool):
            out[key] = all(v for v in values) if key.endswith("alive_at_end") else value
        elif isinstance(value, (int, float)) and all(isinstance(v, (int, float)) for v in values):
            m = statistics.median(values)
            out[key] = round(m, 6) if isinstance(m, float) else m
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in values):
            out[key] = median_of(values)
        elif (isinstance(value, list) and value and all(isinstance(v, list) and len(v) == len(value) for v in values)
              and all(isinstance(item, dict) for v in values for item in v)):
            # a list of per-item figures (the cluster's nodes): item by item, not the first run's
            out[key] = [median_of([v[i] for v in values]) for i in range(len(value))]
        else:
            out[key] = value
    return out


def passes(f: dict[str, Any]) -> bool:
    """Zero loss and p99 <= 20 ms; for a cluster, on every node (its worst node's p99)."""
    p99 = f["worst_node_p99_ms"] if f.get("nodes") else (f.get("latency_ms") or {}).get("p99")
    return f.get("loss_ratio") == 0 and p99 is not None and p99 <= TARGET_P99_MS and not f.get("join_failures")


def cluster_vs_single(results: dict[str, Any]) -> dict[str, Any] | None:
    """The cluster's figures against the single node's of the same invocation (medians of
    interleaved rounds): each relaying node's (every node but node0, the publisher's)
    latency added at p50/p99 and CPU per delivery as a ratio; and per round, so the spread
    shows. None without both systems."""
    air, cluster = results.get("airwave", {}), results.get("cluster", {})
    if not air.get("median") or not cluster.get("median") or not cluster["median"].get("nodes"):
        return None

    def compare(a: dict[str, Any], c: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for node in c["nodes"][1:]:
            lat, base = node["latency_ms"], a["latency_ms"]
            out.append({
                "node": node["node"],
                "p50_added_ms": round(lat["p50"] - base["p50"], 3) if lat["p50"] is not None and base["p50"] is not None else None,
                "p99_added_ms": round(lat["p99"] - base["p99"], 3) if lat["p99"] is not None and base["p99"] is not None else None,
                "cpu_per_delivery_ratio": round(node["us_per_delivery"] / a["server_us_per_delivery"], 3)
                if node["us_per_delivery"] and a["server_us_per_delivery"] else None,
            })
        return out

    rounds = list(zip(air.get("runs") or [air["median"]], cluster.get("runs") or [cluster["median"]]))
    return {"median": compare(air["median"], cluster["median"]), "rounds": [compare(a, c) for a, c in rounds]}


def run_systems(systems: list[str], scenario: dict[str, Any], args: argparse.Namespace,
                label: str) -> dict[str, Any]:
    """--runs rounds of every system (interleaved, so drift hits all alike); medians."""
    per_system: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for k in range(args.runs):
        for system in systems:
            if args.verbose:
                print(f"[{label}] {system} run {k + 1}/{args.runs} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            figures = run_once(system, scenario, args)
            for retry in range(2):
                if (figures.get("background_cpu_percent") or 0) <= args.max_background:
                    break
                if args.verbose:
                    print(f"  (other processes used {figures['background_cpu_percent']}% of a core during the run; "
                          f"running it again)", file=sys.stderr, flush=True)
                figures = run_once(system, scenario, args)
                figures["rerun_for_background"] = retry + 1
            per_system[system].append(figures)
            if args.verbose:
                lat = figures["latency_ms"]
                print(f"  {system}: loss {figures['loss_ratio']} p99 {lat['p99']} ms "
                      f"cpu/delivery {figures['server_us_per_delivery']} us "
                      f"({time.monotonic() - t0:.1f} s)", file=sys.stderr, flush=True)
    out: dict[str, Any] = {}
    for system, runs in per_system.items():
        med = median_of(runs)
        out[system] = {"median": med, "runs": runs if args.runs > 1 else None}
    ratios = {}
    for key, suffix in (("server_us_per_delivery", ""),):
        air = out.get("airwave", {}).get("median", {}).get(key)
        for base in ("naive", "floor"):
            other = out.get(base, {}).get("median", {}).get(key)
            if air and other:
                ratios[f"airwave_over_{base}{suffix}"] = round(air / other, 3)
    with_metrics = out.get("metrics", {}).get("median", {}).get("server_us_per_delivery")
    air = out.get("airwave", {}).get("median", {}).get("server_us_per_delivery")
    if with_metrics and air:
        ratios["metrics_over_airwave"] = round(with_metrics / air, 3)
    recording = out.get("recording", {}).get("median", {})
    airwave_median = out.get("airwave", {}).get("median", {})
    for key in ("server_us_per_delivery", "server_main_thread_us_per_delivery"):
        if recording.get(key) and airwave_median.get(key):
            ratios[f"recording_over_airwave_{key}"] = round(recording[key] / airwave_median[key], 3)
    p99_rec, p99_air = (recording.get("latency_ms") or {}).get("p99"), (airwave_median.get("latency_ms") or {}).get("p99")
    if p99_rec and p99_air:
        ratios["recording_over_airwave_p99"] = round(p99_rec / p99_air, 3)
    if ratios:
        out["ratios"] = ratios
    versus = cluster_vs_single(out)
    if versus is not None:
        out["cluster_vs_single"] = versus
    floor = out.get("floor", {}).get("median", {}).get("server_us_per_delivery")
    if air and floor:
        # Which part moved when a machine differs: the kernel's cost (the floor's send) or
        # Airwave's own above it.
        out["floor_split"] = {"floor_us_per_send": floor, "airwave_above_floor_us": round(air - floor, 3)}
    return out


# ---------------------------------------------------------------------- modes


def scenario_of(args: argparse.Namespace, listeners: int | None = None) -> dict[str, Any]:
    channels = args.channels
    if args.listeners_per_channel is not None:
        per = args.listeners_per_channel
    else:
        total = listeners if listeners is not None else args.listeners
        per = max(1, total // channels)
    return {
        "channels": channels,
        "listeners_per_channel": per,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "settle": args.settle,
        "idle_seconds": args.idle_seconds,
        "grace": args.grace,
        "stalled": args.stalled,
        "stall_after": args.stall_after,
        "stall_seconds": args.stall_seconds,
        "stalled_rcvbuf": args.stalled_rcvbuf,
        "storm": 0,
        "join_timeout": args.join_timeout,
        "poll": args.loadgen_poll,
    }


def mode_standard(args: argparse.Namespace) -> dict[str, Any]:
    scenario = scenario_of(args)
    label = f"{scenario['channels']}x{scenario['listeners_per_channel']}"
    report = {"mode": "standard", "scenario": scenario, "results": run_systems(args.systems, scenario, args, label)}
    report["targets"] = targets_standard(report, args)
    return report


def mode_storm(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(x) for x in args.join_storm.split(",")]
    results = {}
    for n in sizes:
        scenario = scenario_of(args, listeners=args.existing)
        scenario.update(storm=n, stalled=0, storm_tail=args.storm_tail)
        results[str(n)] = run_systems(args.systems, scenario, args, f"storm {n} + {args.existing}")
    report: dict[str, Any] = {"mode": "join-storm", "existing": args.existing, "storm_sizes": sizes, "results": results}
    report["targets"] = targets_storm(report, args)
    return report


def mode_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """The largest N with zero loss and p99 <= 20 ms, per system: doubling from
    --sweep-start until a step fails, then bisecting to --sweep-resolution. With several
    systems (--nodes K: the single node and the cluster) their steps are interleaved, so
    both searches see the same machine over time; no step starts after --sweep-budget
    seconds (the bracket found so far is reported)."""
    if args.systems_given:
        systems = args.systems
    else:
        systems = ["airwave", "cluster"] if args.nodes > 1 else ["airwave"]
    report: dict[str, Any] = {"mode": "sweep", "criterion": f"loss 0 and p99 <= {TARGET_P99_MS} ms"
                              + (" on every node" if "cluster" in systems else ""), "results": {}}
    searches = {system: {"ok": 0, "bad": None, "n": args.sweep_start, "steps": [], "done": False} for system in systems}
    deadline = time.monotonic() + args.sweep_budget
    budget_hit = False
    while not all(search["done"] for search in searches.values()):
        if time.monotonic() > deadline:
            budget_hit = True
            break
        for system, search in searches.items():
            if search["done"]:
                continue
            n = search["n"]
            med = run_systems([system], scenario_of(args, listeners=n), args, f"sweep {system} {n}")[system]["median"]
            good = passes(med)
            lat = med["latency_ms"]
            search["steps"].append({
                "listeners": n, "pass": good, "loss_ratio": med["loss_ratio"], "p50_ms": lat["p50"],
                "p99_ms": med["worst_node_p99_ms"] if med.get("nodes") else lat["p99"],
                "server_cpu_percent": med["server_cpu_percent"], "server_us_per_delivery": med["server_us_per_delivery"],
                "deliveries_per_cpu_second": round(1e6 / med["server_us_per_delivery"]) if med["server_us_per_delivery"] else None,
                "uptime_load": os.getloadavg()[0],
            })
            if good:
                search["ok"] = max(search["ok"], n)
            else:
                search["bad"] = n if search["bad"] is None else min(search["bad"], n)
            ok_n, bad_n = search["ok"], search["bad"]
            if bad_n is None:
                search["n"] = min(n * 2, args.sweep_max)
                search["done"] = n >= args.sweep_max
            else:
                search["n"] = (ok_n + bad_n) // 2 if ok_n else max(1, bad_n // 2)
                search["done"] = (bad_n - ok_n <= max(args.sweep_resolution, ok_n // 10)
                                  or search["n"] in (step["listeners"] for step in search["steps"]))
            search["done"] = search["done"] or len(search["steps"]) >= args.sweep_steps
    for system, search in searches.items():
        report["results"][system] = {"largest_passing": search["ok"], "smallest_failing": search["bad"],
                                     "steps": search["steps"], "finished": search["done"]}
    report["budget_hit"] = budget_hit
    return report


# ---------------------------------------------------------------------- targets


def _t(name: str, figure: Any, met: bool | None) -> dict[str, Any]:
    return {"target": name, "figure": figure, "met": met}


def targets_standard(report: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    res = report["results"]
    out = []
    air = res.get("airwave", {}).get("median")
    if not air:
        return out
    sc = report["scenario"]
    n = air["listeners"]
    lat = air["latency_ms"]
    if args.stalled:
        healthy = air["groups"].get("healthy", {})
        out.append(_t(f"{args.stalled} stalled among {n}: the others lose nothing, p99 <= 20 ms",
                      f"healthy loss {healthy.get('loss_ratio')}, p99 {lat['p99']} ms",
                      healthy.get("loss_ratio") == 0 and lat["p99"] is not None and lat["p99"] <= TARGET_P99_MS))
        st = air.get("stalled", {})
        out.append(_t("stalled listeners: drops counted, no reorders, no torn frames",
                      f"missing {st.get('missing_frames')} (gap events {st.get('gap_events')}), "
                      f"reorders {st.get('reorders')}, torn {st.get('torn')}, closed {st.get('closed')}",
                      st.get("reorders") == 0 and st.get("torn") == 0))
    else:
        where = f"{sc['channels']} channels x (1 host + {sc['listeners_per_channel']})" if sc["channels"] > 1 else f"{n} listeners on one channel"
        out.append(_t(f"{where}: zero loss and p99 <= 20 ms" + (f" (median of {args.runs})" if args.runs > 1 else ""),
                      f"loss {air['loss_ratio']}, p99 {lat['p99']} ms", passes(air)))
    ratio = res.get("ratios", {}).get("airwave_over_floor")
    if ratio is not None:
        floor = res["floor"]["median"]
        per_run = ""
        if args.runs > 1:
            pairs = zip(res["airwave"]["runs"], res["floor"]["runs"])
            per_run = " (per round: " + ", ".join(
                f"{a['server_us_per_delivery'] / b['server_us_per_delivery']:.2f}x" for a, b in pairs
                if a["server_us_per_delivery"] and b["server_us_per_delivery"]) + ")"
        applies = sc["channels"] == 1 and not args.stalled  # the target: one channel, 500 and 1,000
        out.append(_t(f"server CPU per delivery <= {TARGET_FLOOR_RATIO}x the kernel floor at {n}"
                      + ("" if applies else " (for information: the target is for one channel without stalls)"),
                      f"{air['server_us_per_delivery']} us vs floor {floor['server_us_per_delivery']} us = {ratio}x, "
                      f"{res['floor_split']['airwave_above_floor_us']} us above the floor{per_run}; above idle {air['server_us_per_delivery_above_idle']} us = "
                      f"{air['server_us_per_delivery_above_idle'] / floor['server_us_per_delivery']:.2f}x",
                      (ratio <= TARGET_FLOOR_RATIO) if applies else None))
    versus = res.get("cluster_vs_single")
    if versus:
        cluster = res["cluster"]["median"]
        out.append(_t("cluster: zero loss on every node", f"loss {cluster['loss_ratio']}", cluster["loss_ratio"] == 0))
        # A comparison with a single node that lost packets (a machine too busy) proves nothing.
        clean = air["loss_ratio"] == 0 and cluster["loss_ratio"] == 0
        for node in versus["median"]:
            p50, p99, cpu = node["p50_added_ms"], node["p99_added_ms"], node["cpu_per_delivery_ratio"]
            out.append(_t(f"{node['node']} (across NATS): <= +{TARGET_HOP_P50_MS:g} ms p50, <= +{TARGET_HOP_P99_MS:g} ms p99 over one node",
                          f"p50 {p50:+} ms, p99 {p99:+} ms" if p50 is not None and p99 is not None else "-",
                          (p50 is not None and p99 is not None and p50 <= TARGET_HOP_P50_MS and p99 <= TARGET_HOP_P99_MS)
                          if clean else None))
            out.append(_t(f"{node['node']}: CPU per delivery <= {TARGET_CLUSTER_CPU_RATIO}x one node's", f"{cpu}x",
                          (cpu is not None and cpu <= TARGET_CLUSTER_CPU_RATIO) if clean else None))
    kb = air.get("rss_kb_per_listener")
    if kb is not None:
        out.append(_t(f"<= {TARGET_KB_PER_LISTENER:.0f} KB server memory per idle listener", f"{kb} KB", kb <= TARGET_KB_PER_LISTENER))
    return out


def targets_storm(report: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    per_n = []
    for n, res in report["results"].items():
        air = res.get("airwave", {}).get("median")
        if not air:
            continue
        per_n.append((int(n), air))
        out.append(_t(f"{n} listeners join (while {args.existing} listen) in <= {TARGET_JOIN_SECONDS:.0f} s",
                      f"{air['storm_seconds']} s, {air['storm_joined']} joined",
                      air["storm_seconds"] is not None and air["storm_seconds"] <= TARGET_JOIN_SECONDS
                      and air["storm_joined"] == int(n)))
        lat = air["latency_ms"]
        out.append(_t(f"existing listeners during the {n} storm: loss 0, p99 <= 20 ms",
                      f"loss {air['loss_ratio']}, p99 {lat['p99']} ms", passes(air)))
    if len(per_n) >= 2:
        (n1, a1), (n2, a2) = per_n[0], per_n[-1]
        growth = a2["storm_messages"] / a1["storm_messages"] if a1["storm_messages"] else None
        out.append(_t("control messages during the storm grow linearly in N",
                      f"{a1['storm_messages']} for {n1}, {a2['storm_messages']} for {n2}: x{growth:.2f} for x{n2 / n1:.2f} joiners "
                      f"({a1['storm_messages_per_joiner']} and {a2['storm_messages_per_joiner']} per joiner)",
                      growth is not None and growth <= 1.25 * n2 / n1))
    return out


# ---------------------------------------------------------------------- output


def signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.0f}"
    return str(value)


ROWS = [
    ("listeners", lambda f: f["listeners"]),
    ("seconds", lambda f: f["seconds"]),
    ("packets_expected", lambda f: f["packets_expected"]),
    ("packets_received", lambda f: f["packets_received"]),
    ("loss_ratio", lambda f: f["loss_ratio"]),
    ("latency p50 ms", lambda f: f["latency_ms"]["p50"]),
    ("latency p99 ms", lambda f: f["latency_ms"]["p99"]),
    ("latency max ms", lambda f: f["latency_ms"]["max"]),
    ("server_cpu_percent", lambda f: f["server_cpu_percent"]),
    ("server_us_per_delivery", lambda f: f["server_us_per_delivery"]),
    ("  main thread only", lambda f: f.get("server_main_thread_us_per_delivery")),
    ("  above idle", lambda f: f["server_us_per_delivery_above_idle"]),
    ("server idle cpu %", lambda f: f["server_idle_cpu_percent"]),
    ("recorder worker cpu %", lambda f: f["recorder_worker"]["cpu_percent"]),
    ("recorder frames dropped", lambda f: f["recordings"]["dropped"]),
    ("recorder worker rss_mb", lambda f: f["recorder_worker"]["rss_mb"]),
    ("deliveries/s", lambda f: f["deliveries_per_second"]),
    ("server_rss_mb", lambda f: f["server_rss_mb"]),
    ("rss_kb_per_listener", lambda f: f["rss_kb_per_listener"]),
    ("join_seconds", lambda f: f["join_seconds"]),
    ("  server cpu ms per join", lambda f: f["join_server_cpu_ms_per_listener"]),
    ("messages_during_join", lambda f: f["messages_during_join"]),
    ("messages in 1 s after", lambda f: f["messages_in_settle_after_join"]),
    ("loadgen cpu %", lambda f: f["loadgen_cpu_percent"]),
    ("loadgen wake-ups/s", lambda f: f.get("loadgen_wakeups_per_second")),
    ("loadgen rx queue max B", lambda f: (f["loadgen_rx_queue"] or {}).get("total_bytes_max")),
    ("ss client Recv-Q sum B", lambda f: f["kernel_queues"].get("after_window", {}).get("client_recv_q_sum")),
    ("ss client Recv-Q max B", lambda f: f["kernel_queues"].get("after_window", {}).get("client_recv_q_max")),
    ("publisher late p99 ms", lambda f: (f["publisher_send_lateness_ms"] or {}).get("p99")),
    ("background cpu %", lambda f: f["background_cpu_percent"]),
]

STORM_ROWS = [
    ("storm_listeners", lambda f: f["storm_listeners"]),
    ("existing_listeners", lambda f: f["existing_listeners"]),
    ("storm_seconds", lambda f: f["storm_seconds"]),
    ("storm_joined", lambda f: f["storm_joined"]),
    ("join each p99 ms", lambda f: (f["storm_each_ms"] or {}).get("p99")),
    ("storm_messages", lambda f: f["storm_messages"]),
    ("  per joiner", lambda f: f["storm_messages_per_joiner"]),
    ("  with tail", lambda f: f["storm_messages_with_tail"]),
    ("existing loss_ratio", lambda f: f["loss_ratio"]),
    ("existing p99 ms", lambda f: f["latency_ms"]["p99"]),
    ("existing max ms", lambda f: f["latency_ms"]["max"]),
    ("server cpu during storm s", lambda f: f["storm_server_cpu_seconds"]),
    ("loadgen cpu %", lambda f: f["loadgen_cpu_percent"]),
    ("loadgen wake-ups/s", lambda f: f.get("loadgen_wakeups_per_second")),
    ("background cpu %", lambda f: f["background_cpu_percent"]),
]


def table(results: dict[str, Any], rows: list[Any]) -> str:
    systems = [s for s in SYSTEMS if s in results]
    width = max(len(name) for name, _ in rows) + 2
    lines = [" " * width + "".join(f"{s:>14}" for s in systems)]
    for name, get in rows:
        cells = []
        for s in systems:
            try:
                cells.append(fmt(get(results[s]["median"])))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"{name:<{width}}" + "".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    mode = report["mode"]
    runs = f", median of {args.runs} runs" if args.runs > 1 else ""
    if mode == "standard":
        sc = report["scenario"]
        print(f"\nfan-out: {sc['channels']} channel(s) x (1 host + {sc['listeners_per_channel']} listeners), "
              f"{sc['seconds']} s window{runs}")
        print(table(report["results"], ROWS))
        ratios = report["results"].get("ratios", {})
        if ratios:
            print("\nairwave CPU per delivery (server utime+stime / deliveries): "
                  + ", ".join(f"{v}x {k.split('_over_')[1]}" for k, v in ratios.items() if k.startswith("airwave_over_")))
        if "metrics_over_airwave" in ratios:
            print(f"with --metrics, scraped every second: {ratios['metrics_over_airwave']}x airwave's CPU per delivery")
        if "recording_over_airwave_server_us_per_delivery" in ratios:
            rec = report["results"]["recording"]["median"].get("recordings") or {}
            print(f"with every channel recording: {ratios['recording_over_airwave_server_us_per_delivery']}x airwave's "
                  f"server CPU per delivery (recorder threads included), "
                  f"{ratios.get('recording_over_airwave_server_main_thread_us_per_delivery')}x "
                  f"on the fan-out's main thread, {ratios.get('recording_over_airwave_p99')}x the p99; "
                  f"recorders: {rec.get('recordings')} recordings, {rec.get('finalised')} finalised, "
                  f"{rec.get('dropped')} of {rec.get('frames_in')} frames dropped")
        split = report["results"].get("floor_split")
        if split:
            print(f"the floor's send costs {split['floor_us_per_send']} us here (kernel + one Python call); "
                  f"airwave's own cost above it: {split['airwave_above_floor_us']} us per delivery")
        air = report["results"].get("airwave", {}).get("median", {})
        for system in SYSTEMS:
            med = report["results"].get(system, {}).get("median")
            if med and med.get("worst_packets"):
                worst = ", ".join(f"{w['max_latency_ms']}@{w['at_ms']:.0f}" for w in med["worst_packets"][:6])
                print(f"{system}: {med['packets_over_20ms']}/{med['packets_in_window']} packets reached some listener"
                      f" after > 20 ms; worst (ms@ms into the window): {worst}")
        if air.get("gc"):
            g = air["gc"]
            print(f"airwave GC in the window: gen2 {g['gen2']}, gen1 > 1 ms {g['gen1']}, gen0 > 1 ms {g['gen0']};"
                  f" pauses > 5 ms at {g['pauses_over_5ms_at_ms']} ms")
        if air.get("stalled"):
            st = air["stalled"]
            print(f"\nstalled listeners ({st['listeners']}, stall {args.stall_seconds} s from {args.stall_after} s into the window):"
                  f" missing {st['missing_frames']} in {st['gap_events']} gaps, reorders {st['reorders']},"
                  f" torn {st['torn']}, truncated at close {st['truncated_at_close']}, closed {st['closed']},"
                  f" p99 {st['latency_ms']['p99']} ms max {st['latency_ms']['max']} ms")
            q = air["kernel_queues"].get("end_of_stall", {}).get("stalled_server_send_q")
            if q:
                print(f"  server-side kernel send queue of the stalled sockets at the end of the stall: "
                      f"max {q['max']} B, sum {q['sum']} B (SO_SNDBUF up to {q['sndbuf_max']} B)")
            print(f"  server log: {air.get('server_log')}")
            detail = air.get("stalled_detail") or []
            print("  each stalled listener: received/expected gaps(missing) reorders torn closed")
            cells = [f"{d['user_id']}: {d['received']}/{d['expected']} {d['gap_events']}({d['missing']}) {d['reorders']} "
                     f"{d['torn']} {d['closed'] or '-'}" for d in detail]
            for i in range(0, len(cells), 3):
                print("    " + " | ".join(cells[i:i + 3]))
        if air.get("profile"):
            print_profile(air["profile"])
        if air.get("memory"):
            m = air["memory"]
            print(f"\nairwave Python heap growth per listener (tracemalloc): {m['python_heap_bytes_per_listener']} B in "
                  f"{m['python_objects_per_listener']} objects; top sites (bytes/listener):")
            for site in m["top_sites"][:15]:
                print(f"  {site['bytes_per_listener']:>7}  {site['objects_per_listener']:>6} obj  {site['site']}")
            print("by file (bytes/listener):")
            for item in m["top_files"][:15]:
                print(f"  {item['bytes_per_listener']:>7}  {item['objects_per_listener']:>6} obj  {item['file']}")
        cluster = report["results"].get("cluster", {}).get("median")
        if cluster and cluster.get("nodes"):
            print(f"\ncluster of {len(cluster['nodes'])} nodes over NATS (publisher on node0; nats-server "
                  f"{cluster['nats_cpu_percent']}% of a core, {cluster['cluster_us_per_delivery_with_nats']} us per delivery "
                  f"with it):")
            print(f"  {'node':<7}{'listeners':>10}{'loss':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'cpu %':>8}{'us/delivery':>13}"
                  f"{'per cpu-s':>11}")
            for n in cluster["nodes"]:
                lat = n["latency_ms"]
                print(f"  {n['node']:<7}{fmt(n['listeners']):>10}{fmt(n['loss_ratio']):>10}{fmt(lat['p50']):>9}"
                      f"{fmt(lat['p99']):>9}{fmt(lat['max']):>9}{fmt(n['cpu_percent']):>8}{fmt(n['us_per_delivery']):>13}"
                      f"{fmt(n.get('deliveries_per_cpu_second')):>11}")
            print(f"  deliveries per server CPU-second: {fmt(cluster.get('deliveries_per_cpu_second'))} (nodes), "
                  f"{fmt(cluster.get('deliveries_per_cpu_second_with_nats'))} (with nats-server); the single node "
                  f"{fmt(round(1e6 / air['server_us_per_delivery']) if air.get('server_us_per_delivery') else None)}")
            hop = cluster["hop_added_ms"]
            print(f"  the NATS hop (node1's listeners minus node0's, same run): p50 {signed(hop['p50'])} ms, p99 {signed(hop['p99'])} ms")
            versus = report["results"].get("cluster_vs_single")
            if versus:
                for k, node in enumerate(versus["median"]):
                    per_round = ", ".join(f"{r[k]['p50_added_ms']:+.2f}/{r[k]['p99_added_ms']:+.2f}" for r in versus["rounds"]
                                          if r[k]["p50_added_ms"] is not None and r[k]["p99_added_ms"] is not None)
                    print(f"  {node['node']}'s listeners minus the single node's (same invocation): p50 {signed(node['p50_added_ms'])} ms, "
                          f"p99 {signed(node['p99_added_ms'])} ms (rounds p50/p99: {per_round}); CPU per delivery "
                          f"{fmt(node['cpu_per_delivery_ratio'])}x the single node's")
    elif mode == "join-storm":
        print(f"\njoin storm: N listeners join at once while {report['existing']} listen{runs}")
        for n, res in report["results"].items():
            print(f"\n-- storm of {n}")
            print(table(res, STORM_ROWS))
    elif mode == "sweep":
        print(f"\nsweep: largest N with {report['criterion']}{runs}")
        if report.get("budget_hit"):
            print(f"(stopped by --sweep-budget {args.sweep_budget:g} s: a search not finished reports its bracket so far)")
        for system, res in report["results"].items():
            print(f"\n{system}: largest passing {res['largest_passing']}, smallest failing {res['smallest_failing']}"
                  + ("" if res["finished"] else " (not finished)"))
            for step in res["steps"]:
                print(f"  N={step['listeners']:>5}  {'pass' if step['pass'] else 'FAIL'}  loss {fmt(step['loss_ratio'])}"
                      f"  p50 {fmt(step['p50_ms'])} ms  p99 {fmt(step['p99_ms'])} ms  cpu {fmt(step['server_cpu_percent'])}%"
                      f"  {fmt(step['server_us_per_delivery'])} us/delivery  {fmt(step['deliveries_per_cpu_second'])}/cpu-s"
                      f"  (load {step['uptime_load']:.2f})")
    if report.get("targets"):
        print("\ntargets:")
        for t in report["targets"]:
            mark = "MET " if t["met"] else ("MISS" if t["met"] is False else "info")
            print(f"  [{mark}] {t['target']}: {t['figure']}")


def print_profile(profile: dict[str, Any]) -> None:
    if "error" in profile:
        print(f"\nprofile: {profile['error']}")
        return
    print(f"\nprofile of the airwave server's event loop thread ({profile['samples']} non-idle samples at"
          f" {profile.get('rate_hz')} Hz; % of those samples):")
    print("  self time                                          | inclusive")
    selfs, incl = profile["self_percent"], profile["inclusive_percent"]
    for i in range(max(len(selfs), len(incl))):
        a = f"{selfs[i][1]:5.1f}% {selfs[i][0][:44]}" if i < len(selfs) else ""
        b = f"{incl[i][1]:5.1f}% {incl[i][0][:50]}" if i < len(incl) else ""
        print(f"  {a:<51}| {b}")


# ---------------------------------------------------------------------- main


def cpu_option(text: str) -> int | None:
    """A core number for --server-cpu/--loadgen-cpu, or "none": no pinning, the scheduler
    places the process (a smoke test on a shared machine, where pinned cores may be busy)."""
    if text.lower() == "none":
        return None
    try:
        cpu = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a core number or 'none', not {text!r}") from None
    if cpu < 0:
        raise argparse.ArgumentTypeError(f"a core number or 'none', not {text!r}")
    return cpu


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listeners", type=int, default=500, help="listeners in total (default 500)")
    p.add_argument("--channels", type=int, default=1, help="channels at once, each 1 host + N/C listeners")
    p.add_argument("--listeners-per-channel", type=int, help="overrides --listeners / --channels")
    p.add_argument("--seconds", type=float, default=5.0, help="measuring window (default 5)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--settle", type=float, default=1.0, help="idle seconds after the joins (RSS read at the end)")
    p.add_argument("--idle-seconds", type=float, default=2.0, help="server CPU measured this long with listeners idle")
    p.add_argument("--grace", type=float, default=1.0, help="late frames of window packets still count this long")
    p.add_argument("--runs", type=int, default=1, help="repeat each system K times and report medians")
    p.add_argument("--systems", default=None, help="comma list of airwave,metrics,recording,naive,floor (default airwave,naive,floor; sweep: airwave; metrics: airwave with --metrics scraped every second; recording: airwave with every channel recording)")
    p.add_argument("--sweep", action="store_true", help="find the largest N with zero loss and p99 <= 20 ms")
    p.add_argument("--sweep-start", type=int, default=250)
    p.add_argument("--sweep-max", type=int, default=4000)
    p.add_argument("--sweep-steps", type=int, default=8, help="at most this many N tried per system")
    p.add_argument("--sweep-resolution", type=int, default=50)
    p.add_argument("--sweep-budget", type=float, default=600.0, metavar="S",
                   help="start no sweep step after S seconds (default 600); the bracket so far is reported")
    p.add_argument("--stalled", type=int, default=0, help="this many listeners stall (tiny SO_RCVBUF, stop reading)")
    p.add_argument("--stall-after", type=float, default=1.0, help="seconds into the window the stall starts")
    p.add_argument("--stall-seconds", type=float, default=6.0)
    p.add_argument("--stalled-rcvbuf", type=int, default=4096)
    p.add_argument("--join-storm", help="N[,N2,...]: N listeners join at once while --existing listen")
    p.add_argument("--existing", type=int, default=500)
    p.add_argument("--storm-tail", type=float, default=1.0, help="the storm window runs on this long after the last join")
    p.add_argument("--join-timeout", type=float, default=60.0)
    p.add_argument("--profile", type=float, default=0, metavar="S", help="py-spy the airwave server for S seconds of the window")
    p.add_argument("--profile-out", help="copy py-spy's raw collapsed stacks here")
    p.add_argument("--profile-phase", choices=["window", "idle"], default="window",
                   help="profile the measuring window (default) or the idle phase (set --idle-seconds >= --profile)")
    p.add_argument("--profile-native", action="store_true", help="py-spy --native: C frames too (sock.send's syscall)")
    p.add_argument("--gc-trace", action="store_true", help="run airwave under gc.callbacks and report GC pauses in the window")
    p.add_argument("--mem-trace", action="store_true",
                   help="run airwave under tracemalloc; report Python heap growth per listener by site (slow)")
    p.add_argument("--max-background", type=float, default=20.0,
                   help="re-run (at most twice) a run during which other processes used more than this %% of a core")
    p.add_argument("--server-cpu", type=cpu_option, default=0, metavar="N|none",
                   help="pin the server to core N (default 0); none: no pinning")
    p.add_argument("--loadgen-cpu", type=cpu_option, default=1, metavar="N|none",
                   help="pin the load generator (and this process) to core N (default 1); none: no pinning")
    p.add_argument("--recorder-cpu", type=lambda t: "other" if t == "other" else cpu_option(t), default="other",
                   metavar="N|none|other", help="recording system: pin the server's recording worker process to core N; "
                   "other (default): every core but --server-cpu's; none: leave it where it was made (the server's core)")
    p.add_argument("--loadgen-poll", choices=("block", "spin"), default="block",
                   help="spin: the load generator never sleeps while publishers run, so no server send() pays for waking it")
    p.add_argument("--server-log-level", default="INFO", help="airwave serve --log-level (default INFO, as shipped)")
    p.add_argument("--quiet-wait", type=float, default=30.0, help="wait up to S s for other processes to go quiet before each run")
    p.add_argument("--nodes", type=int, default=1, metavar="K",
                   help="also run the system 'cluster': K airwave serve --cluster nodes on a fresh nats-server, listeners spread over them")
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object (the table goes to stderr)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    args.systems_given = args.systems is not None
    if args.nodes > 1 and not args.systems_given:
        args.systems = "airwave,cluster"  # the single node beside the cluster, in the same run
    args.systems = (args.systems or ",".join(DEFAULT_SYSTEMS)).split(",")
    if "cluster" in args.systems and args.nodes < 2:
        p.error("the 'cluster' system needs --nodes K with K >= 2")
    for s in args.systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}")
    if args.runs < 1 or args.runs > 15:
        p.error("--runs must be 1..15")
    if args.stalled and args.stall_seconds >= 9:
        print("note: a stall of 9 s or more outlasts the server's heartbeat timeout (9 s)", file=sys.stderr)
    args.verbose = not args.quiet
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("warning: fewer than 2 cores; server and load generator share one", file=sys.stderr)
        args.server_cpu = args.loadgen_cpu = None
    elif args.loadgen_cpu is not None:
        os.sched_setaffinity(0, {args.loadgen_cpu})  # this process idles on the load generator's core

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (a background job)
    started = time.time()
    try:
        if args.join_storm:
            report = mode_storm(args)
        elif args.sweep:
            report = mode_sweep(args)
        else:
            report = mode_standard(args)
    except KeyboardInterrupt:
        print("interrupted; children stopped", file=sys.stderr)
        return 130
    except RunFailed as exc:
        print(f"bench_fanout: run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all()
    report["machine"] = {"cores": os.cpu_count(), "python": sys.version.split()[0],
                         "server_cpu": args.server_cpu, "loadgen_cpu": args.loadgen_cpu,
                         "server_log_level": args.server_log_level}
    report["command"] = " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))
    report["elapsed_seconds"] = round(time.time() - started, 1)
    if args.json:
        real_stdout = sys.stdout
        sys.stdout = sys.stderr
        print_report(report, args)
        sys.stdout = real_stdout
        print(json.dumps(report))
    else:
        print_report(report, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
