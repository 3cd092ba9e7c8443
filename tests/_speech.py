"""Real (synthesised) speech for the slow training tests: espeak-ng utterances written as WAV files.

The built-in data set is speech-like (harmonics and formants) but not speech. The training numbers of
the BigVGAN and Vocos issues are measured on speech: espeak-ng (Debian package ``espeak-ng``, which
``.ci/run`` installs) speaks these sentences; the files are resampled to the rate a test asks for.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
]
VOICES = ["en-us", "en", "en-us+f3", "en+m3"]


def speak(out_dir: Path, sampling_rate: int, count: int = 10) -> list[Path]:
    """Write ``count`` espeak-ng utterances as 16-bit WAVs at ``sampling_rate`` into ``out_dir``."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail("espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        raw = out_dir / f"raw_{i:02d}.wav"
        voice = VOICES[i % len(VOICES)]
        subprocess.run([espeak, "-v", voice, "-s", "150", "-w", str(raw), SENTENCES[i % len(SENTENCES)]], check=True)
        audio, rate = sf.read(raw, dtype="float32")
        raw.unlink()
        if rate != sampling_rate:
            audio = soxr.resample(audio, rate, sampling_rate)
        audio = 0.9 * audio / max(float(np.abs(audio).max()), 1e-6)
        path = out_dir / f"utt_{i:02d}.wav"
        sf.write(path, audio, sampling_rate, subtype="PCM_16")
        paths.append(path)
    return paths


def filelists(paths: list[Path], out_dir: Path, val_count: int = 2) -> tuple[Path, Path]:
    """Training and validation filelists (one path per line) of ``paths``: the last ``val_count`` validate."""
    train, val = out_dir / "train.txt", out_dir / "val.txt"
    train.write_text("".join(f"{p}\n" for p in paths[:-val_count]))
    val.write_text("".join(f"{p}\n" for p in paths[-val_count:]))
    return train, val
