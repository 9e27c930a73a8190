"""The `airwave` command: serve, token, replay, host, listen, stop, record, cdn, admin, top, demo.

Whatever a user gets wrong is one line on stderr that says what to do, and a non-zero exit:
2 when the command line asks for something that cannot be done, 1 when the run failed.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import trio

if TYPE_CHECKING:
    from airwave.actors.core.cdn import CdnSettings
    from airwave.commands import Quit


def _leaf(error: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _root_cause(error: BaseException) -> str:
    """The innermost cause, e.g. "[Errno 111] Connect call failed", not a wrapper's empty repr."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    return str(error) or type(error).__name__


def _causes(error: BaseException) -> list[BaseException]:
    """``error``, what it was raised from, and what any exception group holds, all of them:
    a refused connection arrives as an OSError raised from a group of per-address errors."""
    found: list[BaseException] = []
    pending = [error]
    while pending:
        current = pending.pop()
        if any(current is seen for seen in found):
            continue
        found.append(current)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
    return found


def _url_problem(url: str) -> str | None:
    """What is wrong with a --url, said so that the fix is plain, or None if it looks usable."""
    example = "ws://HOST:PORT/, e.g. ws://127.0.0.1:8765/"
    if "://" not in url:
        return f"--url {url!r} has no scheme: write it as ws://{url}" if url and " " not in url else f"--url {url!r} is not a URL: use {example}"
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        secure = "s" if parts.scheme == "https" else ""
        return f"--url {url} is a web address: Airwave speaks WebSocket, use ws{secure}://{parts.netloc}{parts.path or '/'}"
    if parts.scheme not in ("ws", "wss"):
        return f"--url {url!r} is not a WebSocket URL: use {example}"
    try:
        port = parts.port
    except ValueError:
        return f"--url {url!r} has a port that is not a number in 1-65535: use {example}"
    if not parts.hostname or port == 0 or " " in url:
        return f"--url {url!r} is not a usable address: use {example}"
    return None


def _connect_failure(error: BaseException, url: str) -> str:
    """One line for a connection that failed or was refused, with what to check."""
    import trio_websocket

    parts = urlsplit(url)
    address = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
    causes = _causes(error)
    rejected = [c for c in causes if isinstance(c, trio_websocket.ConnectionRejected)]
    if rejected:
        return (
            f"{url} is not an Airwave server: it answered the WebSocket handshake with HTTP "
            f"{rejected[0].status_code}; check --url"
        )
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return f"cannot reach the server at {url}: connection refused; is `airwave serve` running at {address}?"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return f"cannot reach the server at {url}: no such host {parts.hostname!r}; check --url"
    if any(isinstance(c, trio_websocket.HandshakeError) for c in causes):
        return f"{url} did not complete a WebSocket handshake: is it an Airwave server? check --url"
    return f"cannot reach the server at {url}: {_root_cause(error)}; is `airwave serve` running at {address}?"


def _secret(args: argparse.Namespace) -> bytes | None:
    """The server secret: --dev, --secret-file, AIRWAVE_SECRET, or --secret (visible in ps)."""
    from airwave.protocol.tokens import DEV_SECRET

    if getattr(args, "dev", False):
        return DEV_SECRET
    if getattr(args, "secret_file", None):
        try:
            secret = Path(args.secret_file).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the secret file {args.secret_file}: {exc.strerror}") from None
        if not secret:
            raise ValueError(f"the secret file {args.secret_file} is empty")
        return secret
    if os.environ.get("AIRWAVE_SECRET"):
        return os.environ["AIRWAVE_SECRET"].encode()
    if getattr(args, "secret", None):
        return str(args.secret).encode()
    return None


def _token(args: argparse.Namespace) -> int:
    from airwave.protocol import CustomRole
    from airwave.protocol.tokens import mint_admin_token, mint_token

    if args.admin:
        if args.channel is not None or args.role is not None or args.pattern:
            return _failed("an admin token opens no channel and grants no role: drop CHANNEL, --role and --pattern", 2)
        try:
            secret = _secret(args)
            if secret is None:
                raise ValueError("no secret: use --secret-file, AIRWAVE_SECRET, --secret or --dev")
        except ValueError as exc:
            return _failed(str(exc), 2)
        print(mint_admin_token(secret, user_id=args.user, now=time.time(), ttl=args.ttl))
        return 0
    if args.channel is None or args.role is None:
        return _failed("a join token needs CHANNEL and --role (or --admin for an admin token)", 2)
    indexes = [r.strip() for r in args.role.split(",")]
    if not all(r in ("0", "1", "2", "3") for r in indexes):
        print(f"airwave: --role {args.role}: give role indexes 0 (host), 1 (audience), 2 or 3, comma-separated", file=sys.stderr)
        return 2
    try:
        secret = _secret(args)
        if secret is None:
            raise ValueError("no secret: use --secret-file, AIRWAVE_SECRET, --secret or --dev")
        roles = [CustomRole.from_index(int(r)) for r in indexes]
        token = mint_token(secret, channel=args.channel, user_id=args.user, roles=roles, now=time.time(), ttl=args.ttl, pattern=args.pattern)
    except ValueError as exc:
        print(f"airwave: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _identity(args: argparse.Namespace, prefix: str, role_index: int) -> tuple[str, str | None]:
    """The user id and token a client command joins with. A token is an identity: with
    --token the user id is the one it was minted for, and a --user that says otherwise is a
    ValueError now rather than token_invalid from the server. With --dev this command mints
    its own token, for --user or a random id."""
    from airwave.client import identity
    from airwave.commands import random_name

    if args.token:
        return identity(args.user, args.token), args.token
    user_id = args.user or random_name(prefix)
    if not args.dev:
        return user_id, None
    from airwave.protocol import CustomRole
    from airwave.protocol.tokens import DEV_SECRET, mint_token

    role = CustomRole.from_index(role_index)
    return user_id, mint_token(DEV_SECRET, channel=args.channel, user_id=user_id, roles=[role], now=time.time(), ttl=24 * 3600)


def _failed(message: str, code: int) -> int:
    print(f"airwave: {message}", file=sys.stderr)
    return code


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, got {text}")
    return value


def _is_origin(text: str) -> bool:
    """What a browser sends as Origin: scheme://host[:port] and nothing after it (or '*')."""
    if text == "*":
        return True
    parts = urlsplit(text)
    return bool(parts.scheme and parts.hostname) and parts.path in ("", "/") and not (parts.query or parts.fragment)


def _is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def _serve(args: argparse.Namespace) -> int:
    from airwave.actors.log import FsyncMode, LogCorruption, LogFailed, LogLocked, UnusableRecord
    from airwave.actors.server import ServerSettings, serve

    from airwave.actors.net import TransportSettings
    from airwave.actors.participant import SessionSettings

    try:
        secret = _secret(args)
    except ValueError as exc:
        print(f"airwave: {exc}", file=sys.stderr)
        return 2
    if secret is None and not _is_loopback(args.host) and not args.insecure:
        print(
            f"airwave: refusing to serve open mode on non-loopback address {args.host}; "
            "give a secret (--secret-file or AIRWAVE_SECRET) or pass --insecure",
            file=sys.stderr,
        )
        return 2
    if args.dev and not _is_loopback(args.host):
        print("airwave: --dev uses a well-known secret and is for loopback only", file=sys.stderr)
        return 2
    bad_origins = [o for o in args.allow_origin if not _is_origin(o)]
    if bad_origins:
        print(f"airwave: --allow-origin {bad_origins[0]!r} is not an origin: give scheme://host[:port], e.g. "
              "http://localhost:3000, or '*'", file=sys.stderr)
        return 2
    metrics_address = None
    if args.metrics:
        host, _, port = args.metrics.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            print(f"airwave: --metrics {args.metrics!r} is not HOST:PORT, e.g. 127.0.0.1:9464", file=sys.stderr)
            return 2
        metrics_address = (host.strip("[]"), int(port))
    webhook = None
    if args.webhook:
        from airwave.actors.webhooks import WebhookSettings

        try:
            hook_secret = Path(args.webhook_secret_file).read_bytes().strip() if args.webhook_secret_file else None
            webhook = WebhookSettings(args.webhook, secret=hook_secret)
        except (OSError, ValueError) as exc:
            print(f"airwave: --webhook: {exc}", file=sys.stderr)
            return 2
    elif args.webhook_secret_file:
        print("airwave: --webhook-secret-file needs --webhook URL", file=sys.stderr)
        return 2
    try:
        cdn = _cdn_settings(args)
    except ValueError as exc:
        print(f"airwave: {exc}", file=sys.stderr)
        return 2
    settings = ServerSettings(
        metrics_address=metrics_address, webhook=webhook, cdn=cdn,
        host=args.host, port=args.port, data_dir=Path(args.data), fsync=FsyncMode(args.fsync),
        session=SessionSettings(secret=secret, resume_grace=args.resume_grace), stats_interval=args.stats_interval,
        transport=TransportSettings(allowed_origins=args.allow_origin),
        **({"max_joining": args.max_joining} if args.max_joining else {}),
    )

    cluster = None
    if args.cluster is not None or args.node is not None:
        from airwave.actors.cluster.jetlog import StreamSettings
        from airwave.actors.cluster.lease import LeaseSettings
        from airwave.actors.cluster.placement import ClusterSettings
        from airwave.actors.cluster.servers import parse_servers

        try:
            if args.cluster is None or args.node is None:
                raise ValueError("--cluster and --node go together: every node of a cluster has its own name")
            if args.webhook:
                raise ValueError("--webhook follows the file log; a cluster's log is in JetStream (not yet supported there)")
            cluster = ClusterSettings(
                servers=tuple(parse_servers(args.cluster)), node=args.node,
                lease=LeaseSettings(ttl=args.lease_ttl, renew_every=args.lease_ttl / 3, replicas=args.replicas),
                stream=StreamSettings(replicas=args.replicas),
            )
        except ValueError as exc:
            print(f"airwave: {exc}", file=sys.stderr)
            return 2

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            if cluster is not None:
                from airwave.actors.cluster.server import serve_cluster

                server = await nursery.start(serve_cluster, settings, cluster)
            else:
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
        failure = (f"the event log is corrupt, refusing to start: {_leaf(group)}", 2)
    except* UnusableRecord as group:
        failure = (f"the event log holds a record this server cannot use, refusing to start: {_leaf(group)}", 2)
    except* LogLocked as group:
        failure = (str(_leaf(group)), 2)
    except* LogFailed as group:
        failure = (f"{_leaf(group)} (disk full or failing?); the server stopped", 1)
    except* ConnectionError as group:  # cluster mode: no NATS server answered
        failure = (str(_leaf(group)), 1)
    except* OSError as group:
        failure = (f"cannot serve on {args.host}:{args.port}: {_leaf(group)}", 1)
    if failure is not None:
        print(f"airwave: {failure[0]}", file=sys.stderr)
        return failure[1]
    return 0


def _replay_cluster_log(url: str, *, channel: str | None, until: int | None) -> list[object]:
    """The cluster's event stream as replayed events (the same records as a file log's)."""
    from airwave.actors.cluster import ClusterLogError, open_bridge, read_records
    from airwave.actors.cluster.servers import parse_servers
    from airwave.actors.log.replay import replay_records

    servers = parse_servers(url)

    async def read() -> list[dict[str, object]]:
        with trio.fail_after(30):
            async with open_bridge(servers, name="airwave-replay") as bridge:
                return await read_records(bridge, channel=channel, until=until)

    try:
        records = trio.run(read)
    except (ConnectionError, ClusterLogError) as exc:
        raise ValueError(str(exc)) from None
    except trio.TooSlowError:
        raise ValueError("NATS did not answer within 30 s") from None
    return list(replay_records(records, None))


def _replay(args: argparse.Namespace) -> int:
    from airwave.actors.log import LogCorruption, UnusableRecord
    from airwave.actors.log.replay import (
        audio_column,
        audio_places,
        event_json,
        event_text,
        final_state_json,
        final_state_text,
        fold_replayed,
        replay_events,
    )

    from airwave.actors.cluster.servers import is_nats_url

    path = Path(args.path)
    if (args.at is None) != (args.export is None):
        return _failed("--at SEQ and --export FILE go together: the clip is around that event", 2)
    if args.export is not None and is_nats_url(args.path):
        return _failed("recordings are files in a server's data directory: replay that directory, not NATS", 2)
    if not is_nats_url(args.path) and not path.exists():
        print(f"airwave: no event log at {path}", file=sys.stderr)
        return 2
    try:
        if is_nats_url(args.path):
            items = _replay_cluster_log(args.path, channel=args.channel, until=args.until)
            channels = fold_replayed(items, None)
        else:
            items = list(replay_events(path, channel=args.channel, until=args.until))
            channels = fold_replayed(items, path)
    except ValueError as exc:  # a bad NATS address, or NATS unreachable: the reason says which
        print(f"airwave: cannot replay {args.path}: {exc}", file=sys.stderr)
        return 2
    except LogCorruption as exc:
        print(f"airwave: the event log is corrupt: {exc}", file=sys.stderr)
        return 2
    except UnusableRecord as exc:
        print(f"airwave: cannot replay: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout
    if args.export is not None:
        return _export_clip(args, items, path if path.is_dir() else path.parent)
    places = audio_places(items) if args.audio else {}
    if args.json:
        for item in items:
            data = event_json(item)
            if args.audio:
                place = places.get(item.seq)
                data["audio"] = None if place is None else {"directory": place.directory, "offset": place.offset}
            out.write(json.dumps(data) + "\n")
        for channel in channels.values():
            out.write(json.dumps(final_state_json(channel)) + "\n")
    else:
        for item in items:
            out.write((audio_column(places.get(item.seq)) if args.audio else "") + event_text(item) + "\n")
        out.write("\nfinal state:\n" if channels else "\nno channels\n")
        for channel in channels.values():
            out.write(final_state_text(channel) + "\n")
    return 0


def _export_clip(args: argparse.Namespace, items: list[Any], data_dir: Path) -> int:
    """`replay --at SEQ --export FILE`: the recording around event SEQ as a WAV, and the
    events that fall inside it, each at its offset into the clip."""
    from airwave.actors.log.replay import audio_places, event_json, event_text
    from airwave.media.clips import export_clip
    from airwave.protocol.text import shown

    item = next((i for i in items if i.seq == args.at), None)
    if item is None:
        return _failed(f"no event {args.at} in {args.path}" + (f" for channel {shown(args.channel)}" if args.channel else ""), 2)
    places = audio_places(items)
    place = places.get(args.at)
    if place is None:
        return _failed(f"event {args.at} ({item.event.TYPE} in {shown(item.event.channel)}) is not in a recording: its channel was not recording then", 2)
    directory = data_dir / place.directory
    if not directory.is_dir():
        return _failed(f"the recording {place.directory} is not in {data_dir} any more", 2)
    start = max(0.0, place.offset - args.before)
    out_path = Path(args.export)
    if out_path.is_dir() or not out_path.parent.is_dir():
        why = "it is a directory" if out_path.is_dir() else f"there is no directory {out_path.parent}"
        return _failed(f"cannot export to {out_path}: {why}", 2)
    try:
        clip = export_clip(directory, start, place.offset - start + args.seconds, out_path)
    except OSError as exc:  # the output not writable, the disk full, a file of the recording gone
        return _failed(f"cannot export {out_path}: {exc.strerror or exc}", 1)
    except ValueError as exc:  # no audio yet, or a file FFmpeg cannot decode
        return _failed(f"cannot export {out_path}: {exc}", 1)
    length = clip.samples / 48_000
    inside = [
        (places[i.seq].offset - start, i) for i in items
        if i.seq in places and places[i.seq].directory == place.directory and 0 <= places[i.seq].offset - start <= length
    ]
    sources = [str(source.relative_to(data_dir)) for source in clip.sources]
    if args.json:
        print(json.dumps({
            "type": "clip", "file": str(out_path), "seconds": round(length, 3), "recording_offset": round(start, 3),
            "sources": sources, "at": args.at,
            "events": [{**event_json(i), "clip_offset": round(offset, 3)} for offset, i in inside],
        }))
    else:
        print(f"wrote {out_path}: {length:.2f} s of {', '.join(sources)} from +{start:.3f}s (event {args.at} at +{place.offset - start:.3f}s)")
        for offset, i in inside:
            print(f"{'+' + format(offset, '.3f') + 's':>11}  {event_text(i)}")
    return 0


QUIT_GRACE = 5.0  # after Ctrl-C or SIGTERM, seconds a command has to leave and finish its file


async def _on_signals(signals: AsyncIterator[int], quit: Quit, command: trio.CancelScope) -> None:
    """The first signal asks the command to quit, which it does by leaving; it is cancelled
    outright if it is not connected yet (nothing to leave), on a second signal, or when it
    takes longer than QUIT_GRACE."""
    async for number in signals:
        first = quit.signal_number is None
        quit.request(number)
        if not first or not quit.connected:
            command.cancel()
        else:
            command.deadline = trio.current_time() + QUIT_GRACE


def _run_client(
    args: argparse.Namespace, command: Callable[[Quit], Awaitable[int]], *, interrupt_quits: bool = False, one_url: bool = False,
) -> int:
    """Runs a client command; any failure is one line with its reason and a non-zero exit,
    and Ctrl-C or SIGTERM is a clean leave, one line, and 130 or 143 (128 + the signal).
    ``interrupt_quits``: Ctrl-C is how the command is meant to end (a live view): exit 0."""
    import trio_websocket

    from airwave.commands import CommandFailed, Quit

    # --url ws://a/,ws://b/: the nodes of one cluster, tried in turn (to connect, and to resume
    # on another when one goes away); ``one_url`` commands ask one node about itself.
    given = args.url
    urls = [url.strip() for url in given.split(",")]
    if one_url and len(urls) > 1:
        return _failed(f"--url takes one address here, not {len(urls)}: this command asks one node", 2)
    for url in urls:
        if (problem := _url_problem(url)) is not None:
            return _failed(problem, 2)
    args.url = urls[0] if len(urls) == 1 else tuple(urls)
    quit = Quit()

    async def main() -> int:
        code = 1
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as scope:
                    nursery.start_soon(_on_signals, signals, quit, scope)
                    code = await command(quit)
                nursery.cancel_scope.cancel()
        return code

    failure: tuple[str, int] | None = None
    code = 0
    try:
        code = trio.run(main)
    except* CommandFailed as group:
        failed = _leaf(group)
        failure = (str(failed), failed.exit_code if isinstance(failed, CommandFailed) else 1)
    except* (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed) as group:
        failure = (_connect_failure(group, urls[-1]) + (f" (and none of the {len(urls) - 1} before it in --url)" if len(urls) > 1 else ""), 1)
    if quit.signal_number == signal.SIGINT and interrupt_quits and failure is None:
        return 0
    if quit.signal_number is not None:
        print(f"airwave: interrupted by {signal.Signals(quit.signal_number).name}", file=sys.stderr)
        return 128 + quit.signal_number
    if failure is not None:
        print(f"airwave: {failure[0]}", file=sys.stderr)
        return failure[1]
    return code


def _host(args: argparse.Namespace) -> int:
    from airwave import commands

    try:
        source = commands.source_from(args.input, args.tone, args.mic)
        user_id, token = _identity(args, "host", 0)
    except commands.CommandFailed as exc:
        return _failed(str(exc), exc.exit_code)
    except ValueError as exc:
        return _failed(str(exc), 2)
    return _run_client(args, lambda quit: commands.host(
        args.url, args.channel, source, duration=args.duration, user_id=user_id, display_name=args.name or "",
        password=args.password, stop_at_end=args.stop_at_end, token=token, quit=quit,
    ))


def _listen(args: argparse.Namespace) -> int:
    from airwave import commands

    if args.output is None and not args.speaker:
        return _failed("listen needs --output FILE or --speaker", 2)
    try:
        user_id, token = _identity(args, "listener", 1)
    except ValueError as exc:
        return _failed(str(exc), 2)
    return _run_client(args, lambda quit: commands.listen(
        args.url, args.channel, args.output, speaker=args.speaker, force=args.force, duration=args.duration,
        user_id=user_id, display_name=args.name or "", password=args.password, token=token, quit=quit,
    ))


def _stop(args: argparse.Namespace) -> int:
    from airwave import commands

    try:
        user_id, token = _identity(args, "stopper", 0)
    except ValueError as exc:
        return _failed(str(exc), 2)
    return _run_client(args, lambda quit: commands.stop(
        args.url, args.channel, user_id=user_id, display_name=args.name or "", password=args.password, token=token,
        quit=quit,
    ))


def _cdn_settings(args: argparse.Namespace) -> CdnSettings:
    """serve's CDN flags as settings: the Icecast URL checked (icecast://, a host, a port),
    its password taken from the file when one is named."""
    from urllib.parse import quote

    from airwave.actors.core.cdn import CdnSettings

    url = args.icecast_url
    if url is None:
        if args.icecast_password_file:
            raise ValueError("--icecast-password-file needs --icecast-url icecast://source@HOST:PORT")
        return CdnSettings(hls=args.hls)
    parts = urlsplit(url)
    if parts.scheme != "icecast" or not parts.hostname or not parts.port:
        raise ValueError(f"--icecast-url must be icecast://source:PASSWORD@HOST:PORT, not {url.split('@')[-1]!r}")
    if args.icecast_password_file:
        try:
            password = Path(args.icecast_password_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"--icecast-password-file: {exc.strerror}: {args.icecast_password_file}") from None
        host = parts.netloc.rpartition("@")[2]
        url = f"icecast://{quote(parts.username or 'source', safe='')}:{quote(password, safe='')}@{host}{parts.path}"
    elif parts.password is None:
        raise ValueError("--icecast-url has no password: give icecast://source:PASSWORD@HOST:PORT or --icecast-password-file")
    return CdnSettings(icecast_url=url, hls=args.hls)


def _cdn(args: argparse.Namespace) -> int:
    from airwave import commands

    try:
        user_id, token = _identity(args, "cdn", 0)
    except ValueError as exc:
        return _failed(str(exc), 2)
    return _run_client(args, lambda quit: commands.cdn(
        args.url, args.channel, args.state == "on", key_interval_ms=args.key_interval_ms, user_id=user_id,
        display_name=args.name or "", password=args.password, token=token, quit=quit,
    ))


def _record(args: argparse.Namespace) -> int:
    from airwave import commands

    try:
        user_id, token = _identity(args, "recorder", 0)
    except ValueError as exc:
        return _failed(str(exc), 2)
    return _run_client(args, lambda quit: commands.record(
        args.url, args.channel, args.state == "on", params=args.params or "", user_id=user_id,
        display_name=args.name or "", password=args.password, token=token, quit=quit,
    ))


def _admin_token(args: argparse.Namespace) -> str | None:
    """--token as given; else one minted for a minute from the server secret (--secret-file,
    AIRWAVE_SECRET, --secret, --dev), as the operator --user; else none (open mode)."""
    if args.token:
        return str(args.token)
    secret = _secret(args)
    if secret is None:
        return None
    from airwave.protocol.tokens import mint_admin_token

    return mint_admin_token(secret, user_id=args.user, now=time.time(), ttl=60.0)


def _admin(args: argparse.Namespace) -> int:
    from airwave import admin

    wanted = {"channels": 0, "members": 1, "stop": 1}.get(args.action, 2)
    given = [value for value in (args.channel, args.target) if value is not None]
    if len(given) != wanted:
        shape = {0: "", 1: " CHANNEL", 2: " CHANNEL USER"}[wanted]
        return _failed(f"usage: airwave admin {args.action}{shape}", 2)
    try:
        token = _admin_token(args)
    except ValueError as exc:
        return _failed(str(exc), 2)
    return _run_client(args, lambda quit: admin.run(
        args.url, args.action, channel=args.channel, user_id=args.target, token=token, as_json=args.json,
    ), one_url=True)


def _top(args: argparse.Namespace) -> int:
    from airwave import top

    try:
        token = _admin_token(args)
    except ValueError as exc:
        return _failed(str(exc), 2)
    return _run_client(args, lambda quit: top.run(args.url, token=token, interval=args.interval), interrupt_quits=True, one_url=True)


def _demo(args: argparse.Namespace) -> int:
    from airwave.demo import run_demo

    logging.getLogger().setLevel(logging.WARNING)  # the demo narrates; the server stays quiet
    return int(trio.run(lambda: run_demo(Path(args.dir) if args.dir else None)))


def add_secret_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--secret-file", metavar="PATH", help="the server secret, read from a file (preferred)")
    sub.add_argument("--secret", help="the server secret in clear (visible in ps; prefer --secret-file or AIRWAVE_SECRET)")
    sub.add_argument("--dev", action="store_true", help="the fixed development secret: loopback only, never in production")


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def build_parser() -> argparse.ArgumentParser:
    from airwave import __version__

    parser = argparse.ArgumentParser(prog="airwave", description="Live interactive voice streaming.")
    parser.add_argument("--version", action="version", version=f"airwave {__version__}")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO", help="(default INFO)")
    # The same option after the subcommand (`airwave serve --log-level DEBUG`), where people
    # put it; SUPPRESS keeps the value given before the subcommand when it is not repeated.
    logging_option = argparse.ArgumentParser(add_help=False)
    logging_option.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, default=argparse.SUPPRESS, help="(default INFO)"
    )
    parser.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one object per line (default text)")
    logging_option.add_argument(
        "--log-format", choices=["text", "json"], default=argparse.SUPPRESS,
        help="json: one object per line with time, level, event, channel, user, connection (default text)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[logging_option])

    serve = command("serve", "run the channel service")
    serve.add_argument(
        "--host", default="127.0.0.1",
        help="the address to listen on; in open mode (no secret) only a loopback one, unless --insecure (default %(default)s)",
    )
    serve.add_argument("--port", type=int, default=8765, help="the TCP port; 0 picks a free one (default %(default)s)")
    serve.add_argument(
        "--config", metavar="FILE",
        help="a TOML file of these settings, keys as the flags without dashes (port = 8765); flags given too override it",
    )
    serve.add_argument("--data", default="airwave-data", help="the event log's directory (default ./%(default)s)")
    serve.add_argument(
        "--fsync", choices=["always", "batch", "never"], default="batch",
        help="the event log's durability: always and batch both sync every event to disk before acting on it, "
        "always one write at a time, batch all waiting writes with one sync (faster); never does not sync, so "
        "events survive a server crash but not a power cut; docs/eventlog.md (default %(default)s)",
    )
    serve.add_argument(
        "--allow-origin", action="append", default=[], metavar="ORIGIN",
        help="a web page origin (scheme://host[:port]) whose scripts may connect, e.g. http://localhost:3000; "
        "repeatable; '*' allows any (default: none, a browser's handshake is refused with 403)",
    )
    serve.add_argument("--insecure", action="store_true", help="allow open mode on a non-loopback address")
    serve.add_argument("--stats-interval", type=float, metavar="S", help="log a statistics line every S seconds")
    serve.add_argument(
        "--webhook", metavar="URL",
        help="POST every event of the log to URL as JSON, in order, at least once, retrying until answered with 2xx; "
        "the cursor is kept in DATA/webhook.cursor (docs/operations.md)",
    )
    serve.add_argument(
        "--webhook-secret-file", metavar="FILE",
        help="sign each webhook POST with HMAC-SHA256 of this file's key: X-Airwave-Signature: sha256=HEX",
    )
    serve.add_argument(
        "--metrics", metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:9464 (default: off; docs/operations.md)",
    )
    serve.add_argument(
        "--resume-grace", type=_seconds, default=15.0, metavar="S",
        help="seconds a dropped connection's session is held for resume, unseen by the others; "
        "0: a drop is a leave (default %(default)s; docs/operations.md)",
    )
    serve.add_argument(
        "--max-joining", type=_positive_int, metavar="N",
        help="connections between accept and their first answered request at once (default 64; docs/operations.md)",
    )
    cdn = serve.add_argument_group("CDN (docs/operations.md): enable_cdn streams a channel's mix to Icecast and/or HLS")
    cdn.add_argument(
        "--icecast-url", metavar="URL",
        help="the Icecast server a channel's source connects to: icecast://source[:PASSWORD]@HOST:PORT; each channel "
        "streams Ogg/Opus to its own mount /<channel>.opus (a password here is visible in ps: prefer --icecast-password-file)",
    )
    cdn.add_argument("--icecast-password-file", metavar="FILE", help="the Icecast source password, from this file")
    cdn.add_argument(
        "--hls", action="store_true",
        help="write each streaming channel's HLS (fMP4, 1 s segments) under DATA/hls/ and serve it on this port at "
        "/hls/<channel>/index.m3u8",
    )
    cluster = serve.add_argument_group("cluster mode (docs/operations.md): several nodes share channels over NATS")
    cluster.add_argument(
        "--cluster", metavar="nats://HOST:PORT[,...]",
        help="the NATS servers (with JetStream) of the cluster; the event log is then the JetStream stream, not --data",
    )
    cluster.add_argument("--node", metavar="NAME", help="this node's name in the cluster: unique, and the same across its restarts")
    cluster.add_argument(
        "--lease-ttl", type=float, default=3.0, metavar="S",
        help="seconds after a node's last renewal that its channels pass to another node (default %(default)s)",
    )
    cluster.add_argument(
        "--replicas", type=int, choices=range(1, 6), default=1, metavar="R",
        help="JetStream replicas of the event stream and the lease buckets when this node creates them: "
        "3 on a 3-server NATS cluster (default %(default)s; existing ones are kept as they are)",
    )
    add_secret_options(serve)
    serve.set_defaults(run=_serve)

    token = command("token", "mint a join token or an admin token (the server needs the same secret)")
    token.add_argument("channel", nargs="?", help="the channel id the token opens (a glob pattern with --pattern)")
    token.add_argument("--pattern", action="store_true", help="CHANNEL is a glob (* ? [...]) over channel ids, e.g. 'room-*'")
    token.add_argument("--user", required=True, help="the user id the token is for (with --admin: the operator's name, logged)")
    token.add_argument("--role", metavar="R[,R...]", help="custom role indexes the holder may take (0 host, 1 audience, 2, 3)")
    token.add_argument("--admin", action="store_true", help="an admin token: for airwave admin and airwave top, no channel, no role")
    token.add_argument("--ttl", type=float, default=3600.0, metavar="S", help="seconds until it expires (default 3600)")
    add_secret_options(token)
    token.set_defaults(run=_token)

    replay = command("replay", "print an event log's timeline and final state")
    replay.add_argument(
        "path", metavar="PATH|nats://HOST:PORT",
        help="the data directory, one segment file, or a cluster's NATS (the JetStream event stream)",
    )
    replay.add_argument("--channel", help="only this channel id")
    replay.add_argument("--until", type=int, metavar="SEQ", help="stop after this seq (included)")
    replay.add_argument("--json", action="store_true", help="one JSON object per line")
    replay.add_argument(
        "--audio", action="store_true",
        help="start each event with its offset in its channel's recording (+S.SSSs into every file of it; - when not recording); "
        "with --json an \"audio\" field: {directory, offset}",
    )
    replay.add_argument("--at", type=int, metavar="SEQ", help="with --export: the event the clip is around")
    replay.add_argument("--export", metavar="FILE.wav", help="write the recording around event --at to this WAV (48 kHz mono) and list the events in it")
    replay.add_argument("--seconds", type=_seconds, default=10.0, metavar="S", help="with --export: seconds after the event (default 10)")
    replay.add_argument("--before", type=_seconds, default=1.0, metavar="S", help="with --export: seconds before it (default 1)")
    replay.set_defaults(run=_replay)

    def client_options(sub: argparse.ArgumentParser, default_user: str) -> None:
        sub.add_argument("channel", help="the channel id")
        sub.add_argument(
            "--url", default="ws://127.0.0.1:8765",
            help="the server (default ws://127.0.0.1:8765); a cluster's nodes as ws://a:8765/,ws://b:8765/: tried in turn, "
            "and on a node's loss the session resumes on the next",
        )
        sub.add_argument("--token", metavar="JWT", help="a join token (airwave token ...), for a server with a secret: it says who you are")
        sub.add_argument("--dev", action="store_true", help="mint a token with the dev secret (a server run with --dev)")
        sub.add_argument(
            "--user", metavar="ID",
            help=f"your user id (default: the token's user with --token, else {default_user}-<random>)",
        )
        sub.add_argument("--name", help="the display name the others see (default: your user id)")
        sub.add_argument("--password", metavar="P", help="the channel's password (visible in ps; fine for local use)")

    host = command("host", "join as host (role 0) and stream audio; Ctrl-C leaves the channel cleanly")
    client_options(host, "host")
    source = host.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="FILE", help="an audio file (any format FFmpeg reads)")
    source.add_argument("--tone", type=float, metavar="HZ", help="a generated sine tone")
    source.add_argument("--mic", action="store_true", help="the microphone (needs the 'devices' extra and a sound device)")
    host.add_argument("--duration", type=float, metavar="S", help="stream this long (default: until the input ends)")
    host.add_argument("--stop-at-end", action="store_true", help="stop the channel for everyone at the end")
    host.set_defaults(run=_host)

    listen = command("listen", "join as audience (role 1) and record or play; Ctrl-C leaves the channel cleanly")
    client_options(listen, "listener")
    sink = listen.add_argument_group("where the audio goes (at least one)")
    sink.add_argument("--output", metavar="FILE", help="a .wav (decoded) or .ogg/.opus (as received) file")
    sink.add_argument("--speaker", action="store_true", help="play it (needs the 'devices' extra and a sound device)")
    listen.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    listen.add_argument("--duration", type=float, metavar="S", help="listen this long (default: until the channel ends)")
    listen.set_defaults(run=_listen)

    stop = command("stop", "end a channel for everyone")
    client_options(stop, "stopper")
    stop.set_defaults(run=_stop)

    record = command("record", "turn the server's recording of a channel on or off (as a host; files go in the server's data directory)")
    client_options(record, "recorder")
    record.add_argument("state", choices=("on", "off"), help="on: start recording; off: stop")
    record.add_argument(
        "--params", metavar="JSON",
        help='what to record, e.g. \'{"mix": true, "tracks": false}\' (default: the mix and one track per speaker)',
    )
    record.set_defaults(run=_record)
    cdn = command("cdn", "turn streaming a channel's mix to the server's Icecast and HLS on or off (as a host)")
    client_options(cdn, "cdn")
    cdn.add_argument("state", choices=("on", "off"), help="on: start streaming; off: stop")
    cdn.add_argument(
        "--key-interval-ms", type=int, default=0, metavar="MS",
        help="the HLS segment length, 1000-10000 ms (enable_cdn's key_interval_ms; default 0: the server's, 1000)",
    )
    cdn.set_defaults(run=_cdn)
    def admin_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--url", default="ws://127.0.0.1:8765", help="the server (default ws://127.0.0.1:8765)")
        sub.add_argument("--token", metavar="JWT", help="an admin token (minted by the token command); without one, this command mints its own from the secret, if given")
        sub.add_argument("--user", default="admin", help="the operator's name, logged with each action, when the token is minted here (default admin)")
        add_secret_options(sub)

    admin = command("admin", "an operator's view and levers: list channels and members, kick, stop, mute, end a session")
    admin.add_argument("action", choices=["channels", "members", "kick", "stop", "mute", "unmute", "end"], help=(
        "channels | members CHANNEL | kick CHANNEL USER | stop CHANNEL | mute CHANNEL USER | unmute CHANNEL USER | "
        "end CHANNEL USER (a kick that closes the connection, or ends a session held for resume)"
    ))
    admin.add_argument("channel", nargs="?", help="the channel id")
    admin.add_argument("target", nargs="?", metavar="user", help="the member's user id")
    admin.add_argument("--json", action="store_true", help="print JSON instead of a table")
    admin_options(admin)
    admin.set_defaults(run=_admin)

    top = command("top", "a live view of the server's channels, refreshed every second; q or Ctrl-C quits")
    top.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes (default 1)")
    admin_options(top)
    top.set_defaults(run=_top)

    demo = command("demo", "run a server, a host, two listeners, a co-host and a stop, in one go")
    demo.add_argument("--dir", help="where to put the recordings and the event log (default: a new temp dir)")
    demo.set_defaults(run=_demo)
    return parser


def config_arguments(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """A TOML file of serve's settings as the command-line arguments they stand for, so the
    same parser checks them and any flag given after them wins. Keys are the flags without
    their dashes (``port = 8765``, ``allow-origin = ["http://a"]``, ``insecure = true``)."""
    import tomllib

    try:
        with open(path, "rb") as file:
            settings = tomllib.load(file)
    except OSError as exc:
        raise ValueError(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    flags = {action.dest.replace("_", "-"): action for action in parser._actions if action.option_strings}
    arguments: list[str] = []
    for key, value in settings.items():
        action = flags.get(key.replace("_", "-"))
        if action is None or key in ("config", "help"):
            known = ", ".join(sorted(k for k in flags if k not in ("config", "help")))
            raise ValueError(f"{path}: unknown setting {key!r}; the settings are serve's flags without the dashes: {known}")
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            if type(value) is not bool:
                raise ValueError(f"{path}: {key} is true or false, not {value!r}")
            arguments += [flag] if value else []
        elif isinstance(value, list):
            if not isinstance(action, argparse._AppendAction):
                raise ValueError(f"{path}: {key} takes one value, not a list")
            for item in value:
                arguments += [flag, str(item)]
        elif isinstance(value, dict | bool):
            raise ValueError(f"{path}: {key} takes a {'list' if isinstance(action, argparse._AppendAction) else 'value'}, not {value!r}")
        else:
            arguments += [flag, str(value)]
    return arguments


def _with_config(argv: list[str], parser: argparse.ArgumentParser) -> argparse.Namespace:
    """``serve --config FILE``: the file's settings go in before the command line's own, which
    override them (a repeatable flag adds to the file's list)."""
    args = parser.parse_args(argv)
    if args.command != "serve" or not getattr(args, "config", None):
        return args
    serve_parser = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    at = argv.index("serve") + 1
    return parser.parse_args([*argv[:at], *config_arguments(args.config, serve_parser), *argv[at:]])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = _with_config(argv, build_parser())
    except ValueError as exc:
        return _failed(str(exc), 2)
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        from airwave.actors.logcontext import JsonLogFormatter

        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    try:
        return int(args.run(args))
    except (KeyboardInterrupt, BaseExceptionGroup) as exc:
        # Ctrl-C before a command has its own handler in place (while it imports, say).
        if isinstance(exc, BaseExceptionGroup) and exc.split(KeyboardInterrupt)[1] is not None:
            raise
        print("airwave: interrupted by SIGINT", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
