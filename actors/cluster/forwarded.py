"""What crosses between a follower and a channel's owner: commands, answers, the owner's
records and text messages, as msgpack values (pure: no trio, no nats).

A command travels as ``{"t": class name, field: value, ...}``: enums as their numbers, a
token's granted roles as a list. Decoding goes through the command's attrs constructor, so
a malformed request is a `ValueError` the owner answers with protocol_error, never a crash.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import msgpack

from airwave.protocol import CustomRole, CustomState, Reason

from ..core import (
    ChangeCdn,
    ChangeCustomProperty,
    ChangeRecording,
    ChangeRole,
    ChangeState,
    ChangeUpload,
    Command,
    EndChannel,
    JoinChannel,
    KickMember,
    LeaveChannel,
    OperatorKick,
    OperatorMute,
    OperatorStop,
    OutputFailed,
    StopChannel,
)

COMMAND_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        JoinChannel, LeaveChannel, StopChannel, EndChannel, ChangeRole, ChangeState, ChangeUpload, KickMember,
        ChangeCustomProperty, ChangeRecording, ChangeCdn, OperatorKick, OperatorStop, OperatorMute, OutputFailed,
    )
}
# Fields whose values are enums or sets of them; every other field is a plain msgpack value.
_DECODERS: dict[str, Any] = {
    "role": CustomRole,
    "state": CustomState,
    "reason": Reason,
    "allowed_roles": lambda roles: None if roles is None else frozenset(CustomRole(r) for r in roles),
}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return int(value)
    if isinstance(value, frozenset):
        return sorted(int(item) for item in value)
    return value


def encode_command(command: Command) -> dict[str, Any]:
    out: dict[str, Any] = {"t": type(command).__name__}
    for name in attrs.fields_dict(type(command)):
        out[name] = _plain(getattr(command, name))
    return out


def decode_command(data: Any) -> Command:
    """The command ``data`` stands for; ``ValueError`` for anything else."""
    if not isinstance(data, Mapping):
        raise ValueError("a forwarded command is a map")
    cls = COMMAND_TYPES.get(data.get("t")) if isinstance(data.get("t"), str) else None
    if cls is None:
        raise ValueError(f"not a channel command: {data.get('t')!r}")
    fields = {}
    for name, value in data.items():
        if name == "t":
            continue
        decoder = _DECODERS.get(name)
        fields[name] = decoder(value) if decoder is not None else value
    try:
        return cls(**fields)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise ValueError(f"bad {cls.__name__}: {exc}") from None


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


def pack_records(prev: int, records: Sequence[Mapping[str, Any]], seqs: Sequence[int]) -> bytes:
    """The owner's just-appended records for the followers: ``prev`` is the channel's last
    record before them, so a follower that applied anything else knows it missed some."""
    return pack([prev, [[seq, dict(record)] for seq, record in zip(seqs, records, strict=True)]])


def unpack_records(data: bytes) -> tuple[int, list[dict[str, Any]]]:
    """``(prev, records each with its seq)``; ``ValueError`` if it is not that."""
    try:
        prev, items = unpack(data)
        return int(prev), [{"seq": int(seq), **record} for seq, record in items]
    except Exception as exc:
        raise ValueError(f"not a records message: {exc}") from None
