"""airwave.protocol's public surface, its sans-IO promise, and the numbers on the wire.

The enum values are the vendor SDK's (design notes, section 2) so that a client written
against the vendor's documentation maps one to one; changing any of them breaks every client.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import attrs
import pytest

import airwave.protocol as protocol
from airwave.protocol import (
    DEFAULT_POLICY,
    REQUEST_TYPES,
    SERVER_MESSAGE_TYPES,
    ChannelState,
    CustomRole,
    CustomState,
    NetStatus,
    ParticipantChange,
    ParticipantType,
    Permission,
    PropertyChange,
    Reason,
    VolumeStatus,
    limits,
    volume_status_for_level,
)

# Adding a name is a decision (update this list); losing one breaks the other packages.
PUBLIC_NAMES = sorted(
    """
    ADMIN_REQUEST_TYPES AdminChannels AdminEndSession AdminKick AdminMembers AdminMute AdminRequest
    AdminStop ChannelSummary MemberSummary summaries_from_wire
    AUDIENCE_ROLE CdnState ChannelInfo ChannelState CustomRole CustomState DEFAULT_POLICY EnableCdn EnableRecord EnableUpload
    Error HOST_ROLE Hello Join Kick Leave Left MediaPacket MemberCount MessageReceived NetStatus
    ON_THE_MIC ParticipantChange ParticipantInfo ParticipantJoined ParticipantLeft ParticipantType
    ParticipantUpdated Permission Ping PropertyChange PropertyChanged ProtocolError Query QueryInfo
    REQUEST_TYPES Reason RecordState RefreshToken Reply Request Resume RolePolicy SERVER_MESSAGE_TYPES SendMessage
    ServerMessage
    SetCustomProperty SetRole SetState Stop SubscribeAudio VolumeChanged VolumeStatus
    channel_info_from_wire check_client_media client_media_level decode_client_media
    decode_request decode_server_media decode_server_message encode encode_client_media
    is_media_frame query_info_from_wire relay_frame to_wire volume_status_for_level
    """.split()
)


# --- the surface ----------------------------------------------------------------------------


def test_protocol_exports_exactly_the_pinned_names() -> None:
    # Submodules are left out: importing any of them sets an attribute on the package.
    exported = sorted(
        name
        for name in dir(protocol)
        if not name.startswith("_") and not isinstance(getattr(protocol, name), types.ModuleType)
    )
    assert exported == PUBLIC_NAMES


def test_protocol_exports_limits_module() -> None:
    assert isinstance(protocol.limits, types.ModuleType)
    assert protocol.limits.__name__ == "airwave.protocol.limits"


def test_protocol_wire_type_tags_are_pinned() -> None:
    assert [cls.TYPE for cls in REQUEST_TYPES] == [
        "hello", "join", "leave", "stop", "set_role", "set_state", "enable_upload", "kick", "query",
        "send_message", "set_custom_property", "subscribe_audio", "ping", "refresh_token", "resume",
        "enable_record", "enable_cdn",
        "admin_channels", "admin_members", "admin_kick", "admin_stop", "admin_mute", "admin_end_session",
    ]
    assert [cls.TYPE for cls in SERVER_MESSAGE_TYPES] == [
        "reply", "participant_joined", "participant_left", "participant_updated", "volume_changed",
        "property_changed", "message", "left", "member_count", "error",
    ]


@pytest.mark.parametrize("cls", REQUEST_TYPES + SERVER_MESSAGE_TYPES, ids=lambda cls: cls.TYPE)
def test_protocol_message_classes_are_frozen_attrs_exported_by_name(cls: type) -> None:
    assert attrs.has(cls)
    assert getattr(protocol, cls.__name__) is cls
    instance = object.__new__(cls)  # no valid field values needed to try a write
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(instance, attrs.fields(cls)[0].name, None)


def test_protocol_request_classes_are_all_exported_by_the_package() -> None:
    # `from .messages import *` exports only what messages.__all__ lists: a request class left
    # out of it is missing from airwave.protocol though REQUEST_TYPES (and the codec) know it.
    from airwave.protocol import messages

    assert {cls.__name__ for cls in REQUEST_TYPES + SERVER_MESSAGE_TYPES} <= set(messages.__all__)


def test_protocol_import_in_a_fresh_interpreter_loads_no_io_library() -> None:
    # Sans-IO (house style rule 2): every protocol module imports without trio, sockets or
    # the server and media packages. A subprocess, because this test run has trio loaded.
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import airwave.protocol
        for module in pkgutil.iter_modules(airwave.protocol.__path__):
            importlib.import_module("airwave.protocol." + module.name)
        io = {"trio", "trio_websocket", "wsproto", "h11", "av", "asyncio", "socket", "selectors"}
        shell = ("airwave.actors", "airwave.media")
        print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in io or m.startswith(shell))))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []


def test_protocol_tokens_alone_in_a_fresh_interpreter_loads_no_io_library() -> None:
    # tokens.py is imported by the CLI's `airwave token` and by the server's join path; it is
    # pure (the caller passes the secret and the clock) and must stay so on its own.
    script = textwrap.dedent(
        """
        import sys
        import airwave.protocol.tokens
        io = {"trio", "trio_websocket", "wsproto", "h11", "av", "asyncio", "socket", "selectors"}
        shell = ("airwave.actors", "airwave.media")
        print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in io or m.startswith(shell))))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []


def test_protocol_tokens_source_names_no_trio() -> None:
    # Belt and braces for the test above: not even a lazy `import trio` inside a function.
    from airwave.protocol import tokens

    source = Path(tokens.__file__).read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import|from)\s+trio\b", source, re.MULTILINE)


# --- enum numbers, pinned to design.md section 2 --------------------------------------------


def test_reason_numbers_are_the_vendors_and_airwaves() -> None:
    assert {reason.reason_name: int(reason) for reason in Reason} == {
        "none": 0, "not_login": 1, "timeout": 2, "network": 3, "call_function_error": 4,
        "already_joined": 5, "kicked": 6, "offline": 7, "quit": 8, "over": 9, "full": 10,
        "invalid_password": 11, "internal_error": 12, "server_error": 13, "invalid_param": 14,
        "other": 100,
        "not_found": 200, "no_permission": 201, "token_invalid": 202, "token_expired": 203,
        "rate_limited": 204, "too_large": 205, "server_shutdown": 206, "server_restart": 207,
        "protocol_error": 208, "slow_consumer": 209, "duplicate_session": 210,
    }


def test_channel_state_numbers_are_the_vendors() -> None:
    assert {s.name: int(s) for s in ChannelState} == {"IDLE": 0, "JOINING": 1, "JOINED": 2, "LEAVING": 3}


def test_custom_role_numbers_are_bit_flags_and_zero_is_no_role() -> None:
    assert [int(role) for role in CustomRole] == [0, 4096, 8192, 16384, 32768]
    assert [role.index for role in CustomRole] == [None, 0, 1, 2, 3]
    assert [CustomRole.from_index(i) for i in range(4)] == [
        CustomRole.ROLE_0, CustomRole.ROLE_1, CustomRole.ROLE_2, CustomRole.ROLE_3
    ]
    assert (protocol.HOST_ROLE, protocol.AUDIENCE_ROLE) == (CustomRole.ROLE_0, CustomRole.ROLE_1)


def test_custom_state_numbers_are_bit_flags_and_state_0_is_on_the_mic() -> None:
    assert [int(state) for state in CustomState] == [0, 4096, 8192, 16384, 32768]
    assert [state.index for state in CustomState] == [None, 0, 1, 2, 3]
    assert CustomState.from_index(0) is CustomState.STATE_0 is protocol.ON_THE_MIC


def test_participant_enum_numbers_are_the_vendors() -> None:
    assert {s.name: int(s) for s in VolumeStatus} == {"NONE": 0, "ZERO": 1, "LOW": 2, "MID": 3, "HIGH": 4}
    assert {s.name: int(s) for s in NetStatus} == {
        "DISCONNECTED": 0, "VERY_BAD": 1, "BAD": 2, "NORMAL": 3, "GOOD": 4, "VERY_GOOD": 5
    }
    assert {t.name: int(t) for t in ParticipantType} == {"NORMAL": 0, "PSTN": 1, "WEBRTC": 2}


def test_change_flag_bits_are_pinned() -> None:
    assert {f.name: int(f) for f in ParticipantChange} == {
        "AUDIO": 1, "VIDEO": 2, "PICTURE_SIZE": 4, "NET_STATUS": 8, "CUSTOM_STATE": 16,
        "CUSTOM_ROLE": 32, "AUDIO_SUBSCRIBE": 64, "TYPE": 128,
    }
    assert {f.name: int(f) for f in PropertyChange} == {
        "UPLOAD_LOCAL_AUDIO": 1, "AUDIO_OUTPUT": 2, "TITLE": 4, "CUSTOM_PROPERTY": 8,
        "RECORD_STATE": 16, "CDN_STATE": 32,
    }


@pytest.mark.parametrize(
    ("level", "status"),
    [
        (0, VolumeStatus.ZERO),
        (1, VolumeStatus.LOW),
        (30, VolumeStatus.LOW),
        (31, VolumeStatus.MID),
        (60, VolumeStatus.MID),
        (61, VolumeStatus.HIGH),
        (100, VolumeStatus.HIGH),
    ],
)
def test_volume_status_for_level_uses_the_vendors_buckets(level: int, status: VolumeStatus) -> None:
    assert volume_status_for_level(level) is status


def test_default_policy_host_role_0_does_everything_and_the_rest_listen() -> None:
    host = Permission.PUBLISH | Permission.MANAGE | Permission.KICK | Permission.STOP | Permission.RECORD | Permission.CDN
    assert [DEFAULT_POLICY.permissions(role, CustomState.NONE) for role in CustomRole] == [
        Permission.NONE, host, Permission.NONE, Permission.NONE, Permission.NONE
    ]
    assert [DEFAULT_POLICY.is_host(role) for role in CustomRole] == [False, True, False, False, False]


def test_default_policy_on_the_mic_may_publish_and_nothing_more() -> None:
    assert DEFAULT_POLICY.permissions(CustomRole.ROLE_1, CustomState.STATE_0) == Permission.PUBLISH
    assert DEFAULT_POLICY.may_publish(CustomRole.ROLE_1, CustomState.STATE_0)
    assert not any(DEFAULT_POLICY.may_publish(CustomRole.ROLE_1, s) for s in CustomState if s is not CustomState.STATE_0)


def test_limits_are_the_documented_numbers() -> None:
    assert (limits.PROTOCOL_VERSION, limits.MAX_FRAME_BYTES, limits.MAX_CONTROL_BYTES) == (1, 65536, 16384)
    assert (limits.MAX_ID_CHARS, limits.MAX_NAME_CHARS, limits.MAX_PASSWORD_CHARS) == (128, 64, 128)
    assert (limits.MAX_PROPERTY_BYTES, limits.MAX_MESSAGE_CONTENT_BYTES, limits.MAX_OPUS_PAYLOAD) == (4096, 4096, 1275)
    assert (limits.MAX_REQUEST_ID, limits.DEFAULT_CAPACITY, limits.MAX_CAPACITY) == (2**31 - 1, 10_000, 100_000)
    # Decision 6: Airwave's defaults are 3 s and 9 s; a join may choose 1-60 s and 3-300 s.
    assert (limits.DEFAULT_HEARTBEAT_TIME, limits.DEFAULT_HEARTBEAT_TIMEOUT) == (3, 9)
    assert (limits.HEARTBEAT_TIME_RANGE, limits.HEARTBEAT_TIMEOUT_RANGE) == ((1, 60), (3, 300))
    assert limits.MAX_TOKEN_CHARS == 2048


def test_token_length_limit_has_one_source() -> None:
    # The codec (Join.token, RefreshToken.token) and verify_token read the same number.
    from airwave.protocol import tokens

    assert tokens.MAX_TOKEN_CHARS is limits.MAX_TOKEN_CHARS
