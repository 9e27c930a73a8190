"""`airwave admin ...`: the operator's requests (docs/protocol.md section 3, admin requests)
from the command line, as text for people or JSON for scripts."""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any, TextIO

import attrs

from airwave.commands import CommandFailed
from airwave.protocol import (
    AdminChannels,
    AdminEndSession,
    AdminKick,
    AdminMembers,
    AdminMute,
    AdminStop,
    ChannelSummary,
    MemberSummary,
    Reply,
    summaries_from_wire,
)
from airwave.protocol.text import shown
from airwave.wire import Wire, open_wire

# action -> (request, the fields it takes from the command line, what success says)
ACTIONS: dict[str, tuple[type, tuple[str, ...], str]] = {
    "kick": (AdminKick, ("channel", "user_id"), "kicked {user_id} from {channel}"),
    "stop": (AdminStop, ("channel",), "stopped {channel} for everyone"),
    "mute": (AdminMute, ("channel", "user_id"), "muted {user_id} in {channel}"),
    "unmute": (AdminMute, ("channel", "user_id"), "unmuted {user_id} in {channel}"),
    "end": (AdminEndSession, ("channel", "user_id"), "ended the session of {user_id} in {channel}"),
}


async def request(wire: Wire, message_type: type, what: str, token: str | None, **fields: Any) -> Reply:
    """One admin request; a refusal is a CommandFailed with its reason."""
    reply = await wire.request(message_type, token=token, **fields)
    if not reply.ok:
        raise CommandFailed(f"cannot {what}: {reply.message}" if reply.message else f"cannot {what}", reply.reason)
    return reply


async def channels(wire: Wire, token: str | None) -> list[ChannelSummary]:
    reply = await request(wire, AdminChannels, "list the channels", token)
    return summaries_from_wire(ChannelSummary, reply.result)


async def members(wire: Wire, channel: str, token: str | None) -> list[MemberSummary]:
    reply = await request(wire, AdminMembers, f"list the members of {channel!r}", token, channel=channel)
    return summaries_from_wire(MemberSummary, reply.result)


async def run(url: str, action: str, *, channel: str | None = None, user_id: str | None = None,
              token: str | None = None, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    async with open_wire(url, client="airwave-admin") as wire:
        if action == "channels":
            found = await channels(wire, token)
            print(json.dumps([_plain(c) for c in found]) if as_json else channels_table(found), file=out)
        elif action == "members":
            assert channel is not None
            listed = await members(wire, channel, token)
            print(json.dumps([_plain(m) for m in listed]) if as_json else members_table(listed), file=out)
        else:
            message_type, names, said = ACTIONS[action]
            given = {"channel": channel, "user_id": user_id}
            fields = {name: given[name] for name in names}
            if message_type is AdminMute:
                fields["muted"] = action == "mute"
            what = f"{action} {user_id!r} in {channel!r}" if "user_id" in fields else f"{action} {channel!r}"
            await request(wire, message_type, what, token, **fields)
            shown_fields = {name: shown(str(value)) for name, value in fields.items()}
            print(json.dumps({"ok": True, "action": action, **fields}) if as_json else said.format(**shown_fields), file=out)
    return 0


def _plain(value: ChannelSummary | MemberSummary) -> dict[str, Any]:
    data = attrs.asdict(value)
    for name in ("role", "state"):
        if name in data:
            data[name] = data[name].index
    return data


def _since(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%H:%M:%S")


def duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in [header, *rows])


def channels_table(found: list[ChannelSummary]) -> str:
    if not found:
        return "no live channels"
    rows = [
        [shown(c.channel_id), str(c.channel_number), str(c.members), str(c.hosts), str(c.speakers), duration(c.uptime), shown(c.title) if c.title else ""]
        for c in found
    ]
    return _table(["CHANNEL", "#", "MEMBERS", "HOSTS", "SPEAKERS", "UPTIME", "TITLE"], rows)


def members_table(listed: list[MemberSummary]) -> str:
    rows = [
        [
            shown(m.user_id), shown(m.display_name) if m.display_name else "", str(m.role.index),
            "muted" if m.muted else "on" if m.audio else "off", m.session, m.address, _since(m.connected_since),
        ]
        for m in listed
    ]
    return _table(["USER", "NAME", "ROLE", "UPLOAD", "SESSION", "ADDRESS", "SINCE (UTC)"], rows)
