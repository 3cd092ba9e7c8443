"""``nn.Module`` forms of the features: ``Spectrogram`` and ``MelSpectrogram``.

Window and filterbank are non-persistent buffers: they follow ``.to(device)`` and stay out of checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from melvoc.features.config import MelConfig, hann_window, mel_filterbank
from melvoc.features.functional import compute

__all__ = ["MelSpectrogram", "Spectrogram"]


class _FeatureModule(nn.Module):
    def __init__(self, config: MelConfig | Mapping[str, Any]) -> None:
        super().__init__()
        self.config = MelConfig.coerce(config)
        self.register_buffer("window", hann_window(self.config), persistent=False)

    def extra_repr(self) -> str:
        return repr(self.config)


class Spectrogram(_FeatureModule):
    """``nn.Module`` form of :func:`spectrogram`; the window is a non-persistent buffer.

    Shapes: ``(T,) -> (n_fft // 2 + 1, frames)``; ``(B, T)`` or ``(B, 1, T) -> (B, n_fft // 2 + 1, frames)``.
    """

    def forward(self, audio: Tensor) -> Tensor:
        return compute(audio, self.config, self.window, None, False)


class MelSpectrogram(_FeatureModule):
    """``nn.Module`` form of :func:`mel_spectrogram`; window and filterbank are non-persistent buffers.

    Shapes: ``(T,) -> (num_mels, frames)``; ``(B, T)`` or ``(B, 1, T) -> (B, num_mels, frames)``.
    ``fast`` (an attribute, may be switched later): CPU calls without autograd take
    :mod:`melvoc.features.fast`. ``mel_basis`` may be replaced by another filterbank whose filters
    lie within ``fmin..fmax`` (only those STFT bins are computed, see ``MelConfig.mel_bins``).
    """

    def __init__(self, config: MelConfig | Mapping[str, Any], fast: bool = True) -> None:
        super().__init__(config)
        self.fast = fast
        self.register_buffer("mel_basis", mel_filterbank(self.config), persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        return compute(audio, self.config, self.window, self.mel_basis, self.fast)
