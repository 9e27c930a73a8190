"""Two tiny fan-out servers that scripts/bench_fanout.py measures next to Airwave.

    python scripts/fanout_baselines.py naive --port P
    python scripts/fanout_baselines.py floor --port P

Both speak just enough of the Airwave wire for the same load generator to drive them
unchanged: the WebSocket upgrade, ``hello`` and ``join`` answered with a ``reply`` (the join
reply carries ``self_sid``), client media frames (ext 1) relayed as server media frames
(ext 2, built with ``airwave.protocol.relay_frame``) from a publisher (a join with upload
true) to every other member of its channel. No event log, no presence, no heartbeats.
Each prints "listening on ws://127.0.0.1:P/" on stderr once it accepts.

naive
    trio + trio-websocket, the broadcast loop design notes section 6.3 warns about: the
    publisher's connection task does ``await ws.send_message(frame)`` for each listener in
    turn. Per-listener semantics match Airwave's: the same payload to every listener, one
    WebSocket message each; a closed listener is skipped and removed.

floor
    The kernel floor: one thread, ``select.epoll``, stdlib sockets. When a media frame
    arrives, the server frame is built once and the fan-out is a bare loop of non-blocking
    ``sock.send(frame)`` over the listeners' bound ``send`` methods. A send that would block
    is counted and skipped (no queue, no protocol), so the floor never costs more than the
    kernel's own work plus one Python call per delivery.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import resource
import select
import signal
import socket
import struct
import sys
from typing import Any

import msgpack

from airwave.protocol import relay_frame
from airwave.protocol.wsframe import server_binary_frame

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def reply(request: dict[str, Any], result: Any = None) -> bytes:
    return msgpack.packb(
        {"type": "reply", "id": request.get("id", 0), "reason": 0, "message": "", "result": result}
    )


class Channels:
    """Channel name -> members; the shared bookkeeping of both baselines."""

    def __init__(self) -> None:
        self.next_sid: dict[str, int] = {}

    def answer(self, request: dict[str, Any]) -> tuple[bytes, int, str | None, bool]:
        """(reply bytes, sid, channel joined or None, publishing)."""
        kind = request.get("type")
        if kind == "hello":
            return reply(request, {"version": 1, "server": "baseline/0"}), 0, None, False
        if kind == "join":
            name = str(request.get("channel"))
            sid = self.next_sid.get(name, 1)
            self.next_sid[name] = sid + 1
            result = {"channel_id": name, "self_sid": sid, "member_count": sid, "participants": []}
            return reply(request, result), sid, name, bool(request.get("upload"))
        return reply(request), 0, None, False


# ---------------------------------------------------------------------- naive


def run_naive(port: int) -> None:
    import trio
    import trio_websocket

    channels = Channels()
    listeners: dict[str, list[trio_websocket.WebSocketConnection]] = {}

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        sid, joined, publishing = 0, None, False
        try:
            while True:
                message = await ws.get_message()
                if isinstance(message, str):
                    continue
                if message[:1] == b"\xc8":
                    if joined is None or not publishing:
                        continue
                    frame = relay_frame(sid, message)
                    for other in list(listeners.get(joined, ())):
                        try:
                            await other.send_message(frame)
                        except trio_websocket.ConnectionClosed:
                            if other in listeners[joined]:
                                listeners[joined].remove(other)
                    continue
                answer, new_sid, channel, upload = channels.answer(msgpack.unpackb(message))
                if channel is not None:
                    sid, joined, publishing = new_sid, channel, upload
                    if not upload:
                        listeners.setdefault(channel, []).append(ws)
                await ws.send_message(answer)
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            if joined is not None and ws in listeners.get(joined, ()):
                listeners[joined].remove(ws)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: trio_websocket.serve_websocket(
                    handler, "127.0.0.1", port, ssl_context=None, task_status=task_status
                )
            )
            print(f"listening on ws://127.0.0.1:{port}/", file=sys.stderr, flush=True)

    trio.run(main)


# ---------------------------------------------------------------------- floor


class FloorConn:
    __slots__ = ("buf", "channel", "publishing", "sid", "sock", "upgraded")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.upgraded = False
        self.sid = 0
        self.channel: str | None = None
        self.publishing = False


def client_frames(conn: FloorConn) -> list[tuple[int, bytes]]:
    """Whole masked client frames at the head of conn.buf, unmasked; the rest stays."""
    out = []
    buf = conn.buf
    pos = 0
    while len(buf) - pos >= 6:
        b0, b1 = buf[pos], buf[pos + 1]
        length = b1 & 0x7F
        head = pos + 2
        if length == 126:
            if len(buf) - pos < 8:
                break
            length = struct.unpack_from("!H", buf, head)[0]
            head += 2
        elif length == 127:
            if len(buf) - pos < 14:
                break
            length = struct.unpack_from("!Q", buf, head)[0]
            head += 8
        if len(buf) < head + 4 + length:
            break
        key = buf[head : head + 4]
        data = buf[head + 4 : head + 4 + length]
        if length:
            stream = (key * (length // 4 + 1))[:length]
            data = (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(length, "big")
        out.append((b0 & 0x0F, data))
        pos = head + 4 + length
    conn.buf = buf[pos:]
    return out


def run_floor(port: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    ep = select.epoll()
    ep.register(listener.fileno(), select.EPOLLIN)
    conns: dict[int, FloorConn] = {}
    channels = Channels()
    sends: dict[str, list[Any]] = {}  # channel -> the listeners' bound sock.send
    stats = {"deliveries": 0, "would_block": 0, "errors": 0}
    print(f"listening on ws://127.0.0.1:{port}/", file=sys.stderr, flush=True)

    def drop(fd: int) -> None:
        conn = conns.pop(fd, None)
        if conn is None:
            return
        ep.unregister(fd)
        if conn.channel is not None and not conn.publishing:
            try:
                sends[conn.channel].remove(conn.sock.send)
            except ValueError:
                pass
        conn.sock.close()

    def fan_out(channel: str, frame: bytes) -> None:
        # The floor: one pre-built frame, a bare loop of non-blocking sends.
        for send in sends.get(channel, ()):
            try:
                send(frame)
            except BlockingIOError:
                stats["would_block"] += 1
            except OSError:
                stats["errors"] += 1

    def on_frame(conn: FloorConn, opcode: int, data: bytes) -> None:
        if opcode == 0x2 and data[:1] == b"\xc8":
            if conn.publishing and conn.channel is not None:
                fan_out(conn.channel, server_binary_frame(relay_frame(conn.sid, data)))
        elif opcode == 0x2:
            answer, sid, channel, upload = channels.answer(msgpack.unpackb(data))
            if channel is not None:
                conn.sid, conn.channel, conn.publishing = sid, channel, upload
                if not upload:
                    sends.setdefault(channel, []).append(conn.sock.send)
            conn.sock.send(server_binary_frame(answer))
        elif opcode == 0x9:
            conn.sock.send(bytes((0x8A, len(data))) + data)

    while True:
        for fd, _ in ep.poll():
            if fd == listener.fileno():
                while True:
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[sock.fileno()] = FloorConn(sock)
                    ep.register(sock.fileno(), select.EPOLLIN)
                continue
            conn = conns.get(fd)
            if conn is None:
                continue
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                drop(fd)
                continue
            if not data:
                drop(fd)
                continue
            conn.buf += data
            if not conn.upgraded:
                end = conn.buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                key = b""
                for line in conn.buf[:end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"sec-websocket-key":
                        key = value.strip()
                accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
                conn.sock.send(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                conn.buf = conn.buf[end + 4 :]
                conn.upgraded = True
            for opcode, payload in client_frames(conn):
                if opcode == 0x8:
                    drop(fd)
                    break
                on_frame(conn, opcode, payload)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["naive", "floor"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        (run_naive if args.kind == "naive" else run_floor)(args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
