"""The accept loop: one nursery and one `Connection` per accepted socket.

`serve_connections` owns the listening socket's accept loop and one nursery per accepted
connection. In that nursery it builds the `Connection`, runs ``handler(conn)`` as the
nursery's body, and closes the connection when the handler returns or fails. An exception
escaping a handler (an ``ExceptionGroup`` too) is logged and contained there. The caller of
`open_listener` owns the listening socket; `close_listener` ends the accept loop.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable

import trio

from .connection import TCP_FAMILIES, TCP_NOTSENT_LOWAT, Connection, TransportSettings

__all__ = ["Handler", "close_listener", "open_listener", "serve_connections"]

logger = logging.getLogger(__name__)

Handler = Callable[[Connection], Awaitable[object]]

# accept() errors that mean the process or the system is out of something; retrying at
# once would spin, so the loop pauses briefly (trio's own listeners do the same).
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_CAPACITY_PAUSE = 0.1


def open_listener(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """Return a bound, listening, non-blocking TCP socket; port 0 picks a free port.

    IPv4 or IPv6 follows ``host`` (its first getaddrinfo result); "" binds every IPv4
    interface. The caller owns the socket: read ``getsockname()`` for the port, and end
    `serve_connections` with `close_listener`.
    """
    infos = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def close_listener(listener: socket.socket) -> None:
    """Close ``listener`` so that `serve_connections` stops accepting.

    Wakes the accept loop (``notify_closing``) before closing the fd, which a plain
    ``close()`` would not do.
    """
    if listener.fileno() != -1:
        trio.lowlevel.notify_closing(listener)
        listener.close()


async def serve_connections(
    listener: socket.socket,
    handler: Handler,
    *,
    settings: TransportSettings,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on ``listener`` and run ``handler(conn)`` for each.

    Each wake-up accepts until the backlog is empty (up to ``settings.accept_batch``), so a
    connect storm is drained in bulk. Accepted sockets are non-blocking with TCP_NODELAY
    and, if configured, ``settings.send_buffer_size`` as SO_SNDBUF. Each connection runs in
    its own nursery and is closed when its handler ends; an exception escaping a handler
    is logged and never reaches the server or another connection.

    After `close_listener` the loop stops accepting and this returns once the running
    handlers have finished; cancel the surrounding scope to end them too. (A bare
    ``listener.close()`` while the loop waits would not wake it: epoll forgets a closed fd
    silently. Use `close_listener`.)
    """
    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            try:
                await trio.lowlevel.wait_readable(listener)
            except (trio.ClosedResourceError, OSError, ValueError):
                # ValueError: trio was handed fd -1 (the listener was already closed).
                if listener.fileno() == -1:
                    break
                raise
            for _ in range(settings.accept_batch):
                try:
                    sock, address = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if listener.fileno() == -1:
                        break
                    if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                        logger.warning("accept paused: %s", exc)
                        await trio.sleep(_ACCEPT_CAPACITY_PAUSE)
                        break
                    # The peer gave up between SYN and accept (ECONNABORTED and kin).
                    logger.debug("accept failed: %s", exc)
                    continue
                nursery.start_soon(_serve_one, sock, address, handler, settings)
            if listener.fileno() == -1:
                break


def _configure_accepted(sock: socket.socket, settings: TransportSettings) -> None:
    sock.setblocking(False)
    if sock.family in TCP_FAMILIES:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if settings.send_buffer_size is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.send_buffer_size)
    if settings.notsent_lowat is not None and sock.family in TCP_FAMILIES:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, settings.notsent_lowat)


async def _serve_one(
    sock: socket.socket, address: object, handler: Handler, settings: TransportSettings
) -> None:
    try:
        _configure_accepted(sock, settings)
    except OSError as exc:
        # Typically reset before we got to it.
        logger.debug("dropping connection from %s: %s", address, exc)
        sock.close()
        return
    conn: Connection | None = None
    try:
        async with trio.open_nursery() as nursery:
            conn = Connection(sock, settings=settings, nursery=nursery, remote_address=address)
            try:
                await handler(conn)
            finally:
                # Synchronous, so it happens even when cancelled; wakes the flusher.
                conn.close_now()
    except* Exception as group:
        # Pitfall 1: a reset can fail several tasks of one connection at once, and the
        # ExceptionGroup must stop here, not at the server.
        logger.error("connection %r: handler failed", conn or address, exc_info=group)
    finally:
        if conn is None:
            sock.close()
