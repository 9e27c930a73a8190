"""The server, in layers: the actors here (server, gateway, registry, channel, participant) are
thin trio shells over the pure `core` (events, commands, state, rules), the event `log`
(format, writer, recovery, replay) and the `net` edge (connections, listener, WebSocket).
These are the names other packages may use."""

from .core import Channel, Event, Member, decide, event_from_record, event_to_record, evolve, fold
from .log import EventLog, FsyncMode, LogCorruption, RecoveryReport, replay_events
from .net import TransportSettings
from .participant import SessionSettings
from .server import RunningServer, ServerSettings, serve

__all__ = [
    "Channel",
    "Event",
    "EventLog",
    "FsyncMode",
    "LogCorruption",
    "Member",
    "RecoveryReport",
    "RunningServer",
    "ServerSettings",
    "SessionSettings",
    "TransportSettings",
    "decide",
    "event_from_record",
    "event_to_record",
    "evolve",
    "fold",
    "replay_events",
    "serve",
]
