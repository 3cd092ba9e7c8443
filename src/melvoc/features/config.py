"""``MelConfig`` and the constants every feature path shares: the Hann window and the librosa filterbank.

``MelConfig`` holds the original ``mel_processing.py`` argument names plus the knobs that tell the
lineages apart (eps, clip_val, pad_mode, log_base, mel_scale, mel_norm). The window and the
filterbank are built in float32 and only then cast to the input's dtype, as the original does: that
is what float64 parity needs.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional, get_args

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["MelConfig", "PadMode", "hann_window", "mel_filterbank", "min_audio_length", "num_frames"]

PadMode = Literal["reflect", "zeros", "none"]
_CHOICES = {
    "pad_mode": get_args(PadMode), "log_base": ("e", "10"), "mel_scale": ("slaney", "htk"), "mel_norm": ("slaney", None)
}


@dataclass(frozen=True)
class MelConfig:
    """Parameters of a log-mel spectrogram, named as in the original ``mel_processing.py``."""

    sampling_rate: int  # Hz
    n_fft: int  # FFT size; the spectrogram has n_fft // 2 + 1 bins
    hop_size: int  # samples between frames
    win_size: int  # Hann window length (<= n_fft; zero-padded to n_fft, centred)
    num_mels: int
    fmin: float = 0.0  # lowest filterbank frequency, Hz
    fmax: Optional[float] = None  # highest filterbank frequency, Hz; None: sampling_rate / 2
    center: bool = False  # torch.stft's center: an extra reflect pad of n_fft // 2
    # under the square root of the magnitude, sqrt(re^2 + im^2 + eps): VITS 1e-6, HiFi-GAN/BigVGAN 1e-9,
    # GPT-SoVITS 1e-8; 0 gives the plain |X|
    eps: float = 1e-6
    clip_val: float = 1e-5  # floor of the log, log(clamp(mel, clip_val))
    # padding of (n_fft - hop_size) // 2 on both sides before the STFT: reflect (VITS/HiFi-GAN),
    # zeros (NeMo exact_pad) or none (Vocos)
    pad_mode: PadMode = "reflect"
    log_base: str = "e"  # "e" (natural log) or "10"
    mel_scale: str = "slaney"  # "slaney" (librosa default) or "htk" (torchaudio default)
    mel_norm: Optional[str] = "slaney"  # "slaney" (area normalisation, librosa default) or None

    def __post_init__(self) -> None:
        for name in ("sampling_rate", "n_fft", "hop_size", "win_size", "num_mels"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                object.__setattr__(self, name, int(value))
            elif isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"MelConfig.{name}={value!r}: must be a positive integer")
        object.__setattr__(self, "log_base", str(self.log_base))
        nyquist = self.sampling_rate / 2
        checks = (
            ("sampling_rate", self.sampling_rate > 0, "must be > 0 Hz"),
            ("n_fft", self.n_fft > 0, "must be > 0"),
            ("hop_size", self.hop_size > 0, "must be > 0"),
            ("win_size", 0 < self.win_size <= self.n_fft, f"must be in [1, n_fft={self.n_fft}]"),
            ("num_mels", self.num_mels >= 1, "must be >= 1"),
            ("fmin", self.fmin >= 0, "must be >= 0 Hz"),
            ("fmax", self.fmax is None or 0 < self.fmax <= nyquist,
             f"must be in (0, sampling_rate/2={nyquist:g}] Hz (or null for sampling_rate/2)"),
            ("fmin", self.fmin < self.f_max, f"must be below fmax={self.f_max:g} Hz"),
            ("eps", self.eps >= 0, "must be >= 0"),
            ("clip_val", self.clip_val > 0, "must be > 0"),
            *((name, getattr(self, name) in values, f"must be one of {values}") for name, values in _CHOICES.items()),
        )
        for name, valid, allowed in checks:
            if not valid:
                value = getattr(self, name)
                shown = value if isinstance(value, (int, float)) else repr(value)
                raise ValueError(f"MelConfig.{name}={shown}: {allowed}")

    @property
    def f_max(self) -> float:
        """The effective upper filterbank frequency in Hz (``fmax`` or ``sampling_rate / 2``)."""
        return float(self.sampling_rate) / 2 if self.fmax is None else float(self.fmax)

    @property
    def n_freqs(self) -> int:
        """Number of STFT bins, ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @property
    def pre_pad(self) -> int:
        """Samples padded on each side before the STFT (0 for ``pad_mode='none'``)."""
        return 0 if self.pad_mode == "none" else int((self.n_fft - self.hop_size) / 2)

    @property
    def mel_bins(self) -> slice:
        """The STFT bins a filterbank of this config can cover, one bin of margin each side (the rest are 0)."""
        step = self.sampling_rate / self.n_fft
        return slice(int(self.fmin // step), min(self.n_freqs, int(self.f_max // step) + 2))

    def replace(self, **changes: Any) -> "MelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for checkpoints and YAML)."""
        return dataclasses.asdict(self)

    @classmethod
    def coerce(cls, value: "MelConfig | Mapping[str, Any]") -> "MelConfig":
        """Accept a ``MelConfig`` or a mapping (dict, OmegaConf node; ``_target_`` is ignored)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping) or hasattr(value, "items"):
            fields = {f.name for f in dataclasses.fields(cls)}
            items = {str(k): v for k, v in value.items() if k != "_target_"}
            unknown = sorted(set(items) - fields)
            if unknown:
                raise ValueError(f"unknown MelConfig field(s) {unknown}; allowed: {sorted(fields)}")
            return cls(**items)
        raise TypeError(f"expected a MelConfig or a mapping of its fields, got {type(value).__name__}")


def min_audio_length(config: MelConfig) -> int:
    """Shortest audio (samples) that gives at least one frame and a valid reflect pad."""
    pad = config.pre_pad
    need = max(config.n_fft - 2 * pad - (2 * (config.n_fft // 2) if config.center else 0), 1)
    if config.pad_mode == "reflect":
        need = max(need, pad + 1)
    if config.center:
        # torch.stft's centring pad is a reflect pad of n_fft // 2 on the pre-padded signal.
        need = max(need, config.n_fft // 2 + 1 - 2 * pad)
    return need


def num_frames(num_samples: int, config: MelConfig) -> int:
    """Frames produced for ``num_samples`` of audio: ``1 + (padded - n_fft) // hop_size``."""
    padded = num_samples + 2 * config.pre_pad + (2 * (config.n_fft // 2) if config.center else 0)
    return 1 + (padded - config.n_fft) // config.hop_size


def hann_window(config: MelConfig) -> Tensor:
    """Periodic Hann window of ``win_size``, zero-padded (centred) to ``n_fft``. Shape ``(n_fft,)``, float32."""
    window = torch.hann_window(config.win_size, dtype=torch.float32)
    left = (config.n_fft - config.win_size) // 2
    return nn.functional.pad(window, (left, config.n_fft - config.win_size - left))


def mel_filterbank(config: MelConfig) -> Tensor:
    """librosa's mel filterbank in float32. Shape ``(num_mels, n_fft // 2 + 1)``.

    Warns (naming the config) when some mel bands are empty, e.g. too many mels for ``n_fft``.
    """
    import librosa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        basis = librosa.filters.mel(
            sr=config.sampling_rate, n_fft=config.n_fft, n_mels=config.num_mels, fmin=config.fmin, fmax=config.f_max,
            htk=config.mel_scale == "htk", norm=config.mel_norm, dtype=np.float32)
    empty = np.flatnonzero(basis.max(axis=1) == 0)
    if empty.size:
        bands = f"{empty[:8].tolist()}{'...' if empty.size > 8 else ''}"
        message = f"{empty.size} of {config.num_mels} mel filters are empty (bands {bands}) for {config}"
        warnings.warn(f"{message}: lower num_mels, raise n_fft, or widen fmin..fmax", UserWarning, stacklevel=2)
    return torch.from_numpy(basis)

