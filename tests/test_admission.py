"""The gateway's join admission: how many connections may be joining at once, and that a
slot always comes back (answered request, connection end, or the hold time)."""

from __future__ import annotations

import trio
import trio.testing

from airwave.actors.gateway import AdmissionSlot, JoinAdmission


async def test_at_most_slots_join_at_once_and_waiters_enter_in_arrival_order() -> None:
    admission = JoinAdmission(2, hold=60.0)
    entered: list[tuple[int, AdmissionSlot]] = []

    async def join(n: int) -> None:
        entered.append((n, await admission.enter()))

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(join, n)
            await trio.testing.wait_all_tasks_blocked()
        assert [n for n, _ in entered] == [0, 1] and admission.joining == 2

        entered[1][1].release()
        await trio.testing.wait_all_tasks_blocked()
        assert [n for n, _ in entered] == [0, 1, 2]

        entered[0][1].release()
        entered[0][1].release()  # idempotent: frees one slot, not two
        await trio.testing.wait_all_tasks_blocked()
        assert [n for n, _ in entered] == [0, 1, 2, 3] and admission.joining == 2


async def test_a_slot_not_given_back_expires_after_hold(autojump_clock: trio.testing.MockClock) -> None:
    admission = JoinAdmission(1, hold=0.5)
    stalled = await admission.enter()

    await trio.sleep(0.4)
    admission.expire(trio.current_time())
    assert admission.joining == 1

    await trio.sleep(0.2)
    admission.expire(trio.current_time())
    assert admission.joining == 0
    with trio.fail_after(0.01):
        (await admission.enter()).release()
    stalled.release()  # late release of an expired slot does not free a second one
    taken = await admission.enter()
    with trio.move_on_after(1.0) as waited:
        await admission.enter()
    assert waited.cancelled_caught and admission.joining == 1
    taken.release()
