"""Webhooks as a cursor over the event log: every event, in log order, at least once.

A hosted service's webhooks are fire-and-forget: an event is lost if the receiver was down,
and retries arrive out of order. Airwave's events already have a durable order, the log's
seq, so a webhook here is a reader of the log with a bookmark: `WebhookDelivery` POSTs each
event (as `airwave replay --json` prints it), waits for a 2xx, and only then moves its
cursor (`webhook.cursor` beside the log). A receiver that is down is retried with capped
exponential backoff and nothing after it is sent until it answers, so the order holds; after
a crash or restart delivery resumes from the first event not acknowledged. An event may come
twice (a crash between the 2xx and the cursor's write); its seq is the idempotency key.

Events come from the log's `EventFeed` (`feed.py`): the newest from memory, older ones
(at start, or after the receiver fell far behind) from the log on disk.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import ssl
from typing import Any
from urllib.parse import urlsplit

import attrs
import h11
import trio

from .feed import EventFeed
from .log.replay import event_json, replay_records

log = logging.getLogger("airwave.webhooks")

CURSOR_FILE = "webhook.cursor"
BATCH = 1_000  # events taken from the feed at a time


@attrs.frozen
class WebhookSettings:
    url: str = attrs.field()
    secret: bytes | None = None  # HMAC-SHA256 key for the signature header
    first_retry: float = 0.5  # seconds; doubled per failed attempt ...
    max_retry: float = 60.0  # ... up to this
    timeout: float = 10.0  # for one POST, connect to answer

    @url.validator
    def _check_url(self, _: attrs.Attribute[str], url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a webhook URL is http:// or https://HOST[:PORT]/PATH, not {url!r}")


def signature(secret: bytes, body: bytes) -> str:
    """What the ``X-Airwave-Signature`` header carries: ``sha256=`` and the hex HMAC of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookDelivery:
    def __init__(self, settings: WebhookSettings, feed: EventFeed) -> None:
        self.settings = settings
        self._feed = feed
        self._data_dir = feed.data_dir
        self._cursor_path = feed.data_dir / CURSOR_FILE
        self.acknowledged = self._load_cursor()  # the last seq the receiver answered with a 2xx
        self.delivered = self.retries = 0
        self._rng = random.Random()

    def _load_cursor(self) -> int:
        try:
            text = self._cursor_path.read_text().strip()
        except FileNotFoundError:
            return 0
        if not text.isdigit():
            raise ValueError(f"{self._cursor_path} holds {text[:40]!r}, not a seq; remove it to deliver every event again")
        return int(text)

    def _save_cursor(self) -> None:
        # Write and rename, so the file always holds one whole seq. Not fsynced: a cursor
        # lost in a crash only sends an event again, which at-least-once allows.
        temporary = self._cursor_path.with_suffix(".tmp")
        temporary.write_text(f"{self.acknowledged}\n")
        os.replace(temporary, self._cursor_path)

    async def run(self) -> None:
        while True:
            await self._feed.wait_beyond(self.acknowledged)
            for body in self._feed.after(self.acknowledged, BATCH):
                await self._deliver(body)

    async def _deliver(self, body: dict[str, Any]) -> None:
        (item,) = replay_records([body], self._data_dir)
        payload = json.dumps(event_json(item)).encode()
        attempt = 0
        while True:
            try:
                status = await self._post(payload, item.seq)
            except (OSError, h11.ProtocolError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                status, why = None, f"{type(exc).__name__}: {exc}"
            else:
                why = f"HTTP {status}"
            if status is not None and 200 <= status < 300:
                break
            delay = min(self.settings.max_retry, self.settings.first_retry * 2**attempt) * (0.5 + self._rng.random() / 2)
            if attempt == 0 or attempt % 10 == 0:
                log.warning("webhook: event %d not delivered (%s); retrying in %.1f s", item.seq, why, delay)
            attempt += 1
            self.retries += 1
            await trio.sleep(delay)
        self.acknowledged = item.seq
        self.delivered += 1
        self._save_cursor()

    async def _post(self, payload: bytes, seq: int) -> int:
        parts = urlsplit(self.settings.url)
        secure = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        headers = [
            ("Host", parts.netloc), ("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
            ("Idempotency-Key", str(seq)), ("X-Airwave-Seq", str(seq)), ("User-Agent", "airwave-webhook"),
            ("Connection", "close"),
        ]
        if self.settings.secret is not None:
            headers.append(("X-Airwave-Signature", signature(self.settings.secret, payload)))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = h11.Connection(h11.CLIENT)
        with trio.fail_after(self.settings.timeout):
            if secure:
                stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=ssl.create_default_context())
            else:
                stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(
                    connection.send(h11.Request(method="POST", target=target, headers=headers))
                    + connection.send(h11.Data(data=payload))
                    + connection.send(h11.EndOfMessage())
                )
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(16384)
                        if not data:
                            raise OSError("the receiver closed the connection before answering")
                        connection.receive_data(data)
                    elif isinstance(event, h11.Response):
                        return event.status_code
