"""Airwave: live interactive voice streaming over a msgpack WebSocket protocol."""

__version__ = "0.1.0"
