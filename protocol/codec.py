"""Control messages to and from msgpack bytes: one msgpack map per WebSocket binary frame.

Decoding never trusts the input: size first, then msgpack, then shape, then the message's own
constructor validates every field. Every refusal is a ProtocolError carrying a reason code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import msgpack

from . import limits
from .messages import (
    REQUEST_TYPES,
    SERVER_MESSAGE_TYPES,
    ChannelInfo,
    ChannelSummary,
    MemberSummary,
    ParticipantInfo,
    QueryInfo,
    Request,
    ServerMessage,
)
from .reasons import ProtocolError, Reason

_REQUESTS: dict[str, type] = {cls.TYPE: cls for cls in REQUEST_TYPES}
_SERVER_MESSAGES: dict[str, type] = {cls.TYPE: cls for cls in SERVER_MESSAGE_TYPES}
_VALUES = (ParticipantInfo, ChannelInfo, QueryInfo, ChannelSummary, MemberSummary)
# Fields holding a nested value, decoded through that value's constructor.
_NESTED: dict[str, type] = {"participant": ParticipantInfo}


def to_wire(value: Any) -> Any:
    """A message or value as plain msgpack-able data (maps, lists, ints, strings)."""
    if isinstance(value, _VALUES):
        return {name: to_wire(getattr(value, name)) for name in attrs.fields_dict(type(value))}
    if isinstance(value, tuple | list):
        return [to_wire(item) for item in value]
    type_tag = getattr(type(value), "TYPE", None)
    if type_tag is not None:
        wire: dict[str, Any] = {"type": type_tag}
        for name in attrs.fields_dict(type(value)):
            wire[name] = to_wire(getattr(value, name))
        return wire
    return value


def encode(message: Request | ServerMessage) -> bytes:
    return msgpack.packb(to_wire(message), use_bin_type=True)


def _unpack_map(data: bytes, max_bytes: int) -> dict[str, Any]:
    if len(data) > max_bytes:
        raise ProtocolError(Reason.TOO_LARGE, f"control message of {len(data)} bytes exceeds {max_bytes}")
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, max_bin_len=max_bytes,
            max_str_len=max_bytes, max_array_len=limits.MAX_CAPACITY, max_map_len=64, max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(Reason.PROTOCOL_ERROR, f"not one msgpack value: {exc}") from None
    if type(value) is not dict:
        raise ProtocolError(Reason.PROTOCOL_ERROR, "a control message must be a msgpack map")
    return value


def _build(cls: type, fields: dict[str, Any], ref: int | None, *, strict: bool = True) -> Any:
    """``strict``: unknown fields are refused (the server, of clients). Clients read servers
    leniently and drop unknown fields, so a newer server can add fields without breaking them."""
    known = attrs.fields_dict(cls)
    unknown = sorted(set(fields) - set(known), key=str)
    if unknown and strict:
        raise ProtocolError(Reason.INVALID_PARAM, f"{cls.TYPE}: unknown field(s) {unknown}", ref)
    for name in unknown:
        del fields[name]
    missing = [name for name, field in known.items() if field.default is attrs.NOTHING and name not in fields]
    if missing:
        raise ProtocolError(Reason.INVALID_PARAM, f"{cls.TYPE}: missing field(s) {missing}", ref)
    try:
        for name, nested in _NESTED.items():
            if name in fields and name in known:
                fields[name] = _build_value(nested, fields[name], strict=strict)
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(Reason.INVALID_PARAM, f"{cls.TYPE}: {exc}", ref) from None


def _build_value(cls: type, data: Any, *, strict: bool = True) -> Any:
    if type(data) is not dict:
        raise ValueError(f"expected a map for {cls.__name__}")
    if cls is ChannelInfo and type(data.get("participants")) is list:
        data = {**data, "participants": [_build_value(ParticipantInfo, p, strict=strict) for p in data["participants"]]}
    known = attrs.fields_dict(cls)
    unknown = set(data) - set(known)
    if unknown and strict:
        raise ValueError(f"unknown field(s) {sorted(unknown, key=str)} in {cls.__name__}")
    missing = [name for name, field in known.items() if field.default is attrs.NOTHING and name not in data]
    if missing:
        raise ValueError(f"missing field(s) {missing} in {cls.__name__}")
    return cls(**{key: value for key, value in data.items() if key in known})


def _split_type(wire: dict[str, Any], table: Mapping[str, type]) -> tuple[type, int | None]:
    raw_id = wire.get("id")
    ref = raw_id if type(raw_id) is int and 1 <= raw_id <= limits.MAX_REQUEST_ID else None
    type_tag = wire.pop("type", None)
    if type(type_tag) is not str:
        raise ProtocolError(Reason.PROTOCOL_ERROR, "a control message needs a string 'type'", ref)
    cls = table.get(type_tag)
    if cls is None:
        raise ProtocolError(Reason.PROTOCOL_ERROR, f"unknown message type {type_tag[:40]!r}", ref)
    return cls, ref


def decode_request(data: bytes) -> Request:
    """A client's control frame, validated; raises ProtocolError with the request id if known."""
    wire = _unpack_map(data, limits.MAX_CONTROL_BYTES)
    cls, ref = _split_type(wire, _REQUESTS)
    return _build(cls, wire, ref)  # type: ignore[no-any-return]


def decode_server_message(data: bytes) -> ServerMessage:
    """A server's control frame (the client side). Reply.result stays plain data: read it with
    channel_info_from_wire / query_info_from_wire according to the request it answers."""
    wire = _unpack_map(data, limits.MAX_SERVER_MESSAGE_BYTES)
    cls, ref = _split_type(wire, _SERVER_MESSAGES)
    return _build(cls, wire, ref, strict=False)  # type: ignore[no-any-return]


def channel_info_from_wire(data: Any) -> ChannelInfo:
    try:
        return _build_value(ChannelInfo, data, strict=False)  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise ProtocolError(Reason.PROTOCOL_ERROR, f"bad channel info: {exc}") from None


def summaries_from_wire(cls: type[ChannelSummary] | type[MemberSummary], data: Any) -> list[Any]:
    """An admin reply's list (``{"channels": [...]}`` or ``{"members": [...]}``), read leniently."""
    key = "channels" if cls is ChannelSummary else "members"
    try:
        items = data[key] if type(data) is dict else None
        if type(items) is not list:
            raise ValueError(f"expected a map with a {key!r} list")
        return [_build_value(cls, item, strict=False) for item in items]
    except (TypeError, ValueError) as exc:
        raise ProtocolError(Reason.PROTOCOL_ERROR, f"bad {key} list: {exc}") from None


def query_info_from_wire(data: Any) -> QueryInfo:
    try:
        return _build_value(QueryInfo, data, strict=False)  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise ProtocolError(Reason.PROTOCOL_ERROR, f"bad query info: {exc}") from None
