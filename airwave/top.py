"""`airwave top`: a live terminal view of a server's channels, refreshed every interval.

One `admin_channels` request per refresh (docs/protocol.md section 3, admin requests); rates
are the difference of the server's counters between two refreshes. Rendered with rich in
the terminal's alternate screen, so quitting (q, or Ctrl-C) gives the terminal back as it was.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import termios
import tty
from collections.abc import AsyncIterator, Iterator
from typing import TextIO

import attrs
import trio

from airwave.admin import channels, duration
from airwave.protocol import ChannelSummary
from airwave.protocol.text import shown
from airwave.wire import open_wire

QUIT_KEYS = b"qQ"


@attrs.frozen
class Rates:
    """Per-second rates of one channel instance between two refreshes."""

    packets_in: float = 0.0
    deliveries: float = 0.0


def rates_between(before: dict[int, ChannelSummary], after: list[ChannelSummary], seconds: float) -> dict[int, Rates]:
    """Keyed by channel number: a re-created channel with the same id starts from zero."""
    rates = {}
    for summary in after:
        old = before.get(summary.channel_number)
        if old is None or seconds <= 0:
            rates[summary.channel_number] = Rates()
        else:
            rates[summary.channel_number] = Rates(
                (summary.packets_in - old.packets_in) / seconds, (summary.deliveries - old.deliveries) / seconds
            )
    return rates


def render(url: str, found: list[ChannelSummary], rates: dict[int, Rates]):  # type: ignore[no-untyped-def]
    """The screen: a header line and one row per channel, the busiest first."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    members = sum(c.members for c in found)
    speakers = sum(c.speakers for c in found)
    clock = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S UTC")
    header = Text(f"airwave top  {url}  {len(found)} channel(s), {members} member(s), {speakers} speaking  {clock}  (q quits)")
    table = Table(expand=True, header_style="bold")
    for name, justify in (("CHANNEL", "left"), ("#", "right"), ("MEMBERS", "right"), ("HOSTS", "right"),
                          ("SPEAKERS", "right"), ("PKT/S IN", "right"), ("OUT/S", "right"), ("DROPS", "right"),
                          ("UPTIME", "right"), ("TITLE", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "TITLE")  # type: ignore[arg-type]
    for summary in sorted(found, key=lambda c: (-c.members, c.channel_id)):
        rate = rates.get(summary.channel_number, Rates())
        table.add_row(
            # Text, not str: a channel id or title is the client's text, never rich markup.
            Text(shown(summary.channel_id)), str(summary.channel_number), str(summary.members), str(summary.hosts),
            str(summary.speakers), f"{rate.packets_in:.0f}", f"{rate.deliveries:.0f}", str(summary.drops),
            duration(summary.uptime), Text(shown(summary.title) if summary.title else ""),
        )
    if not found:
        return Group(header, Text("no live channels"))
    return Group(header, table)


@contextlib.contextmanager
def _keys_unbuffered(fd: int) -> Iterator[None]:
    """Keys arrive one at a time, unechoed, while the view runs; the terminal is put back after."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.asynccontextmanager
async def _quit_key(stdin: TextIO) -> AsyncIterator[trio.Event]:
    """Set when q is pressed; never set when stdin is no terminal (then Ctrl-C quits)."""
    pressed = trio.Event()
    if not stdin.isatty():
        yield pressed
        return
    fd = stdin.fileno()
    with _keys_unbuffered(fd):
        async with trio.open_nursery() as nursery:
            stream = trio.lowlevel.FdStream(os.dup(fd))

            async def watch() -> None:
                async with stream:
                    while data := await stream.receive_some(64):
                        if any(key in QUIT_KEYS for key in data):
                            pressed.set()
                            return

            nursery.start_soon(watch)
            yield pressed
            nursery.cancel_scope.cancel()


async def run(url: str, *, token: str | None, interval: float = 1.0, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    async with open_wire(url, client="airwave-top") as wire, _quit_key(stdin) as quit_pressed:
        previous: dict[int, ChannelSummary] = {}
        last = trio.current_time()
        with Live(console=console, screen=console.is_terminal, auto_refresh=False, transient=True) as live:
            while not quit_pressed.is_set():
                found = await channels(wire, token)
                now = trio.current_time()
                live.update(render(url, found, rates_between(previous, found, now - last)), refresh=True)
                previous, last = {c.channel_number: c for c in found}, now
                with trio.move_on_after(interval):
                    await quit_pressed.wait()
    return 0
