"""Where a recording's files go: a pure function of the channel and the start time, so the
log's recording_started event names them before any file exists (docs/operations.md: file
layout)."""

from __future__ import annotations

import datetime

from airwave.protocol.text import file_slug

RECORDINGS_FOLDER = "recordings"
MIX_FILE = "mix.opus"


def recording_directory(channel_id: str, number: int, time: float) -> str:
    """``recordings/<channel>/<number>-<UTC start, ms>``, relative to the data directory, with
    the channel id as a file-name slug (`file_slug`): one directory per recording."""
    stamp = datetime.datetime.fromtimestamp(time, datetime.UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
    return f"{RECORDINGS_FOLDER}/{file_slug(channel_id)}/{number}-{stamp}"

