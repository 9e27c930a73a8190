"""The wire protocol, sans-IO: messages, codec, media frames, reasons, roles and limits.

Nothing here does I/O or imports trio; every byte the server accepts is decoded and
validated by this package.
"""

from . import limits
from .codec import (
    channel_info_from_wire,
    decode_request,
    decode_server_message,
    encode,
    query_info_from_wire,
    summaries_from_wire,
    to_wire,
)
from .media import (
    MediaPacket,
    check_client_media,
    client_media_level,
    decode_client_media,
    decode_server_media,
    encode_client_media,
    is_media_frame,
    relay_frame,
)
from .messages import *  # noqa: F403  (the message classes are the package's surface)
from .messages import ADMIN_REQUEST_TYPES, REQUEST_TYPES, SERVER_MESSAGE_TYPES, AdminRequest, Request, ServerMessage
from .model import (
    AUDIENCE_ROLE,
    HOST_ROLE,
    ON_THE_MIC,
    CdnState,
    ChannelState,
    CustomRole,
    CustomState,
    NetStatus,
    ParticipantChange,
    ParticipantType,
    PropertyChange,
    RecordState,
    VolumeStatus,
    volume_status_for_level,
)
from .reasons import ProtocolError, Reason
from .roles import DEFAULT_POLICY, Permission, RolePolicy
