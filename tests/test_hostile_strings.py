"""Hostile strings cannot forge output (issue 13, section 3): whatever a client puts in an id,
a title or a property, `airwave replay` prints one line per event and the server's log one
record per line, with no field a client wrote passing for one the server wrote."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from airwave.actors.server import RunningServer
from airwave.cli import main
from airwave.protocol import Join, Leave, SetCustomProperty, Stop
from airwave.protocol.text import shown
from airwave.wire import open_wire

from helpers import HOST, ok

# A property that, printed raw, is a second event line: mallory "kicked" someone.
FORGED_EVENT = "fine\n      999  2026-12-02T00:00:00.000Z  live  participant_left  participant=host reason=6(kicked) by=mallory"
BIDI_USER = "eve\u202egnp.exe"  # a right-to-left override: reads as "eveexe.png" raw
LINE_SEPARATOR_TITLE = "title\u2028      998  forged"  # str.splitlines splits on U+2028


@given(st.text())
def test_shown_is_one_line_of_printable_text(text: str) -> None:
    out = shown(text)
    assert out.isprintable() and len(out.splitlines()) <= 1
    assert out == text or (out.startswith('"') and out.endswith('"'))


@pytest.mark.parametrize("plain", ["alice", "room-7", "José", "a.b@c:d/e", "日本"])
def test_shown_leaves_a_plain_token_alone(plain: str) -> None:
    assert shown(plain) == plain


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", '""'), ("two words", '"two words"'), ("a=b", '"a=b"'), ('say "hi"', '"say \\"hi\\""'),
        ("x\ny", '"x\\x0ay"'), ("x\u2028y", '"x\\u2028y"'), (BIDI_USER, '"eve\\u202egnp.exe"'),
    ],
)
def test_shown_quotes_and_escapes_anything_else(text: str, expected: str) -> None:
    assert shown(text) == expected


async def test_replay_and_the_server_log_print_hostile_strings_as_one_quoted_field(
    server: RunningServer, data_dir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(10):
        async with open_wire(server.url) as host, open_wire(server.url) as eve:
            ok(await host.request(Join, channel="live", user_id="host", role=HOST, title=LINE_SEPARATOR_TITLE))
            ok(await eve.request(Join, channel="live", user_id=BIDI_USER, display_name="x reason=6(kicked)"))
            ok(await host.request(SetCustomProperty, value=FORGED_EVENT))
            ok(await eve.request(Leave))
            ok(await host.request(Stop))

    assert main(["replay", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    events = [line for line in lines if line[:8].strip().isdigit()]
    assert [int(line.split()[0]) for line in events] == list(range(1, len(events) + 1)), lines
    assert not any("999" in line.split()[0] or "998" in line.split()[0] for line in lines if line.strip())
    assert all(line.isprintable() for line in lines)
    custom = next(line for line in events if "custom_property_changed" in line)
    assert 'value="fine\\x0a      999' in custom and custom.endswith(' by=host')
    joined = next(line for line in events if "participant_joined" in line and "eve" in line)
    assert 'display_name="x reason=6(kicked)"' in joined and "\u202e" not in joined

    messages = [record.getMessage() for record in caplog.records]
    assert [m for m in messages if len(m.splitlines()) != 1 or not m.isprintable()] == []
    assert any('join live #1 "eve\\u202egnp.exe"' in message for message in messages), messages
