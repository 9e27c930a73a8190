"""`GET /events?after=SEQ` on the operator's HTTP port: the event log pulled, for consumers
that cannot take webhooks (behind a firewall, or wanting to keep their own cursor).

Two forms over the same feed (`feed.py`), in log order, each event as `airwave replay --json`
prints it and as a webhook POSTs it:

- long-poll: `GET /events?after=SEQ[&limit=N][&wait=S]` answers JSON
  `{"events": [...], "after": SEQ'}` at once if there are events after SEQ, else once one
  arrives or after S seconds (default 0, at most 60); `after` in the answer is what to ask
  with next.
- Server-Sent Events: the same URL with `Accept: text/event-stream` streams every event after
  SEQ (or after the `Last-Event-ID` a reconnecting EventSource sends) as `id: SEQ`,
  `event: TYPE`, `data: JSON`, with a comment line every 15 s to keep proxies from closing it.

With a server secret, a request needs `Authorization: Bearer ADMIN_TOKEN` (401 otherwise):
events name users and channels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import attrs
import h11
import trio
from airwave.protocol import ProtocolError, Reason
from airwave.protocol.tokens import verify_admin_token

from .clock import now
from .feed import EventFeed
from .log.replay import event_json, replay_records

log = logging.getLogger("airwave.events_http")

MAX_LIMIT = 1_000
MAX_WAIT = 60.0
KEEPALIVE_SECONDS = 15.0
_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed"}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class EventsQuery:
    after: int = 0
    limit: int = 100
    wait: float = 0.0
    stream: bool = False  # Server-Sent Events


def parse_query(target: bytes, headers: dict[bytes, bytes]) -> EventsQuery:
    """The request's parameters, or BadRequest(400) saying which one is wrong."""
    query = parse_qs(target.partition(b"?")[2].decode("latin-1"), keep_blank_values=True)
    unknown = sorted(set(query) - {"after", "limit", "wait"})
    if unknown:
        raise BadRequest(400, f"unknown parameter(s) {unknown}: use after, limit, wait")

    def number(name: str, convert: Callable[[str], Any], low: float, high: float, default: Any) -> Any:
        values = query.get(name)
        if not values:
            return default
        try:
            value = convert(values[-1])
        except ValueError:
            raise BadRequest(400, f"{name} must be a number, not {values[-1][:40]!r}") from None
        if not low <= value <= high:
            raise BadRequest(400, f"{name} must be in {low:g}..{high:g}")
        return value

    after = number("after", int, 0, 2**63 - 1, 0)
    stream = b"text/event-stream" in headers.get(b"accept", b"")
    last_event_id = headers.get(b"last-event-id")
    if stream and last_event_id is not None:
        if not last_event_id.isdigit():
            raise BadRequest(400, "Last-Event-ID must be a seq")
        after = int(last_event_id)
    return EventsQuery(after, number("limit", int, 1, MAX_LIMIT, 100), number("wait", float, 0, MAX_WAIT, 0.0), stream)


@attrs.frozen
class EventsEndpoint:
    feed: EventFeed
    secret: bytes | None = attrs.field(default=None, repr=False)

    def check_access(self, headers: dict[bytes, bytes]) -> None:
        if self.secret is None:
            return
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise BadRequest(401, "this server needs Authorization: Bearer ADMIN_TOKEN (airwave token --admin)")
        try:
            verify_admin_token(self.secret, token.strip(), now=now())
        except ProtocolError as refusal:
            raise BadRequest(403 if refusal.reason is Reason.NO_PERMISSION else 401, refusal.message) from None

    def events_after(self, after: int, limit: int) -> list[dict[str, Any]]:
        return [event_json(item) for item in replay_records(self.feed.after(after, limit), self.feed.data_dir)]

    async def answer(self, connection: h11.Connection, stream: trio.abc.Stream, request: h11.Request) -> None:
        headers = {name.lower(): value for name, value in request.headers}
        try:
            self.check_access(headers)
            query = parse_query(request.target, headers)
        except BadRequest as refused:
            body = json.dumps({"error": str(refused)}).encode() + b"\n"
            extra = [(b"www-authenticate", b"Bearer")] if refused.status == 401 else []
            await send_whole(connection, stream, refused.status, b"application/json", body, extra)
            return
        if query.stream:
            await self._stream(connection, stream, query)
            return
        events = self.events_after(query.after, query.limit)
        if not events and query.wait > 0:
            with trio.move_on_after(query.wait):
                await self.feed.wait_beyond(query.after)
            events = self.events_after(query.after, query.limit)
        body = json.dumps({"events": events, "after": events[-1]["seq"] if events else query.after}).encode() + b"\n"
        await send_whole(connection, stream, 200, b"application/json", body)

    async def _stream(self, connection: h11.Connection, stream: trio.abc.Stream, query: EventsQuery) -> None:
        await stream.send_all(connection.send(h11.Response(status_code=200, reason=b"OK", headers=[
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
        ])))
        cursor = query.after
        async with trio.open_nursery() as nursery:

            async def hang_up_watch() -> None:
                # The client closing its side is the only end of a stream.
                while await stream.receive_some(4096):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(hang_up_watch)
            while True:
                events = self.events_after(cursor, MAX_LIMIT)
                if events:
                    chunk = b"".join(
                        f"id: {e['seq']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events
                    )
                    cursor = events[-1]["seq"]
                    await stream.send_all(connection.send(h11.Data(data=chunk)))
                    continue
                with trio.move_on_after(KEEPALIVE_SECONDS) as waited:
                    await self.feed.wait_beyond(cursor)
                if waited.cancelled_caught:
                    await stream.send_all(connection.send(h11.Data(data=b": keepalive\n\n")))


async def send_whole(
    connection: h11.Connection, stream: trio.abc.Stream, status: int, content_type: bytes, body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None, *, head: bool = False,
) -> None:
    """One whole response, then the connection closes (the operator port's only kind but SSE);
    ``head``: the headers of that response without its body."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), (b"connection", b"close"), *(extra or [])]
    data = connection.send(h11.Response(status_code=status, reason=_REASONS.get(status, b""), headers=headers))
    if not head:
        data += connection.send(h11.Data(data=body))
    data += connection.send(h11.EndOfMessage())
    await stream.send_all(data)
