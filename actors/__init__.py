"""The server: transport, gateway, participant and channel actors, registry, the pure channel
rules, events, the event log and replay. These are the names other packages may use."""

from .channel_rules import Channel, Member, decide, evolve, fold
from .eventlog import EventLog, FsyncMode, LogCorruption, RecoveryReport
from .events import Event, event_from_record, event_to_record
from .participant import SessionSettings
from .replay import replay_events
from .server import RunningServer, ServerSettings, serve
from .transport import TransportSettings

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
