"""Airwave: live interactive voice streaming over a msgpack WebSocket protocol."""

# The one place the version is written: pyproject.toml reads it from here, and the server
# (which imports nothing of the client package) reads it back from the installed metadata.
__version__ = "0.1.0"
