"""Decoding: formats, rates, channels, seek-and-read crops, crop resampling, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr

from melvoc.data.io import AudioDataError, audio_info, read_audio, read_crop, resampled_length


def _signal(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Band-limited test audio in (-0.8, 0.8), shape (T, channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    cols = [
        0.4 * np.sin(2 * np.pi * (220 + 110 * c) * t) + 0.1 * rng.standard_normal(t.shape).clip(-3, 3)
        for c in range(channels)
    ]
    return np.stack(cols, axis=1).astype(np.float32)


LOSSLESS = [
    ("WAV", "PCM_16", ".wav", 1.0 / 32768),
    ("WAV", "PCM_24", ".wav", 1.0 / 2**23),
    ("WAV", "PCM_32", ".wav", 1.0 / 2**31),
    ("WAV", "FLOAT", ".wav", 0.0),
    ("FLAC", "PCM_16", ".flac", 1.0 / 32768),
    ("FLAC", "PCM_24", ".flac", 1.0 / 2**23),
]


@pytest.mark.parametrize("fmt,subtype,suffix,tol", LOSSLESS)
@pytest.mark.parametrize("channels", [1, 2])
def test_lossless_formats_decode_to_mono_float32(tmp_path, fmt, subtype, suffix, tol, channels):
    sr = 22050
    audio = _signal(0.5, sr, channels)
    path = tmp_path / f"clip{suffix}"
    sf.write(path, audio, sr, format=fmt, subtype=subtype)
    info = audio_info(path)
    assert (info.frames, info.sampling_rate, info.channels, info.format) == (len(audio), sr, channels, fmt)
    out = read_audio(info, sr)
    assert out.dtype == np.float32 and out.shape == (len(audio),)
    np.testing.assert_allclose(out, audio.mean(axis=1), atol=2 * tol + 1e-7)


def test_ogg_vorbis_decodes(tmp_path):
    sr = 22050
    audio = _signal(1.0, sr, 2)
    path = tmp_path / "clip.ogg"
    sf.write(path, audio, sr, format="OGG", subtype="VORBIS")
    info = audio_info(path)
    out = read_audio(info, sr)
    assert info.format == "OGG" and out.dtype == np.float32
    assert abs(out.shape[0] - len(audio)) <= 1
    assert np.abs(out).max() <= 1.0
    # Lossy, but the waveform must still be the same signal.
    n = min(len(out), len(audio))
    corr = np.corrcoef(out[:n], audio.mean(axis=1)[:n])[0, 1]
    assert corr > 0.95


def test_float_file_beyond_full_scale_is_clipped_to_unit_range(tmp_path):
    path = tmp_path / "hot.wav"
    sf.write(path, np.array([0.0, 1.7, -2.5, 0.5], dtype=np.float32), 22050, subtype="FLOAT")
    out = read_audio(audio_info(path), 22050)
    np.testing.assert_array_equal(out, np.array([0.0, 1.0, -1.0, 0.5], dtype=np.float32))


@pytest.mark.parametrize("source_rate", [16000, 24000, 44100, 48000])
def test_other_rates_are_resampled_with_soxr(tmp_path, source_rate):
    audio = _signal(0.7, source_rate)[:, 0]
    path = tmp_path / "clip.wav"
    sf.write(path, audio, source_rate, subtype="FLOAT")
    info = audio_info(path)
    out = read_audio(info, 22050)
    expected = soxr.resample(audio, source_rate, 22050)
    assert out.shape[0] == expected.shape[0] == resampled_length(len(audio), source_rate, 22050)
    np.testing.assert_allclose(out, np.clip(expected, -1, 1), atol=1e-6)


def test_wrong_rate_without_resampling_names_file_rates_and_fix(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, _signal(0.2, 8000), 8000)
    with pytest.raises(AudioDataError) as err:
        read_audio(audio_info(path), 22050, resample=False)
    message = str(err.value)
    assert str(path) in message and "8000 Hz" in message and "22050" in message
    assert "data.resample=true" in message


def test_crop_equals_slice_of_whole_file(tmp_path):
    sr = 22050
    audio = _signal(2.0, sr, 2)
    path = tmp_path / "clip.wav"
    sf.write(path, audio, sr, subtype="PCM_24")
    info = audio_info(path)
    whole = read_audio(info, sr)
    for start in (0, 1, 12345, len(audio) - 8192):
        np.testing.assert_array_equal(read_crop(info, start, 8192, sr), whole[start : start + 8192])


def test_crop_past_the_end_is_zero_padded(tmp_path):
    sr = 22050
    path = tmp_path / "clip.wav"
    sf.write(path, _signal(0.1, sr), sr, subtype="FLOAT")
    info = audio_info(path)
    crop = read_crop(info, 0, 4096, sr)
    assert crop.shape == (4096,)
    np.testing.assert_array_equal(crop[info.frames :], 0.0)
    np.testing.assert_array_equal(crop[: info.frames], read_audio(info, sr))


@pytest.mark.parametrize("source_rate", [44100, 48000, 16000, 24000])
def test_resampled_crop_matches_whole_file_resampled(tmp_path, source_rate):
    target = 22050
    audio = _signal(3.0, source_rate)[:, 0]
    path = tmp_path / "clip.wav"
    sf.write(path, audio, source_rate, subtype="FLOAT")
    info = audio_info(path)
    whole = read_audio(info, target)
    n = resampled_length(info.frames, source_rate, target)
    for start in (0, 3, 20001, n - 8192):
        crop = read_crop(info, start, 8192, target)
        np.testing.assert_allclose(crop, whole[start : start + 8192], atol=1e-5)


def test_crop_reads_only_the_frames_it_needs(tmp_path, monkeypatch):
    """A crop of a long file decodes about segment_size frames, not the file."""
    target, seg = 22050, 8192
    long_rate = 44100
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(long_rate * 120, dtype=np.int16), long_rate, subtype="PCM_16")
    same = tmp_path / "long22.wav"
    sf.write(same, np.zeros(target * 120, dtype=np.int16), target, subtype="PCM_16")
    frames_read: list[int] = []
    original = sf.SoundFile.read

    def counting_read(self, frames=-1, *args, **kwargs):
        out = original(self, frames, *args, **kwargs)
        frames_read.append(out.shape[0])
        return out

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    read_crop(audio_info(same), target * 100, seg, target)
    assert frames_read == [seg]
    frames_read.clear()
    read_crop(audio_info(path), target * 100, seg, target)
    ratio = long_rate / target
    assert len(frames_read) == 1 and seg * ratio <= frames_read[0] <= seg * ratio + 4 * 256 * ratio


def test_missing_empty_garbage_and_zero_frame_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 40)
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros(0, dtype=np.float32), 22050)
    cases = {
        tmp_path / "missing.wav": "not found",
        empty: "empty file",
        garbage: "unreadable audio",
        zero: "0 frames",
    }
    for path, reason in cases.items():
        with pytest.raises(AudioDataError) as err:
            audio_info(path)
        assert str(path) in str(err.value) and reason in str(err.value)
        assert err.value.path == str(path)


def test_nan_and_inf_samples_name_the_file(tmp_path):
    sr = 22050
    audio = _signal(0.5, sr)[:, 0]
    audio[100] = np.nan
    audio[5000] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, audio, sr, subtype="FLOAT")
    info = audio_info(path)
    for read in (lambda: read_audio(info, sr), lambda: read_crop(info, 0, 8192, sr)):
        with pytest.raises(AudioDataError, match="2 NaN/inf sample") as err:
            read()
        assert str(path) in str(err.value)


def test_truncated_file_error_names_the_file(tmp_path):
    sr = 22050
    path = tmp_path / "cut.flac"
    sf.write(path, _signal(2.0, sr)[:, 0], sr, format="FLAC")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    info = audio_info(path)  # the header survives the cut
    with pytest.raises(AudioDataError, match="truncated or corrupt") as err:
        read_audio(info, sr)
    assert str(path) in str(err.value)
