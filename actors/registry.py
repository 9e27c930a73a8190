"""The registry: the one place that knows where each live channel's actor is.

It starts a channel actor on the first command for a channel id and forgets it when the
channel ends. A relay to other server processes would stand behind this same interface.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from airwave.protocol import DEFAULT_POLICY, Reason, RolePolicy
from airwave.protocol.text import shown

from .channel import ChannelActor, ChannelReply, Envelope, OneShot
from .core import Command, EndChannel, LeaveChannel
from .core.guesses import PasswordGuesses

log = logging.getLogger("airwave.registry")

LogAppend = Callable[[list[dict[str, object]]], Awaitable[object]]


class Registry:
    def __init__(
        self,
        nursery: trio.Nursery,
        log_append: LogAppend,
        *,
        next_number: int = 1,
        policy: RolePolicy = DEFAULT_POLICY,
        max_channels: int = 10_000,
        guesses: PasswordGuesses | None = None,
    ) -> None:
        # Wrong channel passwords, per address and channel: the server-wide backoff.
        self.guesses = guesses or PasswordGuesses()
        self._max_channels = max_channels
        self.refused_channels = 0
        self._nursery = nursery
        self._log_append = log_append
        self._next_number = next_number
        self._policy = policy
        self._actors: dict[str, ChannelActor] = {}
        self._suspended: dict[str, Suspension] = {}

    def find(self, channel_id: str) -> ChannelActor | None:
        actor = self._actors.get(channel_id)
        return actor if actor is not None and actor.live else None

    def channel_ids(self) -> list[str]:
        return [cid for cid, actor in self._actors.items() if actor.live]

    def _actor_for(self, channel_id: str) -> ChannelActor:
        actor = self._actors.get(channel_id)
        if actor is None:
            actor = ChannelActor(
                channel_id,
                log_append=self._log_append,
                allocate_number=lambda: self._next_number,
                claim_number=self._claim_number,
                on_idle=self._forget,
                policy=self._policy,
            )
            self._actors[channel_id] = actor
            self._nursery.start_soon(self._supervise, actor)
        return actor

    def _claim_number(self, number: int) -> None:
        self._next_number = max(self._next_number, number + 1)

    def _forget(self, actor: ChannelActor) -> None:
        if self._actors.get(actor.channel_id) is actor:
            del self._actors[actor.channel_id]

    async def _supervise(self, actor: ChannelActor) -> None:
        """An actor that crashes is logged and forgotten; the server and other channels go on."""
        try:
            await actor.run()
        except Exception:
            log.exception("channel actor %s crashed", shown(actor.channel_id))
            self._forget(actor)
            for session in actor.sessions():
                session.removed(actor.channel_id, Reason.INTERNAL_ERROR)

    async def submit(self, channel_id: str, command: Command, session: object | None) -> ChannelReply:
        """Sends ``command`` to the channel's actor (starting one if needed) and awaits its answer."""
        while True:
            if channel_id not in self._actors and len(self._actors) >= self._max_channels:
                self.refused_channels += 1
                return ChannelReply(Reason.FULL, f"this server already has its maximum of {self._max_channels} channels")
            actor = self._actor_for(channel_id)
            reply = OneShot()
            try:
                await actor.mailbox.send(Envelope(command, session, reply))  # type: ignore[arg-type]
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The actor ended between lookup and send: the next lookup starts a fresh one.
                self._forget(actor)
                continue
            return await reply.wait()

    # --- sessions whose connection dropped: held for a grace period (decision 7) ---

    def suspend(self, session_token: str, channel_id: str, session: object, user_id: str, grace: float, now: Callable[[], float]) -> None:
        """Holds a dropped session, unseen by the others; past ``grace`` it leaves with network."""
        suspension = Suspension(channel_id, user_id, session, trio.CancelScope())
        self._suspended[session_token] = suspension

        async def expire() -> None:
            with suspension.timer:
                await trio.sleep(grace)
                if self._suspended.pop(session_token, None) is suspension:
                    log.info("resume grace over for %s in %s", shown(user_id), shown(channel_id))
                    await self.submit(channel_id, LeaveChannel(now(), user_id, Reason.NETWORK), session)

        self._nursery.start_soon(expire)

    def claim(self, session_token: str) -> Suspension | None:
        """The suspended session for ``session_token`` (at most once), its grace timer stopped."""
        suspension = self._suspended.pop(session_token, None)
        if suspension is not None:
            suspension.timer.cancel()
        return suspension

    async def end_all(self, reason: Reason, now: float) -> None:
        """Ends every live channel for everyone (graceful shutdown), each logged as it goes."""
        async with trio.open_nursery() as nursery:
            for channel_id in self.channel_ids():
                nursery.start_soon(self.submit, channel_id, EndChannel(now, reason), None)


@attrs.frozen(eq=False)
class Suspension:
    channel_id: str
    user_id: str
    session: object
    timer: trio.CancelScope
