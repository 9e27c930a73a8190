"""The participant actor: one per WebSocket connection, the server's face of one client.

It reads the client's frames, checks each request against the session's lifecycle table,
turns it into a channel command (adding the server's clock and salts), and answers with
exactly one reply. Media frames skip all of that: a header check and a call into the
channel's router, synchronously, in the reading task.
"""

from __future__ import annotations

import enum
import importlib.metadata
import logging
import math
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio
import trio_websocket

from airwave.protocol import (
    ADMIN_REQUEST_TYPES,
    AdminRequest,
    CustomRole,
    EnableUpload,
    Error,
    Hello,
    Join,
    Kick,
    EnableCdn,
    EnableRecord,
    Leave,
    Left,
    MessageReceived,
    Ping,
    ProtocolError,
    Query,
    QueryInfo,
    RefreshToken,
    Resume,
    Reason,
    Reply,
    Request,
    SendMessage,
    ServerMessage,
    SetCustomProperty,
    SetRole,
    SetState,
    Stop,
    SubscribeAudio,
    check_client_media,
    decode_request,
    is_media_frame,
    limits,
    to_wire,
)

from airwave.protocol.messages import record_params
from airwave.protocol.ratelimit import TokenBucket
from airwave.protocol.sessiontoken import NONCE_BYTES, new_session_token, resume_key
from airwave.protocol.text import shown
from airwave.protocol.tokens import TokenClaims, verify_admin_token, verify_token

from .admin import serve_admin
from .channel import ChannelActor, ChannelReply, Reattach
from .clock import now
from .counters import ServerMetrics
from .core import (
    SALT_BYTES,
    URI_PREFIX,
    ChangeCdn,
    ChangeCustomProperty,
    ChangeRecording,
    ChangeRole,
    ChangeState,
    ChangeUpload,
    Channel,
    Command,
    JoinChannel,
    KickMember,
    LeaveChannel,
    StopChannel,
)
from .net import PING_FRAME, frame_of

if TYPE_CHECKING:
    from .net import Connection
    from .registry import Registry

log = logging.getLogger("airwave.participant")

# What hello answers; read from the installed package's metadata (pyproject.toml), so the
# server needs nothing of the client package for it.
SERVER_NAME = f"airwave/{importlib.metadata.version('airwave')}"
CLOSE_HANDSHAKE_SECONDS = 1.0  # what a peer gets to answer the server's close frame

class SessionState(enum.Enum):
    """Where a connection is in its lifecycle. JOINING lasts while a join or resume waits for
    the channel; requests are served one at a time, so none arrives then, but the channel
    may remove the session (a stop, a newer session) before the join is answered."""

    GREETING = "greeting"  # connected; nothing but hello is served yet
    IDLE = "idle"
    JOINING = "joining"
    JOINED = "joined"


@attrs.frozen
class SessionSettings:
    heartbeat_time: float = limits.DEFAULT_HEARTBEAT_TIME
    heartbeat_timeout: float = limits.DEFAULT_HEARTBEAT_TIMEOUT
    max_message_bytes: int = limits.MAX_FRAME_BYTES
    refusal_reply_interval: float = 1.0  # at most one error reply per second for refused media
    # With a secret, every join needs a token signed with it (protocol/tokens.py).
    secret: bytes | None = attrs.field(default=None, repr=False)
    # A connection that drops (no leave, no clean close) is held this long for `resume`.
    resume_grace: float = 15.0
    # Rate limits, checked before anything is decoded further (token buckets).
    control_rate: float = 20.0  # requests per second, on average
    control_burst: float = 50.0
    media_rate: float = 100.0  # media frames per second (a 20 ms speaker sends 50)
    # Frames are judged when the server reads them, so a stall of the server's own (a busy
    # loop, a paused process) hands it a speaker's last seconds at once: the burst covers
    # 5 s of a 20 ms speaker, so an honest host is never refused for the server's lag.
    media_burst: float = 250.0
    # Refusals (rate limits, malformed frames) a connection may earn before it is closed.
    max_strikes: int = 200
    # How often the gateway's sweep checks every connection's heartbeat.
    heartbeat_sweep: float = 0.25
    # A connection must say `hello` this soon after its handshake, or it is closed (1008):
    # answering pings alone does not keep a connection that never logs in.
    hello_timeout: float = 10.0


@attrs.define
class SessionStatistics:
    requests: int = 0
    media_in: int = 0
    media_refused: int = 0
    protocol_errors: int = 0
    rate_limited: int = 0


class ParticipantActor:
    # Slots, not a __dict__: past 30 attributes CPython stops sharing an instance dict's keys
    # between instances, and each session's dict grew by 1.6 KB (measured with --mem-trace).
    __slots__ = (
        "_admitted", "_channel", "_claims", "_closing", "_control_bucket", "_dropped",
        "_frames_offered", "_heartbeat", "_held", "_hello_deadline", "_kernel_watches",
        "_last_ping", "_last_refusal_reply", "_last_sent", "_media_bucket", "_metrics",
        "_nursery", "_peer", "_registry", "_session_token", "_settings", "_sid", "_strikes",
        "_token_deadline", "_ws", "connected_at", "end_reason", "output", "peer_close_code", "resume_key", "state",
        "stats", "user_id",
    )

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        connection: Connection,
        registry: Registry,
        settings: SessionSettings,
        nursery: trio.Nursery,
        peer: str = "?",
        admitted: Callable[[], None] | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.output = connection
        self.user_id = ""
        self.state = SessionState.GREETING
        self.stats = SessionStatistics()
        self._ws = ws
        self._registry = registry
        self._settings = settings
        self._metrics = metrics or ServerMetrics()
        self._peer = peer
        self.connected_at = now()  # UTC epoch seconds, for the admin's member list
        self._channel: ChannelActor | None = None
        self._sid = 0
        self._heartbeat = (settings.heartbeat_time, settings.heartbeat_timeout)
        self._last_ping = trio.current_time()
        # The last sweep that saw frames other than pings go out, and the count it saw.
        self._last_sent = -math.inf
        self._frames_offered = 0
        self._kernel_watches = self._watch_acknowledgements(settings.heartbeat_timeout)
        self._hello_deadline = trio.current_time() + settings.hello_timeout
        self._nursery = nursery
        self._last_refusal_reply = -math.inf
        self._token_deadline = math.inf  # trio clock; the session's token expiry
        self._claims: TokenClaims | None = None  # token mode: what the session's token grants
        self._session_token = ""
        self.resume_key = ""  # the session token's, announced in cluster roll calls (never the token)
        self._control_bucket = TokenBucket(settings.control_rate, settings.control_burst)
        self._media_bucket = TokenBucket(settings.media_rate, settings.media_burst)
        self._strikes = 0
        self._dropped = False  # the client's connection ended (not the server's doing)
        self._held: list[bytes] | None = None
        # Called once the first request after hello is answered: the gateway's join slot.
        self._admitted = admitted
        self.end_reason = Reason.NETWORK  # a drop, unless something else ends the session
        self.peer_close_code: int | None = None  # the close code the client's end came with
        self._closing: trio.Event | None = None  # set when a close the server began is over

    @property
    def token_expires_at(self) -> float | None:
        """Token mode: when the session's join token expires (epoch seconds); None in open mode."""
        return self._claims.expires_at if self._claims is not None else None

    # --- the mailbox: called by the channel actor ---

    def send_frame(self, frame: bytes) -> None:
        if self._held is not None:
            self._held.append(frame)  # nothing reaches the client before its join reply
        else:
            self.output.send_frame_nowait(frame, droppable=False)

    @property
    def peer(self) -> str:
        return self._peer

    def log_fields(self) -> dict[str, str | None]:
        channel = self._channel.channel_id if self._channel is not None else None
        return {"connection": self._peer, "user": self.user_id or None, "channel": channel}

    def close_soon(self, code: int, reason: str, end_reason: Reason) -> None:
        """`close`, started in the connection's own nursery: the caller need not wait for
        the handshake (an operator ending this session from another connection, or this one)."""
        self._nursery.start_soon(self.close, code, reason, end_reason)

    def send(self, message: ServerMessage) -> None:
        self.send_frame(frame_of(message))

    def attached(self, channel: ChannelActor, sid: int) -> None:
        self._channel, self._sid = channel, sid
        assert channel.channel is not None
        self._heartbeat = (channel.channel.heartbeat_time, channel.channel.heartbeat_timeout)
        self._kernel_watches = self._watch_acknowledgements(channel.channel.heartbeat_timeout)

    def removed(self, channel_id: str, reason: Reason) -> None:
        if self._channel is None or self._channel.channel_id != channel_id:
            return
        self._channel, self._sid = None, 0
        if self.state is SessionState.JOINED:
            self.state = SessionState.IDLE
        self.send(Left(channel_id, reason))

    # --- the actor ---

    async def run(self) -> None:
        """Serves the connection until it ends, then leaves the channel with the reason.

        If the server itself is being torn down (this task cancelled), nothing is submitted:
        that is a crash as far as the log is concerned, and restart recovery records it.
        """
        try:
            await self._read_loop()
        except Exception:
            log.exception("session %s (%s) failed", self._peer, shown(self.user_id or "-"))
            self.end_reason = Reason.INTERNAL_ERROR
        await self._leave_on_disconnect()
        if self._closing is not None:
            await self._closing.wait()

    async def _read_loop(self) -> None:
        ws = self._ws
        while True:
            try:
                data = await ws.get_message()
            except trio_websocket.ConnectionClosed as closed:
                # Any end the server did not cause is a drop that may come back with `resume`
                # (§2.8): a reset, no close frame (1006), and a clean close too (1000, 1001),
                # which is how a browser tab that reloads ends its connection. Only `leave`
                # ends a membership at once.
                violation = self.output.violation  # the transport closed it: 1002 or 1008
                self.peer_close_code = closed.reason.code
                self._dropped = closed.reason.code != 1009 and violation is None
                if closed.reason.code == 1009:  # trio-websocket's answer to a message over 1 MiB
                    self.end_reason = Reason.TOO_LARGE
                elif violation is not None:
                    log.warning("%s (%s): %s", self._peer, shown(self.user_id or "-"), violation.reason)
                    self.end_reason = Reason.RATE_LIMITED if violation.code == 1008 else Reason.PROTOCOL_ERROR
                return
            if self._strikes > self._settings.max_strikes:
                log.warning("%s (%s): %d refusals, disconnecting", self._peer, shown(self.user_id or "-"), self._strikes)
                self.end_reason = Reason.RATE_LIMITED
                await ws.aclose(code=1008, reason="too many refused messages")
                return
            if type(data) is bytes and is_media_frame(data) and len(data) <= self._settings.max_message_bytes:
                self._on_media_frame(data)
            else:
                # A method of its own, so that nothing of the last request (a join reply holds
                # the whole ChannelInfo) stays alive while this loop waits for the next frame.
                await self._on_control_frame(data)

    def _on_media_frame(self, data: bytes) -> None:
        if self._media_bucket.allow(trio.current_time()):
            self._on_media(data)
        else:
            self.stats.rate_limited += 1
            self._strikes += 1
            self._refuse_media(ProtocolError(Reason.RATE_LIMITED, "too many media frames per second"))

    async def _on_control_frame(self, data: bytes | str) -> None:
        if type(data) is not bytes:
            self._refuse(ProtocolError(Reason.PROTOCOL_ERROR, "text frames are not part of the protocol"))
            return
        if len(data) > self._settings.max_message_bytes:
            self._refuse(ProtocolError(Reason.TOO_LARGE, f"message of {len(data)} bytes"))
            return
        try:
            request = decode_request(data)
        except ProtocolError as error:
            self._refuse(error)
            return
        if not self._control_bucket.allow(trio.current_time()):
            self.stats.rate_limited += 1
            self._refuse(ProtocolError(Reason.RATE_LIMITED, "too many requests per second", request.id))
            return
        self.stats.requests += 1
        started = trio.current_time()
        reply = await self._handle(request)
        self._metrics.requests[(request.TYPE, reply.reason.reason_name)] += 1
        if type(request) is Join:
            self._metrics.join_seconds.observe(trio.current_time() - started)
        held, self._held = self._held or [], None
        self.send(reply)
        for frame in held:
            self.send_frame(frame)
        if self._admitted is not None and not isinstance(request, Hello):
            admitted, self._admitted = self._admitted, None
            admitted()

    def _refuse(self, error: ProtocolError) -> None:
        self.stats.protocol_errors += 1
        self._strikes += 1
        if error.ref is not None:
            self.send(Reply(error.ref, error.reason, error.message[:1024]))
        else:
            self.send(Error(error.reason, error.message[:1024]))

    # --- media: the publisher's side of the hot path ---

    def _on_media(self, frame: bytes) -> None:
        self.stats.media_in += 1
        channel = self._channel
        try:
            if channel is None or self.state is not SessionState.JOINED:
                raise ProtocolError(Reason.CALL_FUNCTION_ERROR, "media frame outside a channel")
            check_client_media(frame)
            if not channel.router.publish(self._sid, frame):
                raise ProtocolError(Reason.NO_PERMISSION, "you may not publish audio: enable upload first (hosts and on-the-mic members only)")
        except ProtocolError as error:
            self._refuse_media(error)

    def _refuse_media(self, error: ProtocolError) -> None:
        """Decision 4: dropped and counted, with at most one error reply per interval."""
        self.stats.media_refused += 1
        current = trio.current_time()
        if current - self._last_refusal_reply >= self._settings.refusal_reply_interval:
            self._last_refusal_reply = current
            self.send(Error(error.reason, error.message))

    # --- requests: LIFECYCLE (below the class) says which are served in which state ---

    async def _handle(self, request: Request) -> Reply:
        step = LIFECYCLE[self.state].get(type(request))
        if step is None:
            reason, message = out_of_order(self.state, request)
            return Reply(request.id, reason, message)
        before = self.state
        if step.during is not None:
            self.state = step.during
        reply = await step.serve(self, request)
        if reply.reason is Reason.NONE and step.after is not before:
            self.state = step.after
        elif self.state is step.during:
            self.state = before  # refused: back where it was
        if self.state is SessionState.JOINED and self._channel is None:
            self.state = SessionState.IDLE  # removed again while the join was being answered
        return reply

    async def _submit(self, request: Request) -> Reply:
        """A request that is a channel command: the channel actor decides it."""
        channel = self._channel
        assert channel is not None  # JOINED implies a channel
        answer = await self._registry.submit(channel.channel_id, self._command_for(request), self)
        if answer.reason is Reason.NONE and isinstance(request, Leave | Stop):
            self._channel, self._sid = None, 0
        return Reply(request.id, answer.reason, answer.message)

    def _command_for(self, request: Request) -> Command:
        at, me = now(), self.user_id
        match request:
            case Leave():
                return LeaveChannel(at, me, Reason.QUIT)
            case Stop():
                return StopChannel(at, me)
            case SetRole():
                return ChangeRole(at, me, request.user_id or me, request.role)
            case SetState():
                return ChangeState(at, me, request.user_id or me, request.state)
            case EnableUpload():
                return ChangeUpload(at, me, request.enabled)
            case Kick():
                return KickMember(at, me, request.user_id)
            case SetCustomProperty():
                return ChangeCustomProperty(at, me, request.value)
            case EnableRecord():
                options = record_params(request.params)  # checked when the request was decoded
                return ChangeRecording(at, me, request.enabled, mix=options["mix"], tracks=options["tracks"])
            case EnableCdn():
                return ChangeCdn(at, me, request.enabled, segment_ms=request.key_interval_ms)
        raise TypeError(f"{request.TYPE} is not a channel command")  # pragma: no cover - LIFECYCLE

    async def _ping(self, request: Ping) -> Reply:
        return Reply(request.id, result={"time": now()})

    async def _hello(self, request: Hello) -> Reply:
        if request.version != limits.PROTOCOL_VERSION:
            return Reply(request.id, Reason.PROTOCOL_ERROR, f"this server speaks protocol version {limits.PROTOCOL_VERSION}")
        return Reply(request.id, result={"version": limits.PROTOCOL_VERSION, "server": SERVER_NAME})

    async def _join(self, request: Join) -> Reply:
        channel_id = request.channel
        if request.uri_mode:
            channel_id = channel_id.removeprefix(URI_PREFIX)
            # Cluster mode: the channel may live on another node; its owner decides (not_found there).
            if self._registry.find(channel_id) is None and not self._registry.clustered:
                return Reply(request.id, Reason.NOT_FOUND, f"no channel {channel_id!r}")
        elif len(channel_id) > limits.MAX_ID_CHARS or channel_id.startswith(URI_PREFIX):
            return Reply(request.id, Reason.INVALID_PARAM, "a channel id has 1-128 characters; join a uri with uri_mode")
        claims: TokenClaims | None = None
        if self._settings.secret is not None:
            try:
                claims = self._check_token(request.token, request.user_id, channel_id)
            except ProtocolError as refusal:
                log.warning("%s: join of %s as %s refused: %s", self._peer, shown(channel_id), shown(request.user_id), refusal)
                return Reply(request.id, refusal.reason, refusal.message)
        command = JoinChannel(
            time=now(),
            channel_id=channel_id,
            user_id=request.user_id,
            new_number=0,  # allocated by the registry if this join creates the channel
            salt=os.urandom(SALT_BYTES),
            role=request.role,
            state=request.state,
            upload=request.upload,
            display_name=request.display_name,
            uri_mode=request.uri_mode,
            password=request.password,
            capacity=request.capacity,
            heartbeat_time=request.heartbeat_time or self._settings.heartbeat_time,
            heartbeat_timeout=request.heartbeat_timeout or self._settings.heartbeat_timeout,
            title=request.title,
            custom_property=request.custom_property,
            max_senders=request.max_senders,
            allowed_roles=None if claims is None else claims.roles,
        )
        address = self.output.remote_address[0]
        existing = self._registry.find(channel_id)
        guarded = existing is not None and existing.channel is not None and existing.channel.password_hash is not None
        if guarded:
            wait = self._registry.guesses.reserve(address, channel_id, trio.current_time())
            if wait is None:
                return Reply(request.id, Reason.RATE_LIMITED, "too many wrong passwords from your address; try again later")
            await trio.sleep(wait)  # the backoff: a turn booked after this address's failures
        self._held = []
        answer = await self._registry.submit(channel_id, command, self)
        if guarded or answer.reason is Reason.INVALID_PASSWORD:
            self._registry.guesses.record(address, channel_id, failed=answer.reason is Reason.INVALID_PASSWORD, now=trio.current_time())
        if answer.reason is not Reason.NONE:
            return Reply(request.id, answer.reason, answer.message)
        self.user_id = request.user_id
        if claims is not None:
            self._hold_token(claims)
        log.info("%s joined %s as %s", self._peer, shown(channel_id), shown(self.user_id))
        return self._joined_reply(request.id, answer)

    def _joined_reply(self, request_id: int, answer: ChannelReply) -> Reply:
        channel_id = answer.info.channel_id if answer.info is not None else ""
        self._session_token = new_session_token(channel_id, secrets.token_bytes(NONCE_BYTES))
        self.resume_key = resume_key(self._session_token)
        info = None if answer.info is None else attrs.evolve(answer.info, session_token=self._session_token)
        return Reply(request_id, result=None if info is None else to_wire(info))

    async def _resume(self, request: Resume) -> Reply:
        """Resumes a session held on this node; in cluster mode also one this node never held
        (its node died, or the client moved): the channel's owner recognises it by the
        token's resume key (`registry.Registry.resume_elsewhere`)."""
        suspension = self._registry.claim(request.session_token)
        answer = ChannelReply(Reason.NOT_FOUND, "no dropped session to resume (grace period over?)")
        channel_id = ""
        self._held = []
        if suspension is not None:
            dropped = suspension.session
            channel_id = suspension.channel_id
            answer = await self._registry.submit(channel_id, Reattach(suspension.user_id, dropped), self)  # type: ignore[arg-type]
            if answer.reason is Reason.NONE:
                answer = attrs.evolve(answer, user_id=suspension.user_id)
                if isinstance(dropped, ParticipantActor):
                    self._token_deadline, self._claims = dropped._token_deadline, dropped._claims
        elsewhere = answer.reason is Reason.NOT_FOUND and self._registry.clustered
        if elsewhere:
            channel_id, answer = await self._registry.resume_elsewhere(request.session_token, self)
        if answer.reason is not Reason.NONE:
            return Reply(request.id, answer.reason, answer.message)
        self.user_id = answer.user_id
        if elsewhere and self._settings.secret is not None:
            # Token mode: the session keeps its join token's expiry (unknown: expired now, so
            # the heartbeat sweep ends it with token_expired); what the token granted is the
            # member's granted roles (in its state), for this channel only.
            expires = answer.token_expires_at if answer.token_expires_at is not None else now()
            self._hold_token(TokenClaims(channel_id, self.user_id, _granted(self._channel, self.user_id), expires))
        log.info("%s resumed %s in %s", self._peer, shown(self.user_id), shown(channel_id))
        return self._joined_reply(request.id, answer)

    def _check_token(self, token: str | None, user_id: str, channel_id: str) -> TokenClaims:
        assert self._settings.secret is not None
        if token is None:
            raise ProtocolError(Reason.TOKEN_INVALID, "this server requires a join token")
        claims = verify_token(self._settings.secret, token, now=now())
        if claims.user_id != user_id:
            raise ProtocolError(Reason.TOKEN_INVALID, f"the token names user {claims.user_id[:64]!r}, not {user_id[:64]!r}")
        if not claims.allows_channel(channel_id):
            raise ProtocolError(Reason.TOKEN_INVALID, "the token is not valid for this channel")
        return claims

    def _hold_token(self, claims: TokenClaims) -> None:
        self._claims = claims
        self._token_deadline = trio.current_time() + (claims.expires_at - now())

    async def _refresh(self, request: RefreshToken) -> Reply:
        """Extends the session without leaving; the roles granted at join stay as they were."""
        if self._settings.secret is None:
            return Reply(request.id)  # open mode: nothing expires
        assert self._channel is not None
        try:
            claims = self._check_token(request.token, self.user_id, self._channel.channel_id)
        except ProtocolError as refusal:
            log.warning("%s: token refresh for %s refused: %s", self._peer, shown(self.user_id), refusal)
            return Reply(request.id, refusal.reason, refusal.message)
        self._hold_token(claims)
        return Reply(request.id)

    async def _query(self, request: Query) -> Reply:
        channel_id = request.channel.removeprefix(URI_PREFIX)
        if self._settings.secret is not None:
            # Token mode: a member list is for members. Only a session holding a valid token
            # may query, and only the channels that token allows (issue 12: no anonymous query).
            if self._claims is None or self.state is not SessionState.JOINED:
                return Reply(request.id, Reason.TOKEN_INVALID, "this server answers query only to a member joined with a token")
            if not self._claims.allows_channel(channel_id):
                return Reply(request.id, Reason.NO_PERMISSION, "your token does not allow that channel")
        actor = self._registry.find(channel_id)
        if actor is None and self._registry.clustered:
            answer = await self._registry.query_elsewhere(channel_id)  # its owner, on another node
            if isinstance(answer, ChannelReply):
                return Reply(request.id, answer.reason, answer.message or f"no channel {request.channel!r}")
            return Reply(request.id, result=to_wire(answer))
        if actor is None or actor.channel is None:
            return Reply(request.id, Reason.NOT_FOUND, f"no channel {request.channel!r}")
        return Reply(request.id, result=to_wire(query_info(actor.channel)))

    async def _admin(self, request: AdminRequest) -> Reply:
        """Open mode: anyone may (loopback only, as for every other request). With a secret:
        the request's own admin token, checked every time, so no connection holds admin
        rights that outlive the token."""
        operator = "local"
        if self._settings.secret is not None:
            if request.token is None:
                return Reply(request.id, Reason.NO_PERMISSION, "admin requests need an admin token (airwave token --admin)")
            try:
                operator = verify_admin_token(self._settings.secret, request.token, now=now())
            except ProtocolError as refusal:
                log.warning("%s: %s refused: %s", self._peer, request.TYPE, refusal.message)
                return Reply(request.id, refusal.reason, refusal.message)
        return await serve_admin(self._registry, request, operator)

    async def _send_text(self, request: SendMessage) -> Reply:
        channel = self._channel
        assert channel is not None
        frame = frame_of(MessageReceived(request.msg_type, request.content, self.user_id, request.to))
        link = channel.link  # cluster mode: members on other nodes get it through their node
        if request.to is None:
            for session in channel.sessions():
                if session is not self:
                    session.send_frame(frame)
            if link is not None:
                link.send_text(frame, None, self.user_id)
        else:
            target = channel.session(request.to)
            if target is not None:
                target.send_frame(frame)
            elif link is not None and channel.channel is not None and request.to in channel.channel.members:
                link.send_text(frame, request.to, self.user_id)
            else:
                return Reply(request.id, Reason.NOT_FOUND, f"{request.to!r} is not in the channel")
        return Reply(request.id)

    async def _subscribe(self, request: SubscribeAudio) -> Reply:
        channel = self._channel
        assert channel is not None
        member = channel.channel.members.get(request.user_id) if channel.channel else None
        if member is None:
            return Reply(request.id, Reason.NOT_FOUND, f"{request.user_id!r} is not in the channel")
        channel.router.set_subscription(self._sid, member.sid, request.enabled)
        return Reply(request.id)

    # --- heartbeats and the end of the connection ---

    def _watch_acknowledgements(self, timeout: float) -> bool:
        """Whether frames sent prove the peer is there: only while the kernel talks to the
        client itself. Behind a reverse proxy the acknowledgements are the proxy's, so a
        proxied connection is pinged even while it receives media."""
        return not self.output.forwarded and self.output.watch_acknowledgements(timeout)

    def tick(self, now: float, awake_since: float = -math.inf) -> None:
        """The heartbeat, driven by the gateway's one sweep over every connection (a sleeping
        task per connection cost memory, timers and GC churn at thousands of listeners).

        Evidence that the peer is there: anything the socket received, and, where the
        kernel watches acknowledgements (`Connection.watch_acknowledgements`), anything
        sent to it, since unacknowledged data would end the connection after the same
        heartbeat_timeout. A connection with no evidence for heartbeat_timeout ends with
        timeout. A ping (pre-built, through the ordered output) goes out only after
        heartbeat_time with nothing sent, so a listener receiving media is never pinged:
        its pongs cost the server a read each, and on loopback they also switch the
        client's TCP to delayed acknowledgements, which the sender then pays for
        (docs/performance.md section 9.1). An expired token ends its membership.
        ``awake_since``: this process was away until then (paused), so silence before it
        is not the peer's.
        """
        if self._closing is not None:  # being closed
            return
        if self.state is SessionState.GREETING and now >= self._hello_deadline:
            log.info("%s: no hello within %g s", self._peer, self._settings.hello_timeout)
            self._nursery.start_soon(self.close, 1008, "no hello in time", Reason.TIMEOUT)
            return
        interval, timeout = self._heartbeat
        output = self.output
        if self._kernel_watches and output.frames_offered != self._frames_offered:
            self._frames_offered = output.frames_offered
            self._last_sent = now
        if now - max(output.last_received, self._last_sent, awake_since) >= timeout:
            log.info("%s (%s) timed out", self._peer, shown(self.user_id or "-"))
            self._metrics.heartbeat_timeouts += 1
            self._nursery.start_soon(self.close, 1001, "heartbeat timeout", Reason.TIMEOUT)
            return
        if now >= self._token_deadline:
            self._token_deadline = math.inf
            self._nursery.start_soon(self._expire_token)
        if now - max(self._last_ping, self._last_sent) >= interval:
            self._last_ping = now
            output.send_frame_nowait(PING_FRAME, droppable=False)
            self._frames_offered = output.frames_offered  # a ping is not evidence

    async def close(self, code: int, reason: str, end_reason: Reason) -> None:
        """Ends the connection from the server's side, the session's end told as
        ``end_reason``. The close handshake needs trio-websocket's reader, which lives in the
        connection's nursery, so `run` waits for this before that nursery is cancelled; a
        vanished peer never answers, hence the bound."""
        if self._closing is not None:
            return
        self.end_reason = end_reason
        done = self._closing = trio.Event()
        try:
            with trio.move_on_after(CLOSE_HANDSHAKE_SECONDS):
                await self._ws.aclose(code=code, reason=reason)
            await self.output.aclose()
        finally:
            done.set()

    async def _expire_token(self) -> None:
        channel = self._channel
        if channel is not None and self.state is SessionState.JOINED:
            log.info("%s (%s): token expired", self._peer, shown(self.user_id))
            await self._registry.submit(channel.channel_id, LeaveChannel(now(), self.user_id, Reason.TOKEN_EXPIRED), self)

    async def _leave_on_disconnect(self) -> None:
        channel = self._channel
        if channel is None or self.state is not SessionState.JOINED:
            return
        reason = getattr(self.output, "close_reason", None) or self.end_reason
        if self._dropped and reason is Reason.NETWORK and self._settings.resume_grace > 0:
            # Decision 7: held for the grace period, unseen; a resume writes no leave or join.
            log.info("%s (%s) dropped; held %.0f s for resume", self._peer, shown(self.user_id), self._settings.resume_grace)
            self._registry.suspend(self._session_token, channel.channel_id, self, self.user_id, self._settings.resume_grace, now)
            return
        await self._registry.submit(channel.channel_id, LeaveChannel(now(), self.user_id, Reason(reason)), self)


def _granted(actor: ChannelActor | None, user_id: str) -> frozenset[CustomRole]:
    """The roles ``user_id``'s token granted (as its participant_joined logged them)."""
    member = actor.channel.members.get(user_id) if actor is not None and actor.channel else None
    mask = member.granted_roles if member is not None and member.granted_roles is not None else 0
    return frozenset(role for role in CustomRole if role and mask & role)


def query_info(channel: Channel) -> QueryInfo:
    """What ``query`` answers about a live channel (here, or on its owner in cluster mode)."""
    return QueryInfo(channel.channel_id, channel.number, len(channel.members), tuple(m.user_id for m in channel.members_in_join_order()))


@attrs.frozen
class Step:
    """One row of the lifecycle: who serves the request, the state it leads to when it
    succeeds (a refusal leaves the state as it was), and the state while it is served."""

    serve: Callable[[ParticipantActor, Any], Awaitable[Reply]]
    after: SessionState
    during: SessionState | None = None


def _in_channel(serve: Callable[[ParticipantActor, Any], Awaitable[Reply]]) -> Step:
    return Step(serve, SessionState.JOINED)


# The session lifecycle as a table (h11 style): state x request -> handler and next state.
# A request missing from its state's row is refused by `out_of_order`. docs/architecture.md
# shows this table as `lifecycle_markdown` renders it (a test keeps them the same).
LIFECYCLE: dict[SessionState, dict[type[Request], Step]] = {
    SessionState.GREETING: {Hello: Step(ParticipantActor._hello, SessionState.IDLE)},
    SessionState.IDLE: {
        Join: Step(ParticipantActor._join, SessionState.JOINED, during=SessionState.JOINING),
        Resume: Step(ParticipantActor._resume, SessionState.JOINED, during=SessionState.JOINING),
        Query: Step(ParticipantActor._query, SessionState.IDLE),
        Ping: Step(ParticipantActor._ping, SessionState.IDLE),
        **{admin: Step(ParticipantActor._admin, SessionState.IDLE) for admin in ADMIN_REQUEST_TYPES},
    },
    SessionState.JOINING: {},  # the join or resume being served is the only request
    SessionState.JOINED: {
        Leave: Step(ParticipantActor._submit, SessionState.IDLE),
        Stop: Step(ParticipantActor._submit, SessionState.IDLE),
        SetRole: _in_channel(ParticipantActor._submit),
        SetState: _in_channel(ParticipantActor._submit),
        EnableUpload: _in_channel(ParticipantActor._submit),
        Kick: _in_channel(ParticipantActor._submit),
        SetCustomProperty: _in_channel(ParticipantActor._submit),
        EnableRecord: _in_channel(ParticipantActor._submit),
        EnableCdn: _in_channel(ParticipantActor._submit),
        SendMessage: _in_channel(ParticipantActor._send_text),
        SubscribeAudio: _in_channel(ParticipantActor._subscribe),
        RefreshToken: _in_channel(ParticipantActor._refresh),
        Query: _in_channel(ParticipantActor._query),
        Ping: _in_channel(ParticipantActor._ping),
        **{admin: _in_channel(ParticipantActor._admin) for admin in ADMIN_REQUEST_TYPES},
    },
}


def out_of_order(state: SessionState, request: Request) -> tuple[Reason, str]:
    """Why a request its state does not serve is refused."""
    if state is SessionState.GREETING:
        return Reason.NOT_LOGIN, "send hello first"
    if isinstance(request, Hello):
        return Reason.CALL_FUNCTION_ERROR, "hello was already sent"
    if isinstance(request, Join):
        return Reason.ALREADY_JOINED, "leave the current channel first"
    return Reason.CALL_FUNCTION_ERROR, f"{request.TYPE} is not allowed while {state.value}"


def lifecycle_markdown() -> str:
    """LIFECYCLE as the table docs/architecture.md shows."""
    rows = ["| state | request | served by | state after success |", "|---|---|---|---|"]
    for state, steps in LIFECYCLE.items():
        for request_type, step in steps.items():
            during = f" (`{step.during.value}` meanwhile)" if step.during else ""
            rows.append(f"| `{state.value}` | `{request_type.TYPE}` | `{step.serve.__name__}` | `{step.after.value}`{during} |")
    return "\n".join(rows)
