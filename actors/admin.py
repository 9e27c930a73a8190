"""The operator's requests (docs/protocol.md section 3, admin requests): what is live, who is where, and the
levers (kick, stop, mute, end a session).

Reads are plain looks at the channel actors' immutable state, as `query` is. Levers are
channel commands like a member's (`OperatorKick`, `OperatorStop`, `OperatorMute`), decided
and logged by the channel's own actor, so an operator's kick is in the log and replays like a
host's. Who may send them is the participant actor's to check (`ParticipantActor._admin`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airwave.protocol import (
    AdminChannels,
    AdminEndSession,
    AdminKick,
    AdminMembers,
    AdminMute,
    AdminRequest,
    AdminStop,
    ChannelSummary,
    MemberSummary,
    Reason,
    Reply,
    to_wire,
)
from airwave.protocol.text import shown

from .channel import ChannelActor
from .clock import now
from .core import OperatorKick, OperatorMute, OperatorStop

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger("airwave.admin")

END_SESSION_CLOSE = (1008, "session ended by an administrator")


async def serve_admin(registry: Registry, request: AdminRequest, operator: str) -> Reply:
    """The answer to one admin request from ``operator`` (already allowed to send it)."""
    if isinstance(request, AdminChannels):
        channels = [summary for actor in _live_actors(registry) if (summary := channel_summary(actor)) is not None]
        return Reply(request.id, result={"channels": to_wire(channels)})
    actor = registry.find(request.channel)
    if actor is None or actor.channel is None:
        # Looked up first: submitting to a channel that is not live would start an actor for
        # it (and in cluster mode claim its lease) only to refuse.
        return Reply(request.id, Reason.NOT_FOUND, f"no live channel {request.channel!r}")
    if isinstance(request, AdminMembers):
        return Reply(request.id, result={"members": to_wire(member_summaries(registry, actor))})
    match request:
        case AdminStop():
            command: OperatorKick | OperatorStop | OperatorMute = OperatorStop(now(), operator)
        case AdminMute(muted=muted):
            command = OperatorMute(now(), operator, request.user_id, muted)
        case AdminKick() | AdminEndSession():
            command = OperatorKick(now(), operator, request.user_id)
    session = actor.session(request.user_id) if isinstance(request, AdminEndSession) else None
    held = registry.suspensions(request.channel).get(request.user_id) if isinstance(request, AdminEndSession) else None
    answer = await registry.submit(request.channel, command, None)
    if answer.reason is not Reason.NONE:
        return Reply(request.id, answer.reason, answer.message)
    log.info("admin %s by %s in %s", request.TYPE.removeprefix("admin_"), shown(operator), shown(request.channel))
    if isinstance(request, AdminEndSession):
        if held is not None:
            registry.end_suspension(held)  # no resume within the grace period
        close_soon = getattr(session, "close_soon", None)
        if close_soon is not None and held is None:
            close_soon(*END_SESSION_CLOSE, Reason.KICKED)
    return Reply(request.id)


def _live_actors(registry: Registry) -> list[ChannelActor]:
    return [actor for channel_id in registry.channel_ids() if (actor := registry.find(channel_id)) is not None]


def channel_summary(actor: ChannelActor) -> ChannelSummary | None:
    channel = actor.channel
    if channel is None or channel.ended:
        return None
    members = channel.members.values()
    return ChannelSummary(
        channel_id=channel.channel_id,
        channel_number=channel.number,
        title=channel.title,
        members=len(channel.members),
        hosts=sum(1 for m in members if actor.policy.is_host(m.role)),
        speakers=sum(1 for m in members if m.upload),
        created_at=channel.created_at,
        uptime=max(0.0, now() - channel.created_at),
        packets_in=actor.router.stats.packets_in,
        deliveries=actor.router.stats.deliveries,
        drops=actor.router.stats.packets_refused + sum(_frames_dropped(session) for session in actor.sessions()),
    )


def _frames_dropped(session: object) -> int:
    statistics = getattr(getattr(session, "output", None), "statistics", None)
    return int(statistics().frames_dropped) if callable(statistics) else 0


def member_summaries(registry: Registry, actor: ChannelActor) -> list[MemberSummary]:
    assert actor.channel is not None
    summaries = []
    held_for_resume = registry.suspensions(actor.channel_id)
    for member in actor.channel.members_in_join_order():
        session = actor.session(member.user_id)
        held = member.user_id in held_for_resume
        summaries.append(MemberSummary(
            user_id=member.user_id,
            display_name=member.display_name,
            sid=member.sid,
            role=member.role,
            state=member.state,
            audio=member.upload,
            muted=member.muted,
            session="held" if held else "connected",
            address=str(getattr(session, "peer", ""))[:128],
            joined_at=member.joined_at,
            connected_since=float(getattr(session, "connected_at", member.joined_at)),
        ))
    return summaries
