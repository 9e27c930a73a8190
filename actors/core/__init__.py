"""The pure core of the channel service: events, commands, state, and the rules.

No trio, no sockets, no clock (a test enforces the layer rules): time, salts and token grants
arrive inside the commands, so ``decide`` and ``evolve`` are plain functions, tested without
I/O, and replay is the same fold as the live channel.
"""

from .commands import (
    ChangeCustomProperty,
    ChangeRole,
    ChangeState,
    ChangeUpload,
    Command,
    EndChannel,
    JoinChannel,
    KickMember,
    LeaveChannel,
    OperatorCommand,
    OperatorKick,
    OperatorMute,
    OperatorStop,
    StopChannel,
)
from .decide import Accepted, Decision, Rejected, decide
from .events import (
    AudioUploadChanged,
    ChannelCreated,
    ChannelStopped,
    CustomPropertyChanged,
    Event,
    EventDecodeError,
    MemberJoined,
    MemberLeft,
    MuteChanged,
    RoleChanged,
    StateChanged,
    event_from_record,
    event_to_record,
)
from .passwords import SALT_BYTES, hash_password, password_matches
from .state import URI_PREFIX, Channel, EventOutOfPlace, Member, channel_uri, evolve, fold

__all__ = [
    "SALT_BYTES",
    "URI_PREFIX",
    "Accepted",
    "AudioUploadChanged",
    "ChangeCustomProperty",
    "ChangeRole",
    "ChangeState",
    "ChangeUpload",
    "Channel",
    "ChannelCreated",
    "ChannelStopped",
    "Command",
    "CustomPropertyChanged",
    "Decision",
    "EndChannel",
    "Event",
    "EventDecodeError",
    "EventOutOfPlace",
    "JoinChannel",
    "KickMember",
    "LeaveChannel",
    "Member",
    "MemberJoined",
    "MemberLeft",
    "MuteChanged",
    "OperatorCommand",
    "OperatorKick",
    "OperatorMute",
    "OperatorStop",
    "Rejected",
    "RoleChanged",
    "StateChanged",
    "StopChannel",
    "channel_uri",
    "decide",
    "event_from_record",
    "event_to_record",
    "evolve",
    "fold",
    "hash_password",
    "password_matches",
]
