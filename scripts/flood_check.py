"""One connection floods the server with tiny WebSocket frames; does an honest stream notice?

Starts `airwave serve` on a free loopback port, a host streaming 50 numbered media frames a
second to a listener in one channel, and measures each frame's latency (send to receive, one
clock). Each round runs the stream for --seconds with no abuser (the baseline, measured in the
same run) and then with one abuser process writing one kind of flood as fast as it can after
`hello`: empty continuation frames of a message it never finishes, one-byte continuations,
unsolicited pongs, pings. Prints per round: frames lost, p50/p99/max latency, and how long the
server took to close the abuser (its close code).

    python scripts/flood_check.py --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import trio
import trio_websocket

from airwave.protocol import CustomRole, Hello, Join, channel_info_from_wire, limits
from airwave.protocol.codec import encode
from airwave.protocol.media import encode_client_media
from airwave.wire import open_wire

FLOODS = ("none", "empty-continuations", "one-byte-fragments", "pongs", "pings")


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A masked client frame (the all-zero key) with a 7- or 16-bit length."""
    head = bytes(((0x80 if fin else 0) | opcode,))
    n = len(payload)
    head += bytes((0x80 | n,)) if n < 126 else bytes((0x80 | 126,)) + struct.pack("!H", n)
    return head + b"\0\0\0\0" + payload


def abuse(port: int, kind: str) -> None:
    """The abuser process: handshake, hello, then the flood until the server closes."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    sock.sendall(client_frame(0x2, encode(Hello(id=1, version=limits.PROTOCOL_VERSION, client="flood"))))
    unit = {
        "empty-continuations": client_frame(0x0, fin=False),
        "one-byte-fragments": client_frame(0x0, b"\x01", fin=False),
        "pongs": client_frame(0xA),
        "pings": client_frame(0x9),
    }[kind]
    burst = unit * 4096
    if kind.endswith(("continuations", "fragments")):
        sock.sendall(client_frame(0x2, b"", fin=False))  # the message that never finishes
    started = time.monotonic()
    sock.settimeout(30)
    try:
        while True:
            sock.sendall(burst)
    except OSError:
        pass
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except OSError:
        pass
    at = received.rfind(b"\x88")
    code = int.from_bytes(received[at + 2 : at + 4], "big") if at >= 0 and len(received) >= at + 4 else None
    print(json.dumps({"closed_after_s": round(time.monotonic() - started, 3), "close_code": code}), flush=True)


async def stream(url: str, seconds: float, channel: str) -> tuple[int, int, list[float]]:
    """Frames sent, frames received, latencies (ms) of an honest host -> listener stream."""
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    async with open_wire(url) as host, open_wire(url) as listener:
        reply = await host.request(Join, channel=channel, user_id="host", role=CustomRole.ROLE_0, upload=True)
        sid = channel_info_from_wire(reply.result).self_sid
        await listener.request(Join, channel=channel, user_id="listener")

        async def receive() -> None:
            async for packet in listener.media:
                if packet.sid == sid and packet.seq in sent_at:
                    latencies.append((trio.current_time() - sent_at[packet.seq]) * 1000)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            start = trio.current_time()
            seq = 0
            while trio.current_time() - start < seconds:
                sent_at[seq] = trio.current_time()
                await host.send_bytes(encode_client_media(seq, seq * 960, b"\xf8" + seq.to_bytes(4, "big"), level=40))
                seq += 1
                await trio.sleep_until(start + seq * 0.02)
            await trio.sleep(0.5)  # the last frames' way back
            nursery.cancel_scope.cancel()
    return seq, len(latencies), latencies


async def round_(url: str, port: int, kind: str, seconds: float, index: int) -> dict[str, object]:
    abuser = None
    if kind != "none":
        abuser = subprocess.Popen([sys.executable, __file__, "--abuser", kind, "--port", str(port)], stdout=subprocess.PIPE, text=True)
    sent, received, latencies = await stream(url, seconds, f"honest-{index}")
    result: dict[str, object] = {"flood": kind, "sent": sent, "lost": sent - received}
    if latencies:
        cuts = statistics.quantiles(latencies, n=100)
        result |= {"p50_ms": round(statistics.median(latencies), 2), "p99_ms": round(cuts[98], 2), "max_ms": round(max(latencies), 2)}
    if abuser is not None:
        try:
            out, _ = abuser.communicate(timeout=30)
            result |= json.loads(out.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, IndexError, json.JSONDecodeError):
            abuser.kill()
            result["closed_after_s"] = "never (killed)"
    return result


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as data, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        server = subprocess.Popen(
            [sys.executable, "-m", "airwave.cli", "--log-level", "WARNING", "serve", "--port", str(port), "--data", data],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            url = f"ws://127.0.0.1:{port}/"
            with trio.fail_after(15):
                while True:
                    try:
                        async with open_wire(url):
                            break
                    except (OSError, trio_websocket.HandshakeError):  # not listening yet
                        await trio.sleep(0.1)
            results = []
            for index, kind in enumerate(args.floods):
                results.append(await round_(url, port, kind, args.seconds, index))
                print(json.dumps(results[-1]) if args.json else format_row(results[-1]), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=10)


def format_row(result: dict[str, object]) -> str:
    closed = result.get("closed_after_s", "-")
    code = result.get("close_code", "-")
    return (
        f"{result['flood']:>20}: sent {result['sent']}, lost {result['lost']}, p50 {result.get('p50_ms', '-')} ms, "
        f"p99 {result.get('p99_ms', '-')} ms, max {result.get('max_ms', '-')} ms; abuser closed after {closed} s (code {code})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="each round's stream (default 5)")
    parser.add_argument("--floods", nargs="+", choices=FLOODS, default=list(FLOODS), help="rounds to run, in order (default all; 'none' is the baseline)")
    parser.add_argument("--json", action="store_true", help="one JSON object per round")
    parser.add_argument("--abuser", choices=FLOODS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.abuser:
        abuse(parsed.port, parsed.abuser)
    else:
        trio.run(main, parsed)
