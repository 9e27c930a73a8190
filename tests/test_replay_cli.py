"""`airwave replay` after a scripted session against a real server: the timeline, the final
state per channel, --until, --channel, one segment file, and never the password."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio

from airwave.actors.log.format import list_segments
from airwave.actors.server import RunningServer
from airwave.cli import main
from airwave.protocol import (
    CustomRole,
    CustomState,
    EnableUpload,
    Join,
    Kick,
    Leave,
    Left,
    Reason,
    SetRole,
    SetState,
    Stop,
)
from airwave.wire import open_wire

from helpers import HOST, next_push, ok

PASSWORD = "hunter2-Zq9"
ISO_MS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def scripted_session(server: RunningServer) -> None:
    """create, joins, a role change, a state change, an upload, a kick, a leave, a stop; and a
    second channel that lives across part of it (for --channel)."""
    with trio.fail_after(10):
        url = server.url
        async with open_wire(url) as host, open_wire(url) as alice, open_wire(url) as bob, open_wire(url) as carol:
            ok(await host.request(
                Join, channel="show", user_id="host", role=HOST, password=PASSWORD, display_name="Host"
            ))
            ok(await alice.request(Join, channel="show", user_id="alice", password=PASSWORD))
            ok(await bob.request(Join, channel="show", user_id="bob", password=PASSWORD))
            ok(await carol.request(Join, channel="side", user_id="carol"))
            ok(await host.request(SetRole, role=CustomRole.ROLE_2, user_id="bob"))
            ok(await host.request(SetState, state=CustomState.STATE_0, user_id="alice"))
            ok(await alice.request(EnableUpload, enabled=True))
            ok(await host.request(Kick, user_id="bob"))
            assert (await next_push(bob, Left)).reason is Reason.KICKED
            ok(await alice.request(Leave))
            ok(await host.request(Stop))
            ok(await carol.request(Leave))


EXPECTED_TIMELINE = [
    # (seq, channel, type, participant, extra fields that must match)
    (1, "show", "channel_created", None, {"created_by": "host", "has_password": True}),
    (2, "show", "participant_joined", "host", {"role": 0, "state": None, "display_name": "Host"}),
    (3, "show", "participant_joined", "alice", {"role": 1, "upload": False}),
    (4, "show", "participant_joined", "bob", {"role": 1}),
    (5, "side", "channel_created", None, {"created_by": "carol", "has_password": False}),
    (6, "side", "participant_joined", "carol", {"role": 1}),
    (7, "show", "role_changed", "bob", {"role": 2, "by": "host"}),
    (8, "show", "state_changed", "alice", {"state": 0, "by": "host"}),
    (9, "show", "audio_upload_changed", "alice", {"enabled": True}),
    (10, "show", "participant_left", "bob", {"reason": 6, "reason_name": "kicked", "by": "host"}),
    (11, "show", "participant_left", "alice", {"reason": 8, "reason_name": "quit", "by": None}),
    (12, "show", "channel_stopped", None, {"reason": 9, "reason_name": "over", "by": "host"}),
    (13, "side", "participant_left", "carol", {"reason": 8, "reason_name": "quit"}),
    (14, "side", "channel_stopped", None, {"reason": 0, "reason_name": "none", "by": None}),
]


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(["replay", *args]) == 0
    captured = capsys.readouterr()
    assert PASSWORD not in captured.out and PASSWORD not in captured.err
    return captured.out


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert lines and all(line.startswith("{") and line.endswith("}") for line in lines)
    return [json.loads(line) for line in lines]


def split(objects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events, then the final states, which all come after the last event."""
    first_final = next(i for i, o in enumerate(objects) if o["type"] == "final_state")
    events, finals = objects[:first_final], objects[first_final:]
    assert all(o["type"] == "final_state" for o in finals)
    return events, finals


def members(final: dict[str, Any]) -> dict[str, tuple[int, int | None, bool]]:
    return {m["participant"]: (m["role"], m["state"], m["upload"]) for m in final["members"]}


async def test_replay_json_timeline_then_final_state_per_channel(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    started = datetime.datetime.now(datetime.UTC)
    await scripted_session(server)
    events, finals = split(json_lines(replay(capsys, str(server.event_log.directory), "--json")))

    assert [(e["seq"], e["channel"], e["type"], e["participant"]) for e in events] == [t[:4] for t in EXPECTED_TIMELINE]
    for event, (*_, extra) in zip(events, EXPECTED_TIMELINE):
        assert {key: event.get(key, "<missing>") for key in extra} == extra, event
        assert ISO_MS_Z.fullmatch(event["time"]), event["time"]
        at = datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
        assert started - datetime.timedelta(seconds=1) <= at <= datetime.datetime.now(datetime.UTC)
        assert "password_hash" not in event and "password" not in event
    times = [e["time"] for e in events]
    assert times == sorted(times)

    assert [(f["channel"], f["number"]) for f in finals] == [("show", 1), ("side", 2)]
    show, side = finals
    assert (show["ended"], show["ended_reason"], show["ended_reason_name"]) == (True, 9, "over")
    assert show["ended_by"] == "host"
    assert (side["ended"], side["ended_reason"], side["ended_reason_name"], side["ended_by"]) == (True, 0, "none", None)
    assert show["has_password"] is True and "password_hash" not in show
    assert show["members"] == [] and side["members"] == []


async def test_replay_until_seq_includes_it_and_final_state_is_as_of_it(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    await scripted_session(server)
    events, finals = split(json_lines(replay(capsys, str(server.event_log.directory), "--json", "--until", "8")))
    assert [e["seq"] for e in events] == list(range(1, 9))
    show, side = finals
    assert show["ended"] is False and show["ended_reason"] is None
    # bob is role 2; alice is on the mic (state 0) but not yet uploading (seq 9).
    assert members(show) == {"host": (0, None, False), "alice": (1, 0, False), "bob": (2, None, False)}
    assert side["ended"] is False and members(side) == {"carol": (1, None, False)}

    events, finals = split(json_lines(replay(capsys, str(server.event_log.directory), "--json", "--until", "9")))
    assert events[-1]["seq"] == 9 and members(finals[0])["alice"] == (1, 0, True)


async def test_replay_channel_filter_keeps_one_channel(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    await scripted_session(server)
    events, finals = split(json_lines(replay(capsys, str(server.event_log.directory), "--json", "--channel", "side")))
    assert [(e["seq"], e["type"]) for e in events] == [
        (5, "channel_created"), (6, "participant_joined"), (13, "participant_left"), (14, "channel_stopped")
    ]
    assert [(f["channel"], f["ended"]) for f in finals] == [("side", True)]
    nothing = replay(capsys, str(server.event_log.directory), "--json", "--channel", "no-such-channel")
    assert nothing == ""


async def test_replay_text_and_segment_file_show_timeline_and_final_state(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    await scripted_session(server)
    directory = server.event_log.directory
    text = replay(capsys, str(directory))
    lines = text.splitlines()
    timeline = lines[: len(EXPECTED_TIMELINE)]
    for line, (seq, channel, kind, participant, _) in zip(timeline, EXPECTED_TIMELINE):
        assert re.match(rf"\s*{seq}  \S+Z  {channel}  {kind}\b", line), line
        if participant is not None:
            assert f"participant={participant}" in line, line
    assert "reason=6(kicked)" in timeline[9] and "by=host" in timeline[9]
    assert "reason=9(over)" in timeline[11] and "by=host" in timeline[11]
    assert "role=2" in timeline[6] and "has_password=True" in timeline[0]
    tail = lines[len(EXPECTED_TIMELINE) :]
    assert tail == [
        "",
        "final state:",
        "channel show #1: ended (over by host), 0 member(s)",
        "channel side #2: ended (none), 0 member(s)",
    ]

    until = replay(capsys, str(directory), "--until", "8").splitlines()
    assert until[8:] == [
        "",
        "final state:",
        "channel show #1: live, 3 member(s)",
        "    host (sid 1) role=0 state=None",
        "    alice (sid 2) role=1 state=0",
        "    bob (sid 3) role=2 state=None",
        "channel side #2: live, 1 member(s)",
        "    carol (sid 1) role=1 state=None",
    ]
    assert [line.split()[0] for line in until[:8]] == [str(seq) for seq in range(1, 9)]

    # One segment file, as a path: the same output as the directory.
    ((_, segment),) = list_segments(Path(directory))
    assert replay(capsys, str(segment)) == text
    assert replay(capsys, str(segment), "--json") == replay(capsys, str(directory), "--json")
    # Decision 11: the password is in no output (checked by `replay`) and not in the log itself.
    assert PASSWORD.encode() not in segment.read_bytes()


def test_replay_missing_path_exits_2_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "nothing")]) == 2
    assert "no event log at" in capsys.readouterr().err


# --- logs this version cannot use: one line, exit 2, for replay and for serve alike ---


def write_log(directory: Path, bodies: list[dict[str, Any]]) -> None:
    from airwave.actors.log.format import encode_record, segment_path

    directory.mkdir()
    segment_path(directory, 1).write_bytes(b"".join(encode_record(body) for body in bodies))


def created(seq: int, number: int = 1) -> dict[str, Any]:
    return {"seq": seq, "type": "channel_created", "v": 1, "time": 1.0, "channel": "show", "number": number,
            "created_by": "host", "capacity": 10, "heartbeat_time": 3.0, "heartbeat_timeout": 9.0}


def joined(seq: int, user_id: str) -> dict[str, Any]:
    return {"seq": seq, "type": "participant_joined", "v": 1, "time": 2.0, "channel": "show", "number": 1,
            "user_id": user_id, "sid": seq, "role": int(CustomRole.ROLE_1), "state": 0}


UNUSABLE_LOGS = {
    "seq_gap": ([created(85), joined(91, "alice"), joined(87, "bob")], "record has seq 91, expected seq 86"),
    "unknown_type": ([created(1), {"seq": 2, "type": "participant_teleported", "v": 1}], "record seq 2: unknown event 'participant_teleported'"),
    "newer_schema": ([created(1), {**joined(2, "alice"), "v": 2}], "record seq 2: 'participant_joined' was written by a newer Airwave"),
    "role_change_for_a_stranger": (
        [created(1), {"seq": 2, "type": "role_changed", "v": 1, "time": 3.0, "channel": "show", "number": 1,
                      "user_id": "mallory", "role": int(CustomRole.ROLE_0)}],
        "record seq 2: role_changed for 'mallory', who is not a member of channel #1",
    ),
}


async def run_cli(*args: str) -> tuple[int, str, str]:
    import sys

    with trio.fail_after(30):
        done = await trio.run_process([sys.executable, "-m", "airwave.cli", *args], capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.mark.parametrize("case", sorted(UNUSABLE_LOGS))
async def test_issue_13_replay_and_serve_refuse_an_unusable_log_in_one_line(tmp_path: Path, case: str) -> None:
    bodies, says = UNUSABLE_LOGS[case]
    data = tmp_path / "data"
    write_log(data, bodies)
    for command in (["replay", str(data)], ["serve", "--data", str(data), "--port", "0"]):
        code, out, err = await run_cli(*command)
        assert code == 2, (command, out, err)
        (verdict,) = [line for line in err.splitlines() if line.startswith("airwave: ")]  # the rest: serve's log
        assert says in verdict and "Traceback" not in err, (command, err)
