"""CDN (issue 18): enable_cdn streams a channel's mix to a real Icecast and to HLS.

A real Icecast (Debian's icecast2, started here on a loopback port with a temporary config)
takes the channel's Ogg/Opus source; PyAV reads the mount over HTTP as any listener would.
The server writes HLS and serves it on its own port; PyAV reads the playlist and segments
from there. Real speech (espeak-ng) is hosted through a real server and must be heard in
both, and the delay from speaking to hearing is measured (docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import attrs
import av
import numpy as np
import pytest
import trio

from airwave.actors.core import CdnSettings
from airwave.actors.log.replay import replay_events
from airwave.actors.net.http import DiskFile, Site, StaticFile, route
from airwave.actors.server import RunningServer, serve
from airwave.cli import _cdn_settings, build_parser, config_arguments
from airwave.client import Client, MediaChannel, MediaDevice
from airwave.media.cdn import IcecastOutput, make_cdn_recorder
from airwave.media.opus import SAMPLE_RATE, OpusEncoder
from airwave.protocol import CdnState, EnableCdn, Join, PropertyChange, PropertyChanged, Reason, channel_info_from_wire
from airwave.wire import open_wire

from audio_checks import speech_wav
from conftest import fast_settings
from helpers import HOST, next_push, ok, wait_until
from test_recording import Calls, Speaker, frames_of, located

ICECAST_PASSWORD = "hackme-source"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_icecast(port: int) -> Iterator[None]:
    """A real Icecast on ``port`` of 127.0.0.1 with a temporary config, no burst on connect (a
    listener gets live audio), killed at the end."""
    if shutil.which("icecast2") is None:
        pytest.skip("icecast2 is not installed: apt-get install icecast2 (scripts/test.sh does it)")
    # Icecast refuses to run as root unless it changes to another user, who must write the
    # logs: pytest's temporary folders are private to us, so config and logs get their own.
    owner = "<changeowner><user>nobody</user><group>nogroup</group></changeowner>" if os.geteuid() == 0 else ""
    folder = Path(tempfile.mkdtemp(prefix="airwave-icecast-"))
    if owner:
        folder.chmod(0o777)
    config = folder / "icecast.xml"
    config.write_text(f"""<icecast>
  <limits><clients>20</clients><sources>4</sources><queue-size>524288</queue-size><client-timeout>30</client-timeout>
    <header-timeout>15</header-timeout><source-timeout>10</source-timeout>
    <burst-on-connect>0</burst-on-connect><burst-size>0</burst-size></limits>
  <authentication><source-password>{ICECAST_PASSWORD}</source-password><relay-password>relay-{port}</relay-password>
    <admin-user>admin</admin-user><admin-password>admin-{port}</admin-password></authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>0</fileserve>
  <paths><basedir>/usr/share/icecast2</basedir><logdir>{folder}</logdir><webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot></paths>
  <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>3</loglevel></logging>
  <security><chroot>0</chroot>{owner}</security>
</icecast>
""")
    process = subprocess.Popen(["icecast2", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/status-json.xsl", timeout=1).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"icecast2 did not start: {process.stderr.read().decode() if process.stderr else ''}") from None
                time.sleep(0.05)
        yield
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def icecast() -> Iterator[int]:
    """One Icecast for the module's scenarios: its port."""
    port = free_port()
    with running_icecast(port):
        yield port


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return speech_wav(tmp_path_factory.mktemp("speech"), "one two three", silence=0)[1]


def to_int16(frame: av.AudioFrame) -> np.ndarray:
    return np.clip(frame.to_ndarray().reshape(-1) * 32768, -32768, 32767).astype(np.int16)


class IcecastListener:
    """A listener of an Icecast mount on a thread: PyAV over HTTP, each decoded frame kept
    with its arrival time (wall clock), until the source ends."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.frames: list[tuple[float, np.ndarray]] = []
        self.connected = threading.Event()
        self.error = ""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 5
        while True:  # the mount exists once the channel's source has connected
            try:
                container = av.open(self.url, timeout=5)
                break
            except av.error.FFmpegError as exc:
                if time.monotonic() > deadline:
                    self.error = str(exc)
                    return
                time.sleep(0.05)
        self.connected.set()
        try:
            for frame in container.decode(audio=0):
                self.frames.append((time.time(), to_int16(frame)))
        except av.error.FFmpegError:
            pass  # the source ended
        finally:
            container.close()

    def join(self) -> None:
        self._thread.join(timeout=5)

    def heard(self) -> tuple[np.ndarray, np.ndarray]:
        """The audio, and each sample's arrival time."""
        pcm = np.concatenate([f for _, f in self.frames])
        arrivals = np.concatenate([np.full(len(f), t) for t, f in self.frames])
        return pcm, arrivals


class HlsWatcher:
    """A player's view of the playlist, polled every 50 ms on a thread: when each segment
    first appeared in it (wall clock), its duration, and its bytes, fetched at once (the
    playlist is rolling: old segments are deleted)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.appeared: dict[str, tuple[float, float]] = {}  # name -> (first seen, EXTINF)
        self.fetched: dict[str, bytes] = {}
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(self.url, timeout=2).read().decode()
            except OSError:
                time.sleep(0.05)
                continue
            now = time.time()
            for duration, name in re.findall(r"#EXTINF:([0-9.]+),\n(?:#[^\n]*\n)*([^#\n]+)", text):
                if name not in self.appeared:
                    self.appeared[name] = (now, float(duration))
                    self.fetched[name] = self._get(name)
            if "#EXT-X-ENDLIST" in text:
                self.ended.set()
                return
            time.sleep(0.05)

    def _get(self, name: str) -> bytes:
        return urllib.request.urlopen(self.url.rsplit("/", 1)[0] + "/" + name, timeout=2).read()

    def whole_stream(self, folder: Path) -> Path:
        """Every segment seen, after the init segment, as one fMP4 file (what a player that
        stayed from start to end got)."""
        path = folder / "whole.mp4"
        path.write_bytes(self._get("init.mp4") + b"".join(self.fetched[name] for name in sorted(self.fetched)))
        return path

    def join(self) -> None:
        self._thread.join(timeout=5)


def decoded_pcm(source: str) -> np.ndarray:
    with av.open(source) as container:
        return np.concatenate([to_int16(f) for f in container.decode(audio=0)])


async def test_cdn_streams_the_speech_to_icecast_and_hls_and_everyone_sees_cdn_state(
    nursery: trio.Nursery, data_dir: Path, tmp_path: Path, icecast: int, speech: np.ndarray
) -> None:
    """A host turns the CDN on with the CLI; everyone gets cdn_state; an audience member may
    not turn it off. The host says a sentence: a PyAV listener of the Icecast mount hears it,
    and the HLS the server serves decodes with PyAV to the speech, covering the time
    streamed. The delay from speaking to hearing is measured for both."""
    cdn = CdnSettings(icecast_url=f"icecast://source:{ICECAST_PASSWORD}@127.0.0.1:{icecast}", hls=True)
    server: RunningServer = await nursery.start(serve, attrs.evolve(fast_settings(data_dir), cdn=cdn))
    http = f"http://127.0.0.1:{server.port}"
    with trio.fail_after(25):
        async with open_wire(server.url) as host, open_wire(server.url) as listener:
            ok(await host.request(Join, channel="222", user_id="host", role=HOST, upload=True))
            info = channel_info_from_wire(ok(await listener.request(Join, channel="222", user_id="lis")).result)
            assert info.cdn_state is CdnState.IDLE

            done = await trio.run_process(
                [sys.executable, "-m", "airwave.cli", "cdn", "222", "on", "--url", server.url, "--log-level", "WARNING"],
                capture_stdout=True, capture_stderr=True, check=False,
            )
            assert done.returncode == 0, done.stderr
            assert f"HLS at {http}/hls/222/index.m3u8" in done.stdout.decode()
            for wire in (host, listener):
                changed = await next_push(wire, PropertyChanged)
                assert changed.changes == PropertyChange.CDN_STATE and changed.cdn_state is CdnState.STREAMING
            refused = await listener.request(EnableCdn, enabled=False)
            assert refused.reason is Reason.NO_PERMISSION

            ice = IcecastListener(f"http://127.0.0.1:{icecast}/222.opus")
            hls = HlsWatcher(f"{http}/hls/222/index.m3u8")
            assert await trio.to_thread.run_sync(ice.connected.wait, 5), ice.error
            await trio.sleep(0.3)
            said_at = time.time()
            await Speaker(host).say(frames_of(speech))
            await trio.sleep(2.5)  # the last HLS segment to fill and appear
            ok(await host.request(EnableCdn, enabled=False))
            assert (await next_push(listener, PropertyChanged)).cdn_state is CdnState.IDLE
            await trio.to_thread.run_sync(ice.join)
            await trio.to_thread.run_sync(hls.ended.wait, 5)

            # The final playlist and its segments, through the server's own HTTP, by PyAV.
            playlist_pcm = await trio.to_thread.run_sync(decoded_pcm, f"{http}/hls/222/index.m3u8")
            whole = await trio.to_thread.run_sync(hls.whole_stream, tmp_path)
    hls.join()
    hls_pcm = decoded_pcm(str(whole))

    events = [item.event for item in replay_events(data_dir)]
    (started,) = [e for e in events if e.TYPE == "cdn_started"]
    (stopped,) = [e for e in events if e.TYPE == "cdn_stopped"]
    assert (started.icecast, started.hls, started.segment_ms) == (f"http://127.0.0.1:{icecast}/222.opus", "/hls/222/index.m3u8", 1000)
    assert (stopped.reason, stopped.by) == (Reason.NONE, "host")
    assert not any(ICECAST_PASSWORD.encode() in p.read_bytes() for p in data_dir.rglob("*") if p.is_file())  # nor in the log

    # Icecast: the speech is heard; its first sample arrived this long after it was said.
    pcm, arrivals = ice.heard()
    ((offset, similarity),) = located(speech, pcm, count=1)
    assert similarity >= 0.8, similarity
    icecast_delay = arrivals[int(offset * SAMPLE_RATE)] - said_at
    # HLS: the final playlist decodes to its segments' durations (a rolling window of them);
    # every segment seen covers the time streamed, within a segment, and holds the speech.
    last_six = sorted(hls.appeared)[-6:]
    assert len(playlist_pcm) / SAMPLE_RATE == pytest.approx(sum(hls.appeared[n][1] for n in last_six), abs=0.05)
    streamed = stopped.time - started.time
    assert abs(len(hls_pcm) / SAMPLE_RATE - streamed) <= 1.0, (len(hls_pcm) / SAMPLE_RATE, streamed)
    assert sum(duration for _, duration in hls.appeared.values()) == pytest.approx(len(hls_pcm) / SAMPLE_RATE, abs=0.05)
    ((hls_offset, hls_similarity),) = located(speech, hls_pcm, count=1)
    assert hls_similarity >= 0.8, hls_similarity
    # A player that plays each segment the moment the playlist lists it hears the speech
    # at the segment's appearance plus the speech's offset inside it.
    position, heard_at = 0.0, None
    for name in sorted(hls.appeared):
        seen, duration = hls.appeared[name]
        if position <= hls_offset < position + duration:
            heard_at = seen + (hls_offset - position)
        position += duration
    assert heard_at is not None, hls.appeared
    hls_delay = heard_at - said_at
    print(f"\nCDN delay, speaking to hearing: Icecast {icecast_delay:.3f} s, HLS {hls_delay:.3f} s (segment as soon as listed)")
    assert 0 < icecast_delay <= 1.5, icecast_delay
    assert 0 < hls_delay <= 4.0, hls_delay
    server.shutdown()


async def test_sdk_enable_cdn_refused_for_the_audience_and_a_host_s_reaches_everyone_as_cdn_state(
    nursery: trio.Nursery, data_dir: Path
) -> None:
    """The SDK's enable_cdn (HLS only here): the audience gets no_permission through on_error
    and nothing changes; a host's reaches everyone as on_media_channel_property_change(cdn_state),
    a late joiner reads it from the join, and the SDK refuses a bad key interval itself."""
    server: RunningServer = await nursery.start(serve, attrs.evolve(fast_settings(data_dir), cdn=CdnSettings(hls=True)))
    host_calls, listener_calls = Calls(), Calls()
    with trio.fail_after(10):
        async with Client.connect(server.url, user_id="host") as h, Client.connect(server.url, user_id="lis") as li:
            host = MediaChannel.create(h, MediaDevice.create(), host_calls)
            listener = MediaChannel.create(li, MediaDevice.create(), listener_calls)
            host.set_custom_role(HOST)
            assert (await host.join_async("222")).result
            assert (await listener.join_async("222")).result

            assert await listener.enable_cdn_async(True) is Reason.NO_PERMISSION
            assert listener_calls.errors[-1][:2] == ("enable_cdn", Reason.NO_PERMISSION)
            assert await host.enable_cdn_async(True, 500) is Reason.INVALID_PARAM
            assert listener.get_cdn_state() is CdnState.IDLE

            assert await host.enable_cdn_async(True, 2000) is Reason.NONE
            await wait_until(lambda: PropertyChange.CDN_STATE in listener_calls.changes, "the listener to see cdn_state")
            assert listener.get_cdn_state() is CdnState.STREAMING is host.get_cdn_state()
            async with Client.connect(server.url, user_id="late") as la:
                late = MediaChannel.create(la, MediaDevice.create(), Calls())
                assert (await late.join_async("222")).result
                assert late.get_cdn_state() is CdnState.STREAMING
            assert await host.enable_cdn_async(False) is Reason.NONE
            await wait_until(lambda: listener.get_cdn_state() is CdnState.IDLE, "the listener to see cdn_state idle")
            shutil.rmtree(data_dir / "hls" / "222", ignore_errors=True)  # the stopped stream's files, if any
            assert await host.enable_cdn_async(True) is Reason.NONE
            await wait_until(lambda: (data_dir / "hls" / "222" / "index.m3u8").exists(), "the first HLS segment")
            server.shutdown()  # streaming still: the shutdown ends the stream, and the playlist
            await server.stopped.wait()

    started, _, again, last = [item.event for item in replay_events(data_dir) if item.event.TYPE.startswith("cdn_")]
    assert (started.icecast, started.hls, started.segment_ms, started.by) == ("", "/hls/222/index.m3u8", 2000, "host")
    assert again.TYPE == "cdn_started" and again.segment_ms == 1000  # 0: the server's length
    assert last.TYPE == "cdn_stopped" and last.reason is Reason.SERVER_SHUTDOWN
    assert (data_dir / "hls" / "222" / "index.m3u8").read_text().rstrip().endswith("#EXT-X-ENDLIST")


async def test_enable_cdn_on_a_server_without_cdn_outputs_is_refused_server_error(server: RunningServer) -> None:
    with trio.fail_after(5):
        async with open_wire(server.url) as host:
            ok(await host.request(Join, channel="222", user_id="host", role=HOST))
            refused = await host.request(EnableCdn, enabled=True)
            assert refused.reason is Reason.SERVER_ERROR and "--hls" in refused.message


def test_icecast_output_reconnects_with_backoff_once_icecast_is_there() -> None:
    """Icecast down at the start: the source fails, waits 0.5 s, and connects once Icecast
    is up, then Icecast has the mount."""
    port = free_port()
    output = IcecastOutput(f"icecast://source:{ICECAST_PASSWORD}@127.0.0.1:{port}/back.opus")
    packet = OpusEncoder().encode(np.zeros(960, np.int16))
    output.write(packet)
    with running_icecast(port):
        deadline = time.monotonic() + 4
        while output.stats.connects == 0 and time.monotonic() < deadline:
            output.write(packet)
            time.sleep(0.02)
        status = ""
        while "/back.opus" not in status and time.monotonic() < deadline + 2:  # Icecast lists it once it has data
            output.write(packet)
            time.sleep(0.02)
            status = urllib.request.urlopen(f"http://127.0.0.1:{port}/status-json.xsl", timeout=2).read().decode()
        output.close()
    assert output.stats.failures >= 1 and output.stats.connects == 1, output.stats
    assert "/back.opus" in status


def test_icecast_output_with_icecast_away_counts_failures_and_never_raises() -> None:
    output = IcecastOutput(f"icecast://source:pw@127.0.0.1:{free_port()}/222.opus")
    packet = OpusEncoder().encode(np.zeros(960, np.int16))
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        output.write(packet)
        time.sleep(0.02)
    started = time.monotonic()
    output.close()
    assert time.monotonic() - started < 1.0
    assert output.stats.failures >= 1 and output.stats.written == 0 and output.stats.connects == 0
    assert output.stats.last_error


# --- the HLS route: fixed names under the channel's slug, nothing else -------------------------


SITE = Site({"index.html": StaticFile.of(b"<html>", ".html")}, hls_root=Path("/data/hls"))


def get(path: str, site: Site = SITE) -> object:
    return route(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), site)


@pytest.mark.parametrize(
    ("path", "file", "content_type"),
    [
        ("/hls/222/index.m3u8", "222/index.m3u8", "application/vnd.apple.mpegurl"),
        ("/hls/222/init.mp4", "222/init.mp4", "audio/mp4"),
        ("/hls/222/seg-00012.m4s", "222/seg-00012.m4s", "audio/mp4"),
        ("/hls/a%2F..%2Fb/index.m3u8", "a%2F%2E%2E%2Fb/index.m3u8", "application/vnd.apple.mpegurl"),
        ("/hls/..%2F../index.m3u8", "%2E%2E%2F%2E%2E/index.m3u8", "application/vnd.apple.mpegurl"),
    ],
)
def test_hls_route_maps_a_channel_to_its_slug_folder_and_a_fixed_file_name(path: str, file: str, content_type: str) -> None:
    assert get(path) == DiskFile(Path("/data/hls") / file, content_type, b"GET")


@pytest.mark.parametrize(
    "path",
    ["/hls/222/../../etc/passwd", "/hls/222/recording.json", "/hls/222/", "/hls//index.m3u8", "/hls/222/a/index.m3u8", "/hls/222/seg-1.m4s"],
)
def test_hls_route_answers_404_for_anything_else(path: str) -> None:
    answer = get(path)
    assert not isinstance(answer, DiskFile) and answer.status == 404  # type: ignore[union-attr]


def test_hls_route_is_not_there_without_hls() -> None:
    assert get("/hls/222/index.m3u8", Site(SITE.files)).status == 404  # type: ignore[union-attr]


def test_make_cdn_recorder_is_a_picklable_factory_of_a_recorder_that_writes_no_files(tmp_path: Path) -> None:
    """A recorder worker process builds recorders from pickled factories (functools.partial
    of a module-level function with plain arguments)."""
    factory = functools.partial(
        make_cdn_recorder, tmp_path / "hls" / "222", "icecast://source:pw@127.0.0.1:1/222.opus", started_at=time.time(),
    )
    recorder = pickle.loads(pickle.dumps(factory))()
    worker = threading.Thread(target=recorder.run)
    worker.start()
    time.sleep(0.1)
    recorder.stop()
    worker.join(5)

    assert not worker.is_alive() and not recorder.stats.failed
    assert sorted(p.name for p in (tmp_path / "hls" / "222").iterdir()) == ["index.m3u8", "init.mp4", "seg-00000.m4s"]
    assert not list(tmp_path.rglob("recording.json"))
    with pytest.raises(ValueError):
        make_cdn_recorder(None, None, started_at=0.0)


# --- serve's CDN settings -----------------------------------------------------------------------


def cdn_args(**given: object) -> argparse.Namespace:
    return argparse.Namespace(**{"icecast_url": None, "icecast_password_file": None, "hls": False, **given})


def test_serve_icecast_password_file_replaces_the_url_password_and_the_listen_url_has_none(tmp_path: Path) -> None:
    secret = tmp_path / "icecast-password"
    secret.write_text("s3cr:t@x\n")

    settings = _cdn_settings(cdn_args(icecast_url="icecast://source@127.0.0.1:8000", icecast_password_file=str(secret), hls=True))

    assert settings.source_url("a b") == "icecast://source:s3cr%3At%40x@127.0.0.1:8000/a%2520b.opus"
    assert settings.listen_url("a b") == "http://127.0.0.1:8000/a%2520b.opus"
    assert settings.playlist("a b") == "/hls/a%20b/index.m3u8" and "s3cr" not in repr(settings)


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"icecast_url": "http://127.0.0.1:8000"}, "icecast://"),
        ({"icecast_url": "icecast://source@127.0.0.1:8000"}, "no password"),
        ({"icecast_url": "icecast://source:pw@127.0.0.1"}, "icecast://"),
        ({"icecast_password_file": "/nonexistent"}, "needs --icecast-url"),
        ({"icecast_url": "icecast://source@127.0.0.1:8000", "icecast_password_file": "/nonexistent"}, "No such file"),
    ],
)
def test_serve_cdn_settings_refuse_what_cannot_work_saying_why(given: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        _cdn_settings(cdn_args(**given))


def test_serve_cdn_settings_come_from_the_toml_config_too(tmp_path: Path) -> None:
    config = tmp_path / "airwave.toml"
    config.write_text('hls = true\nicecast-url = "icecast://source:pw@127.0.0.1:8000"\n')
    serve_parser = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]

    arguments = config_arguments(str(config), serve_parser)

    assert arguments == ["--hls", "--icecast-url", "icecast://source:pw@127.0.0.1:8000"]
    assert _cdn_settings(serve_parser.parse_args(arguments)) == CdnSettings("icecast://source:pw@127.0.0.1:8000", hls=True)
