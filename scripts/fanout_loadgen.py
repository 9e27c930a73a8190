"""Load generator for scripts/bench_fanout.py: publishers and listeners over real WebSockets.

    python scripts/fanout_loadgen.py SCENARIO_JSON

One process, one thread, one ``select.epoll`` loop over raw non-blocking stdlib sockets,
so that it costs a few microseconds per received frame and is never the bottleneck
(bench_fanout.py reports its CPU and its sockets' receive queues to prove it):

- Every client does the real join path: TCP connect, the WebSocket upgrade (the server's
  Sec-WebSocket-Accept is checked), ``hello``, then ``join`` (hosts: role custom_role_0,
  upload true; listeners: custom_role_1, upload false). Requests are the bytes
  ``airwave.protocol.encode`` writes, masked per RFC 6455; pings are answered with pongs.
- One publisher per channel sends a real Opus packet every 20 ms: a 440 Hz tone encoded once
  with ``airwave.media.OpusEncoder`` (50 packets, cycled by seq). Latency uses a send table
  rather than a stamp in the payload, so the Opus bytes stay untouched: the publisher records
  ``time.monotonic_ns()`` under the frame's seq just before handing it to the kernel, and a
  listener subtracts it from ``time.monotonic_ns()`` taken right after the ``recv_into`` that
  returned the frame. Publisher and listeners live in this one process, so they share the
  clock trivially (CLOCK_MONOTONIC). A frame is checked whole: WebSocket header, ext 2
  header, the sender's sid, and the payload byte for byte against the packet sent under that
  seq; anything else is a torn frame.
- Reads are bulk: ``recv_into`` a 256 KiB buffer, then a minimal parse of the unmasked server
  frames (only control messages are decoded with msgpack).

The scenario (JSON, see ``DEFAULTS``) says how many channels, listeners per channel, which
listeners stall and for how long, and whether a join storm runs. With ``ports`` (a cluster's
nodes, bench_fanout.py --nodes) the hosts join the first node and the listeners are spread
over all of them in turn, each node's listeners a latency group of their own (``node0``,
``node1``, ...), so the cross-node hop is measured beside the publisher's own node in the
same run; ``server_pids`` are the processes whose CPU the window measures one by one. Progress events and the
result are JSON lines on stdout; the last line is ``{"event": "result", ...}``.
"""

from __future__ import annotations

import array
import base64
import errno
import fcntl
import hashlib
import json
import os
import resource
import select
import socket
import struct
import sys
import termios
import time
from collections import Counter
from typing import Any

import msgpack

DEFAULTS: dict[str, Any] = {
    "port": 8765,
    "ports": None,  # a cluster's nodes: hosts on the first, listeners spread over all
    "server_pid": 0,
    "server_pids": None,  # the processes whose CPU the window reports one by one (a cluster's nodes)
    "channels": 1,
    "listeners_per_channel": 100,
    "stalled": 0,  # listeners (spread over channels) that stop reading during the window
    "stall_after": 1.0,  # seconds into the window
    "stall_seconds": 4.0,
    "stalled_rcvbuf": 4096,  # SO_RCVBUF asked for on stalled listeners (the kernel doubles it)
    "settle": 1.0,  # idle seconds after the joins, before RSS is read
    "idle_seconds": 2.0,  # then the server's CPU is measured with every listener idle (no media)
    "warmup": 1.0,  # publishing before the window opens
    "seconds": 5.0,  # the measuring window
    "grace": 1.0,  # after the window: frames of window packets arriving later are lost
    "storm": 0,  # join-storm mode: this many listeners join at once while the others listen
    "storm_tail": 1.0,  # the storm window ends this long after the last storm join reply
    "join_timeout": 60.0,
    "samples_per_second": 2,  # receive-queue samples (SIOCINQ) per second of the window
    "max_latency_samples": 2_000_000,
    # "spin": while publishing, poll epoll without sleeping, so no send() of the server has to
    # wake this process (on loopback the sender pays for the receiver's wake-up; see --loadgen-poll)
    "poll": "block",
}

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PERIOD_NS = 20_000_000  # one 20 ms Opus packet per period
FRAME_SAMPLES = 960
HOST_ROLE = 4096  # custom_role_0
AUDIENCE_ROLE = 8192  # custom_role_1
RECV_BUFFER = 256 * 1024
MAX_CATCH_UP = 5  # packets a late publisher sends at once before it gives up on the schedule

EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
EPOLLERR, EPOLLHUP = select.EPOLLERR, select.EPOLLHUP

# connection states
CONNECTING, UPGRADING, HELLO, JOINING, JOINED, CLOSED, FAILED = range(7)
monotonic_ns = time.monotonic_ns


def log(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def mask_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A final, masked client frame (RFC 6455 5.3: clients must mask)."""
    n = len(payload)
    key = os.urandom(4)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 0x10000:
        header = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
    if n:
        stream = (key * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    else:
        masked = b""
    return header + key + masked


def proc_cpu_seconds(pid: int) -> float:
    """CPU time of a whole process (all threads), in nanosecond resolution.

    Read from the process's CPU-time clock (the scheduler's exact runtime; the clock id is
    Linux's MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)). /proc/PID/stat, the fallback, counts
    in 10 ms ticks: +-2 ticks is +-3 % of a 5 s window at 12 % CPU.
    """
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        pass
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU time of one thread of ``pid`` (default its main thread, where the fan-out runs; a
    recorder's worker threads do not), in nanoseconds: the first field of
    /proc/PID/task/TID/schedstat. (A thread CPU-time clock of another process is refused.)"""
    with open(f"/proc/{pid}/task/{tid or pid}/schedstat", "rb") as f:
        return int(f.read().split()[0]) / 1e9


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def core_times() -> dict[str, list[float]]:
    """Per core (and "cpu" for all): [tasks (user+nice+system), irq, softirq, idle (+iowait),
    steal] in seconds, from /proc/stat. Interrupt and softirq time is not charged to any
    process's utime/stime on this kernel, so a sender's loopback TCP work done in softirq
    (the receivers' TCP input) shows only here."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *rest = line.split()
            v = [int(x) for x in rest[:8]]
            out[name] = [(v[0] + v[1] + v[2]) / hz, v[5] / hz, v[6] / hz, (v[3] + v[4]) / hz, v[7] / hz]
    return out


def percentiles(values: array.array) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "samples": 0}
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return round(ordered[min(n - 1, int(q * n))] / 1e6, 3)

    return {"p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1] / 1e6, 3), "samples": n}


class Channel:
    __slots__ = (
        "host", "index", "listeners", "n_counted", "name", "next_send", "packets", "publishing",
        "send_ns", "seq", "sid_bytes", "counted", "sent", "late_ns", "seq_max", "window_seqs",
    )

    def __init__(self, index: int, packets: list[bytes]) -> None:
        self.index = index
        self.name = f"bench-{index}"
        self.host: Conn | None = None
        self.listeners: list[Conn] = []
        self.packets = packets
        self.send_ns = [0] * 65536  # monotonic ns each seq was handed to the kernel
        self.counted = bytearray(65536)  # 1 for seqs sent while the window was open
        self.n_counted = 0
        self.seq_max = [0] * 65536  # worst latency (ns) any listener saw for each seq
        self.window_seqs: list[int] = []
        self.seq = 0
        self.sid_bytes = b""
        self.publishing = False
        self.next_send = 0
        self.sent = 0
        self.late_ns = array.array("q")


class Conn:
    __slots__ = (
        "ch", "closed_how", "desync", "fd", "gap_events", "group", "is_host", "key", "last_seq",
        "lat", "missing", "out", "recv_counted", "recv_media", "reorders", "rest", "sock",
        "stalled", "state", "t_connect", "t_joined", "torn", "truncated", "user_id", "join_error",
        "rcvbuf", "recording", "port",
    )

    def __init__(self, ch: Channel, user_id: str, group: str, is_host: bool) -> None:
        self.ch = ch
        self.user_id = user_id
        self.group = group
        self.is_host = is_host
        self.state = CONNECTING
        self.sock: socket.socket | None = None
        self.fd = -1
        self.rest = b""
        self.out = b""
        self.key = b""
        self.t_connect = 0
        self.t_joined = 0
        self.stalled = False
        self.desync = False
        self.last_seq = -1
        self.recv_media = 0
        self.recv_counted = 0
        self.missing = 0
        self.gap_events = 0
        self.reorders = 0
        self.torn = 0
        self.truncated = 0
        self.lat: array.array | None = None
        self.closed_how = ""
        self.join_error = ""
        self.rcvbuf = 0
        self.recording = False  # the host's enable_record was answered (cfg "record")
        self.port = 0  # 0: the load generator's first port


class LoadGen:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.spin = cfg.get("poll", "block") == "spin"
        self.port = int(cfg["port"])
        self.ports = [int(p) for p in cfg.get("ports") or [self.port]]
        self.server_pids = [int(p) for p in cfg.get("server_pids") or []]
        self.server_pid = int(cfg["server_pid"])
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.buf = bytearray(RECV_BUFFER)
        self.mv = memoryview(self.buf)
        self.packets = self._opus_packets()
        self.channels = [Channel(i, self.packets) for i in range(int(cfg["channels"]))]
        self.msg_phase = "setup"
        self.msgs: dict[str, Counter[str]] = {}
        self.pings = Counter()
        self.lat_groups: dict[str, array.array] = {}
        self.window_deliveries = 0  # media frames received while the CPU window is open
        self.counting_deliveries = False
        self.inq_samples: list[tuple[int, int]] = []
        self.connect_errors = Counter()
        self.loop_busy_ns = 0
        self.wakeups = 0  # epoll waits that returned events
        self.ignored_max = [0] * 65536
        self.level = 255
        self.any_publishing = False
        self.window_open = False
        self.sample_at = 0
        self.sample_step = 0
        self.sampled: list[Conn] = []
        self.maxevents = 64

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def _opus_packets() -> list[bytes]:
        from airwave.media import OpusEncoder, tone_frames

        encoder = OpusEncoder()
        return [encoder.encode(pcm) for pcm in tone_frames(440.0, 1.0)]

    def _level(self) -> int:
        from airwave.media import audio_level, tone_frames

        return audio_level(next(iter(tone_frames(440.0, 0.02))))

    def requests(self, conn: Conn) -> tuple[bytes, bytes]:
        from airwave.protocol import Hello, Join, encode

        hello = encode(Hello(1, 1, "bench-fanout"))
        join = encode(
            Join(
                2,
                conn.ch.name,
                conn.user_id,
                display_name=conn.user_id,
                role=HOST_ROLE if conn.is_host else AUDIENCE_ROLE,
                upload=conn.is_host,
            )
        )
        return mask_frame(hello), mask_frame(join)

    # ------------------------------------------------------------------ connections

    def connect(self, conn: Conn) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if conn.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, conn.rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock = sock
        conn.fd = sock.fileno()
        conn.t_connect = monotonic_ns()
        err = sock.connect_ex(("127.0.0.1", conn.port or self.port))
        if err not in (0, errno.EINPROGRESS):
            self.connect_errors[errno.errorcode.get(err, str(err))] += 1
            conn.state = FAILED
            conn.closed_how = f"connect:{errno.errorcode.get(err, err)}"
            sock.close()
            conn.sock = None
            return
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, EPOLLOUT)

    def write(self, conn: Conn, data: bytes) -> None:
        sock = conn.sock
        if sock is None:
            return
        if conn.out:
            conn.out += data
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.close(conn, f"send:{exc.errno}")
            return
        if sent < len(data):
            conn.out = data[sent:]
            if not conn.stalled:
                self.ep.modify(conn.fd, EPOLLIN | EPOLLOUT)

    def on_writable(self, conn: Conn) -> None:
        if conn.state == CONNECTING:
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.connect_errors[errno.errorcode.get(err, str(err))] += 1
                self.close(conn, f"connect:{errno.errorcode.get(err, err)}", failed=True)
                return
            conn.state = UPGRADING
            self.ep.modify(conn.fd, EPOLLIN)
            conn.key = base64.b64encode(os.urandom(16))
            request = (
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (conn.port or self.port, conn.key)
            )
            self.write(conn, request)
            return
        if conn.out:
            data, conn.out = conn.out, b""
            self.write(conn, data)
            if not conn.out and conn.sock is not None and not conn.stalled:
                self.ep.modify(conn.fd, EPOLLIN)

    def close(self, conn: Conn, how: str, failed: bool = False) -> None:
        if conn.sock is None:
            return
        if conn.rest and conn.state == JOINED:
            conn.truncated += 1  # a frame cut short by the end of the stream
        try:
            self.ep.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        self.conns.pop(conn.fd, None)
        conn.sock.close()
        conn.sock = None
        conn.closed_how = conn.closed_how or how
        conn.state = FAILED if failed or conn.state != JOINED else CLOSED

    def stall(self, conn: Conn, on: bool) -> None:
        conn.stalled = on
        if conn.sock is None:
            return
        # Level-triggered epoll: no interest while stalled (errors are still reported).
        self.ep.modify(conn.fd, 0 if on else (EPOLLIN | (EPOLLOUT if conn.out else 0)))

    # ------------------------------------------------------------------ reading

    def on_readable(self, conn: Conn) -> None:
        buf = self.buf
        rest = conn.rest
        start = len(rest)
        if start:
            buf[:start] = rest
        try:
            n = conn.sock.recv_into(self.mv[start:])
        except BlockingIOError:
            return
        except OSError as exc:
            self.close(conn, f"recv:{errno.errorcode.get(exc.errno, exc.errno)}")
            return
        t = monotonic_ns()
        if n == 0:
            self.close(conn, "eof")
            return
        end = start + n
        if conn.state == UPGRADING:
            head_end = bytes(buf[:end]).find(b"\r\n\r\n")
            if head_end < 0:
                conn.rest = bytes(buf[:end])
                return
            self.on_upgrade(conn, bytes(buf[:head_end]))
            if conn.sock is None:
                return
            pos = head_end + 4
        else:
            pos = 0
        if conn.desync:
            conn.rest = b""
            return
        pos = self.parse(conn, buf, pos, end, t)
        conn.rest = bytes(buf[pos:end]) if pos < end else b""

    def parse(self, conn: Conn, buf: bytearray, pos: int, end: int, t: int) -> int:
        """Consume whole server frames from buf[pos:end]; return where the first partial one starts."""
        ch = conn.ch
        send_ns = ch.send_ns
        seq_max = ch.seq_max if conn.group != "stalled" else self.ignored_max  # spikes of healthy listeners only
        counted = ch.counted
        packets = ch.packets
        n_packets = len(packets)
        sid = ch.sid_bytes
        while pos + 2 <= end:
            b0 = buf[pos]
            length = buf[pos + 1]
            if length & 0x80:
                self.torn(conn, "masked server frame")
                return end
            if length < 126:
                p = pos + 2
            elif length == 126:
                if pos + 4 > end:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                p = pos + 4
            else:
                if pos + 10 > end:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                p = pos + 10
            q = p + length
            if q > end:
                break
            if b0 == 0x82 and buf[p] == 0xC8:
                # media: C8 len(2) 02 (len counts what follows the type) | sid(4) | seq(2) | ts(4) | level(1) | opus
                seq = (buf[p + 8] << 8) | buf[p + 9]
                if (
                    length < 16
                    or buf[p + 3] != 2
                    or ((buf[p + 1] << 8) | buf[p + 2]) != length - 4
                    or buf[p + 4 : p + 8] != sid
                    or buf[p + 15 : q] != packets[seq % n_packets]
                ):
                    self.torn(conn, "bad media frame")
                    return end
                conn.recv_media += 1
                if counted[seq]:
                    conn.recv_counted += 1
                    lat = conn.lat
                    if lat is not None:
                        d = t - send_ns[seq]
                        lat.append(d)
                        if d > seq_max[seq]:
                            seq_max[seq] = d
                if self.counting_deliveries:
                    self.window_deliveries += 1
                last = conn.last_seq
                if last >= 0:
                    delta = (seq - last) & 0xFFFF
                    if delta == 1:
                        conn.last_seq = seq
                    elif delta == 0 or delta >= 0x8000:
                        conn.reorders += 1  # a duplicate or an older frame after a newer one
                    else:
                        conn.gap_events += 1
                        conn.missing += delta - 1
                        conn.last_seq = seq
                else:
                    conn.last_seq = seq
            elif b0 == 0x82:
                self.on_control(conn, bytes(buf[p:q]))
                if conn.sock is None:
                    return end
            elif b0 == 0x89:
                self.pings[self.msg_phase] += 1
                self.write(conn, mask_frame(bytes(buf[p:q]), 0xA))
            elif b0 == 0x88:
                code = (buf[p] << 8) | buf[p + 1] if length >= 2 else 1005
                self.write(conn, mask_frame(bytes(buf[p : p + 2]) if length >= 2 else b"", 0x8))
                self.close(conn, f"close:{code}")
                return end
            elif b0 == 0x8A:
                pass  # unsolicited pong
            else:
                self.torn(conn, f"unexpected frame byte {b0:#x}")
                return end
            pos = q
        return pos

    def torn(self, conn: Conn, why: str) -> None:
        conn.torn += 1
        conn.desync = True  # the stream can no longer be framed: stop reading it
        conn.closed_how = conn.closed_how or f"torn:{why}"

    def on_upgrade(self, conn: Conn, head: bytes) -> None:
        lines = head.split(b"\r\n")
        accept = base64.b64encode(hashlib.sha1(conn.key + GUID).digest())
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        if not lines[0].startswith(b"HTTP/1.1 101") or headers.get(b"sec-websocket-accept") != accept:
            conn.join_error = f"upgrade refused: {lines[0][:60]!r}"
            self.close(conn, "upgrade", failed=True)
            return
        conn.state = HELLO
        hello, _ = self.requests(conn)
        self.write(conn, hello)

    def on_control(self, conn: Conn, data: bytes) -> None:
        try:
            message = msgpack.unpackb(data)
            kind = message.get("type", "?")
        except Exception:
            self.torn(conn, "undecodable control message")
            return
        counts = self.msgs.get(self.msg_phase)
        if counts is None:
            counts = self.msgs[self.msg_phase] = Counter()
        counts[kind] += 1
        if kind != "reply":
            return
        reason = message.get("reason", -1)
        if conn.state == HELLO and message.get("id") == 1:
            if reason != 0:
                conn.join_error = f"hello refused: {reason} {message.get('message')}"
                self.close(conn, "hello", failed=True)
                return
            conn.state = JOINING
            self.write(conn, self.requests(conn)[1])
        elif conn.state == JOINING and message.get("id") == 2:
            if reason != 0:
                conn.join_error = f"join refused: {reason} {message.get('message')}"
                self.close(conn, "join", failed=True)
                return
            conn.state = JOINED
            conn.t_joined = monotonic_ns()
            if conn.is_host:
                result = message.get("result") or {}
                conn.ch.sid_bytes = struct.pack(">I", int(result.get("self_sid", 0)))
                if self.cfg.get("record"):
                    from airwave.protocol import EnableRecord, encode

                    self.write(conn, mask_frame(encode(EnableRecord(3, True))))
        elif conn.is_host and message.get("id") == 3:
            if reason != 0:
                conn.join_error = f"enable_record refused: {reason} {message.get('message')}"
                self.close(conn, "record", failed=True)
                return
            conn.recording = True

    # ------------------------------------------------------------------ the loop

    def publish_due(self, now_ns: int) -> int:
        """Send every packet that is due; returns the next due time."""
        next_due = now_ns + 10**9
        for ch in self.channels:
            if not ch.publishing or ch.host is None or ch.host.sock is None:
                continue
            burst = 0
            while ch.next_send <= now_ns and burst < MAX_CATCH_UP:
                seq = ch.seq
                packet = ch.packets[seq % len(ch.packets)]
                body = struct.pack(">BHbHIB", 0xC8, 7 + len(packet), 1, seq, (seq * FRAME_SAMPLES) & 0xFFFFFFFF, self.level) + packet
                frame = mask_frame(body)
                t = monotonic_ns()
                ch.send_ns[seq] = t
                ch.seq_max[seq] = 0
                ch.late_ns.append(t - ch.next_send)
                if self.window_open:
                    ch.counted[seq] = 1
                    ch.n_counted += 1
                    ch.window_seqs.append(seq)
                else:
                    ch.counted[seq] = 0
                self.write(ch.host, frame)
                ch.seq = (seq + 1) & 0xFFFF
                ch.sent += 1
                ch.next_send += PERIOD_NS
                burst += 1
            if ch.next_send <= now_ns:  # hopelessly behind: skip ahead, counted as lateness
                ch.next_send = now_ns + PERIOD_NS
            next_due = min(next_due, ch.next_send)
        return next_due

    def run(self, seconds: float, until: Any = None) -> bool:
        """Serve sockets and the publishers for ``seconds`` or until ``until()`` is true."""
        deadline = monotonic_ns() + int(seconds * 1e9)
        poll = self.ep.poll
        conns = self.conns
        next_due = self.publish_due(monotonic_ns()) if self.any_publishing else deadline
        while True:
            now = monotonic_ns()
            if self.any_publishing and now >= next_due:
                next_due = self.publish_due(now)
                now = monotonic_ns()
            if until is not None and until():
                return True
            if now >= deadline:
                return False
            wake = min(deadline, next_due) if self.any_publishing else deadline
            if self.sample_at and self.sample_at < wake:
                wake = self.sample_at
            timeout = 0.0 if self.spin and self.any_publishing else max(0.0, (wake - now) / 1e9)
            events = poll(timeout, self.maxevents)
            busy_from = monotonic_ns()
            if events:
                self.wakeups += 1
            for fd, mask in events:
                conn = conns.get(fd)
                if conn is None:
                    continue
                if conn.state == CONNECTING:
                    self.on_writable(conn)
                    continue
                if mask & (EPOLLIN | EPOLLERR | EPOLLHUP):
                    self.on_readable(conn)
                if mask & EPOLLOUT and conn.sock is not None:
                    self.on_writable(conn)
            if self.sample_at and busy_from >= self.sample_at:
                self.sample_queues()
            self.loop_busy_ns += monotonic_ns() - busy_from

    # ------------------------------------------------------------------ measurements

    def sample_queues(self) -> None:
        """Bytes waiting in the kernel for this process to read, over every healthy listener."""
        total = peak = 0
        arg = bytearray(4)
        for conn in self.sampled:
            if conn.sock is None or conn.stalled:
                continue
            fcntl.ioctl(conn.fd, termios.FIONREAD, arg)
            pending = int.from_bytes(arg, sys.byteorder)
            total += pending
            if pending > peak:
                peak = pending
        self.inq_samples.append((total, peak))
        self.sample_at += self.sample_step

    # ------------------------------------------------------------------ the scenario

    def scenario(self) -> dict[str, Any]:
        cfg = self.cfg
        per_channel = int(cfg["listeners_per_channel"])
        storm = int(cfg["storm"])
        self.level = self._level()
        result: dict[str, Any] = {}
        pid = self.server_pid

        # 1. hosts (publishers) join first, one per channel
        self.msg_phase = "hosts"
        for ch in self.channels:
            ch.host = Conn(ch, f"host-{ch.index}", "host", True)
            self.connect(ch.host)
        self.maxevents = len(self.conns) + 64
        record = bool(cfg.get("record"))

        def hosts_ready() -> bool:
            return all(c.host.state in (CLOSED, FAILED) or (c.host.state == JOINED and (c.host.recording or not record)) for c in self.channels)

        ok = self.run(self.cfg["join_timeout"], hosts_ready)
        if not ok or any(c.host.state != JOINED for c in self.channels):
            return {"error": "hosts failed to join: " + "; ".join(c.host.join_error or c.host.closed_how for c in self.channels)}
        self.run(0.3)
        result["rss_before_kb"] = proc_rss_kb(pid) if pid else None
        pause = float(cfg.get("snapshot_pause", 0))
        if pause:
            log("before_listeners")
            self.run(pause)

        # 2. listeners: all connect at once; a fraction are stalled-to-be (tiny receive buffer)
        stalled_total = int(cfg["stalled"])
        groups = "existing" if storm else "listeners"
        listeners: list[Conn] = []
        for ch in self.channels:
            for i in range(per_channel):
                listeners.append(Conn(ch, f"l{ch.index}-{i}", groups, False))
        for k in range(stalled_total):  # spread the stalled ones evenly over the list
            conn = listeners[(k * len(listeners)) // max(1, stalled_total)]
            conn.group = "stalled"
            conn.rcvbuf = int(cfg["stalled_rcvbuf"])
        if stalled_total:
            for conn in listeners:
                if conn.group == "listeners":
                    conn.group = "healthy"
        if len(self.ports) > 1:  # a cluster: listeners spread over the nodes in turn
            for i, conn in enumerate(listeners):
                conn.port = self.ports[i % len(self.ports)]
                if conn.group in ("listeners", "healthy"):
                    conn.group = f"node{i % len(self.ports)}"
        result.update(self.join(listeners, "join"))
        if "error" in result:
            return result
        for ch in self.channels:
            ch.listeners = [c for c in listeners if c.ch is ch]
        self.msg_phase = "settle"
        self.run(float(cfg["settle"]))
        result["rss_idle_kb"] = proc_rss_kb(pid) if pid else None
        result["listeners_joined"] = sum(1 for c in listeners if c.state == JOINED)
        if pause:
            log("listeners_idle")
            self.run(pause * 2)
        idle = float(cfg["idle_seconds"])
        if idle > 0 and pid:
            self.msg_phase = "idle"
            log("idle", seconds=idle)
            cpu0, t0 = proc_cpu_seconds(pid), monotonic_ns()
            self.run(idle)
            cpu1, t1 = proc_cpu_seconds(pid), monotonic_ns()
            result["idle_cpu_percent"] = round(100 * (cpu1 - cpu0) / ((t1 - t0) / 1e9), 2)

        # 3. publish: warm-up, then the window
        self.msg_phase = "run"
        start = monotonic_ns()
        spread = PERIOD_NS // max(1, len(self.channels))
        for ch in self.channels:  # publishers spread evenly over the 20 ms period
            ch.publishing = True
            ch.next_send = start + ch.index * spread
        self.any_publishing = True
        self.run(float(cfg["warmup"]))
        if storm:
            result.update(self.join_storm(listeners, storm))
        else:
            result.update(self.window(listeners))
        for ch in self.channels:
            ch.publishing = False
        self.any_publishing = False
        result["messages"] = {phase: dict(counts) for phase, counts in self.msgs.items()}
        result["pings"] = dict(self.pings)
        result["publisher"] = self.publisher_stats()
        return result

    def join(self, conns: list[Conn], phase: str) -> dict[str, Any]:
        """Connect ``conns`` at once; wait until all have their join reply (or failed)."""
        self.msg_phase = phase
        cpu0 = proc_cpu_seconds(self.server_pid) if self.server_pid else 0.0
        t0 = monotonic_ns()
        for conn in conns:
            self.connect(conn)
        self.maxevents = len(self.conns) + 64
        pending = [c for c in conns]

        def done() -> bool:
            nonlocal pending
            if any(c.state < JOINED for c in pending[:64]):
                return False
            pending = [c for c in pending if c.state < JOINED]
            return not pending

        finished = self.run(float(self.cfg["join_timeout"]), done)
        t1 = monotonic_ns()
        cpu1 = proc_cpu_seconds(self.server_pid) if self.server_pid else 0.0
        joined = [c for c in conns if c.state == JOINED]
        failures = Counter(c.join_error or c.closed_how or "timeout" for c in conns if c.state != JOINED)
        join_lat = sorted(c.t_joined - c.t_connect for c in joined)
        counts = self.msgs.get(phase, Counter())
        out = {
            f"{phase}_seconds": round((t1 - t0) / 1e9, 3),
            f"{phase}_joined": len(joined),
            f"{phase}_failures": dict(failures),
            f"{phase}_each_ms": {
                "p50": round(join_lat[len(join_lat) // 2] / 1e6, 1) if join_lat else None,
                "p99": round(join_lat[min(len(join_lat) - 1, int(0.99 * len(join_lat)))] / 1e6, 1) if join_lat else None,
                "max": round(join_lat[-1] / 1e6, 1) if join_lat else None,
            },
            f"{phase}_messages": sum(counts.values()),
            f"{phase}_messages_by_type": dict(counts),
            f"{phase}_server_cpu_seconds": round(cpu1 - cpu0, 3),
        }
        if not finished:
            out[f"{phase}_timed_out"] = True
        if not joined:
            out["error"] = f"no listener joined: {dict(failures)}"
        return out

    def open_window(self, sampled: list[Conn]) -> dict[str, Any]:
        for conn in sampled:
            conn.recv_counted = 0
        for ch in self.channels:
            ch.window_seqs = []
        self.window_open = True
        self.counting_deliveries = True
        self.window_deliveries = 0
        self.sampled = sampled
        self.sample_step = int(1e9 / max(1, int(self.cfg["samples_per_second"])))
        self.sample_at = monotonic_ns() + self.sample_step // 2
        state = {
            "t": monotonic_ns(),
            "cpu": proc_cpu_seconds(self.server_pid) if self.server_pid else 0.0,
            "main_cpu": thread_cpu_seconds(self.server_pid) if self.server_pid else 0.0,
            "cpus": [proc_cpu_seconds(pid) for pid in self.server_pids],
            "self_cpu": sum(os.times()[:2]),
            "cores": core_times(),
            "busy": self.loop_busy_ns,
            "wakeups": self.wakeups,
        }
        return state

    def close_window(self, state: dict[str, Any]) -> dict[str, Any]:
        t = monotonic_ns()
        cpu = proc_cpu_seconds(self.server_pid) if self.server_pid else 0.0
        main_cpu = thread_cpu_seconds(self.server_pid) if self.server_pid else 0.0
        cpus = [proc_cpu_seconds(pid) for pid in self.server_pids]
        self_cpu = sum(os.times()[:2])
        cores = core_times()
        self.window_open = False
        self.counting_deliveries = False
        self.sample_at = 0
        wall = (t - state["t"]) / 1e9
        server_cpu = cpu - state["cpu"]
        lg_cpu = self_cpu - state["self_cpu"]
        delta = {k: [a - b for a, b in zip(v, state["cores"].get(k, v))] for k, v in cores.items()}
        tasks_all = delta["cpu"][0]
        server_core = delta.get(f"cpu{self.cfg.get('server_cpu')}")
        loadgen_core = delta.get(f"cpu{self.cfg.get('loadgen_cpu')}")

        def core(d: list[float] | None) -> dict[str, float] | None:
            if d is None:
                return None
            return {"tasks_percent": round(100 * d[0] / wall, 1), "irq_percent": round(100 * d[1] / wall, 1),
                    "softirq_percent": round(100 * d[2] / wall, 1), "idle_percent": round(100 * d[3] / wall, 1),
                    "softirq_seconds": round(d[2] + d[1], 3)}
        inq_total = [s[0] for s in self.inq_samples]
        inq_peak = [s[1] for s in self.inq_samples]
        self.inq_samples = []
        return {
            "t_window": [state["t"] / 1e9, t / 1e9],
            "server_rss_kb": proc_rss_kb(self.server_pid) if self.server_pid else None,
            "wall_seconds": round(wall, 3),
            "server_cpu_seconds": round(server_cpu, 3),
            "server_main_thread_cpu_seconds": round(main_cpu - state["main_cpu"], 3),
            "servers_cpu_seconds": [round(b - a, 3) for a, b in zip(state["cpus"], cpus)],
            "deliveries_in_window": self.window_deliveries,
            "loadgen_cpu_percent": round(100 * lg_cpu / wall, 1),
            "loadgen_loop_busy_percent": round(100 * (self.loop_busy_ns - state["busy"]) / 1e9 / wall, 1),
            # every wake-up of a sleeping receiver is paid for in the sender's send() on loopback
            "loadgen_wakeups_per_second": round((self.wakeups - state["wakeups"]) / wall),
            # task time of every other process on the machine (both cores), in % of one core
            # (a cluster's server processes, node0's included, all count as the server's)
            "background_cpu_percent": round(max(0.0, 100 * (tasks_all - (sum(cpus) - sum(state["cpus"]) if cpus else server_cpu) - lg_cpu) / wall), 1),
            "server_core": core(server_core),
            "loadgen_core": core(loadgen_core),
            "softirq_percent_all": round(100 * (delta["cpu"][1] + delta["cpu"][2]) / wall, 1),
            "loadgen_rx_queue": {
                "samples": len(inq_total),
                "total_bytes_max": max(inq_total, default=0),
                "total_bytes_mean": round(sum(inq_total) / len(inq_total)) if inq_total else 0,
                "one_socket_bytes_max": max(inq_peak, default=0),
            },
        }

    def packet_stats(self, state: dict[str, Any]) -> dict[str, Any]:
        """Per window packet, the worst latency any listener saw: the spikes, and when."""
        worst = []
        for ch in self.channels:
            for seq in ch.window_seqs:
                worst.append((ch.seq_max[seq], ch.send_ns[seq], ch.index, seq))
        over = sum(1 for w in worst if w[0] > 20_000_000)
        worst.sort(reverse=True)
        return {
            "packets_over_20ms": over,
            "packets_in_window": len(worst),
            "worst_packets": [
                {"at_ms": round((sent - state["t"]) / 1e6, 1), "channel": c, "seq": seq, "max_latency_ms": round(m / 1e6, 2)}
                for m, sent, c, seq in worst[:12]
            ],
        }

    def window(self, listeners: list[Conn]) -> dict[str, Any]:
        cfg = self.cfg
        stalled = [c for c in listeners if c.group == "stalled"]
        seconds = float(cfg["seconds"])
        stall_after = float(cfg["stall_after"])
        stall_seconds = float(cfg["stall_seconds"])
        if stalled:
            seconds = max(seconds, stall_after + stall_seconds + 2.0)
        cap = int(cfg["max_latency_samples"])
        for conn in listeners:
            group = self.lat_groups.setdefault(conn.group, array.array("q"))
            conn.lat = group
        for ch in self.channels:
            ch.n_counted = 0
            ch.late_ns = array.array("q")
        state = self.open_window([c for c in listeners if c.group != "stalled"])
        log("window", seconds=seconds, stalled_ports=[c.sock.getsockname()[1] for c in stalled if c.sock],
            stall_at=stall_after if stalled else None, stall_seconds=stall_seconds if stalled else None)
        if stalled:
            self.run(stall_after)
            for conn in stalled:
                self.stall(conn, True)
            self.run(stall_seconds)
            for conn in stalled:
                self.stall(conn, False)
            self.run(seconds - stall_after - stall_seconds)
        else:
            self.run(seconds)
        out = self.close_window(state)
        self.run(float(cfg["grace"]))  # late frames of window packets still count as received
        for ch in self.channels:
            ch.publishing = False
        self.any_publishing = False
        self.run(0.2)
        for group in self.lat_groups.values():
            if len(group) > cap:
                del group[cap:]
        out["groups"] = self.group_stats(listeners)
        out["packets_per_channel"] = [ch.n_counted for ch in self.channels]
        out.update(self.packet_stats(state))
        if stalled:
            out["stalled_detail"] = [self.conn_detail(c) for c in stalled]
        return out

    def join_storm(self, existing: list[Conn], n: int) -> dict[str, Any]:
        """n new listeners join at once while ``existing`` listen; the window is the storm."""
        for conn in existing:
            conn.lat = self.lat_groups.setdefault("existing", array.array("q"))
        for ch in self.channels:
            ch.n_counted = 0
        state = self.open_window(list(existing))
        newcomers = []
        for ch in self.channels:
            per = n // len(self.channels) + (1 if ch.index < n % len(self.channels) else 0)
            newcomers += [Conn(ch, f"s{ch.index}-{i}", "storm", False) for i in range(per)]
        log("window", seconds=None, storm=n)
        joined = self.join(newcomers, "storm")
        self.msg_phase = "storm_tail"
        self.run(float(self.cfg["storm_tail"]))
        out = self.close_window(state)
        self.msg_phase = "after"
        self.run(float(self.cfg["grace"]))
        for ch in self.channels:
            ch.publishing = False
        self.any_publishing = False
        self.run(0.2)
        out.update(joined)
        out.update(self.packet_stats(state))
        out["groups"] = self.group_stats(existing + newcomers)
        out["packets_per_channel"] = [ch.n_counted for ch in self.channels]
        return out

    def group_stats(self, conns: list[Conn]) -> dict[str, Any]:
        groups: dict[str, dict[str, Any]] = {}
        for conn in conns:
            g = groups.setdefault(conn.group, {
                "listeners": 0, "packets_expected": 0, "packets_received": 0, "gap_events": 0,
                "missing": 0, "reorders": 0, "torn": 0, "truncated_at_close": 0, "closed": Counter(),
                "not_joined": 0,
            })
            g["listeners"] += 1
            if conn.state not in (JOINED, CLOSED) and not conn.t_joined:
                g["not_joined"] += 1
                continue
            if conn.group != "storm":  # storm joiners arrive mid-window: no expectation
                g["packets_expected"] += conn.ch.n_counted
            g["packets_received"] += conn.recv_counted
            g["gap_events"] += conn.gap_events
            g["missing"] += conn.missing
            g["reorders"] += conn.reorders
            g["torn"] += conn.torn
            g["truncated_at_close"] += conn.truncated
            if conn.closed_how:
                g["closed"][conn.closed_how] += 1
        for name, g in groups.items():
            g["closed"] = dict(g["closed"])
            expected = g["packets_expected"]
            g["loss_ratio"] = round(1 - g["packets_received"] / expected, 6) if expected else None
            g["latency_ms"] = percentiles(self.lat_groups.get(name, array.array("q")))
        return groups

    @staticmethod
    def conn_detail(conn: Conn) -> dict[str, Any]:
        return {
            "user_id": conn.user_id, "received": conn.recv_counted, "expected": conn.ch.n_counted,
            "gap_events": conn.gap_events, "missing": conn.missing, "reorders": conn.reorders,
            "torn": conn.torn, "truncated_at_close": conn.truncated, "closed": conn.closed_how or None,
        }

    def publisher_stats(self) -> dict[str, Any]:
        late = array.array("q")
        sent = 0
        for ch in self.channels:
            late.extend(ch.late_ns)
            sent += ch.sent
        return {"packets_sent": sent, "send_lateness_ms": percentiles(late)}


def main() -> int:
    cfg = dict(DEFAULTS)
    if len(sys.argv) > 1:
        cfg.update(json.loads(sys.argv[1]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gen = LoadGen(cfg)
    t0 = time.monotonic()
    try:
        result = gen.scenario()
    except KeyboardInterrupt:
        return 130
    result["loadgen_seconds"] = round(time.monotonic() - t0, 2)
    result["connect_errors"] = dict(gen.connect_errors)
    log("result", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
