"""The participant's lifecycle table: complete, refusing what it does not list, and the same
table that docs/architecture.md shows. (Over real sockets: test_server_errors, test_faults.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from airwave.actors.participant import LIFECYCLE, SessionState, lifecycle_markdown, out_of_order
from airwave.protocol import REQUEST_TYPES, Hello, Join, Leave, Ping, Query, Reason, Request, Resume

ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def test_lifecycle_every_request_type_is_served_in_some_state() -> None:
    served = {request_type for steps in LIFECYCLE.values() for request_type in steps}
    assert served == set(REQUEST_TYPES)


def test_lifecycle_every_state_has_a_row_and_joining_serves_nothing() -> None:
    assert set(LIFECYCLE) == set(SessionState)
    assert LIFECYCLE[SessionState.JOINING] == {}


def test_lifecycle_only_hello_is_served_before_hello() -> None:
    assert set(LIFECYCLE[SessionState.GREETING]) == {Hello}
    assert LIFECYCLE[SessionState.GREETING][Hello].after is SessionState.IDLE


def test_lifecycle_join_and_resume_pass_through_joining_to_joined() -> None:
    for request_type in (Join, Resume):
        step = LIFECYCLE[SessionState.IDLE][request_type]
        assert (step.during, step.after) == (SessionState.JOINING, SessionState.JOINED)


def test_lifecycle_queries_and_pings_leave_the_state_alone() -> None:
    for state in (SessionState.IDLE, SessionState.JOINED):
        for request_type in (Query, Ping):
            assert LIFECYCLE[state][request_type].after is state


def test_lifecycle_leave_is_the_way_back_to_idle() -> None:
    assert LIFECYCLE[SessionState.JOINED][Leave].after is SessionState.IDLE
    leaving = {t for t, step in LIFECYCLE[SessionState.JOINED].items() if step.after is not SessionState.JOINED}
    assert {t.TYPE for t in leaving} == {"leave", "stop"}


@pytest.mark.parametrize(
    ("state", "message", "reason"),
    [
        (SessionState.GREETING, Join(1, "radio", "alice"), Reason.NOT_LOGIN),
        (SessionState.GREETING, Ping(1), Reason.NOT_LOGIN),
        (SessionState.IDLE, Hello(1, 1), Reason.CALL_FUNCTION_ERROR),
        (SessionState.JOINED, Join(1, "radio", "alice"), Reason.ALREADY_JOINED),
        (SessionState.IDLE, Leave(1), Reason.CALL_FUNCTION_ERROR),
    ],
)
def test_lifecycle_out_of_order_requests_get_their_reason(state: SessionState, message: Request, reason: Reason) -> None:
    assert type(message) not in LIFECYCLE[state]
    assert out_of_order(state, message)[0] is reason


def test_lifecycle_docs_show_the_table_as_it_is() -> None:
    assert lifecycle_markdown() in ARCHITECTURE.read_text(), "paste lifecycle_markdown() into docs/architecture.md"
