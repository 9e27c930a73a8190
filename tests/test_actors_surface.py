"""The server package's public surface, pinned; and its pure parts stay free of trio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import airwave.actors

ACTORS_API = {
    "Channel", "Event", "EventLog", "FsyncMode", "LogCorruption", "Member", "RecoveryReport", "RunningServer",
    "ServerSettings", "SessionSettings", "TransportSettings", "decide", "event_from_record", "event_to_record",
    "evolve", "fold", "replay_events", "serve",
}


def test_actors_exports_pin_the_public_surface() -> None:
    assert set(airwave.actors.__all__) == ACTORS_API
    assert all(getattr(airwave.actors, name) is not None for name in ACTORS_API)


def test_channel_rules_and_events_import_no_trio() -> None:
    """decide/evolve and the event codec are sans-IO: loaded by path, nothing pulls in trio."""
    actors = Path(airwave.actors.__file__).parent
    script = f"""
import importlib.util, sys, types
import airwave.protocol
pkg = types.ModuleType("airwave.actors"); pkg.__path__ = [{str(actors)!r}]
sys.modules["airwave.actors"] = pkg
for name in ("events", "channel_rules", "logformat"):
    spec = importlib.util.spec_from_file_location("airwave.actors." + name, {str(actors)!r} + "/" + name + ".py")
    module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; spec.loader.exec_module(module)
print("trio" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
