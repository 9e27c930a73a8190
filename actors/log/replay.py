"""Replay: the event log read back as a timeline, and each channel's state at any seq.

The final state comes from the same ``fold`` (over the same ``evolve``) that the live channel
actors and crash recovery use.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from airwave.protocol.text import shown

from ..core import (
    Channel,
    Event,
    EventDecodeError,
    EventOutOfPlace,
    RecordingStarted,
    RecordingStopped,
    event_from_record,
    fold,
)
from .format import UnusableRecord, read_events

# Fields printed as they are; roles and states print as their index, reasons with their name.
_HIDDEN = frozenset({"password_hash", "v", "type", "seq", "time", "channel", "user_id"})


@attrs.frozen
class ReplayedEvent:
    seq: int
    event: Event


def replay_events(path: Path, *, channel: str | None = None, until: int | None = None) -> Iterator[ReplayedEvent]:
    """The log's events in order; ``until`` includes that seq."""
    for item in replay_records(read_events(path), path):
        if until is not None and item.seq > until:
            return
        if channel is None or item.event.channel == channel:
            yield item


def replay_records(bodies: Iterable[Mapping[str, Any]], path: Path | None) -> Iterator[ReplayedEvent]:
    """Records (verified bodies, with their seq) as events; one this version cannot decode
    raises `UnusableRecord` naming its seq."""
    for body in bodies:
        try:
            event = event_from_record(body)
        except EventDecodeError as exc:
            raise UnusableRecord(path, body.get("seq"), str(exc)) from None
        yield ReplayedEvent(body["seq"], event)


@attrs.frozen
class AudioPlace:
    """Where an event falls in its channel's recording: the recording's directory (relative to
    the data directory) and the offset in seconds into every file in it."""

    directory: str
    offset: float


def audio_places(items: Iterable[ReplayedEvent]) -> dict[int, AudioPlace]:
    """For each event (by seq) that happened while its channel instance was recording, its
    place in the recording: the files start at recording_started's time, so the offset is
    the event's time minus that (docs/operations.md, "Recording"). The recording's own start
    and stop events are in it, at 0 and at its length."""
    running: dict[int, RecordingStarted] = {}
    places: dict[int, AudioPlace] = {}
    for item in items:
        event = item.event
        if isinstance(event, RecordingStarted):
            running[event.number] = event
        started = running.get(event.number)
        if started is not None:
            places[item.seq] = AudioPlace(started.directory, round(max(0.0, event.time - started.time), 3))
        if isinstance(event, RecordingStopped):
            running.pop(event.number, None)
    return places


def iso_time(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_json(item: ReplayedEvent) -> dict[str, Any]:
    event = item.event
    out: dict[str, Any] = {
        "seq": item.seq,
        "time": iso_time(event.time),
        "channel": event.channel,
        "type": event.TYPE,
        "participant": getattr(event, "user_id", None),
    }
    for field in attrs.fields(type(event)):
        if field.name in _HIDDEN:
            continue
        value = getattr(event, field.name)
        if field.name in ("role", "state"):
            out[field.name] = value.index
        elif field.name == "reason":
            out["reason"] = int(value)
            out["reason_name"] = value.reason_name
        else:
            out[field.name] = value
    if event.TYPE == "channel_created":
        out["has_password"] = event.password_hash is not None  # type: ignore[union-attr]
    return out


def final_state_json(channel: Channel) -> dict[str, Any]:
    return {
        "type": "final_state",
        "channel": channel.channel_id,
        "number": channel.number,
        "ended": channel.ended,
        "ended_reason": None if channel.ended_reason is None else int(channel.ended_reason),
        "ended_reason_name": None if channel.ended_reason is None else channel.ended_reason.reason_name,
        "ended_by": channel.ended_by,
        "created_by": channel.created_by,
        "capacity": channel.capacity,
        "has_password": channel.password_hash is not None,
        "custom_property": channel.custom_property,
        "members": [
            {
                "participant": m.user_id,
                "sid": m.sid,
                "role": m.role.index,
                "state": m.state.index,
                "upload": m.upload,
                "display_name": m.display_name,
            }
            for m in channel.members_in_join_order()
        ],
    }


def audio_column(place: AudioPlace | None) -> str:
    """What `airwave replay --audio` prints before an event: its offset into the recording
    (``+12.345s``), or ``-`` when its channel was not recording."""
    return f"{'-' if place is None else '+' + format(place.offset, '.3f') + 's':>11}  "


def event_text(item: ReplayedEvent) -> str:
    """One line per event. Every client-chosen string goes through `shown`, so no title,
    property or id can break the line or forge a field."""
    data = event_json(item)
    head = f"{data.pop('seq'):>8}  {data.pop('time')}  {shown(data.pop('channel'))}  {data.pop('type')}"
    for key in ("role", "state"):
        if key in data and data[key] is None:
            data[key] = "none"  # no role / no custom state, not "absent"
    if "reason" in data:
        data["reason"] = f"{data.pop('reason')}({data.pop('reason_name')})"
    details = " ".join(
        f"{key}={shown(value) if isinstance(value, str) else value}" for key, value in data.items() if value not in (None, "")
    )
    return f"{head}  {details}".rstrip()


def final_state_text(channel: Channel) -> str:
    state = "ended" if channel.ended else "live"
    if channel.ended and channel.ended_reason is not None:
        state += f" ({channel.ended_reason.reason_name}" + (f" by {shown(channel.ended_by)})" if channel.ended_by else ")")
    lines = [f"channel {shown(channel.channel_id)} #{channel.number}: {state}, {len(channel.members)} member(s)"]
    for m in channel.members_in_join_order():
        upload = " uploading" if m.upload else ""
        lines.append(f"    {shown(m.user_id)} (sid {m.sid}) role={m.role.index} state={m.state.index}{upload}")
    return "\n".join(lines)


def fold_replayed(items: list[ReplayedEvent], path: Path | None = None) -> dict[int, Channel]:
    """Every channel instance the events build; an event that does not fit the state it meets
    raises `UnusableRecord` naming its seq."""
    try:
        return fold(item.event for item in items)
    except EventOutOfPlace as exc:
        seq = next(item.seq for item in items if item.event is exc.event)
        raise UnusableRecord(path, seq, str(exc)) from None
