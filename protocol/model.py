"""The vendor SDK's enumerations, with the vendor's numbers kept on the wire."""

from __future__ import annotations

import enum

_FIRST_CUSTOM_BIT = 12


class ChannelState(enum.IntEnum):
    """A client's state towards its channel (client side; the server mirrors it per session)."""

    IDLE = 0
    JOINING = 1
    JOINED = 2
    LEAVING = 3


class CustomRole(enum.IntEnum):
    """Roles are bit flags as in the vendor SDK, so 0 means "no role", never "host"."""

    NONE = 0
    ROLE_0 = 1 << 12
    ROLE_1 = 1 << 13
    ROLE_2 = 1 << 14
    ROLE_3 = 1 << 15

    @property
    def index(self) -> int | None:
        """0-3 for custom_role_0..3 (what replay prints), None for no role."""
        return None if self is CustomRole.NONE else self.bit_length() - 1 - _FIRST_CUSTOM_BIT

    @classmethod
    def from_index(cls, index: int) -> CustomRole:
        return cls(1 << (index + _FIRST_CUSTOM_BIT))


class CustomState(enum.IntEnum):
    """One custom state per participant (decision 3); CUSTOM_STATE_0 means "on the mic"."""

    NONE = 0
    STATE_0 = 1 << 12
    STATE_1 = 1 << 13
    STATE_2 = 1 << 14
    STATE_3 = 1 << 15

    @property
    def index(self) -> int | None:
        return None if self is CustomState.NONE else self.bit_length() - 1 - _FIRST_CUSTOM_BIT

    @classmethod
    def from_index(cls, index: int) -> CustomState:
        return cls(1 << (index + _FIRST_CUSTOM_BIT))


HOST_ROLE = CustomRole.ROLE_0
AUDIENCE_ROLE = CustomRole.ROLE_1
ON_THE_MIC = CustomState.STATE_0


class VolumeStatus(enum.IntEnum):
    NONE = 0  # muted / not uploading
    ZERO = 1
    LOW = 2  # level 1-30
    MID = 3  # level 31-60
    HIGH = 4  # level 61-100


class NetStatus(enum.IntEnum):
    DISCONNECTED = 0
    VERY_BAD = 1
    BAD = 2
    NORMAL = 3
    GOOD = 4
    VERY_GOOD = 5


class ParticipantType(enum.IntEnum):
    NORMAL = 0
    PSTN = 1
    WEBRTC = 2


class ParticipantChange(enum.IntFlag):
    """What a participant update changed (the vendor's change set)."""

    AUDIO = 1 << 0
    VIDEO = 1 << 1  # never set by Airwave
    PICTURE_SIZE = 1 << 2  # never set by Airwave
    NET_STATUS = 1 << 3
    CUSTOM_STATE = 1 << 4
    CUSTOM_ROLE = 1 << 5
    AUDIO_SUBSCRIBE = 1 << 6
    TYPE = 1 << 7


class PropertyChange(enum.IntFlag):
    """What a channel property change changed (the vendor's flags)."""

    UPLOAD_LOCAL_AUDIO = 1 << 0
    AUDIO_OUTPUT = 1 << 1
    TITLE = 1 << 2
    CUSTOM_PROPERTY = 1 << 3
    RECORD_STATE = 1 << 4
    CDN_STATE = 1 << 5


class RecordState(enum.IntEnum):
    """Whether the server records the channel (ChannelInfo.record_state, property_changed)."""

    IDLE = 0
    RECORDING = 1


class CdnState(enum.IntEnum):
    """Whether the server streams the channel's mix to its CDN outputs, Icecast and/or HLS
    (ChannelInfo.cdn_state, property_changed)."""

    IDLE = 0
    STREAMING = 1


def volume_status_for_level(level: int) -> VolumeStatus:
    """The vendor's buckets: 0 -> zero, 1-30 low, 31-60 mid, 61-100 high."""
    if level <= 0:
        return VolumeStatus.ZERO
    if level <= 30:
        return VolumeStatus.LOW
    if level <= 60:
        return VolumeStatus.MID
    return VolumeStatus.HIGH
