"""Cluster mode: one channel across several server processes and hosts, over NATS.

`bridge` is the only module that talks to nats-py's asyncio world; `subjects` names the
NATS things (pure); `jetlog` is the event log in JetStream (the file log's records, fenced
appends). Nothing here is loaded unless a server runs with ``--cluster``.
"""

from .bridge import BridgeClosed, Delivery, NatsBridge, Subscription, open_bridge
from .jetlog import ChannelLog, ClusterLogError, Fenced, StreamSettings, ensure_stream, read_records
from .subjects import channel_from_token, channel_token, event_subject, media_subject

__all__ = [
    "BridgeClosed",
    "ChannelLog",
    "ClusterLogError",
    "Delivery",
    "Fenced",
    "NatsBridge",
    "StreamSettings",
    "Subscription",
    "channel_from_token",
    "channel_token",
    "ensure_stream",
    "event_subject",
    "media_subject",
    "open_bridge",
    "read_records",
]
