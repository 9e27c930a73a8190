"""Webhooks as a cursor over the event log: every event, in log order, at least once.

A hosted service's webhooks are fire-and-forget: an event is lost if the receiver was down,
and retries arrive out of order. Airwave's events already have a durable order, the log's
seq, so a webhook here is a reader of the log with a bookmark: `WebhookDelivery` POSTs each
event (as `airwave replay --json` prints it), waits for a 2xx, and only then moves its
cursor (`webhook.cursor` beside the log). A receiver that is down is retried with capped
exponential backoff and nothing after it is sent until it answers, so the order holds; after
a crash or restart delivery resumes from the first event not acknowledged. An event may come
twice (a crash between the 2xx and the cursor's write); its seq is the idempotency key.

New events come from the append path in memory; what is not there (at start, or after the
memory fell behind) is read back from the log on disk.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import os
import random
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import h11
import trio

from .log.format import read_events
from .log.replay import event_json, replay_records

log = logging.getLogger("airwave.webhooks")

CURSOR_FILE = "webhook.cursor"
MEMORY = 10_000  # events held for delivery in memory; beyond it they are read from disk


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
    def __init__(self, settings: WebhookSettings, data_dir: Path, durable_seq: Callable[[], int]) -> None:
        self.settings = settings
        self._durable_seq = durable_seq  # what the log has acknowledged: never send beyond it
        self._data_dir = data_dir
        self._cursor_path = data_dir / CURSOR_FILE
        self.acknowledged = self._load_cursor()  # the last seq the receiver answered with a 2xx
        self.delivered = self.retries = 0
        self._memory: collections.deque[dict[str, Any]] = collections.deque(maxlen=MEMORY)
        self._newer = trio.Event()
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

    def offer(self, seqs: Sequence[int], records: Sequence[Mapping[str, Any]]) -> None:
        """Records just made durable by the log (called by the append path)."""
        for seq, record in zip(seqs, records):
            self._memory.append({"seq": seq, **record})
        self._newer.set()

    def _pending(self) -> list[dict[str, Any]]:
        """The events after the cursor, in order: from memory when it holds the next one,
        else from the log on disk."""
        memory = self._memory
        while memory and memory[0]["seq"] <= self.acknowledged:
            memory.popleft()
        if memory and memory[0]["seq"] == self.acknowledged + 1:
            return list(memory)
        durable = self._durable_seq()  # a record on disk may not be synced yet
        return [body for body in read_events(self._data_dir) if self.acknowledged < body["seq"] <= durable]

    async def run(self) -> None:
        while True:
            self._newer = trio.Event()
            pending = self._pending()
            if not pending:
                await self._newer.wait()
                continue
            for body in pending:
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
