"""What a log line is about, for `--log-format json`: one JSON object per line with the
time, level and message, and the channel, user and connection the line concerns.

Call sites keep writing plain messages. Each task that serves something sets
`LOG_SUBJECT` once (the gateway's task to its session, a channel actor's task to itself),
and the formatter asks that subject for its fields when a line is written, so a session's
lines name its user and channel as they are at that moment. A line may also name a user
itself (``extra={"user": ...}``), as the channel actor does for the member it speaks of.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
from typing import Any, Protocol


class LogSubject(Protocol):
    def log_fields(self) -> dict[str, Any]: ...


LOG_SUBJECT: contextvars.ContextVar[LogSubject | None] = contextvars.ContextVar("airwave_log_subject", default=None)

FIELDS = ("channel", "user", "connection")


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        subject = LOG_SUBJECT.get()
        if subject is not None:
            data.update((key, value) for key, value in subject.log_fields().items() if value)
        for key in FIELDS:
            value = getattr(record, key, None)
            if value:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)
