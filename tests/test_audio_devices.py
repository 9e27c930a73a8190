"""Microphone and speaker are an optional extra; without one (or without a sound device, as on
CI) they fail with one clear error, never silently."""

from __future__ import annotations

import pytest

from airwave.audio import AudioDeviceError, MicSource, SpeakerOutput


def test_microphone_without_a_usable_device_says_so() -> None:
    with pytest.raises(AudioDeviceError):
        next(MicSource().frames())


def test_speaker_without_a_usable_device_says_so() -> None:
    with pytest.raises(AudioDeviceError):
        SpeakerOutput()
