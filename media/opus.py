"""Opus encode and decode of Airwave's audio format, through PyAV's libopus.

Airwave's audio everywhere is 48 kHz, mono, signed 16-bit PCM in 20 ms frames: numpy
``int16`` arrays of shape ``(960,)``. One 20 ms frame encodes to one Opus packet.

Loss concealment: FFmpeg's libopus wrapper always calls ``opus_multistream_decode`` with
``decode_fec=0`` (so in-band FEC cannot be decoded through PyAV), but it hands the packet to
libopus unchanged, and libopus runs its packet-loss concealment for any frame whose payload
is 0 or 1 bytes (RFC 6716 section 3.2.1; this is also how DTX frames decode). A lost frame is
therefore concealed by decoding a 1-byte packet holding just a TOC byte. FFmpeg's native
``opus`` decoder answers the same packet with silence, so the decoder here is ``libopus``.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from typing import final

import attrs
import av
import numpy as np

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
FRAME_DURATION = FRAME_SAMPLES / SAMPLE_RATE  # seconds

OPUS_HEAD_BYTES = 19
# libopus's encoder delay at 48 kHz in the "voip" and "audio" applications (2.5 ms + 4 ms
# lookahead); it is the pre-skip libopus itself writes into an OpusHead.
DEFAULT_PRE_SKIP = 312

# Concealment envelope on top of Opus PLC: libopus's own PLC decays, but CELT's settles into
# a noise floor about 30 dB down and keeps it up for as long as losses last. So the first
# losses play the PLC as it is, the next ones fade it linearly, and after
# _CONCEAL_FRAMES consecutive losses (200 ms) the output is silence.
_CONCEAL_UNFADED = 2
_CONCEAL_FRAMES = 10

# A TOC byte for one 20 ms CELT fullband frame (config 31, mono, code 0): used for
# concealment when the last packet's frames were not 20 ms long. libopus conceals with the
# mode of the last decoded frame whatever the TOC says; the TOC only sets the duration.
_TOC_CELT_FB_20MS = 0xF8

# Samples per Opus frame at 48 kHz, indexed by TOC config (RFC 6716 table 2).
_CONFIG_FRAME_SAMPLES = (
    (480, 960, 1920, 2880) * 3  # SILK NB, MB, WB: 10, 20, 40, 60 ms
    + (480, 960) * 2  # Hybrid SWB, FB: 10, 20 ms
    + (120, 240, 480, 960) * 4  # CELT NB, WB, SWB, FB: 2.5, 5, 10, 20 ms
)


def opus_head(channels: int = 1, pre_skip: int = DEFAULT_PRE_SKIP, rate: int = SAMPLE_RATE) -> bytes:
    """The 19-byte OpusHead (RFC 7845 section 5.1) for channel mapping family 0.

    ``rate`` is the input sample rate recorded for information only; Opus always decodes
    at 48 kHz. Output gain is 0 dB.
    """
    if channels not in (1, 2):
        raise ValueError(f"mapping family 0 carries 1 or 2 channels, not {channels}")
    if not 0 <= pre_skip <= 0xFFFF:
        raise ValueError(f"pre_skip must fit in 16 bits, got {pre_skip}")
    if not 0 < rate <= 0xFFFFFFFF:
        raise ValueError(f"rate must be a positive 32-bit value, got {rate}")
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, rate, 0, 0)


def packet_samples(packet: bytes) -> int:
    """How many 48 kHz samples (per channel) an Opus packet decodes to, from its TOC.

    Raises ``ValueError`` for an empty packet or a code-3 packet without its count byte.
    """
    if not packet:
        raise ValueError("an Opus packet has at least its TOC byte")
    toc = packet[0]
    per_frame = _CONFIG_FRAME_SAMPLES[toc >> 3]
    code = toc & 0x03
    if code == 0:
        return per_frame
    if code in (1, 2):
        return 2 * per_frame
    if len(packet) < 2:
        raise ValueError("a code-3 Opus packet needs its frame-count byte")
    return (packet[1] & 0x3F) * per_frame


def concealment_packet(previous: bytes | None) -> bytes:
    """A 1-byte Opus packet that makes a libopus decoder conceal 20 ms.

    It keeps the configuration of ``previous`` (the last packet of the stream) when that was
    made of 20 ms frames; a 1-byte packet is a valid Opus packet (it is what DTX sends), so
    it can also stand in for a lost packet in an Ogg/Opus file.
    """
    if previous and _CONFIG_FRAME_SAMPLES[previous[0] >> 3] == FRAME_SAMPLES:
        return bytes((previous[0] & 0xFC,))
    return bytes((_TOC_CELT_FB_20MS,))


def _check_frame(pcm: np.ndarray) -> np.ndarray:
    if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.shape != (FRAME_SAMPLES,):
        raise ValueError(
            f"expected an int16 array of shape ({FRAME_SAMPLES},), got "
            f"{getattr(pcm, 'dtype', type(pcm).__name__)} {getattr(pcm, 'shape', '')}"
        )
    return np.ascontiguousarray(pcm)


@final
class OpusEncoder:
    """Encodes 20 ms mono frames to Opus packets, one packet per frame.

    ``application`` is libopus's: "voip" (the default) favours speech intelligibility,
    "audio" fidelity, "lowdelay" drops SILK for 4 ms less delay (a lookahead of 120 samples
    instead of 312). Variable bit rate is on. About 0.1 ms per frame on the reference
    machine, so calling it from the event loop is fine.
    """

    def __init__(self, bitrate: int = 32_000, *, application: str = "voip") -> None:
        if not 6_000 <= bitrate <= 510_000:
            raise ValueError(f"Opus bit rates are 6-510 kb/s, got {bitrate}")
        if application not in ("voip", "audio", "lowdelay"):
            raise ValueError(f"unknown Opus application {application!r}")
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = SAMPLE_RATE
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.bit_rate = bitrate
        ctx.time_base = Fraction(1, SAMPLE_RATE)
        ctx.options = {"application": application, "frame_duration": "20"}
        ctx.open()
        self._ctx = ctx
        self._pts = 0
        self.bitrate = bitrate

    @property
    def pre_skip(self) -> int:
        """Samples a decoder drops at the start of this stream: the encoder's lookahead."""
        head = self._ctx.extradata or b""
        return struct.unpack_from("<H", head, 10)[0] if len(head) >= OPUS_HEAD_BYTES else DEFAULT_PRE_SKIP

    def encode(self, pcm: np.ndarray) -> bytes:
        """One Opus packet for one frame: an int16 array of shape (960,)."""
        frame = av.AudioFrame.from_ndarray(_check_frame(pcm).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        self._pts += FRAME_SAMPLES
        packets = self._ctx.encode(frame)
        if len(packets) != 1:
            # libopus encodes each 20 ms frame at once; anything else breaks the framing.
            raise RuntimeError(f"libopus returned {len(packets)} packets for one frame")
        return bytes(packets[0])


@attrs.frozen(slots=True)
class DecoderStatistics:
    decoded: int  # packets decoded
    concealed: int  # frames concealed (lost, empty or invalid packets)
    invalid: int  # packets libopus rejected (each was concealed instead)


@final
class OpusDecoder:
    """Decodes one sender's Opus packets to 20 ms mono frames, concealing lost ones.

    Keep one decoder per sender: concealment continues that sender's signal.
    """

    def __init__(self) -> None:
        self._ctx = self._open()
        self._last_packet: bytes | None = None
        self._losses = 0  # consecutive concealed frames
        self._decoded = 0
        self._concealed = 0
        self._invalid = 0

    @staticmethod
    def _open() -> av.AudioCodecContext:
        # No extradata: pre-skip 0, so every packet of a live stream yields its full frame.
        ctx = av.CodecContext.create("libopus", "r")
        ctx.sample_rate = SAMPLE_RATE
        ctx.layout = "mono"
        ctx.open()
        return ctx

    def decode(self, packet: bytes) -> np.ndarray:
        """The PCM of one packet: 960 int16 samples for a 20 ms packet (what Airwave sends).

        A packet made of several frames yields all their samples. An empty packet, or one
        libopus rejects, is concealed like a lost one and counted; it never raises.
        """
        if len(packet) == 0:
            # An empty AVPacket means end-of-stream to FFmpeg and would wedge the decoder.
            return self.conceal()
        try:
            frames = self._ctx.decode(av.Packet(packet))
        except av.FFmpegError:
            self._invalid += 1
            return self.conceal()
        pcm = _frames_to_pcm(frames)
        self._last_packet = packet
        self._losses = 0
        self._decoded += 1
        return pcm

    def conceal(self) -> np.ndarray:
        """960 samples standing in for one lost packet.

        Opus PLC continues the last decoded signal; successive losses fade it, reaching
        silence after 10 consecutive losses (200 ms). Before any packet was decoded there is
        nothing to continue, and the result is silence.
        """
        self._concealed += 1
        if self._last_packet is None:
            return np.zeros(FRAME_SAMPLES, np.int16)
        self._losses += 1
        pcm = _frames_to_pcm(self._ctx.decode(av.Packet(concealment_packet(self._last_packet))))
        if pcm.size != FRAME_SAMPLES:  # not expected: the concealment packet is a 20 ms TOC
            pcm = np.pad(pcm[:FRAME_SAMPLES], (0, max(0, FRAME_SAMPLES - pcm.size)))
        return _fade(pcm, self._losses)

    def reset(self) -> None:
        """Forgets the stream (new sender, or a sequence reset): decoder state and PLC history."""
        self._ctx.flush_buffers()
        self._last_packet = None
        self._losses = 0

    def statistics(self) -> DecoderStatistics:
        return DecoderStatistics(decoded=self._decoded, concealed=self._concealed, invalid=self._invalid)


def _frames_to_pcm(frames: list[av.AudioFrame]) -> np.ndarray:
    # to_ndarray() copies out of the frame buffer; packed s16 mono has shape (1, n).
    if len(frames) == 1:
        return frames[0].to_ndarray().reshape(-1)
    if not frames:
        return np.zeros(0, np.int16)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


def _fade(pcm: np.ndarray, loss: int) -> np.ndarray:
    """``pcm`` faded for the ``loss``-th consecutive concealed frame (1-based), per sample."""
    if loss <= _CONCEAL_UNFADED:
        return pcm
    span = _CONCEAL_FRAMES - _CONCEAL_UNFADED
    start = 1.0 - (loss - 1 - _CONCEAL_UNFADED) / span
    end = 1.0 - (loss - _CONCEAL_UNFADED) / span
    if start <= 0.0:
        return np.zeros_like(pcm)
    gain = np.linspace(start, max(end, 0.0), pcm.size, endpoint=False, dtype=np.float32)
    return (pcm * gain).astype(np.int16)
