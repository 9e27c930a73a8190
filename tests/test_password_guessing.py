"""Guessing channel passwords over real sockets (issue 13, section 4): the KDF runs off the
event loop, and an address that keeps guessing wrong is slowed down, then refused."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

import attrs
import pytest
import trio

from airwave.actors.core.guesses import GuessPolicy
from airwave.actors.server import RunningServer, serve
from airwave.protocol import Join, Reason
from airwave.wire import open_wire
from conftest import fast_settings

from helpers import HOST, ok

decide_module = importlib.import_module("airwave.actors.core.decide")  # the package exports a function of that name

PASSWORD = "correct horse"
POLICY = GuessPolicy(free_failures=2, first_delay=0.3, max_delay=0.6, max_wait=1.0)


async def test_wrong_passwords_from_one_address_are_spaced_out_then_refused(
    nursery: trio.Nursery, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_loop: list[bool] = []
    checked = decide_module.password_matches

    def watched(password: str, stored: bytes) -> bool:
        on_loop.append(threading.current_thread() is threading.main_thread())
        return checked(password, stored)

    monkeypatch.setattr(decide_module, "password_matches", watched)
    running: RunningServer = await nursery.start(serve, attrs.evolve(fast_settings(data_dir), password_guesses=POLICY))
    with trio.fail_after(20):
        async with open_wire(running.url) as host, open_wire(running.url) as guesser:
            ok(await host.request(Join, channel="vault", user_id="host", role=HOST, password=PASSWORD))
            # The spacing runs from one failure to the next, so it is measured between the
            # replies: from a request's sending it would lose the reply's trip and the
            # client's turn, tens of ms on a loaded machine.
            took = []
            last = trio.current_time()
            for attempt in range(5):
                reply = await guesser.request(Join, channel="vault", user_id="guesser", password=f"guess {attempt}")
                took.append((reply.reason, trio.current_time() - last))
                last = trio.current_time()
            assert [reason for reason, _ in took] == [Reason.INVALID_PASSWORD] * 5
            assert all(seconds < 0.25 for _, seconds in took[:3]), took  # two free failures, then the first spaced turn is now
            assert took[3][1] >= 0.3 - 0.02 and took[4][1] >= 0.6 - 0.02, took  # 0.3 s, then the cap

            # Parallel guesses from the same address wait in one queue; past max_wait, refused.
            async with trio.open_nursery() as crowd:
                reasons: list[Reason] = []

                async def guess(i: int) -> None:
                    async with open_wire(running.url) as wire:
                        reasons.append((await wire.request(Join, channel="vault", user_id=f"g{i}", password="nope")).reason)

                for i in range(6):
                    crowd.start_soon(guess, i)
            assert Reason.RATE_LIMITED in reasons and Reason.INVALID_PASSWORD in reasons, reasons
            assert set(reasons) == {Reason.RATE_LIMITED, Reason.INVALID_PASSWORD}
    assert on_loop and not any(on_loop), "every password check ran on a worker thread"
    running.shutdown()
    with trio.fail_after(10):
        await running.stopped.wait()
