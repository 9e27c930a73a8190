"""Channel commands: what a participant or the server asks of a channel.

Each command carries everything ``decide`` needs from outside (the time, a salt, the roles a
token grants), so deciding stays a pure function. Their names are the domain's verbs; the
protocol's request messages (`airwave.protocol`) are a different vocabulary on purpose.
"""

from __future__ import annotations

import attrs

from airwave.protocol import AUDIENCE_ROLE, CustomRole, CustomState, Reason


@attrs.frozen
class JoinChannel:
    """``new_number`` and ``salt`` are used only if this join creates the channel.
    ``allowed_roles`` None means open mode: any role and state may be asked for at join."""

    time: float
    channel_id: str
    user_id: str
    new_number: int
    salt: bytes
    role: CustomRole = AUDIENCE_ROLE
    state: CustomState = CustomState.NONE
    upload: bool = False
    display_name: str = ""
    uri_mode: bool = False
    password: str | None = None
    capacity: int | None = None
    heartbeat_time: float | None = None
    heartbeat_timeout: float | None = None
    title: str = ""
    custom_property: str = ""
    max_senders: int | None = None
    allowed_roles: frozenset[CustomRole] | None = None


@attrs.frozen
class LeaveChannel:
    """A member leaves: by choice (quit) or forced by the server (timeout, slow_consumer, ...)."""

    time: float
    user_id: str
    reason: Reason = Reason.QUIT


@attrs.frozen
class StopChannel:
    time: float
    user_id: str


@attrs.frozen
class EndChannel:
    """The server ends the channel for everyone (shutdown, or recovery after a crash)."""

    time: float
    reason: Reason


@attrs.frozen
class ChangeRole:
    time: float
    actor: str
    target: str
    role: CustomRole


@attrs.frozen
class ChangeState:
    time: float
    actor: str
    target: str
    state: CustomState


@attrs.frozen
class ChangeUpload:
    time: float
    user_id: str
    enabled: bool


@attrs.frozen
class KickMember:
    time: float
    actor: str
    target: str


@attrs.frozen
class ChangeCustomProperty:
    time: float
    actor: str
    value: str


@attrs.frozen
class ChangeRecording:
    """enable_record: start (with which outputs) or stop the server's recording."""

    time: float
    actor: str
    enabled: bool
    mix: bool = True
    tracks: bool = True


@attrs.frozen
class ChangeCdn:
    """enable_cdn: start or stop streaming the mix. ``icecast`` and ``hls`` are where it would
    go (the listen URL, the playlist path; "" where the server has no such output), filled in
    from the server's settings by the channel actor; ``segment_ms`` 0: the server's."""

    time: float
    actor: str
    enabled: bool
    icecast: str = ""
    hls: str = ""
    segment_ms: int = 0


# --- an operator's commands (admin requests): the operator is not a member, so they are
# decided on the channel alone, and the events name the operator instead of a member.


@attrs.frozen
class OperatorKick:
    time: float
    operator: str
    target: str


@attrs.frozen
class OperatorStop:
    time: float
    operator: str


@attrs.frozen
class OperatorMute:
    time: float
    operator: str
    target: str
    muted: bool


OperatorCommand = OperatorKick | OperatorStop | OperatorMute


@attrs.frozen
class OutputFailed:
    """The server's own: the writer of a recording (``recording``, the one in ``directory``)
    or of the CDN stream stopped on its own (its worker process died, the disk filled), so the
    log and the members learn that it stopped, with server_error, instead of seeing it run."""

    time: float
    recording: bool
    directory: str = ""

Command = (
    JoinChannel | LeaveChannel | StopChannel | EndChannel | ChangeRole | ChangeState | ChangeUpload | KickMember
    | ChangeCustomProperty | ChangeRecording | ChangeCdn | OperatorCommand | OutputFailed
)
