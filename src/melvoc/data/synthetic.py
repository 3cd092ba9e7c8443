"""The built-in smoke-test data: deterministic speech-like clips, generated once into a cache folder.

This is NOT speech and a vocoder trained on it is not useful: it exists so that ``python train.py``
runs offline on a fresh machine and exercises every part of the pipeline (decoding, crops,
validation clips of several lengths, mels, losses, logging). Each clip strings together

- voiced syllables: a harmonic source (tilted -6 dB/octave) that follows a smooth,
  moving pitch contour with declination and jitter, shaped by three formants of a vowel,
  plus a little aspiration noise;
- unvoiced noise bursts (fricatives) band-passed between 2.5 and 7 kHz;
- pauses with a faint noise floor;

from "speakers" that differ in pitch range, formant scale and breathiness, with clip lengths drawn
between ``min_seconds`` and ``max_seconds``. The folder name encodes every generation parameter (and
the generator's version), so other parameters never reuse stale files. Train and validation clips
come from separate seed streams: the validation set does not change when ``num_train`` does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["SyntheticSpec", "make_synthetic_dataset", "synthesize_clip"]

log = logging.getLogger(__name__)

# Bump when the generator's output changes, so cached folders from older code are not reused.
GENERATOR_VERSION = 1

# (F1, F2, F3) in Hz for an adult male voice; scaled per speaker.
_VOWELS = np.array(
    [[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240],
     [660, 1720, 2410], [490, 1350, 1690]],
    dtype=np.float64,
)
_BANDWIDTHS = np.array([80.0, 110.0, 160.0])
_FORMANT_GAINS = np.array([1.0, 0.55, 0.3])


@dataclass(frozen=True)
class SyntheticSpec:
    """Generation parameters of the synthetic set (all of them key the cache folder)."""

    sampling_rate: int
    num_train: int = 48
    num_val: int = 6
    min_seconds: float = 1.0
    max_seconds: float = 3.0
    num_speakers: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError(
                f"synthetic num_train={self.num_train}, num_val={self.num_val}: both must be >= 1"
            )
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(
                f"synthetic min_seconds={self.min_seconds}, max_seconds={self.max_seconds}: "
                "need 0 < min_seconds <= max_seconds"
            )
        if self.num_speakers < 1:
            raise ValueError(f"synthetic num_speakers={self.num_speakers}: must be >= 1")
        if self.sampling_rate < 8000:
            raise ValueError(f"synthetic sampling_rate={self.sampling_rate}: must be >= 8000 Hz")

    @property
    def folder_name(self) -> str:
        """``synthetic-<rate>hz-<hash of every parameter>``."""
        key = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        return f"synthetic-{self.sampling_rate}hz-{digest}"


def make_synthetic_dataset(cache_dir: Path | str, spec: SyntheticSpec) -> Path:
    """Generate the set into ``cache_dir/<spec.folder_name>`` unless it is there; return that folder.

    The folder holds ``wavs/{train,val}_NNNN.wav`` (16-bit PCM at ``spec.sampling_rate``) and the
    VITS-style filelists ``train.txt`` and ``val.txt`` (``wavs/train_0000.wav|spk03``). It is built in
    a temporary folder and renamed into place, so concurrent or interrupted runs never see half a set.
    """
    folder = Path(cache_dir).expanduser() / spec.folder_name
    if (folder / "params.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{spec.folder_name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wavs").mkdir(parents=True)
    log.info("generating the synthetic smoke-test set (%d train, %d val clips) in %s",
             spec.num_train, spec.num_val, folder)
    speakers = [_speaker(np.random.default_rng([spec.seed, 7, k])) for k in range(spec.num_speakers)]
    for split, count, stream in (("train", spec.num_train, 1), ("val", spec.num_val, 2)):
        lines = []
        for index in range(count):
            rng = np.random.default_rng([spec.seed, stream, index])
            speaker_id = index % spec.num_speakers
            seconds = rng.uniform(spec.min_seconds, spec.max_seconds)
            clip = synthesize_clip(rng, speakers[speaker_id], spec.sampling_rate, seconds)
            rel = f"wavs/{split}_{index:04d}.wav"
            sf.write(str(tmp / rel), clip, spec.sampling_rate, subtype="PCM_16")
            lines.append(f"{rel}|spk{speaker_id:02d}")
        (tmp / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp / "params.json").write_text(
        json.dumps({"version": GENERATOR_VERSION, **asdict(spec)}, indent=2, sort_keys=True) + "\n"
    )
    try:
        os.rename(tmp, folder)
    except OSError:
        # Another process finished first; its files are identical (deterministic generation).
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "params.json").is_file():
            raise
    return folder


def _speaker(rng: np.random.Generator) -> dict[str, float]:
    return {
        "f0": float(np.exp(rng.uniform(np.log(85.0), np.log(260.0)))),
        "range": float(rng.uniform(0.15, 0.45)),  # octaves of pitch movement
        "formant_scale": float(rng.uniform(0.85, 1.25)),
        "breath": float(rng.uniform(0.01, 0.08)),
        "rate": float(rng.uniform(0.8, 1.25)),  # speaking rate (syllable length factor)
    }


def synthesize_clip(
    rng: np.random.Generator, speaker: dict[str, float], sampling_rate: int, seconds: float
) -> np.ndarray:
    """One speech-like clip, float32 in (-1, 1). Shape ``(round(seconds * sampling_rate),)``."""
    sr = sampling_rate
    n = max(1, int(round(seconds * sr)))
    t = np.arange(n) / sr
    contour = (
        0.6 * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t + rng.uniform(0, 2 * np.pi))
        + 0.4 * np.sin(2 * np.pi * rng.uniform(1.5, 4.0) * t + rng.uniform(0, 2 * np.pi))
        - 0.5 * t / max(seconds, 1e-3)
    )
    jitter = np.convolve(rng.standard_normal(n), np.ones(64) / 64, mode="same") * 0.05
    f0 = speaker["f0"] * 2.0 ** (speaker["range"] * contour + jitter)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros(n)
    pos = int(rng.uniform(0.02, 0.15) * sr)  # leading silence
    while pos < n:
        kind = rng.choice(3, p=[0.65, 0.2, 0.15])
        if kind == 0:
            length = int(rng.uniform(0.09, 0.32) * speaker["rate"] * sr)
            seg = _voiced(rng, speaker, phase[pos : pos + length], f0[pos : pos + length], sr)
        elif kind == 1:
            length = int(rng.uniform(0.04, 0.14) * sr)
            seg = _fricative(rng, min(length, n - pos), sr)
        else:
            length = int(rng.uniform(0.05, 0.25) * sr)
            seg = np.zeros(min(length, n - pos))
        out[pos : pos + seg.shape[0]] += seg
        pos += max(length, 1)
    fade = min(n, int(0.01 * sr))
    out[n - fade :] *= np.linspace(1.0, 0.0, fade)
    peak = np.abs(out).max()
    if peak > 0:
        out *= rng.uniform(0.3, 0.9) / peak
    out += rng.standard_normal(n) * 10 ** (-70 / 20)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _envelope(length: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    env = np.ones(length)
    ramp = min(length // 2, int(rng.uniform(0.01, 0.03) * sr))
    if ramp > 0:
        rise = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
        env[:ramp] = rise
        env[length - ramp :] = rise[::-1]
    return env


def _voiced(
    rng: np.random.Generator, speaker: dict[str, float], phase: np.ndarray, f0: np.ndarray, sr: int
) -> np.ndarray:
    length = phase.shape[0]
    if length < 4:
        return np.zeros(length)
    # Equal-amplitude harmonics 1..K in closed form (Dirichlet kernel); the spectral tilt is applied
    # below with the formants, which keeps generation O(samples) instead of O(samples * harmonics).
    count = max(1, int(0.45 * sr / f0.max()))
    half = np.sin(phase / 2)
    safe = np.where(np.abs(half) < 1e-9, 1.0, half)
    source = np.where(np.abs(half) < 1e-9, count, np.sin((count + 0.5) * phase) / (2 * safe) - 0.5)
    source /= np.sqrt(count)
    source += speaker["breath"] * rng.standard_normal(length) * 4.0
    formants = _VOWELS[rng.integers(len(_VOWELS))] * speaker["formant_scale"]
    formants = np.minimum(formants, 0.45 * sr)
    freqs = np.fft.rfftfreq(length, 1.0 / sr)
    tilt = 150.0 / np.maximum(freqs, 150.0)  # about -6 dB/octave, like a glottal source
    shape = tilt * (0.01 + sum(
        g / (1.0 + ((freqs - f) / (b / 2)) ** 2) for f, b, g in zip(formants, _BANDWIDTHS, _FORMANT_GAINS)
    ))
    seg = np.fft.irfft(np.fft.rfft(source) * shape, n=length)
    return seg * _envelope(length, sr, rng) * rng.uniform(0.5, 1.0)


def _fricative(rng: np.random.Generator, length: int, sr: int) -> np.ndarray:
    if length < 4:
        return np.zeros(length)
    noise = rng.standard_normal(length)
    centre = min(rng.uniform(2500.0, 7000.0), 0.4 * sr)
    width = rng.uniform(1000.0, 3000.0)
    freqs = np.fft.rfftfreq(length, 1.0 / sr)
    band = np.exp(-0.5 * ((freqs - centre) / (width / 2)) ** 2)
    seg = np.fft.irfft(np.fft.rfft(noise) * band, n=length)
    return seg * _envelope(length, sr, rng) * rng.uniform(0.05, 0.25)
