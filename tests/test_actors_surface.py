"""The server package's public surface, pinned (the layer rules are in test_layers.py)."""

from __future__ import annotations

import airwave.actors

ACTORS_API = {
    "Channel", "Event", "EventLog", "FsyncMode", "LogCorruption", "Member", "RecoveryReport", "RunningServer",
    "ServerSettings", "SessionSettings", "TransportSettings", "decide", "event_from_record", "event_to_record",
    "evolve", "fold", "replay_events", "serve",
}


def test_actors_exports_pin_the_public_surface() -> None:
    assert set(airwave.actors.__all__) == ACTORS_API
    assert all(getattr(airwave.actors, name) is not None for name in ACTORS_API)
