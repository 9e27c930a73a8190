"""The Python SDK: the vendor's call sequence in Python style, on trio.

    device = MediaDevice.create(source=ToneSource(440))
    async with Client.connect("ws://127.0.0.1:8765/", user_id="alice") as client:  # or token=...
        channel = MediaChannel.create(client, device, MyCallback())
        channel.set_custom_role(CustomRole.ROLE_0)     # before joining: sent with the join
        channel.enable_upload_audio_stream(True)
        channel.join("222")                              # -> callback.on_join(result, reason, "222")

Two faces over one implementation. The vendor's face: every call returns at once (True if
it was accepted for sending) and results arrive through the callback's ``on_*`` methods, in
call order. The trio face: ``await channel.join_async(...)`` returns the result, and
``channel.events()`` is an async iterator of the same events the callbacks receive. Each
sync call simply queues its ``*_async`` twin on the channel's operation runner.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import trio
import trio_websocket

from airwave.audio import AudioReceiver, AudioSender, AudioSource, Recorder, recorder_for
from airwave.protocol import (
    CdnState,
    ChannelInfo,
    ChannelState,
    CustomRole,
    CustomState,
    EnableUpload,
    Error,
    EnableCdn,
    EnableRecord,
    Join,
    Kick,
    Leave,
    Left,
    MemberCount,
    MessageReceived,
    ParticipantChange,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    PropertyChange,
    PropertyChanged,
    Query,
    Reason,
    RecordState,
    RefreshToken,
    Reply,
    Resume,
    SendMessage,
    SetCustomProperty,
    SetRole,
    SetState,
    Stop,
    SubscribeAudio,
    VolumeChanged,
    channel_info_from_wire,
    limits,
    query_info_from_wire,
)
from airwave.protocol.text import shown
from airwave.protocol.tokens import unverified_user_id
from airwave.values import (
    ChannelEvent,
    ConnectionState,
    ConnectionStateEvent,
    JoinParam,
    JoinResult,
    LeaveEvent,
    MediaChannelCallback,
    MemberCountEvent,
    MessageEvent,
    OperationError,
    Participant,
    ParticipantJoinEvent,
    ParticipantLeftEvent,
    ParticipantUpdateEvent,
    PropertyChangeEvent,
    QueryResult,
    ReconnectPolicy,
    StateChangeEvent,
    StopResult,
    VolumeChangeEvent,
)
from airwave.wire import Wire, WireClosed, open_wire, send_dropping_oldest

# The SDK's surface: the engine defined here, and its values (values.py), re-exported so
# that ``from airwave.client import JoinParam`` keeps working.
__all__ = [
    "ChannelEvent",
    "Client",
    "ConnectionState",
    "ConnectionStateEvent",
    "JoinParam",
    "JoinResult",
    "LeaveEvent",
    "MediaChannel",
    "MediaChannelCallback",
    "MediaDevice",
    "MemberCountEvent",
    "MessageEvent",
    "OperationError",
    "Participant",
    "ParticipantJoinEvent",
    "ParticipantLeftEvent",
    "ParticipantUpdateEvent",
    "PropertyChangeEvent",
    "QueryResult",
    "ReconnectPolicy",
    "StateChangeEvent",
    "StopResult",
    "VolumeChangeEvent",
    "open_channel",
]

log = logging.getLogger("airwave.client")

OPERATION_QUEUE = 256  # sync calls waiting to be sent; beyond it a call returns False
# Per events() iterator. A consumer that falls this far behind loses its oldest unread event
# for each new one (counted in events_dropped): what it reads next is what happened last,
# so it catches up with the channel's present instead of reading stale history.
EVENT_QUEUE = 1024
TICK = 0.020
FLUSH_SECONDS = 3.0  # leaving a Client block waits at most this long for the calls already queued
# A resume answered server_error is tried again this many times, 0.2 s, 0.4 s, ... apart (6.2 s
# in all: past a default lease TTL of 3 s and the take-over after it), before the SDK rejoins.
RESUME_TRIES = 6
RESUME_RETRY_FIRST = 0.2

T = TypeVar("T")
E = TypeVar("E", bound=ChannelEvent)
Operation = Callable[[], Awaitable[object]]  # a queued call; the runner discards its result


# --- device and client ----------------------------------------------------------------------


class MediaDevice:
    """The local audio devices: one source to upload from, any number of outputs."""

    def __init__(self, source: AudioSource | None, outputs: list[Recorder]) -> None:
        self.source = source
        self.outputs = outputs

    @classmethod
    def create(cls, *, source: AudioSource | None = None, outputs: Iterable[str | Recorder] = ()) -> MediaDevice:
        """``outputs`` are recorders or paths (.wav decoded, .ogg/.opus muxed as received)."""
        return cls(source, [recorder_for(o) if isinstance(o, str) else o for o in outputs])

    def set_audio_source(self, source: AudioSource | None) -> None:
        self.source = source

    def close(self) -> None:
        for output in self.outputs:
            output.close()


async def _nothing() -> None:
    """An operation that does nothing: once it has run, every call queued before it has."""


def identity(user_id: str | None, token: str | None) -> str:
    """Who a client joins as: the token's user if it has a token, else the id asked for, else a
    random one. Raises ValueError, with what to do, for an unreadable or contradicting token."""
    if token is None:
        return user_id or f"user-{secrets.token_hex(4)}"
    try:
        minted_for = unverified_user_id(token)
    except ValueError as exc:
        raise ValueError(f"the token cannot be used: {exc}") from None
    if user_id and user_id != minted_for:
        raise ValueError(
            f"user id {shown(user_id)} contradicts the token, which was minted for {shown(minted_for)}: "
            "leave the user id out (the token says who you are)"
        )
    return minted_for


class Client:
    """A connection to an Airwave server (the vendor's JCClient; ``hello`` is the login).

    If the connection drops, the client reconnects by itself (backoff with jitter) and its
    channel resumes the session, or rejoins if the server no longer holds it (a restart).
    """

    def __init__(
        self, nursery: trio.Nursery, url: str | Sequence[str], user_id: str, policy: ReconnectPolicy | None, token: str | None = None
    ) -> None:
        self.nursery = nursery
        # One service's addresses (the nodes of a cluster, say): tried in turn, the next one
        # after each failed attempt; `url` is the one in use.
        self.urls: tuple[str, ...] = (url,) if isinstance(url, str) else tuple(url)
        if not self.urls or not all(isinstance(u, str) and u for u in self.urls):
            raise ValueError("Client.connect needs a URL, or a list of them")
        self._url_index = 0
        self.url = self.urls[0]
        self.user_id = user_id
        self.token = token  # the join token when JoinParam names none; refresh_token replaces it
        self.channel: MediaChannel | None = None
        self.state = ConnectionState.CONNECTED
        self.reconnects = 0
        self._policy = policy
        self._wire: Wire | None = None
        self._new_wire = trio.Event()

    @property
    def wire(self) -> Wire:
        assert self._wire is not None
        return self._wire

    async def next_wire(self, after: Wire) -> Wire | None:
        """The connection that replaced ``after``; None once reconnecting has given up."""
        while self._wire is after and self.state is not ConnectionState.DISCONNECTED:
            await self._new_wire.wait()
        return None if self.state is ConnectionState.DISCONNECTED else self._wire

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str | Sequence[str],
        *,
        user_id: str | None = None,
        token: str | None = None,
        reconnect: ReconnectPolicy | None = ReconnectPolicy(),
    ) -> AsyncIterator[Client]:
        """The first connection must succeed (its error is raised); later drops are retried.

        A token is an identity: with ``token`` the user id is the one it was minted for (its
        ``sub``), and it is sent with every join. A ``user_id`` that says otherwise is a
        ValueError here, before connecting, not a token_invalid from the server later.

        ``url`` may be a list of the same service's addresses: the first connection tries
        them in order until one answers (the last error is raised if none does), and after a
        drop each failed attempt moves on to the next one, so a client whose node died
        resumes on another.
        """
        user_id = identity(user_id, token)
        async with trio.open_nursery() as nursery:
            client = cls(nursery, url, user_id, reconnect, token)
            await nursery.start(client._maintain)
            yield client
            await client._finish_queued_calls()
            nursery.cancel_scope.cancel()

    async def _finish_queued_calls(self) -> None:
        """A ``channel.stop()`` or ``leave()`` just before the block ends only queued the call:
        closing at once would lose it, and the others would see a drop (held for a resume)
        instead of the stop or leave that was asked for. So they are sent first, for at most
        FLUSH_SECONDS, which bounds an exit against a server that no longer answers."""
        if self.channel is None:
            return
        with trio.move_on_after(FLUSH_SECONDS):
            await self.channel._ordered(_nothing)

    def _install(self, wire: Wire | None, state: ConnectionState) -> None:
        self._wire, self.state = wire or self._wire, state
        self._new_wire.set()
        self._new_wire = trio.Event()
        if self.channel is not None:
            self.channel._connection_changed(state)

    async def _maintain(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        rng = random.Random()
        first = True
        while True:
            failed_since = trio.current_time()
            attempt = 0
            while True:
                try:
                    async with open_wire(self.url) as wire:
                        if first:
                            self._wire = wire
                            task_status.started()
                            first = False
                        else:
                            self.reconnects += 1
                            self._install(wire, ConnectionState.CONNECTED)
                            if self.channel is not None:
                                await self.channel._recover()
                        await wire.closed.wait()
                    break
                except (OSError, ConnectionError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed):
                    if first and self._url_index == len(self.urls) - 1:
                        raise
                    self._url_index = (self._url_index + 1) % len(self.urls)
                    self.url = self.urls[self._url_index]
                    if first:
                        continue  # the next address at once: nothing is connected yet
                if self._policy is None or trio.current_time() - failed_since > self._policy.give_up_after:
                    self._install(None, ConnectionState.DISCONNECTED)
                    return
                await trio.sleep(self._policy.delay(attempt, rng.random))
                attempt += 1
            if self._policy is None:
                self._install(None, ConnectionState.DISCONNECTED)
                return
            log.info("connection to %s lost; reconnecting", self.url)
            self._install(None, ConnectionState.RECONNECTING)


# --- the channel ----------------------------------------------------------------------------


class MediaChannel:
    def __init__(self, client: Client, device: MediaDevice, callback: MediaChannelCallback | None) -> None:
        self._client = client
        self._device = device
        self._callback = callback or MediaChannelCallback()
        self._state = ChannelState.IDLE
        self._channel_id = ""
        self._participants: dict[str, Participant] = {}
        self._role = CustomRole.ROLE_1
        self._custom_state = CustomState.NONE
        self._upload_wanted = False  # persists across leave and rejoin (client default: off)
        self._custom_property = ""
        self._record_state = RecordState.IDLE
        self._cdn_state = CdnState.IDLE
        self._member_count = 0
        self._session_token = ""
        self._last_join: tuple[str, JoinParam | None] | None = None
        self._op_ids = itertools.count(1)
        self._ops_send, self._ops = trio.open_memory_channel[Operation](OPERATION_QUEUE)
        self._listeners: list[_EventListener] = []
        self.events_dropped = 0
        self.receiver = AudioReceiver()
        self.receiver.recorders = device.outputs
        self._sender: AudioSender | None = None
        self._sender_source: AudioSource | None = None
        self.source_finished = trio.Event()
        self.media_sent = 0
        self.media_refusals = 0

    @classmethod
    def create(cls, client: Client, device: MediaDevice, callback: MediaChannelCallback | None = None) -> MediaChannel:
        if client.channel is not None:
            raise RuntimeError("one MediaChannel per Client: a connection is one session")
        channel = cls(client, device, callback)
        client.channel = channel
        for task in (channel._run_operations, channel._run_pushes, channel._run_media_in, channel._run_playout, channel._run_sender):
            client.nursery.start_soon(task)
        return channel

    # --- state ---

    @property
    def state(self) -> ChannelState:
        return self._state

    @property
    def channel_id(self) -> str:
        return self._channel_id

    @property
    def participants(self) -> list[Participant]:
        return list(self._participants.values())

    @property
    def self_participant(self) -> Participant | None:
        return self._participants.get(self._client.user_id)

    @property
    def member_count(self) -> int:
        return self._member_count

    def participant(self, user_id: str) -> Participant | None:
        return self._participants.get(user_id)

    def get_custom_property(self) -> str:
        return self._custom_property

    def get_record_state(self) -> RecordState:
        """Whether the server records the channel (kept from the join and property changes)."""
        return self._record_state

    def get_cdn_state(self) -> CdnState:
        """Whether the server streams the channel's mix to Icecast/HLS (kept from the join
        and property changes)."""
        return self._cdn_state

    def get_statistics(self) -> str:
        """A JSON text with "Config", "Network", "Transport" and "Participants" (the vendor's keys)."""
        return json.dumps(
            {
                "Config": {"url": self._client.url, "user_id": self._client.user_id, "channel_id": self._channel_id,
                           "state": self._state.name.lower(), "role": self._role.index, "upload": self._upload_wanted,
                           "audio_output": self.receiver.output_enabled},
                "Network": {"connection": self._client.state.value, "reconnects": self._client.reconnects},
                "Transport": {"media_sent": self.media_sent, "media_received": self.receiver.stats.packets,
                              "media_dropped_locally": self._client.wire.media_dropped, "concealed_frames": self.receiver.stats.concealed,
                              "media_refusals": self.media_refusals, "events_dropped": self.events_dropped},
                "Participants": [
                    {"user_id": p.user_id, "role": p.custom_role.index, "state": p.custom_state.index, "audio": p.audio,
                     "volume_status": int(p.volume_status), "is_self": p.is_self}
                    for p in self._participants.values()
                ],
            }
        )

    # --- the vendor's face: queue and return ---

    def _queue(self, operation: Operation) -> bool:
        try:
            self._ops_send.send_nowait(operation)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    async def _ordered(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Runs ``operation`` after every call queued before it, and returns its result."""
        finished = trio.Event()
        results: list[T] = []  # one slot, filled by the operation runner

        async def run_and_keep() -> None:
            results.append(await operation())
            finished.set()

        await self._ops_send.send(run_and_keep)
        await finished.wait()
        return results[0]

    def set_custom_role(self, role: CustomRole, participant: Participant | str | None = None) -> bool:
        return self._queue(lambda: self._set_custom_role(role, participant))

    def set_custom_state(self, state: CustomState, participant: Participant | str | None = None) -> bool:
        return self._queue(lambda: self._set_custom_state(state, participant))

    def enable_upload_audio_stream(self, enable: bool) -> bool:
        return self._queue(lambda: self._enable_upload_audio_stream(enable))

    def join(self, channel_id_or_uri: str, param: JoinParam | None = None) -> bool:
        if self._state is not ChannelState.IDLE:
            return False
        return self._queue(lambda: self._join(channel_id_or_uri, param))

    def leave(self) -> bool:
        return self._state is ChannelState.JOINED and self._queue(self._leave)

    def stop(self) -> bool:
        return self._state is ChannelState.JOINED and self._queue(self._stop)

    def kick(self, participant: Participant | str) -> bool:
        return self._queue(lambda: self._kick(participant))

    def query(self, channel_id: str) -> int:
        """Returns the operation id that on_query will carry."""
        operation_id = next(self._op_ids)
        self._queue(lambda: self._query(channel_id, operation_id))
        return operation_id

    def send_message(self, type: str, content: str, to_user_id: str | None = None) -> bool:
        size = len(content.encode("utf-8", "surrogatepass"))
        if self._state is not ChannelState.JOINED or not 1 <= size <= limits.MAX_MESSAGE_CONTENT_BYTES:
            return False
        return self._queue(lambda: self._send_message(type, content, to_user_id))

    def enable_audio_output(self, enable: bool) -> bool:
        """Local playback on or off (the default is on); persists across leave and rejoin."""
        self.receiver.output_enabled = enable
        self._emit(PropertyChangeEvent(PropertyChange.AUDIO_OUTPUT))
        return True

    def subscribe_participant_audio(self, participant: Participant | str, enable: bool) -> bool:
        return self._state is ChannelState.JOINED and self._queue(lambda: self._subscribe_participant_audio(participant, enable))

    def set_custom_property(self, value: str) -> bool:
        return self._state is ChannelState.JOINED and self._queue(lambda: self._set_custom_property(value))

    def enable_record(self, enable: bool, params: str = "") -> bool:
        """The vendor's enableRecord: the server starts (or stops) recording the channel.
        ``params`` is a JSON object text: {"mix": bool, "tracks": bool}, both true by default.
        The outcome comes as on_media_channel_property_change(record_state) to everyone, or
        on_error("enable_record", reason, message) to the caller (no_permission, ...)."""
        return self._state is ChannelState.JOINED and self._queue(lambda: self._enable_record(enable, params))

    def enable_cdn(self, enable: bool, key_interval_ms: int = 0) -> bool:
        """The vendor's enableCdn(enable, keyInterval): the server starts (or stops) streaming
        the channel's mix to its Icecast mount and/or HLS playlist. Audio has no key frames to
        space, so ``key_interval_ms`` is the HLS segment length (0: the server's, 1 s; else
        1000-10000). The outcome comes as on_media_channel_property_change(cdn_state) to
        everyone, or on_error("enable_cdn", reason, message) to the caller (no_permission;
        server_error when the server has no CDN output)."""
        return self._state is ChannelState.JOINED and self._queue(lambda: self._enable_cdn(enable, key_interval_ms))

    def refresh_token(self, token: str) -> bool:
        """A fresh join token for this session, before the current one expires; no leave."""
        return self._state is ChannelState.JOINED and self._queue(lambda: self._refresh_token(token))

    # --- the trio face: the same operations, awaited, in the same order as queued calls ---

    def events(self) -> trio.MemoryReceiveChannel[ChannelEvent]:
        """A new async iterator of every event from now on. It holds EVENT_QUEUE unread
        events; beyond that each new event drops the oldest unread one, counted in
        ``events_dropped``, so a reader that falls behind still reads the latest. Close it
        (``async with``) when done: a closed iterator is no longer fed."""
        send, receive = trio.open_memory_channel[ChannelEvent](EVENT_QUEUE)
        self._listeners.append(_EventListener(send, receive.clone()))
        return receive

    async def join_async(self, channel_id_or_uri: str, param: JoinParam | None = None) -> JoinResult:
        return await self._ordered(lambda: self._join(channel_id_or_uri, param))

    async def leave_async(self) -> LeaveEvent:
        return await self._ordered(self._leave)

    async def stop_async(self) -> StopResult:
        return await self._ordered(self._stop)

    async def set_custom_role_async(self, role: CustomRole, participant: Participant | str | None = None) -> Reason:
        return await self._ordered(lambda: self._set_custom_role(role, participant))

    async def set_custom_state_async(self, state: CustomState, participant: Participant | str | None = None) -> Reason:
        return await self._ordered(lambda: self._set_custom_state(state, participant))

    async def enable_upload_audio_stream_async(self, enable: bool) -> Reason:
        return await self._ordered(lambda: self._enable_upload_audio_stream(enable))

    async def kick_async(self, participant: Participant | str) -> Reason:
        return await self._ordered(lambda: self._kick(participant))

    async def query_async(self, channel_id: str) -> QueryResult:
        return await self._ordered(lambda: self._query(channel_id))

    async def send_message_async(self, type: str, content: str, to_user_id: str | None = None) -> Reason:
        return await self._ordered(lambda: self._send_message(type, content, to_user_id))

    async def subscribe_participant_audio_async(self, participant: Participant | str, enable: bool) -> Reason:
        return await self._ordered(lambda: self._subscribe_participant_audio(participant, enable))

    async def set_custom_property_async(self, value: str) -> Reason:
        return await self._ordered(lambda: self._set_custom_property(value))

    async def enable_record_async(self, enable: bool, params: str = "") -> Reason:
        return await self._ordered(lambda: self._enable_record(enable, params))

    async def enable_cdn_async(self, enable: bool, key_interval_ms: int = 0) -> Reason:
        return await self._ordered(lambda: self._enable_cdn(enable, key_interval_ms))

    async def refresh_token_async(self, token: str) -> Reason:
        return await self._ordered(lambda: self._refresh_token(token))

    # --- the operations themselves ---

    async def _join(self, channel_id_or_uri: str, param: JoinParam | None = None) -> JoinResult:
        param = param or JoinParam()
        if self._state is not ChannelState.IDLE:
            reason = Reason.ALREADY_JOINED if self._state is ChannelState.JOINED else Reason.CALL_FUNCTION_ERROR
            return self._emit(JoinResult(False, reason, channel_id_or_uri))
        self._set_state(ChannelState.JOINING)
        reply = await self._request(
            Join,
            channel=channel_id_or_uri,
            user_id=self._client.user_id,
            uri_mode=param.uri_mode,
            display_name=param.display_name,
            role=self._role,
            state=self._custom_state,
            upload=self._upload_wanted,
            password=param.password,
            capacity=param.capacity,
            heartbeat_time=param.heartbeat_time,
            heartbeat_timeout=param.heartbeat_timeout,
            title=param.title,
            custom_property=param.custom_property,
            max_senders=param.max_senders,
            token=param.token or self._client.token,
        )
        if not reply.ok:
            self._set_state(ChannelState.IDLE)
            return self._emit(JoinResult(False, reply.reason, channel_id_or_uri))
        self._last_join = (channel_id_or_uri, param)
        self._apply_channel_info(channel_info_from_wire(reply.result))
        self._set_state(ChannelState.JOINED)
        return self._emit(JoinResult(True, Reason.NONE, self._channel_id))

    def _apply_channel_info(self, info: ChannelInfo) -> None:
        self._channel_id = info.channel_id
        self._session_token = info.session_token
        self._custom_property = info.custom_property
        self._record_state = info.record_state
        self._cdn_state = info.cdn_state
        self._member_count = info.member_count
        self._participants.clear()
        for p in info.participants:
            self._store(Participant.from_info(p, is_self=p.user_id == self._client.user_id))

    async def _leave(self) -> LeaveEvent:
        if self._state is not ChannelState.JOINED:
            return self._emit(LeaveEvent(Reason.CALL_FUNCTION_ERROR, self._channel_id))
        self._set_state(ChannelState.LEAVING)
        reply = await self._request(Leave)
        return self._left(Reason.QUIT if reply.ok else reply.reason)

    async def _stop(self) -> StopResult:
        if self._state is not ChannelState.JOINED:
            return self._emit(StopResult(False, Reason.CALL_FUNCTION_ERROR))
        reply = await self._request(Stop)
        if not reply.ok:
            return self._emit(StopResult(False, reply.reason))
        self._reset_channel()
        self._set_state(ChannelState.IDLE)
        return self._emit(StopResult(True, Reason.NONE))

    async def _set_custom_role(self, role: CustomRole, participant: Participant | str | None = None) -> Reason:
        target = _user_id(participant)
        if self._state is not ChannelState.JOINED:
            if target is not None and target != self._client.user_id:
                return self._refused("set_custom_role", Reason.CALL_FUNCTION_ERROR, "not in a channel")
            self._role = role  # kept, and sent with the join
            return Reason.NONE
        reply = await self._request(SetRole, role=role, user_id=target)
        if reply.ok and target in (None, self._client.user_id):
            self._role = role
        return self._checked("set_custom_role", reply)

    async def _set_custom_state(self, state: CustomState, participant: Participant | str | None = None) -> Reason:
        target = _user_id(participant)
        if self._state is not ChannelState.JOINED:
            if target is not None and target != self._client.user_id:
                return self._refused("set_custom_state", Reason.CALL_FUNCTION_ERROR, "not in a channel")
            self._custom_state = state
            return Reason.NONE
        reply = await self._request(SetState, state=state, user_id=target)
        if reply.ok and target in (None, self._client.user_id):
            self._custom_state = state
        return self._checked("set_custom_state", reply)

    async def _enable_upload_audio_stream(self, enable: bool) -> Reason:
        """Remembered as a wish: if refused for lack of permission now, it is sent again by
        itself once a host puts this participant on the mic (the co-host flow)."""
        self._upload_wanted = enable
        if self._state is not ChannelState.JOINED:
            return Reason.NONE
        return self._checked("enable_upload_audio_stream", await self._request(EnableUpload, enabled=enable))

    async def _kick(self, participant: Participant | str) -> Reason:
        if self._state is not ChannelState.JOINED:
            return self._refused("kick", Reason.CALL_FUNCTION_ERROR, "not in a channel")
        return self._checked("kick", await self._request(Kick, user_id=_user_id(participant)))

    async def _query(self, channel_id: str, operation_id: int | None = None) -> QueryResult:
        operation_id = operation_id or next(self._op_ids)
        reply = await self._request(Query, channel=channel_id)
        info = query_info_from_wire(reply.result) if reply.ok else None
        return self._emit(QueryResult(operation_id, reply.ok, reply.reason, info))

    async def _send_message(self, type: str, content: str, to_user_id: str | None = None) -> Reason:
        return self._checked("send_message", await self._request(SendMessage, msg_type=type, content=content, to=to_user_id))

    async def _subscribe_participant_audio(self, participant: Participant | str, enable: bool) -> Reason:
        user_id = _user_id(participant)
        reply = await self._request(SubscribeAudio, user_id=user_id, enabled=enable)
        if reply.ok and (p := self._participants.get(user_id or "")) is not None:
            self._store(attrs.evolve(p, audio_subscribe=enable))
            if not enable:
                self.receiver.forget(p.sid)
        return self._checked("subscribe_participant_audio", reply)

    async def _set_custom_property(self, value: str) -> Reason:
        return self._checked("set_custom_property", await self._request(SetCustomProperty, value=value))

    async def _enable_record(self, enable: bool, params: str) -> Reason:
        try:
            EnableRecord(id=1, enabled=enable, params=params)
        except ValueError as exc:  # refused here as the server would refuse it
            return self._refused("enable_record", Reason.INVALID_PARAM, str(exc))
        return self._checked("enable_record", await self._request(EnableRecord, enabled=enable, params=params))

    async def _enable_cdn(self, enable: bool, key_interval_ms: int) -> Reason:
        try:
            EnableCdn(id=1, enabled=enable, key_interval_ms=key_interval_ms)
        except ValueError as exc:  # refused here as the server would refuse it
            return self._refused("enable_cdn", Reason.INVALID_PARAM, str(exc))
        return self._checked("enable_cdn", await self._request(EnableCdn, enabled=enable, key_interval_ms=key_interval_ms))

    async def _refresh_token(self, token: str) -> Reason:
        reason = self._checked("refresh_token", await self._request(RefreshToken, token=token))
        if reason is Reason.NONE:
            # A rejoin after a server restart must present the fresh token, not the expired one.
            self._client.token = token
            if self._last_join is not None and self._last_join[1] is not None and self._last_join[1].token:
                self._last_join = (self._last_join[0], attrs.evolve(self._last_join[1], token=token))
        return reason

    # --- internals ---

    async def _request(self, message_type: type, **fields: Any) -> Reply:
        try:
            return await self._client.wire.request(message_type, **fields)
        except (WireClosed, trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed) as exc:
            # Answered locally (request id unused): the call fails with network, never raises.
            return Reply(1, Reason.NETWORK, f"connection lost: {exc}")

    def _checked(self, operation: str, reply: Reply) -> Reason:
        if not reply.ok:
            self._refused(operation, reply.reason, reply.message)
        return reply.reason

    def _refused(self, operation: str, reason: Reason, message: str) -> Reason:
        self._emit(OperationError(operation, reason, message))
        return reason

    def _emit(self, event: E) -> E:
        """Calls the event's callback, then feeds every open events() iterator; returns the event."""
        handler = getattr(self._callback, event.CALLBACK, None)
        if handler is not None:
            try:
                handler(*attrs.astuple(event, recurse=False))
            except Exception:
                log.exception("callback %s raised", event.CALLBACK)
        for listener in list(self._listeners):
            if listener.abandoned:
                self._listeners.remove(listener)
                listener.oldest.close()
            elif send_dropping_oldest(listener.send, listener.oldest, event):
                self.events_dropped += 1
        return event

    def _set_state(self, state: ChannelState) -> None:
        old, self._state = self._state, state
        if old is not state:
            self._emit(StateChangeEvent(state, old))

    def _store(self, participant: Participant) -> None:
        self._participants[participant.user_id] = participant

    def _reset_channel(self) -> None:
        for participant in self._participants.values():
            self.receiver.forget(participant.sid)
        self._participants.clear()

    def _left(self, reason: Reason) -> LeaveEvent:
        channel_id = self._channel_id
        self._reset_channel()
        self._set_state(ChannelState.IDLE)
        return self._emit(LeaveEvent(reason, channel_id))

    def _maybe_resume_upload(self) -> None:
        """The co-host flow: an upload wish that is not granted is asked for again whenever
        this participant's role or state changes (being put on the mic, say). Whether they
        may publish now is the server's to say: the SDK keeps no copy of its role policy."""
        me = self.self_participant
        if me is not None and not me.audio and self._upload_wanted:
            self._queue(self._resume_upload)

    async def _resume_upload(self) -> Reason:
        """Asks again for the upload wish. A no_permission answer is not reported: the wish
        was refused before (or, at the join, not granted), and it stays for the next change."""
        if not self._upload_wanted or self._state is not ChannelState.JOINED:
            return Reason.NONE
        reply = await self._request(EnableUpload, enabled=True)
        if reply.reason is Reason.NO_PERMISSION:
            return reply.reason
        return self._checked("enable_upload_audio_stream", reply)

    # --- tasks ---

    async def _run_operations(self) -> None:
        """One call at a time, in call order: the vendor's face promises results in that order."""
        async with self._ops:
            async for operation in self._ops:
                await operation()

    async def _run_pushes(self) -> None:
        wire: Wire | None = self._client.wire
        while wire is not None:
            async for message in wire.pushes:
                self._on_push(message)
            wire = await self._client.next_wire(wire)
        if self._state is not ChannelState.IDLE:
            self._left(Reason.NETWORK)

    def _connection_changed(self, state: ConnectionState) -> None:
        self._emit(ConnectionStateEvent(state))

    async def _recover(self) -> None:
        """On a new connection: resume the session (decision 7), or rejoin if it is gone."""
        if self._state is ChannelState.IDLE or self._last_join is None:
            return
        channel_id, param = self._last_join
        for attempt in range(RESUME_TRIES):
            reply = await self._request(Resume, session_token=self._session_token)
            if reply.ok:
                self._apply_channel_info(channel_info_from_wire(reply.result))
                return
            if reply.reason is not Reason.SERVER_ERROR or attempt == RESUME_TRIES - 1:
                break
            # A cluster moving the channel (its owner just died: no node decides for it for
            # up to a lease TTL) answers server_error: the session may still be resumed.
            await trio.sleep(RESUME_RETRY_FIRST * 2**attempt)
        log.info("resume refused (%s); rejoining %s", reply.reason.reason_name, channel_id)
        self._set_state(ChannelState.IDLE)
        self._reset_channel()
        await self._ordered(lambda: self._join(channel_id, param))

    def _on_push(self, message: object) -> None:
        me = self._client.user_id
        match message:
            case ParticipantJoined(participant=info):
                participant = Participant.from_info(info, is_self=info.user_id == me)
                self._store(participant)
                self._emit(ParticipantJoinEvent(participant))
            case ParticipantLeft(user_id=user_id, reason=reason):
                gone = self._participants.pop(user_id, None)
                if gone is not None:
                    self.receiver.forget(gone.sid)
                    self._emit(ParticipantLeftEvent(gone, reason))
            case ParticipantUpdated(participant=info, changes=changes, in_view=in_view):
                old = self._participants.get(info.user_id)
                subscribed = old.audio_subscribe if old is not None else True
                participant = Participant.from_info(info, is_self=info.user_id == me, audio_subscribe=subscribed)
                change = ParticipantChange(changes)
                self._store(participant)
                if participant.is_self:
                    self._role, self._custom_state = participant.custom_role, participant.custom_state
                    # Audio too: an operator's unmute gives the right back with an update
                    # of yourself that changes nothing else (docs/protocol.md, admin requests).
                    if change & (ParticipantChange.CUSTOM_ROLE | ParticipantChange.CUSTOM_STATE | ParticipantChange.AUDIO):
                        self._maybe_resume_upload()
                    if participant == old:
                        return  # nothing to tell the application
                self._emit(ParticipantUpdateEvent(participant, change))
                if not in_view:
                    # The server will say nothing more of them to this client, their leave
                    # included (the scale rule): out of the list now.
                    self._participants.pop(participant.user_id, None)
            case VolumeChanged(user_id=user_id, volume_status=status):
                if (p := self._participants.get(user_id)) is not None:
                    participant = attrs.evolve(p, volume_status=status)
                    self._store(participant)
                    self._emit(VolumeChangeEvent(participant))
            case PropertyChanged(changes=changes, custom_property=value, record_state=record_state, cdn_state=cdn_state):
                self._custom_property = value
                self._record_state = record_state
                self._cdn_state = cdn_state
                self._emit(PropertyChangeEvent(PropertyChange(changes)))
            case MessageReceived(msg_type=msg_type, content=content, from_user_id=sender):
                self._emit(MessageEvent(msg_type, content, sender))
            case MemberCount(count=count):
                self._member_count = count
                self._emit(MemberCountEvent(count))
            case Left(channel=channel_id, reason=reason):
                if channel_id == self._channel_id and self._state is not ChannelState.IDLE:
                    self._left(reason)
            case Error(reason=reason, message=text):
                if reason in (Reason.NO_PERMISSION, Reason.CALL_FUNCTION_ERROR):
                    self.media_refusals += 1
                self._emit(OperationError("server", reason, text))

    async def _run_media_in(self) -> None:
        wire: Wire | None = self._client.wire
        while wire is not None:
            async for packet in wire.media:
                if self._state is ChannelState.JOINED:
                    self.receiver.push(packet, trio.current_time())
            wire = await self._client.next_wire(wire)

    async def _run_playout(self) -> None:
        """One mixed frame to the outputs every 20 ms while joined."""
        deadline = trio.current_time()
        while True:
            deadline += TICK
            await trio.sleep_until(deadline)
            if trio.current_time() - deadline > 10 * TICK:
                deadline = trio.current_time()  # the process stalled: don't burst to catch up
            if self._state is ChannelState.JOINED:
                self.receiver.tick(trio.current_time())

    async def _run_sender(self) -> None:
        """Paced upload: one frame every 20 ms while joined, uploading, and the source lasts."""
        deadline = trio.current_time()
        while True:
            deadline += TICK
            await trio.sleep_until(deadline)
            now = trio.current_time()
            if now - deadline > 10 * TICK:
                deadline = now
            me = self.self_participant
            source = self._device.source
            if self._state is not ChannelState.JOINED or me is None or not me.audio or source is None:
                continue
            if self._sender is None or self._sender_source is not source:
                if self._sender is not None:  # a new source: a new "finished"
                    self.source_finished = trio.Event()
                self._sender, self._sender_source = AudioSender(source), source
            frame = self._sender.next_frame()
            if frame is None:
                self.source_finished.set()
                continue
            try:
                await self._client.wire.send_bytes(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio_websocket.ConnectionClosed) as exc:
                log.debug("media send failed (reconnecting?): %r", exc)
                continue
            self.media_sent += 1


@attrs.frozen
class _EventListener:
    """One events() iterator as the channel feeds it. The channel holds a receiving end of
    its own (``oldest``), to drop the oldest unread event when the iterator is full."""

    send: trio.MemorySendChannel[ChannelEvent]
    oldest: trio.MemoryReceiveChannel[ChannelEvent]

    @property
    def abandoned(self) -> bool:
        """The user closed their iterator: only the channel's own receiving end is open."""
        return self.send.statistics().open_receive_channels <= 1


def _user_id(participant: Participant | str | None) -> str | None:
    return participant.user_id if isinstance(participant, Participant) else participant


@asynccontextmanager
async def open_channel(
    url: str,
    *,
    user_id: str | None = None,
    device: MediaDevice | None = None,
    callback: MediaChannelCallback | None = None,
) -> AsyncIterator[MediaChannel]:
    """Client.connect + MediaChannel.create in one step, for trio code."""
    async with Client.connect(url, user_id=user_id) as client:
        yield MediaChannel.create(client, device or MediaDevice.create(), callback)
