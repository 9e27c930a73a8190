"""The control-message codec: golden bytes both ways, round trips, garbage, and refusals.

The golden table follows h11's SIMPLE_CASES: (message, exact bytes), checked in both
directions, one hex string per map entry so a reader can see each field on the wire. The
frames shown in docs/protocol.md are pinned here too, and checked against the document.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airwave.protocol import (
    REQUEST_TYPES,
    SERVER_MESSAGE_TYPES,
    ChannelInfo,
    CustomRole,
    CustomState,
    EnableCdn,
    EnableRecord,
    EnableUpload,
    Error,
    Hello,
    Join,
    Kick,
    Leave,
    Left,
    MemberCount,
    MessageReceived,
    NetStatus,
    ParticipantChange,
    ParticipantInfo,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantType,
    ParticipantUpdated,
    Ping,
    PropertyChange,
    PropertyChanged,
    ProtocolError,
    Query,
    QueryInfo,
    Reason,
    RecordState,
    CdnState,
    Reply,
    SendMessage,
    SetCustomProperty,
    SetRole,
    SetState,
    Stop,
    SubscribeAudio,
    VolumeChanged,
    VolumeStatus,
    channel_info_from_wire,
    decode_request,
    decode_server_message,
    encode,
    encode_client_media,
    is_media_frame,
    limits,
    query_info_from_wire,
    relay_frame,
    to_wire,
)
from airwave.protocol.messages import (
    AdminChannels,
    AdminEndSession,
    AdminKick,
    AdminMembers,
    AdminMute,
    AdminStop,
    RefreshToken,
    Resume,
)
from airwave.protocol.tokens import mint_token, verify_token

DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

# What decode_request may refuse with; anything else it raises is a bug.
DECODER_REASONS = frozenset({Reason.PROTOCOL_ERROR, Reason.INVALID_PARAM, Reason.TOO_LARGE})

# Fast enough for the whole file to run in a few seconds; the garbage tests get more examples.
ROUND_TRIP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GARBAGE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _h(*parts: str) -> bytes:
    """Bytes from hex written one map entry per string; spaces are for reading only."""
    return bytes.fromhex("".join(parts))


def _row_id(value: Any) -> str:
    return value.TYPE if hasattr(type(value), "TYPE") else ""


# --- golden table ---------------------------------------------------------------------------

REQUEST_GOLDEN: list[tuple[Any, bytes]] = [
    (
        Hello(id=1, version=1, client="airwave-py/0.1"),
        _h(
            "84",  # map, 4 entries
            "a474797065 a568656c6c6f",  # type
            "a26964 01",  # id
            "a776657273696f6e 01",  # version
            "a6636c69656e74 ae616972776176652d70792f302e31",  # client
        ),
    ),
    (
        Hello(id=2147483647, version=1),
        _h(
            "84",  # map, 4 entries
            "a474797065 a568656c6c6f",  # type
            "a26964 ce7fffffff",  # id
            "a776657273696f6e 01",  # version
            "a6636c69656e74 a0",  # client
        ),
    ),
    (
        Join(id=2, channel="radio", user_id="alice", display_name="Alice", role=CustomRole.ROLE_0, upload=True),
        _h(
            "de0011",  # map, 17 entries
            "a474797065 a46a6f696e",  # type
            "a26964 02",  # id
            "a76368616e6e656c a5726164696f",  # channel
            "a7757365725f6964 a5616c696365",  # user_id
            "a87572695f6d6f6465 c2",  # uri_mode
            "ac646973706c61795f6e616d65 a5416c696365",  # display_name
            "a4726f6c65 cd1000",  # role
            "a57374617465 00",  # state
            "a675706c6f6164 c3",  # upload
            "a870617373776f7264 c0",  # password
            "a86361706163697479 c0",  # capacity
            "ae6865617274626561745f74696d65 c0",  # heartbeat_time
            "b16865617274626561745f74696d656f7574 c0",  # heartbeat_timeout
            "a57469746c65 a0",  # title
            "af637573746f6d5f70726f7065727479 a0",  # custom_property
            "ab6d61785f73656e64657273 c0",  # max_senders
            "a5746f6b656e c0",  # token
        ),
    ),
    (
        Join(
            id=3, channel="airwave:radio", user_id="bob", uri_mode=True, role=CustomRole.ROLE_1,
            state=CustomState.STATE_0, password="pw", capacity=16, heartbeat_time=20, heartbeat_timeout=60,
            title="Talk", custom_property="{}", max_senders=4, token="aw1.payload.signature",
        ),
        _h(
            "de0011",  # map, 17 entries
            "a474797065 a46a6f696e",  # type
            "a26964 03",  # id
            "a76368616e6e656c ad616972776176653a726164696f",  # channel
            "a7757365725f6964 a3626f62",  # user_id
            "a87572695f6d6f6465 c3",  # uri_mode
            "ac646973706c61795f6e616d65 a0",  # display_name
            "a4726f6c65 cd2000",  # role
            "a57374617465 cd1000",  # state
            "a675706c6f6164 c2",  # upload
            "a870617373776f7264 a27077",  # password
            "a86361706163697479 10",  # capacity
            "ae6865617274626561745f74696d65 14",  # heartbeat_time
            "b16865617274626561745f74696d656f7574 3c",  # heartbeat_timeout
            "a57469746c65 a454616c6b",  # title
            "af637573746f6d5f70726f7065727479 a27b7d",  # custom_property
            "ab6d61785f73656e64657273 04",  # max_senders
            "a5746f6b656e b56177312e7061796c6f61642e7369676e6174757265",  # token (not verified by the codec)
        ),
    ),
    (
        Leave(id=4),
        _h(
            "82",  # map, 2 entries
            "a474797065 a56c65617665",  # type
            "a26964 04",  # id
        ),
    ),
    (
        Stop(id=5),
        _h(
            "82",  # map, 2 entries
            "a474797065 a473746f70",  # type
            "a26964 05",  # id
        ),
    ),
    (
        SetRole(id=6, role=CustomRole.ROLE_2, user_id="bob"),
        _h(
            "84",  # map, 4 entries
            "a474797065 a87365745f726f6c65",  # type
            "a26964 06",  # id
            "a4726f6c65 cd4000",  # role
            "a7757365725f6964 a3626f62",  # user_id
        ),
    ),
    (
        SetRole(id=7, role=CustomRole.NONE),
        _h(
            "84",  # map, 4 entries
            "a474797065 a87365745f726f6c65",  # type
            "a26964 07",  # id
            "a4726f6c65 00",  # role
            "a7757365725f6964 c0",  # user_id
        ),
    ),
    (
        SetState(id=8, state=CustomState.STATE_0, user_id="bob"),
        _h(
            "84",  # map, 4 entries
            "a474797065 a97365745f7374617465",  # type
            "a26964 08",  # id
            "a57374617465 cd1000",  # state
            "a7757365725f6964 a3626f62",  # user_id
        ),
    ),
    (
        EnableUpload(id=9, enabled=True),
        _h(
            "83",  # map, 3 entries
            "a474797065 ad656e61626c655f75706c6f6164",  # type
            "a26964 09",  # id
            "a7656e61626c6564 c3",  # enabled
        ),
    ),
    (
        Kick(id=10, user_id="bob"),
        _h(
            "83",  # map, 3 entries
            "a474797065 a46b69636b",  # type
            "a26964 0a",  # id
            "a7757365725f6964 a3626f62",  # user_id
        ),
    ),
    (
        Query(id=11, channel="radio"),
        _h(
            "83",  # map, 3 entries
            "a474797065 a57175657279",  # type
            "a26964 0b",  # id
            "a76368616e6e656c a5726164696f",  # channel
        ),
    ),
    (
        SendMessage(id=12, msg_type="chat", content="h\u00e9"),
        _h(
            "85",  # map, 5 entries
            "a474797065 ac73656e645f6d657373616765",  # type
            "a26964 0c",  # id
            "a86d73675f74797065 a463686174",  # msg_type
            "a7636f6e74656e74 a368c3a9",  # content
            "a2746f c0",  # to
        ),
    ),
    (
        SendMessage(id=13, msg_type="ask", content="mic?", to="alice"),
        _h(
            "85",  # map, 5 entries
            "a474797065 ac73656e645f6d657373616765",  # type
            "a26964 0d",  # id
            "a86d73675f74797065 a361736b",  # msg_type
            "a7636f6e74656e74 a46d69633f",  # content
            "a2746f a5616c696365",  # to
        ),
    ),
    (
        SetCustomProperty(id=14, value="{}"),
        _h(
            "83",  # map, 3 entries
            "a474797065 b37365745f637573746f6d5f70726f7065727479",  # type
            "a26964 0e",  # id
            "a576616c7565 a27b7d",  # value
        ),
    ),
    (
        SubscribeAudio(id=15, user_id="alice", enabled=False),
        _h(
            "84",  # map, 4 entries
            "a474797065 af7375627363726962655f617564696f",  # type
            "a26964 0f",  # id
            "a7757365725f6964 a5616c696365",  # user_id
            "a7656e61626c6564 c2",  # enabled
        ),
    ),
    (
        Ping(id=16),
        _h(
            "82",  # map, 2 entries
            "a474797065 a470696e67",  # type
            "a26964 10",  # id
        ),
    ),
    (
        RefreshToken(id=17, token="aw1.payload.signature"),
        _h(
            "83",  # map, 3 entries
            "a474797065 ad726566726573685f746f6b656e",  # type
            "a26964 11",  # id
            "a5746f6b656e b56177312e7061796c6f61642e7369676e6174757265",  # token
        ),
    ),
    (
        Resume(id=18, session_token="Zs4-RkM0"),
        _h(
            "83",  # map, 3 entries
            "a474797065 a6726573756d65",  # type
            "a26964 12",  # id
            "ad73657373696f6e5f746f6b656e a85a73342d526b4d30",  # session_token
        ),
    ),    (
        AdminChannels(id=19),
        _h(
            "83",  # map, 3 entries
            "a474797065 ae61646d696e5f6368616e6e656c73",  # type
            "a26964 13",  # id
            "a5746f6b656e c0",  # token
        ),
    ),
    (
        AdminMembers(id=20, channel="talk"),
        _h(
            "84",  # map, 4 entries
            "a474797065 ad61646d696e5f6d656d62657273",  # type
            "a26964 14",  # id
            "a76368616e6e656c a474616c6b",  # channel
            "a5746f6b656e c0",  # token
        ),
    ),
    (
        AdminKick(id=21, channel="talk", user_id="troll"),
        _h(
            "85",  # map, 5 entries
            "a474797065 aa61646d696e5f6b69636b",  # type
            "a26964 15",  # id
            "a76368616e6e656c a474616c6b",  # channel
            "a7757365725f6964 a574726f6c6c",  # user_id
            "a5746f6b656e c0",  # token
        ),
    ),
    (
        AdminStop(id=22, channel="talk", token="aw1.payload.signature"),
        _h(
            "84",  # map, 4 entries
            "a474797065 aa61646d696e5f73746f70",  # type
            "a26964 16",  # id
            "a76368616e6e656c a474616c6b",  # channel
            "a5746f6b656e b56177312e7061796c6f61642e7369676e6174757265",  # token
        ),
    ),
    (
        AdminMute(id=23, channel="talk", user_id="dj", muted=False),
        _h(
            "86",  # map, 6 entries
            "a474797065 aa61646d696e5f6d757465",  # type
            "a26964 17",  # id
            "a76368616e6e656c a474616c6b",  # channel
            "a7757365725f6964 a2646a",  # user_id
            "a56d75746564 c2",  # muted
            "a5746f6b656e c0",  # token
        ),
    ),
    (
        AdminEndSession(id=24, channel="talk", user_id="dj"),
        _h(
            "85",  # map, 5 entries
            "a474797065 b161646d696e5f656e645f73657373696f6e",  # type
            "a26964 18",  # id
            "a76368616e6e656c a474616c6b",  # channel
            "a7757365725f6964 a2646a",  # user_id
            "a5746f6b656e c0",  # token
        ),
    ),
    (
        EnableCdn(id=20, enabled=True, key_interval_ms=2000),
        _h(
            "84",  # map, 4 entries
            "a474797065 aa656e61626c655f63646e",  # type
            "a26964 14",  # id
            "a7656e61626c6564 c3",  # enabled
            "af6b65795f696e74657276616c5f6d73 cd07d0",  # key_interval_ms
        ),
    ),
    (
        EnableRecord(id=19, enabled=True, params='{"tracks": false}'),
        _h(
            "84",  # map, 4 entries
            "a474797065 ad656e61626c655f7265636f7264",  # type
            "a26964 13",  # id
            "a7656e61626c6564 c3",  # enabled
            "a6706172616d73 b17b22747261636b73223a2066616c73657d",  # params
        ),
    ),
]

SERVER_GOLDEN: list[tuple[Any, bytes]] = [
    (
        Reply(id=1, result={"version": 1, "server": "airwave/0.1.0"}),
        _h(
            "85",  # map, 5 entries
            "a474797065 a57265706c79",  # type
            "a26964 01",  # id
            "a6726561736f6e 00",  # reason
            "a76d657373616765 a0",  # message
            "a6726573756c74 82",  # result: map, 2 entries
            "a776657273696f6e 01",  # result.version
            "a6736572766572 ad616972776176652f302e312e30",  # result.server
        ),
    ),
    (
        Reply(id=5, reason=Reason.NO_PERMISSION, message="only a host may stop the channel"),
        _h(
            "85",  # map, 5 entries
            "a474797065 a57265706c79",  # type
            "a26964 05",  # id
            "a6726561736f6e ccc9",  # reason
            "a76d657373616765 d9206f6e6c79206120686f7374206d61792073746f7020746865206368616e6e656c",
            "a6726573756c74 c0",  # result
        ),
    ),
    (
        Reply(id=16, result={"time": 1700000000.25}),
        _h(
            "85",  # map, 5 entries
            "a474797065 a57265706c79",  # type
            "a26964 10",  # id
            "a6726561736f6e 00",  # reason
            "a76d657373616765 a0",  # message
            "a6726573756c74 81",  # result: map, 1 entries
            "a474696d65 cb41d954fc40100000",  # result.time
        ),
    ),
    (
        ParticipantJoined(ParticipantInfo(user_id="bob", sid=2, volume_status=VolumeStatus.ZERO)),
        _h(
            "82",  # map, 2 entries
            "a474797065 b27061727469636970616e745f6a6f696e6564",  # type
            "ab7061727469636970616e74 8a",  # participant: map, 10 entries
            "a7757365725f6964 a3626f62",  # participant.user_id
            "a3736964 02",  # participant.sid
            "ac646973706c61795f6e616d65 a0",  # participant.display_name
            "a4726f6c65 cd2000",  # participant.role
            "a57374617465 00",  # participant.state
            "a5617564696f c2",  # participant.audio
            "ad766f6c756d655f737461747573 01",  # participant.volume_status
            "aa6e65745f737461747573 04",  # participant.net_status
            "a474797065 00",  # participant.type
            "aa69735f63726561746f72 c2",  # participant.is_creator
        ),
    ),
    (
        ParticipantLeft(user_id="bob", reason=Reason.QUIT),
        _h(
            "83",  # map, 3 entries
            "a474797065 b07061727469636970616e745f6c656674",  # type
            "a7757365725f6964 a3626f62",  # user_id
            "a6726561736f6e 08",  # reason
        ),
    ),
    (
        ParticipantUpdated(ParticipantInfo(user_id="bob", sid=2, state=CustomState.STATE_0), changes=16, in_view=False),
        _h(
            "84",  # map, 4 entries
            "a474797065 b37061727469636970616e745f75706461746564",  # type
            "ab7061727469636970616e74 8a",  # participant: map, 10 entries
            "a7757365725f6964 a3626f62",  # participant.user_id
            "a3736964 02",  # participant.sid
            "ac646973706c61795f6e616d65 a0",  # participant.display_name
            "a4726f6c65 cd2000",  # participant.role
            "a57374617465 cd1000",  # participant.state
            "a5617564696f c2",  # participant.audio
            "ad766f6c756d655f737461747573 00",  # participant.volume_status
            "aa6e65745f737461747573 04",  # participant.net_status
            "a474797065 00",  # participant.type
            "aa69735f63726561746f72 c2",  # participant.is_creator
            "a76368616e676573 10",  # changes
            "a7696e5f76696577 c2",  # in_view
        ),
    ),
    (
        VolumeChanged(user_id="alice", volume_status=VolumeStatus.MID),
        _h(
            "83",  # map, 3 entries
            "a474797065 ae766f6c756d655f6368616e676564",  # type
            "a7757365725f6964 a5616c696365",  # user_id
            "ad766f6c756d655f737461747573 03",  # volume_status
        ),
    ),
    (
        PropertyChanged(changes=8, custom_property="{}"),
        _h(
            "86",  # map, 6 entries
            "a474797065 b070726f70657274795f6368616e676564",  # type
            "a76368616e676573 08",  # changes
            "af637573746f6d5f70726f7065727479 a27b7d",  # custom_property
            "a57469746c65 a0",  # title
            "ac7265636f72645f7374617465 00",  # record_state
            "a963646e5f7374617465 00",  # cdn_state
        ),
    ),
    (
        MessageReceived(msg_type="ask", content="mic?", from_user_id="bob", to="alice"),
        _h(
            "85",  # map, 5 entries
            "a474797065 a76d657373616765",  # type
            "a86d73675f74797065 a361736b",  # msg_type
            "a7636f6e74656e74 a46d69633f",  # content
            "ac66726f6d5f757365725f6964 a3626f62",  # from_user_id
            "a2746f a5616c696365",  # to
        ),
    ),
    (
        Reply(id=17, reason=Reason.TOKEN_INVALID),
        _h(
            "85",  # map, 5 entries
            "a474797065 a57265706c79",  # type
            "a26964 11",  # id
            "a6726561736f6e ccca",  # reason: 202 token_invalid
            "a76d657373616765 a0",  # message
            "a6726573756c74 c0",  # result
        ),
    ),
    (
        Left(channel="radio", reason=Reason.KICKED),
        _h(
            "83",  # map, 3 entries
            "a474797065 a46c656674",  # type
            "a76368616e6e656c a5726164696f",  # channel
            "a6726561736f6e 06",  # reason
        ),
    ),
    (
        Left(channel="radio", reason=Reason.TOKEN_EXPIRED),
        _h(
            "83",  # map, 3 entries
            "a474797065 a46c656674",  # type
            "a76368616e6e656c a5726164696f",  # channel
            "a6726561736f6e cccb",  # reason: 203 token_expired, not refreshed in time
        ),
    ),
    (
        MemberCount(count=1234),
        _h(
            "82",  # map, 2 entries
            "a474797065 ac6d656d6265725f636f756e74",  # type
            "a5636f756e74 cd04d2",  # count
        ),
    ),
    (
        Error(reason=Reason.PROTOCOL_ERROR, message="a control message must be a msgpack map"),
        _h(
            "84",  # map, 4 entries
            "a474797065 a56572726f72",  # type
            "a6726561736f6e ccd0",  # reason
            "a76d657373616765 d927",  # message: str8 of 39 bytes
            "6120636f6e74726f6c206d657373616765206d7573742062652061206d73677061636b206d6170",
            "a3726566 c0",  # ref
        ),
    ),
    (
        Error(reason=Reason.NO_PERMISSION, ref=7),
        _h(
            "84",  # map, 4 entries
            "a474797065 a56572726f72",  # type
            "a6726561736f6e ccc9",  # reason
            "a76d657373616765 a0",  # message
            "a3726566 07",  # ref
        ),
    ),
    (
        Error(reason=Reason.RATE_LIMITED, message="too many requests"),
        _h(
            "84",  # map, 4 entries
            "a474797065 a56572726f72",  # type
            "a6726561736f6e cccc",  # reason: 204 rate_limited (no readable id, so an error push)
            "a76d657373616765 b1746f6f206d616e79207265717565737473",  # message
            "a3726566 c0",  # ref
        ),
    ),
]


@pytest.mark.parametrize(("message", "data"), REQUEST_GOLDEN + SERVER_GOLDEN, ids=_row_id)
def test_encode_golden_message_gives_pinned_bytes(message: Any, data: bytes) -> None:
    assert encode(message) == data


@pytest.mark.parametrize(("message", "data"), REQUEST_GOLDEN, ids=_row_id)
def test_decode_request_golden_bytes_gives_message(message: Any, data: bytes) -> None:
    decoded = decode_request(data)
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize(("message", "data"), SERVER_GOLDEN, ids=_row_id)
def test_decode_server_message_golden_bytes_gives_message(message: Any, data: bytes) -> None:
    decoded = decode_server_message(data)
    assert type(decoded) is type(message)
    assert decoded == message


def test_golden_table_covers_every_message_type() -> None:
    assert {type(m) for m, _ in REQUEST_GOLDEN} == set(REQUEST_TYPES)
    assert {type(m) for m, _ in SERVER_GOLDEN} == set(SERVER_MESSAGE_TYPES)


def test_decode_request_enum_fields_come_back_as_enums() -> None:
    # IntEnum equals its int, so the table's == alone would not notice a plain int.
    join = decode_request(
        encode(Join(id=1, channel="c", user_id="u", role=CustomRole.ROLE_0, state=CustomState.STATE_1))
    )
    assert type(join.role) is CustomRole and join.role is CustomRole.ROLE_0
    assert type(join.state) is CustomState and join.state is CustomState.STATE_1
    left = decode_server_message(encode(Left(channel="c", reason=Reason.KICKED)))
    assert left.reason is Reason.KICKED
    joined = decode_server_message(encode(ParticipantJoined(ParticipantInfo(user_id="u", sid=1))))
    assert type(joined.participant) is ParticipantInfo
    assert joined.participant.net_status is NetStatus.GOOD and joined.participant.type is ParticipantType.NORMAL


@pytest.mark.parametrize(("message", "data"), REQUEST_GOLDEN, ids=_row_id)
def test_decode_request_golden_frame_cut_short_is_protocol_error(message: Any, data: bytes) -> None:
    # The frame-level analogue of feeding a codec one byte at a time: every strict prefix of a
    # valid frame is an incomplete msgpack value, refused as such and never half-decoded.
    for end in range(len(data)):
        with pytest.raises(ProtocolError) as excinfo:
            decode_request(data[:end])
        assert excinfo.value.reason is Reason.PROTOCOL_ERROR


@pytest.mark.parametrize(("message", "data"), REQUEST_GOLDEN[:3], ids=_row_id)
def test_decode_request_golden_frame_with_trailing_byte_is_protocol_error(message: Any, data: bytes) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        decode_request(data + b"\xc0")
    assert excinfo.value.reason is Reason.PROTOCOL_ERROR


@pytest.mark.parametrize(("message", "data"), SERVER_GOLDEN, ids=_row_id)
def test_decode_request_server_message_is_protocol_error(message: Any, data: bytes) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        decode_request(data)
    assert excinfo.value.reason is Reason.PROTOCOL_ERROR


@pytest.mark.parametrize(("message", "data"), REQUEST_GOLDEN, ids=_row_id)
def test_decode_server_message_request_is_protocol_error(message: Any, data: bytes) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        decode_server_message(data)
    assert excinfo.value.reason is Reason.PROTOCOL_ERROR


# --- the frames shown in docs/protocol.md ---------------------------------------------------

# The token example of docs/protocol.md (section 2.7): a test vector for anyone minting tokens.
DOC_TOKEN_SECRET = b"example secret, at least 32 bytes long"
DOC_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJhbGljZSIsImNoYW5uZWwiOiJyYWRpbyIsInJvbGVzIjpbNDA5Niw4MTkyXSwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDM2MDB9"
    ".gElezVJvXqU35L91cFNIgNoonrT2kEs_Kyr0Te51yGs"
)
DOC_SESSION_TOKEN = "nQ4ZbX2cR7mTq0wLs9EvKg"  # opaque: the server's choice, at most 64 characters
DOC_ALICE = ParticipantInfo(
    user_id="alice", sid=1, display_name="Alice", role=CustomRole.ROLE_0, audio=True,
    volume_status=VolumeStatus.ZERO, is_creator=True,
)
DOC_CHANNEL_INFO = ChannelInfo(
    channel_id="radio", channel_uri="airwave:radio", channel_number=1, title="", custom_property="",
    capacity=10_000, has_password=False, member_count=1, heartbeat_time=3, heartbeat_timeout=9,
    self_sid=1, participants=(DOC_ALICE,), session_token=DOC_SESSION_TOKEN,
)
DOC_REQUESTS: dict[str, Any] = {
    "hello_request": Hello(id=1, version=1, client="airwave-py/0.1"),
    "join_request": Join(
        id=2, channel="radio", user_id="alice", display_name="Alice", role=CustomRole.ROLE_0, upload=True
    ),
    "refresh_token_request": RefreshToken(id=3, token=DOC_TOKEN),
    "resume_request": Resume(id=2, session_token=DOC_SESSION_TOKEN),
}
DOC_SERVER_MESSAGES: dict[str, Any] = {
    "hello_reply": Reply(id=1, result={"version": 1, "server": "airwave/0.1.0"}),
    "join_reply": Reply(id=2, result=to_wire(DOC_CHANNEL_INFO)),
    "participant_joined": ParticipantJoined(ParticipantInfo(user_id="bob", sid=2, display_name="Bob")),
    "error": Error(reason=Reason.PROTOCOL_ERROR, message="a control message must be a msgpack map"),
}
DOC_OPUS = bytes.fromhex("f8fffe")  # a 3-byte Opus packet (TOC byte 0xf8 and two bytes of frame data)
DOC_FRAMES: dict[str, bytes] = {
    "hello_request": _h(
        "84a474797065a568656c6c6fa2696401a776657273696f6e01a6636c69656e74ae616972776176652d70792f"
        "302e31"
    ),
    "hello_reply": _h(
        "85a474797065a57265706c79a2696401a6726561736f6e00a76d657373616765a0a6726573756c7482a77665"
        "7273696f6e01a6736572766572ad616972776176652f302e312e30"
    ),
    "join_request": _h(
        "de0011a474797065a46a6f696ea2696402a76368616e6e656ca5726164696fa7757365725f6964a5616c6963"
        "65a87572695f6d6f6465c2ac646973706c61795f6e616d65a5416c696365a4726f6c65cd1000a57374617465"
        "00a675706c6f6164c3a870617373776f7264c0a86361706163697479c0ae6865617274626561745f74696d65"
        "c0b16865617274626561745f74696d656f7574c0a57469746c65a0af637573746f6d5f70726f7065727479a0"
        "ab6d61785f73656e64657273c0a5746f6b656ec0"
    ),
    "join_reply": _h(
        "85a474797065a57265706c79a2696402a6726561736f6e00a76d657373616765a0a6726573756c748faa6368"
        "616e6e656c5f6964a5726164696fab6368616e6e656c5f757269ad616972776176653a726164696fae636861"
        "6e6e656c5f6e756d62657201a57469746c65a0af637573746f6d5f70726f7065727479a0a863617061636974"
        "79cd2710ac6861735f70617373776f7264c2ac6d656d6265725f636f756e7401ae6865617274626561745f74"
        "696d6503b16865617274626561745f74696d656f757409a873656c665f73696401ac7061727469636970616e"
        "7473918aa7757365725f6964a5616c696365a373696401ac646973706c61795f6e616d65a5416c696365a472"
        "6f6c65cd1000a5737461746500a5617564696fc3ad766f6c756d655f73746174757301aa6e65745f73746174"
        "757304a47479706500aa69735f63726561746f72c3ad73657373696f6e5f746f6b656eb66e51345a62583263"
        "52376d547130774c733945764b67ac7265636f72645f737461746500a963646e5f737461746500"
    ),
    "refresh_token_request": _h(
        "83a474797065ad726566726573685f746f6b656ea2696403a5746f6b656ed9c565794a68624763694f694a49"
        "557a49314e694973496e523563434936496b705856434a392e65794a7a645749694f694a6862476c6a5a5349"
        "73496d4e6f595735755a5777694f694a795957527062794973496e4a766247567a496a70624e4441354e6977"
        "344d546b795853776961574630496a6f784e7a41774d4441774d4441774c434a6c654841694f6a45334d4441"
        "774d444d324d4442392e67456c657a564a7658715533354c393163464e49674e6f6f6e7254326b45735f4b79"
        "723054653531794773"
    ),
    "resume_request": _h(
        "83a474797065a6726573756d65a2696402ad73657373696f6e5f746f6b656eb66e51345a6258326352376d54"
        "7130774c733945764b67"
    ),
    "participant_joined": _h(
        "82a474797065b27061727469636970616e745f6a6f696e6564ab7061727469636970616e748aa7757365725f"
        "6964a3626f62a373696402ac646973706c61795f6e616d65a3426f62a4726f6c65cd2000a5737461746500a5"
        "617564696fc2ad766f6c756d655f73746174757300aa6e65745f73746174757304a47479706500aa69735f63"
        "726561746f72c2"
    ),
    "error": _h(
        "84a474797065a56572726f72a6726561736f6eccd0a76d657373616765d9276120636f6e74726f6c206d6573"
        "73616765206d7573742062652061206d73677061636b206d6170a3726566c0"
    ),
    "client_media": _h(
        "c8000a010001000003c02af8fffe"
    ),
    "server_media": _h(
        "c8000e02000000010001000003c02af8fffe"
    ),
}


@pytest.mark.parametrize("name", sorted(DOC_REQUESTS))
def test_doc_example_request_encodes_to_pinned_bytes_and_back(name: str) -> None:
    assert encode(DOC_REQUESTS[name]) == DOC_FRAMES[name]
    assert decode_request(DOC_FRAMES[name]) == DOC_REQUESTS[name]


@pytest.mark.parametrize("name", sorted(DOC_SERVER_MESSAGES))
def test_doc_example_server_message_encodes_to_pinned_bytes_and_back(name: str) -> None:
    assert encode(DOC_SERVER_MESSAGES[name]) == DOC_FRAMES[name]
    assert decode_server_message(DOC_FRAMES[name]) == DOC_SERVER_MESSAGES[name]


def test_doc_example_join_reply_result_reads_as_channel_info() -> None:
    reply = decode_server_message(DOC_FRAMES["join_reply"])
    assert channel_info_from_wire(reply.result) == DOC_CHANNEL_INFO


def test_doc_example_token_is_what_mint_token_gives_and_verifies() -> None:
    # Alice, channel radio, roles 0 and 1, issued 2023-11-14T22:13:20Z, valid for an hour.
    roles = [CustomRole.ROLE_0, CustomRole.ROLE_1]
    assert mint_token(DOC_TOKEN_SECRET, channel="radio", user_id="alice", roles=roles, now=1_700_000_000, ttl=3600) == DOC_TOKEN
    claims = verify_token(DOC_TOKEN_SECRET, DOC_TOKEN, now=1_700_000_000)
    assert (claims.channel, claims.user_id, claims.roles) == ("radio", "alice", frozenset(roles))
    assert (claims.issued_at, claims.expires_at) == (1_700_000_000, 1_700_003_600)
    text = DOCS.read_text(encoding="utf-8")
    assert DOC_TOKEN in text and DOC_SESSION_TOKEN in text


def test_doc_example_join_reply_session_token_is_the_one_resume_presents() -> None:
    reply = decode_server_message(DOC_FRAMES["join_reply"])
    assert channel_info_from_wire(reply.result).session_token == decode_request(DOC_FRAMES["resume_request"]).session_token


def test_doc_example_media_frames_are_what_the_codec_builds() -> None:
    client = encode_client_media(seq=1, timestamp=960, payload=DOC_OPUS, level=42)
    assert client == DOC_FRAMES["client_media"]
    assert relay_frame(1, client) == DOC_FRAMES["server_media"]


def _doc_frames() -> dict[str, bytes]:
    """Each ``<!-- frame: NAME -->`` block of docs/protocol.md: the hex before each ``#``."""
    found: dict[str, bytes] = {}
    text = DOCS.read_text(encoding="utf-8")
    for name, block in re.findall(r"<!-- frame: (\w+) -->\s*```text\n(.*?)```", text, re.DOTALL):
        hex_digits = "".join(line.split("#", 1)[0] for line in block.splitlines())
        found[name] = bytes.fromhex(hex_digits)
    return found


def test_docs_protocol_md_shows_the_pinned_frames() -> None:
    assert _doc_frames() == DOC_FRAMES


# --- hypothesis strategies: valid values for every message ----------------------------------

# Identifiers and names: no control characters (Unicode Cc), and no lone surrogates, which
# UTF-8 cannot carry. Free text (content, titles, properties) may hold control characters.
_NAME_CHARS = st.characters(exclude_categories=("Cc", "Cs"))
_FREE_CHARS = st.characters(exclude_categories=("Cs",))


def _chars(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(_NAME_CHARS, min_size=min_size, max_size=max_size)


def _utf8(min_bytes: int, max_bytes: int) -> st.SearchStrategy[str]:
    """Text of min_bytes..max_bytes bytes of UTF-8 (cut at a character boundary)."""

    def fit(text: str) -> str:
        return text.encode()[:max_bytes].decode("utf-8", "ignore")

    return st.text(_FREE_CHARS, min_size=min_bytes, max_size=max_bytes).map(fit).filter(
        lambda text: len(text.encode()) >= min_bytes
    )


request_ids = st.integers(1, limits.MAX_REQUEST_ID)
# The codec takes any 1-2048 characters as a token (the server verifies it). A join's token is
# drawn from the token alphabet at full length or as short free text, so a join with every
# other field near its limit stays under MAX_CONTROL_BYTES (2048 four-byte characters would not).
_TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_."
# Tokens are printable ASCII; anything else is refused by the constructors.
tokens = st.text(_TOKEN_ALPHABET, min_size=1, max_size=limits.MAX_TOKEN_CHARS)
join_tokens = tokens
session_tokens = _chars(1, 64)
user_ids = _chars(1, limits.MAX_ID_CHARS)
channel_ids = _chars(1, limits.MAX_ID_CHARS)
channels = _chars(1, limits.MAX_ID_CHARS + 16)  # an id, or a uri ("airwave:" + id)
names = _chars(0, limits.MAX_NAME_CHARS)
roles = st.sampled_from(CustomRole)
states = st.sampled_from(CustomState)
reasons = st.sampled_from(Reason)
sids = st.integers(0, 2**32 - 1)
channel_numbers = st.integers(1, 2**63 - 1)
counts = st.integers(0, limits.MAX_CAPACITY)

REQUEST_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    Hello: st.builds(Hello, id=request_ids, version=st.integers(1, 2**16), client=names),
    Join: st.builds(
        Join,
        id=request_ids,
        channel=channels,
        user_id=user_ids,
        uri_mode=st.booleans(),
        display_name=names,
        role=roles,
        state=states,
        upload=st.booleans(),
        password=st.none() | _chars(1, limits.MAX_PASSWORD_CHARS),
        capacity=st.none() | st.integers(1, limits.MAX_CAPACITY),
        # Past the longest heartbeat_time, so any pair is valid (timeout must exceed time).
        heartbeat_time=st.none() | st.integers(*limits.HEARTBEAT_TIME_RANGE),
        heartbeat_timeout=st.none() | st.integers(limits.HEARTBEAT_TIME_RANGE[1] + 1, limits.HEARTBEAT_TIMEOUT_RANGE[1]),
        title=_utf8(0, limits.MAX_PROPERTY_BYTES),
        custom_property=_utf8(0, limits.MAX_PROPERTY_BYTES),
        max_senders=st.none() | st.integers(1, 1000),
        token=st.none() | join_tokens,
    ),
    Leave: st.builds(Leave, id=request_ids),
    Stop: st.builds(Stop, id=request_ids),
    SetRole: st.builds(SetRole, id=request_ids, role=roles, user_id=st.none() | user_ids),
    SetState: st.builds(SetState, id=request_ids, state=states, user_id=st.none() | user_ids),
    EnableUpload: st.builds(EnableUpload, id=request_ids, enabled=st.booleans()),
    Kick: st.builds(Kick, id=request_ids, user_id=user_ids),
    Query: st.builds(Query, id=request_ids, channel=channels),
    SendMessage: st.builds(
        SendMessage,
        id=request_ids,
        msg_type=names,
        content=_utf8(1, limits.MAX_MESSAGE_CONTENT_BYTES),
        to=st.none() | user_ids,
    ),
    SetCustomProperty: st.builds(SetCustomProperty, id=request_ids, value=_utf8(0, limits.MAX_PROPERTY_BYTES)),
    SubscribeAudio: st.builds(SubscribeAudio, id=request_ids, user_id=user_ids, enabled=st.booleans()),
    Ping: st.builds(Ping, id=request_ids),
    RefreshToken: st.builds(RefreshToken, id=request_ids, token=tokens),
    Resume: st.builds(Resume, id=request_ids, session_token=session_tokens),
    EnableCdn: st.builds(EnableCdn, id=request_ids, enabled=st.booleans(), key_interval_ms=st.sampled_from([0, 1000, 2000, 10000])),
    EnableRecord: st.builds(
        EnableRecord, id=request_ids, enabled=st.booleans(),
        params=st.sampled_from(["", "{}", '{"mix": true}', '{"tracks": false}', '{"mix": false, "tracks": true}']),
    ),
    AdminChannels: st.builds(AdminChannels, id=request_ids, token=st.none() | tokens),
    AdminMembers: st.builds(AdminMembers, id=request_ids, channel=user_ids, token=st.none() | tokens),
    AdminKick: st.builds(AdminKick, id=request_ids, channel=user_ids, user_id=user_ids, token=st.none() | tokens),
    AdminStop: st.builds(AdminStop, id=request_ids, channel=user_ids, token=st.none() | tokens),
    AdminMute: st.builds(AdminMute, id=request_ids, channel=user_ids, user_id=user_ids, muted=st.booleans(), token=st.none() | tokens),
    AdminEndSession: st.builds(AdminEndSession, id=request_ids, channel=user_ids, user_id=user_ids, token=st.none() | tokens),
}

participants = st.builds(
    ParticipantInfo,
    user_id=user_ids,
    sid=sids,
    display_name=names,
    role=roles,
    state=states,
    audio=st.booleans(),
    volume_status=st.sampled_from(VolumeStatus),
    net_status=st.sampled_from(NetStatus),
    type=st.sampled_from(ParticipantType),
    is_creator=st.booleans(),
)
channel_infos = st.builds(
    ChannelInfo,
    channel_id=channel_ids,
    channel_uri=channels,
    channel_number=channel_numbers,
    title=_utf8(0, 300),
    custom_property=_utf8(0, 300),
    capacity=st.integers(1, limits.MAX_CAPACITY),
    has_password=st.booleans(),
    member_count=counts,
    heartbeat_time=st.integers(*limits.HEARTBEAT_TIME_RANGE),
    heartbeat_timeout=st.integers(*limits.HEARTBEAT_TIMEOUT_RANGE),
    self_sid=sids,
    participants=st.lists(participants, max_size=4),
    session_token=st.just("") | session_tokens,
    record_state=st.sampled_from(RecordState),
    cdn_state=st.sampled_from(CdnState),
)
query_infos = st.builds(
    QueryInfo, channel_id=channel_ids, channel_number=channel_numbers, client_count=counts,
    members=st.lists(user_ids, max_size=5),
)
# Reply.result is plain data: what each request's reply carries (see Reply's docstring).
reply_results = st.one_of(
    st.none(),
    st.fixed_dictionaries({"version": st.integers(1, 2**16), "server": names}),
    st.fixed_dictionaries({"time": st.floats(allow_nan=False)}),
    channel_infos.map(to_wire),
    query_infos.map(to_wire),
)
change_sets = st.integers(0, 2**16)

SERVER_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    Reply: st.builds(Reply, id=request_ids, reason=reasons, message=_utf8(0, 1024), result=reply_results),
    ParticipantJoined: st.builds(ParticipantJoined, participant=participants),
    ParticipantLeft: st.builds(ParticipantLeft, user_id=user_ids, reason=reasons),
    ParticipantUpdated: st.builds(ParticipantUpdated, participant=participants, changes=change_sets, in_view=st.booleans()),
    VolumeChanged: st.builds(VolumeChanged, user_id=user_ids, volume_status=st.sampled_from(VolumeStatus)),
    PropertyChanged: st.builds(
        PropertyChanged,
        changes=change_sets,
        custom_property=_utf8(0, limits.MAX_PROPERTY_BYTES),
        title=_utf8(0, limits.MAX_PROPERTY_BYTES),
        record_state=st.sampled_from(RecordState),
        cdn_state=st.sampled_from(CdnState),
    ),
    MessageReceived: st.builds(
        MessageReceived,
        msg_type=names,
        content=_utf8(1, limits.MAX_MESSAGE_CONTENT_BYTES),
        from_user_id=user_ids,
        to=st.none() | user_ids,
    ),
    Left: st.builds(Left, channel=channel_ids, reason=reasons),
    MemberCount: st.builds(MemberCount, count=counts),
    Error: st.builds(Error, reason=reasons, message=_utf8(0, 1024), ref=st.none() | request_ids),
}

any_request = st.one_of(list(REQUEST_STRATEGIES.values()))
any_server_message = st.one_of(list(SERVER_STRATEGIES.values()))


def test_strategies_cover_every_message_type() -> None:
    # A new message type without a strategy would silently escape the round-trip tests.
    assert set(REQUEST_STRATEGIES) == set(REQUEST_TYPES)
    assert set(SERVER_STRATEGIES) == set(SERVER_MESSAGE_TYPES)


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", REQUEST_TYPES, ids=lambda cls: cls.TYPE)
@ROUND_TRIP
@given(data=st.data())
def test_decode_request_of_encoded_request_gives_it_back(cls: type, data: st.DataObject) -> None:
    message = data.draw(REQUEST_STRATEGIES[cls])
    assert decode_request(encode(message)) == message


@pytest.mark.parametrize("cls", SERVER_MESSAGE_TYPES, ids=lambda cls: cls.TYPE)
@ROUND_TRIP
@given(data=st.data())
def test_decode_server_message_of_encoded_message_gives_it_back(cls: type, data: st.DataObject) -> None:
    message = data.draw(SERVER_STRATEGIES[cls])
    assert decode_server_message(encode(message)) == message


@ROUND_TRIP
@given(info=channel_infos)
def test_channel_info_from_wire_of_join_reply_result_gives_it_back(info: ChannelInfo) -> None:
    reply = decode_server_message(encode(Reply(id=1, result=info)))
    assert channel_info_from_wire(reply.result) == info


@ROUND_TRIP
@given(info=query_infos)
def test_query_info_from_wire_of_query_reply_result_gives_it_back(info: QueryInfo) -> None:
    reply = decode_server_message(encode(Reply(id=1, result=info)))
    assert query_info_from_wire(reply.result) == info


def test_decode_request_largest_valid_join_is_accepted() -> None:
    # Every field at its limit, in 4-byte characters (the token in ASCII, as minted): still
    # under MAX_CONTROL_BYTES.
    wide = "\U0001f3b5"
    join = Join(
        id=limits.MAX_REQUEST_ID, channel=wide * (limits.MAX_ID_CHARS + 16), user_id=wide * limits.MAX_ID_CHARS,
        uri_mode=True, display_name=wide * limits.MAX_NAME_CHARS, role=CustomRole.ROLE_3,
        state=CustomState.STATE_3, upload=True, password=wide * limits.MAX_PASSWORD_CHARS,
        capacity=limits.MAX_CAPACITY, heartbeat_time=60, heartbeat_timeout=300,
        title=wide * (limits.MAX_PROPERTY_BYTES // 4), custom_property=wide * (limits.MAX_PROPERTY_BYTES // 4),
        max_senders=1000, token=_TOKEN_ALPHABET[0] * limits.MAX_TOKEN_CHARS,  # a token is ASCII
    )
    assert len(encode(join)) <= limits.MAX_CONTROL_BYTES
    assert decode_request(encode(join)) == join


@ROUND_TRIP
@given(message=st.one_of(any_request, any_server_message))
def test_is_media_frame_encoded_control_message_is_false(message: Any) -> None:
    # Control frames are msgpack maps (0x80-0x8f, 0xde, 0xdf); media frames start with 0xc8.
    assert not is_media_frame(encode(message))


# --- garbage never crashes the decoder ------------------------------------------------------


def _refusal_is_well_formed(error: ProtocolError, allowed: frozenset[Reason] = DECODER_REASONS) -> None:
    assert error.reason in allowed, error
    assert error.ref is None or 1 <= error.ref <= limits.MAX_REQUEST_ID
    # The server answers a refusal with an Error, or a Reply when the id was read: both must
    # be constructible from the refusal, whatever the peer sent.
    Error(error.reason, error.message, error.ref)
    if error.ref is not None:
        Reply(error.ref, error.reason, error.message)


def _decode_request_or_refuse(data: bytes) -> None:
    """decode_request either returns a valid request or raises ProtocolError: nothing else."""
    try:
        message = decode_request(data)
    except ProtocolError as error:
        _refusal_is_well_formed(error)
        return
    assert type(message) in REQUEST_TYPES
    assert decode_request(encode(message)) == message


msgpack_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.one_of(st.text(max_size=10), st.integers(-(2**63), 2**64 - 1), st.binary(max_size=4)),
            children,
            max_size=5,
        ),
        st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    ),
    max_leaves=20,
)
_ALL_FIELD_NAMES = sorted({name for cls in REQUEST_TYPES for name in attrs.fields_dict(cls)})
_REQUEST_TAGS = [cls.TYPE for cls in REQUEST_TYPES]


@GARBAGE
@given(data=st.binary(max_size=200))
def test_decode_request_arbitrary_bytes_never_crashes(data: bytes) -> None:
    _decode_request_or_refuse(data)


@GARBAGE
@given(
    head=st.sampled_from([b"\x81", b"\x82", b"\x85", b"\xde\x00\x03", b"\xdf\x00\x00\x00\x02"]),
    tail=st.binary(max_size=100),
)
def test_decode_request_arbitrary_bytes_after_a_map_header_never_crash(head: bytes, tail: bytes) -> None:
    _decode_request_or_refuse(head + tail)


@GARBAGE
@given(value=msgpack_values)
def test_decode_request_arbitrary_msgpack_value_never_crashes(value: Any) -> None:
    _decode_request_or_refuse(msgpack.packb(value, use_bin_type=True))


@GARBAGE
@given(
    type_tag=st.sampled_from(_REQUEST_TAGS),
    fields=st.dictionaries(
        st.one_of(st.sampled_from(_ALL_FIELD_NAMES), st.text(max_size=8)), msgpack_values, max_size=8
    ),
)
def test_decode_request_valid_type_with_random_fields_never_crashes(type_tag: str, fields: dict[str, Any]) -> None:
    _decode_request_or_refuse(msgpack.packb({"type": type_tag, **fields}, use_bin_type=True))


@GARBAGE
@given(data=st.data())
def test_decode_request_valid_request_with_one_field_spoiled_never_crashes(data: st.DataObject) -> None:
    wire = to_wire(data.draw(any_request))
    key = data.draw(st.sampled_from(sorted(wire)))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        wire[key] = data.draw(msgpack_values)
    elif action == "delete":
        del wire[key]
    else:
        wire[data.draw(st.text(max_size=8))] = data.draw(msgpack_values)
    _decode_request_or_refuse(msgpack.packb(wire, use_bin_type=True))


@GARBAGE
@given(value=msgpack_values, type_tag=st.sampled_from([cls.TYPE for cls in SERVER_MESSAGE_TYPES]))
def test_decode_server_message_arbitrary_fields_never_crash(value: Any, type_tag: str) -> None:
    for data in (
        msgpack.packb(value, use_bin_type=True),
        msgpack.packb({"type": type_tag, "participant": value, "reason": value}, use_bin_type=True),
    ):
        try:
            message = decode_server_message(data)
        except ProtocolError as error:
            _refusal_is_well_formed(error)
        else:
            assert type(message) in SERVER_MESSAGE_TYPES


# --- specific refusals, with their reason codes ---------------------------------------------


def _refusal(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as excinfo:
        decode_request(data)
    return excinfo.value


def _pack(**fields: Any) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def _join_wire(**changes: Any) -> bytes:
    return _pack(**{**to_wire(Join(id=7, channel="radio", user_id="alice")), **changes})


def test_decode_request_over_max_control_bytes_is_too_large() -> None:
    data = _pack(type="ping", id=1, pad="x" * limits.MAX_CONTROL_BYTES)
    assert len(data) > limits.MAX_CONTROL_BYTES
    assert _refusal(data).reason is Reason.TOO_LARGE


def test_decode_request_of_exactly_max_control_bytes_is_not_refused_for_size() -> None:
    overhead = len(_pack(type="ping", id=1, pad=""))
    data = _pack(type="ping", id=1, pad="x" * (limits.MAX_CONTROL_BYTES - overhead - 2))  # str16 header: +2
    assert len(data) == limits.MAX_CONTROL_BYTES
    error = _refusal(data)
    assert error.reason is Reason.INVALID_PARAM  # the unknown field "pad", not the size
    assert error.ref == 1


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used in msgpack
        msgpack.packb([{"type": "ping", "id": 1}]),
        msgpack.packb(1),
        msgpack.packb("ping"),
        msgpack.packb(None),
        msgpack.packb(b"\x82", use_bin_type=True),
        msgpack.packb(msgpack.ExtType(1, b"\x00" * 8)),
        encode_client_media(1, 960, b"\xf8"),  # a media frame is never a control message
    ],
    ids=["empty", "c1", "array", "int", "str", "nil", "bin", "ext", "media"],
)
def test_decode_request_not_a_map_is_protocol_error(data: bytes) -> None:
    error = _refusal(data)
    assert error.reason is Reason.PROTOCOL_ERROR
    assert error.ref is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x82\xa4type\xa4p\xffng\xa2id\x01",  # a value that is not UTF-8
        b"\x83\xa4type\xa4ping\xa2id\x01\xa2\xff\xfe\x01",  # a key that is not UTF-8
    ],
    ids=["value", "key"],
)
def test_decode_request_invalid_utf8_is_protocol_error(data: bytes) -> None:
    assert decode_request(b"\x82\xa4type\xa4ping\xa2id\x01") == Ping(id=1)  # the frames' valid twin
    assert _refusal(data).reason is Reason.PROTOCOL_ERROR


def test_decode_request_non_string_key_is_protocol_error() -> None:
    assert _refusal(msgpack.packb({"type": "ping", "id": 1, 5: 1})).reason is Reason.PROTOCOL_ERROR


def test_decode_request_missing_type_is_protocol_error_with_ref() -> None:
    error = _refusal(_pack(id=9))
    assert (error.reason, error.ref) == (Reason.PROTOCOL_ERROR, 9)


@pytest.mark.parametrize("type_tag", ["pong", "PING", "reply", "", 1, None])
def test_decode_request_unknown_type_is_protocol_error_with_ref(type_tag: Any) -> None:
    error = _refusal(_pack(type=type_tag, id=12))
    assert (error.reason, error.ref) == (Reason.PROTOCOL_ERROR, 12)


def test_decode_request_unknown_field_is_invalid_param_with_ref() -> None:
    error = _refusal(_pack(type="ping", id=42, colour="blue"))
    assert (error.reason, error.ref) == (Reason.INVALID_PARAM, 42)
    assert "colour" in error.message


def test_decode_request_unknown_field_in_join_is_invalid_param_with_ref() -> None:
    # A field of another request (resume's) is as unknown to join as any other name.
    error = _refusal(_join_wire(session_token="abc"))
    assert (error.reason, error.ref) == (Reason.INVALID_PARAM, 7)
    assert "session_token" in error.message


@pytest.mark.parametrize("missing", ["id", "channel", "user_id"])
def test_decode_request_missing_required_field_is_invalid_param(missing: str) -> None:
    wire = to_wire(Join(id=7, channel="radio", user_id="alice"))
    del wire[missing]
    error = _refusal(msgpack.packb(wire))
    assert error.reason is Reason.INVALID_PARAM
    assert error.ref == (None if missing == "id" else 7)
    assert error.message == f"join: missing field(s) {[missing]!r}", "names the field, not Python's __init__"


def test_decode_request_optional_fields_left_out_take_their_defaults() -> None:
    assert decode_request(_pack(type="join", id=7, channel="radio", user_id="alice")) == Join(
        id=7, channel="radio", user_id="alice"
    )
    assert decode_request(_pack(type="join", id=7, channel="radio", user_id="alice")).role is CustomRole.ROLE_1


@pytest.mark.parametrize(
    "data",
    [
        _pack(type="ping", id=True),
        _join_wire(role=True),
        _join_wire(state=False),
        _join_wire(capacity=True),
        _join_wire(heartbeat_time=True),
        _pack(type="hello", id=1, version=True),
        _pack(type="set_role", id=1, role=True),
    ],
    ids=["id", "join.role", "join.state", "capacity", "heartbeat_time", "version", "set_role.role"],
)
def test_decode_request_bool_where_an_int_is_expected_is_invalid_param(data: bytes) -> None:
    assert _refusal(data).reason is Reason.INVALID_PARAM


def test_decode_request_bool_id_gives_no_ref() -> None:
    assert _refusal(_pack(type="ping", id=True)).ref is None


@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_decode_request_non_bool_where_a_bool_is_expected_is_invalid_param(value: Any) -> None:
    assert _refusal(_join_wire(upload=value)).reason is Reason.INVALID_PARAM


@pytest.mark.parametrize("request_id", [0, -1, limits.MAX_REQUEST_ID + 1, 2**64 - 1, 1.0, "1"])
def test_decode_request_id_out_of_range_is_invalid_param_without_ref(request_id: Any) -> None:
    error = _refusal(_pack(type="ping", id=request_id))
    assert (error.reason, error.ref) == (Reason.INVALID_PARAM, None)


@pytest.mark.parametrize("request_id", [1, limits.MAX_REQUEST_ID])
def test_decode_request_id_at_its_limits_is_accepted(request_id: int) -> None:
    assert decode_request(_pack(type="ping", id=request_id)) == Ping(id=request_id)


@pytest.mark.parametrize("role", [4097, 1, 3, 12, 4096 | 8192, 1 << 16, -4096, 4096.0])
def test_decode_request_role_that_is_not_one_custom_role_is_invalid_param(role: Any) -> None:
    assert _refusal(_join_wire(role=role)).reason is Reason.INVALID_PARAM
    assert _refusal(_pack(type="set_role", id=1, role=role)).reason is Reason.INVALID_PARAM


@pytest.mark.parametrize("role", [0, 4096, 8192, 16384, 32768])
def test_decode_request_role_bit_flag_is_accepted(role: int) -> None:
    assert decode_request(_join_wire(role=role)).role is CustomRole(role)


@pytest.mark.parametrize("state", [1, 4097, 4096 | 8192])
def test_decode_request_state_that_is_not_one_custom_state_is_invalid_param(state: int) -> None:
    # Decision 3: one custom state per participant, so a combination of flags is refused.
    assert _refusal(_pack(type="set_state", id=1, state=state)).reason is Reason.INVALID_PARAM


def _send_message(content: Any) -> bytes:
    return _pack(type="send_message", id=3, msg_type="chat", content=content, to=None)


@pytest.mark.parametrize(
    "content",
    ["", "x" * 4097, "\u00e9" * 2048 + "x", "\u20ac" * 1366, "\U0001f3b5" * 1024 + "x"],
    ids=["empty", "4097-ascii", "4097-bytes-2049-chars", "4098-bytes-euro", "4097-bytes-4-byte-chars"],
)
def test_send_message_content_outside_1_to_4096_bytes_is_invalid_param(content: str) -> None:
    error = _refusal(_send_message(content))
    assert (error.reason, error.ref) == (Reason.INVALID_PARAM, 3)


@pytest.mark.parametrize(
    "content",
    ["x", "x" * 4096, "\u00e9" * 2048, "\u20ac" * 1365 + "x", "\U0001f3b5" * 1024, "line\nbreak\ttab"],
    ids=["1-byte", "4096-ascii", "4096-bytes-2-byte-chars", "4096-bytes-euro", "4096-bytes-4-byte-chars", "controls"],
)
def test_send_message_content_of_1_to_4096_bytes_is_accepted(content: str) -> None:
    assert decode_request(_send_message(content)).content == content


def test_send_message_content_not_a_string_is_invalid_param() -> None:
    assert _refusal(_send_message(b"bytes")).reason is Reason.INVALID_PARAM


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("heartbeat_time", 0),
        ("heartbeat_time", 61),
        ("heartbeat_time", -1),
        ("heartbeat_time", 3.0),  # whole seconds on the way in
        ("heartbeat_timeout", 2),
        ("heartbeat_timeout", 301),
    ],
)
def test_join_heartbeat_out_of_range_is_invalid_param(field: str, value: Any) -> None:
    error = _refusal(_join_wire(**{field: value}))
    assert (error.reason, error.ref) == (Reason.INVALID_PARAM, 7)


@pytest.mark.parametrize(
    ("field", "value"),
    [("heartbeat_time", 1), ("heartbeat_time", 60), ("heartbeat_timeout", 3), ("heartbeat_timeout", 300)],
)
def test_join_heartbeat_at_its_limits_is_accepted(field: str, value: int) -> None:
    assert getattr(decode_request(_join_wire(**{field: value})), field) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [("capacity", 0), ("capacity", limits.MAX_CAPACITY + 1), ("max_senders", 0), ("max_senders", 1001)],
)
def test_join_capacity_or_senders_out_of_range_is_invalid_param(field: str, value: int) -> None:
    assert _refusal(_join_wire(**{field: value})).reason is Reason.INVALID_PARAM


@pytest.mark.parametrize(
    "user_id",
    ["", "x" * (limits.MAX_ID_CHARS + 1), "a\x00b", "a\nb", "tab\t", "del\x7f", "c1\x85", 7, None],
    ids=["empty", "129-chars", "nul", "newline", "tab", "del", "c1-nel", "int", "nil"],
)
def test_join_user_id_invalid_is_invalid_param(user_id: Any) -> None:
    assert _refusal(_join_wire(user_id=user_id)).reason is Reason.INVALID_PARAM


def test_join_user_id_of_128_characters_is_accepted() -> None:
    user_id = "\u00e9" * limits.MAX_ID_CHARS  # limits on ids count characters, not bytes
    assert decode_request(_join_wire(user_id=user_id)).user_id == user_id


def test_join_title_over_4096_bytes_is_invalid_param() -> None:
    assert _refusal(_join_wire(title="\u00e9" * 2049)).reason is Reason.INVALID_PARAM


def test_join_password_empty_is_invalid_param() -> None:
    assert _refusal(_join_wire(password="")).reason is Reason.INVALID_PARAM


# --- tokens and session tokens: the codec checks their shape, the server their meaning ------


def _refresh_wire(**changes: Any) -> bytes:
    return _pack(**{**to_wire(RefreshToken(id=8, token="aw1.a.b")), **changes})


def _resume_wire(**changes: Any) -> bytes:
    return _pack(**{**to_wire(Resume(id=9, session_token="s")), **changes})


BAD_TOKENS = pytest.mark.parametrize(
    "token",
    ["", "x" * (limits.MAX_TOKEN_CHARS + 1), "aw1.\x00", "aw1.a\nb", "aw1.a\tb", "aw1.\x7f", "aw1.\x85",
     b"aw1.a.b", 7, True],
    ids=["empty", "2049-chars", "nul", "newline", "tab", "del", "c1-nel", "bin", "int", "bool"],
)


@BAD_TOKENS
def test_join_token_invalid_is_invalid_param_never_token_invalid(token: Any) -> None:
    # A malformed token is a malformed field (invalid_param [14]); token_invalid [202] is the
    # server's answer to a well-formed token that does not verify.
    error = _refusal(_join_wire(token=token))
    assert (error.reason, error.ref) == (Reason.INVALID_PARAM, 7)


@BAD_TOKENS
def test_refresh_token_token_invalid_is_invalid_param(token: Any) -> None:
    error = _refusal(_refresh_wire(token=token))
    assert (error.reason, error.ref) == (Reason.INVALID_PARAM, 8)


@pytest.mark.parametrize(
    "token",
    ["x", "x" * limits.MAX_TOKEN_CHARS, "not a token at all", DOC_TOKEN],
    ids=["1-char", "2048-chars", "garbage", "minted"],
)
def test_token_of_1_to_2048_characters_is_accepted_unverified(token: str) -> None:
    # Any printable ASCII of the right length; whether the token verifies is the server's business.
    assert decode_request(_join_wire(token=token)).token == token
    assert decode_request(_refresh_wire(token=token)).token == token


def test_join_token_nil_or_left_out_is_no_token() -> None:
    assert decode_request(_join_wire(token=None)).token is None
    assert decode_request(_pack(type="join", id=7, channel="radio", user_id="alice")).token is None


def test_refresh_token_without_a_token_is_invalid_param() -> None:
    for data in (_refresh_wire(token=None), _pack(type="refresh_token", id=8)):
        error = _refusal(data)
        assert (error.reason, error.ref) == (Reason.INVALID_PARAM, 8)


@pytest.mark.parametrize(
    "session_token",
    ["", "x" * 65, "\U0001f3b5" * 65, "s\x00", "s\n", "s\x7f", "s\x9f", None, b"s", 7],
    ids=["empty", "65-chars", "65-four-byte-chars", "nul", "newline", "del", "c1", "nil", "bin", "int"],
)
def test_resume_session_token_invalid_is_invalid_param(session_token: Any) -> None:
    error = _refusal(_resume_wire(session_token=session_token))
    assert (error.reason, error.ref) == (Reason.INVALID_PARAM, 9)


def test_resume_without_a_session_token_is_invalid_param() -> None:
    error = _refusal(_pack(type="resume", id=9))
    assert (error.reason, error.ref) == (Reason.INVALID_PARAM, 9)


@pytest.mark.parametrize("session_token", ["s", "x" * 64, "\U0001f3b5" * 64], ids=["1-char", "64-chars", "64-four-byte-chars"])
def test_resume_session_token_of_1_to_64_characters_is_accepted(session_token: str) -> None:
    assert decode_request(_resume_wire(session_token=session_token)) == Resume(id=9, session_token=session_token)


@pytest.mark.parametrize("session_token", ["", "x" * 64, DOC_SESSION_TOKEN], ids=["empty", "64-chars", "doc"])
def test_channel_info_session_token_of_0_to_64_characters_is_accepted(session_token: str) -> None:
    wire = {**to_wire(DOC_CHANNEL_INFO), "session_token": session_token}
    assert channel_info_from_wire(wire).session_token == session_token


@pytest.mark.parametrize("session_token", ["x" * 65, "s\x00", None, 7], ids=["65-chars", "nul", "nil", "int"])
def test_channel_info_session_token_invalid_is_protocol_error(session_token: Any) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        channel_info_from_wire({**to_wire(DOC_CHANNEL_INFO), "session_token": session_token})
    assert excinfo.value.reason is Reason.PROTOCOL_ERROR


def test_channel_info_without_a_session_token_reads_as_empty() -> None:
    # An older server's join reply has no session_token: no resume, but it still reads.
    wire = to_wire(DOC_CHANNEL_INFO)
    del wire["session_token"]
    assert channel_info_from_wire(wire) == attrs.evolve(DOC_CHANNEL_INFO, session_token="")


# --- regressions: every refusal fits an answer, every valid value encodes -------------------


def test_protocol_error_quoting_a_huge_multibyte_field_name_still_fits_an_error_reply() -> None:
    error = _refusal(_pack(type="ping", id=5, **{"\u00e9" * 5000: 1}))
    assert (error.reason, error.ref) == (Reason.INVALID_PARAM, 5)
    _refusal_is_well_formed(error)
    assert len(error.message) <= ProtocolError.MAX_MESSAGE_CHARS


@pytest.mark.parametrize(
    "build",
    [
        lambda: ParticipantInfo(user_id="\ud800", sid=1),
        lambda: SendMessage(id=1, msg_type="chat", content="lone \udc00 surrogate"),
        lambda: Join(id=1, channel="c", user_id="u", title="\ud83c"),
        lambda: Join(id=1, channel="c", user_id="u", token="aw1.\ud83c"),
        lambda: RefreshToken(id=1, token="aw1.\udc00"),
        lambda: Resume(id=1, session_token="\ud800"),
    ],
    ids=["user_id", "content", "title", "join.token", "refresh_token.token", "session_token"],
)
def test_message_with_lone_surrogate_is_refused_by_its_constructor(build: Any) -> None:
    # UTF-8 cannot carry a lone surrogate, so encode() could not write such a message.
    with pytest.raises(ValueError):
        build()


def test_participant_updated_without_in_view_reads_as_in_view() -> None:
    """A server that predates ``in_view`` sends none: its updates keep a participant in view."""
    info = ParticipantInfo(user_id="bob", sid=2)
    data = msgpack.packb({"type": "participant_updated", "participant": attrs.asdict(info), "changes": 1})
    assert decode_server_message(data) == ParticipantUpdated(info, changes=1, in_view=True)


def test_participant_updated_in_view_must_be_a_boolean() -> None:
    info = ParticipantInfo(user_id="bob", sid=2)
    data = msgpack.packb({"type": "participant_updated", "participant": attrs.asdict(info), "changes": 1, "in_view": 1})
    with pytest.raises(ProtocolError) as refused:
        decode_server_message(data)
    assert refused.value.reason is Reason.INVALID_PARAM


def test_participant_updated_change_flags_are_sent_as_a_plain_integer() -> None:
    changes = ParticipantChange.CUSTOM_STATE | ParticipantChange.AUDIO
    message = ParticipantUpdated(ParticipantInfo(user_id="bob", sid=2), changes=changes)
    assert type(message.changes) is int and message.changes == 0b10001
    assert decode_server_message(encode(message)) == message
    assert PropertyChanged(changes=PropertyChange.TITLE, custom_property="").changes == 4


@pytest.mark.parametrize("changes", [True, -1, 2**16 + 1, 1.0])
def test_participant_updated_bad_change_set_is_refused(changes: Any) -> None:
    with pytest.raises(ValueError):
        ParticipantUpdated(ParticipantInfo(user_id="bob", sid=2), changes=changes)


def test_participant_joined_without_a_participant_is_refused() -> None:
    with pytest.raises(ValueError):
        ParticipantJoined({"user_id": "bob", "sid": 2})  # type: ignore[arg-type]
    data = _pack(type="participant_joined", participant="bob")
    with pytest.raises(ProtocolError) as excinfo:
        decode_server_message(data)
    assert excinfo.value.reason is Reason.INVALID_PARAM


def test_server_message_unknown_fields_are_ignored_by_clients() -> None:
    """A newer server may add fields; an older client keeps working (requests stay strict)."""
    data = _pack(type="participant_joined", participant={"user_id": "bob", "sid": 2, "colour": "blue"}, extra=1)
    message = decode_server_message(data)
    assert message == ParticipantJoined(ParticipantInfo(user_id="bob", sid=2))


@pytest.mark.parametrize("members", [[1], [""], ["a\x00"], "abc", [None]])
def test_query_info_members_that_are_not_user_ids_are_refused(members: Any) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        query_info_from_wire({"channel_id": "radio", "channel_number": 1, "client_count": 1, "members": members})
    assert excinfo.value.reason is Reason.PROTOCOL_ERROR


@pytest.mark.parametrize(
    "data", [None, [], {"channel_id": "radio"}, {**to_wire(DOC_CHANNEL_INFO), "participants": [1]}]
)
def test_channel_info_from_wire_malformed_is_protocol_error(data: Any) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        channel_info_from_wire(data)
    assert excinfo.value.reason is Reason.PROTOCOL_ERROR


def test_join_heartbeat_timeout_not_longer_than_time_is_invalid_param() -> None:
    wire = encode(Join(id=7, channel="c", user_id="u", heartbeat_time=10, heartbeat_timeout=60))
    spoiled = wire.replace(bytes.fromhex("b16865617274626561745f74696d656f7574 3c".replace(" ", "")),
                           bytes.fromhex("b16865617274626561745f74696d656f7574 0a".replace(" ", "")))
    with pytest.raises(ProtocolError) as excinfo:
        decode_request(spoiled)
    assert excinfo.value.reason is Reason.INVALID_PARAM and excinfo.value.ref == 7


@pytest.mark.parametrize("token", ["aw1.é", "\u00a0" * 3])
def test_join_token_that_is_not_ascii_is_invalid_param(token: str) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        decode_request(_pack(type="join", id=3, channel="c", user_id="u", token=token))
    assert excinfo.value.reason is Reason.INVALID_PARAM and excinfo.value.ref == 3
