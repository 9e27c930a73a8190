"""The `airwave` command: serve, replay."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import signal
import socket
import sys
from pathlib import Path

import trio


def _is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def _serve(args: argparse.Namespace) -> int:
    from airwave.actors.eventlog import FsyncMode, LogLocked
    from airwave.actors.logformat import LogCorruption
    from airwave.actors.server import ServerSettings, serve

    if not _is_loopback(args.host) and not args.insecure:
        print(
            f"airwave: refusing to serve open mode on non-loopback address {args.host}; "
            "pass --insecure to do it anyway",
            file=sys.stderr,
        )
        return 2
    settings = ServerSettings(host=args.host, port=args.port, data_dir=Path(args.data), fsync=FsyncMode(args.fsync))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, settings)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    server.shutdown()
                    break

    # serve() opens the log and the socket inside a nursery: errors arrive in an ExceptionGroup.
    failure: tuple[str, int] | None = None
    try:
        trio.run(main)
    except* LogCorruption as group:
        failure = (f"the event log is corrupt, refusing to start: {group.exceptions[0]}", 2)
    except* LogLocked as group:
        failure = (str(group.exceptions[0]), 2)
    except* OSError as group:
        failure = (f"cannot serve on {args.host}:{args.port}: {group.exceptions[0]}", 1)
    if failure is not None:
        print(f"airwave: {failure[0]}", file=sys.stderr)
        return failure[1]
    return 0


def _replay(args: argparse.Namespace) -> int:
    from airwave.actors.logformat import LogCorruption
    from airwave.actors.replay import (
        event_json,
        event_text,
        final_state_json,
        final_state_text,
        fold_replayed,
        replay_events,
    )

    path = Path(args.path)
    if not path.exists():
        print(f"airwave: no event log at {path}", file=sys.stderr)
        return 2
    try:
        items = list(replay_events(path, channel=args.channel, until=args.until))
    except LogCorruption as exc:
        print(f"airwave: the event log is corrupt: {exc}", file=sys.stderr)
        return 2
    channels = fold_replayed(items)
    out = sys.stdout
    if args.json:
        for item in items:
            out.write(json.dumps(event_json(item)) + "\n")
        for channel in channels.values():
            out.write(json.dumps(final_state_json(channel)) + "\n")
    else:
        for item in items:
            out.write(event_text(item) + "\n")
        out.write("\nfinal state:\n" if channels else "\nno channels\n")
        for channel in channels.values():
            out.write(final_state_text(channel) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airwave", description="Live interactive voice streaming.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the channel service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--data", default="airwave-data", help="event log directory (default ./airwave-data)")
    serve.add_argument("--fsync", choices=["always", "batch", "never"], default="batch")
    serve.add_argument("--insecure", action="store_true", help="allow open mode on a non-loopback address")
    serve.set_defaults(run=_serve)

    replay = commands.add_parser("replay", help="print an event log's timeline and final state")
    replay.add_argument("path", help="the data directory, or one segment file")
    replay.add_argument("--channel", help="only this channel id")
    replay.add_argument("--until", type=int, metavar="SEQ", help="stop after this seq (included)")
    replay.add_argument("--json", action="store_true", help="one JSON object per line")
    replay.set_defaults(run=_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
