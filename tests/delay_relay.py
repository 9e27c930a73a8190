"""A TCP relay that holds every chunk DELAY_MS before passing it on, both ways.

tests/test_cluster_netns.py adds 20 ms between its two "hosts" with `tc netem`; on a kernel
without the netem qdisc (``Specified qdisc kind is unknown``) it runs this relay in the
first namespace instead, in front of nats-server, and the far node's NATS connection goes
through it: the same one-way delay on everything that crosses, applied in user space.
Order is kept (one FIFO per direction); nothing is dropped.

    python delay_relay.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS

Prints ``ready`` once listening; runs until killed.
"""

from __future__ import annotations

import collections
import socket
import sys
import threading
import time


def pipe(source: socket.socket, target: socket.socket, delay: float) -> None:
    """Reads ``source``; a second thread writes each chunk to ``target`` ``delay`` s after it came."""
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    ready = threading.Condition()

    def write() -> None:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, data = queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:
                target.shutdown(socket.SHUT_WR)
                return
            target.sendall(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        while True:
            data = source.recv(65536)
            with ready:
                queue.append((time.monotonic() + delay, data))
                ready.notify()
            if not data:
                return
    except OSError:
        return


def main(listen_host: str, listen_port: str, target_host: str, target_port: str, delay_ms: str) -> None:
    delay = float(delay_ms) / 1000
    server = socket.create_server((listen_host, int(listen_port)))
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection((target_host, int(target_port)))
        for a, b in ((client, upstream), (upstream, client)):
            a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=pipe, args=(a, b, delay), daemon=True).start()


if __name__ == "__main__":
    main(*sys.argv[1:])
