"""Mel reconstruction losses, built on :mod:`melvoc.features` so they cannot drift from the features.

* :class:`MelLoss` is HiFi-GAN's mel loss: L1 between the log-mels of the predicted and the
  reference audio, with one :class:`~melvoc.features.MelConfig` (``loss_features`` in the Hydra
  config: the features preset with ``fmax: null``).
* :class:`MultiScaleMelLoss` is the multi-resolution mel loss of DAC / BigVGAN v2: seven STFT
  scales (window 32 ... 2048, hop = window / 4, 5 ... 320 mel bands), log10 of the clamped mel,
  L1 per scale, summed.

Both take ``(B, T)`` or ``(B, 1, T)`` audio and optional ``lengths`` (valid samples per clip of a
padded batch). With ``lengths``, every clip is framed exactly as it would be on its own
(:mod:`melvoc.features.padded`), and only the frames the unpadded clip has (``num_frames(length,
config)``; ``length // hop_size`` for the default presets) are counted. So a padded batch gives the same loss as the
clips one by one, and the batch padding never leaks into the result.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from melvoc.features import MelConfig
from melvoc.features.padded import PaddedMelSpectrogram

__all__ = ["MelLoss", "MultiScaleMelLoss"]

log = logging.getLogger(__name__)

_DAC_WINDOW_LENGTHS = (32, 64, 128, 256, 512, 1024, 2048)
_DAC_NUM_MELS = (5, 10, 20, 40, 80, 160, 320)


def _audio_2d(audio: Tensor, what: str) -> Tensor:
    """``(B, T)`` or ``(B, 1, T)`` -> ``(B, T)``."""
    if audio.dim() == 3 and audio.shape[1] == 1:
        return audio.squeeze(1)
    if audio.dim() == 2:
        return audio
    raise ValueError(f"{what} of shape {tuple(audio.shape)}: expected (B, T) or (B, 1, T)")


def _crop_to_shorter(audio_hat: Tensor, audio: Tensor, tolerance: int) -> tuple[Tensor, Tensor]:
    """Crop both ``(B, T)`` signals to the shorter one when they differ by less than ``tolerance``."""
    if audio_hat.shape[0] != audio.shape[0]:
        raise ValueError(
            f"batch sizes differ: audio_hat has {audio_hat.shape[0]} clips, audio {audio.shape[0]}"
        )
    t_hat, t_ref = audio_hat.shape[-1], audio.shape[-1]
    if t_hat == t_ref:
        return audio_hat, audio
    if abs(t_hat - t_ref) >= tolerance:
        raise ValueError(
            f"audio_hat has {t_hat} samples, audio {t_ref}: they may differ by less than "
            f"{tolerance} samples (one hop) and are then cropped to the shorter; check that the "
            "generator's total upsampling equals hop_size"
        )
    length = min(t_hat, t_ref)
    return audio_hat[..., :length], audio[..., :length]


def _masked_l1(a: Tensor, b: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Union[Tensor, int]]:
    """Sum of ``|a - b|`` over valid frames ``(B, M, F)`` and the number of valid frames.

    Without a mask the count is a plain ``int``: a new device tensor would cost a host copy.
    """
    diff = (a - b).abs()
    if mask is None:
        return diff.sum(), diff.shape[0] * diff.shape[-1]
    return (diff * mask.unsqueeze(1)).sum(), mask.sum()


def _per_frame(total: Tensor, frames: Union[Tensor, int], num_mels: int) -> Tensor:
    """``total / (frames * num_mels)``, zero when there are no valid frames."""
    if isinstance(frames, int):
        return total / (max(frames, 1) * num_mels)
    return total / (frames.clamp_min(1) * num_mels)


class MelLoss(nn.Module):
    """HiFi-GAN's mel reconstruction loss: ``mean |logmel(audio_hat) - logmel(audio)|``.

    Both mels are computed with :class:`~melvoc.features.MelSpectrogram` on the inputs' device;
    the reference under ``no_grad``; always in float32 (or float64 for float64 input), also under
    autocast.

    Args:
        config: the loss's :class:`~melvoc.features.MelConfig` (or a mapping of its fields), in
            Hydra ``${loss_features}``.

    Shapes:
        ``audio_hat``, ``audio``: ``(B, T)`` or ``(B, 1, T)``; lengths may differ by less than one
        hop (both are cropped to the shorter). ``lengths``: ``(B,)`` valid samples per clip, or
        ``None`` when every sample is valid. Returns a scalar.
    """

    def __init__(self, config: Union[MelConfig, Mapping[str, Any]]) -> None:
        super().__init__()
        self.config = MelConfig.coerce(config)
        self.mels = PaddedMelSpectrogram(self.config)

    def mel_pair(
        self, audio_hat: Tensor, audio: Tensor, lengths: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Predicted and reference log-mels ``(B, num_mels, F)`` and the valid-frame mask ``(B, F)``.

        The mask is ``None`` without ``lengths``. The reference carries no gradient.
        """
        audio_hat = _audio_2d(audio_hat, "audio_hat")
        audio = _audio_2d(audio, "audio")
        audio_hat, audio = _crop_to_shorter(audio_hat, audio, self.config.hop_size)
        with torch.autocast(audio.device.type, enabled=False):
            with torch.no_grad():
                mel, mask = self.mels(audio, lengths)
            mel_hat, _ = self.mels(audio_hat, lengths)
        return mel_hat, mel, mask

    def l1_sum(
        self, audio_hat: Tensor, audio: Tensor, lengths: Optional[Tensor] = None
    ) -> tuple[Tensor, Union[Tensor, int]]:
        """Sum of absolute log-mel differences over valid frames, and the valid-frame count.

        The loss is ``sum / (count * num_mels)``; keeping both lets a metric weight by frames.
        The count is an ``int`` without ``lengths``, a tensor with them.
        """
        mel_hat, mel, mask = self.mel_pair(audio_hat, audio, lengths)
        with torch.autocast(mel.device.type, enabled=False):
            return _masked_l1(mel_hat, mel, mask)

    def forward(self, audio_hat: Tensor, audio: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """L1 of log-mels, averaged over mel bands and valid frames. Returns a scalar."""
        total, frames = self.l1_sum(audio_hat, audio, lengths)
        return _per_frame(total, frames, self.config.num_mels)

    def extra_repr(self) -> str:
        return repr(self.config)


def _per_scale(value: Any, count: int, name: str) -> list[Any]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = list(value)
        if len(values) != count:
            raise ValueError(
                f"MultiScaleMelLoss.{name}={values}: needs one value per scale ({count} scales)"
            )
        return values
    return [value] * count


class MultiScaleMelLoss(nn.Module):
    """The multi-scale mel loss of DAC / BigVGAN v2 (``MelSpectrogramLoss`` in DAC's config).

    Each scale ``i`` is a :class:`~melvoc.features.MelConfig` with ``n_fft = win_size =
    window_lengths[i]``, ``hop_size = hop_lengths[i]`` (``window / 4``), ``num_mels[i]`` bands,
    ``center=True`` with ``pad_mode="none"`` (``torch.stft``'s reflect centring, as in
    audiotools), plain magnitude (``eps=0``), librosa slaney filterbank, ``log10(clamp(mel,
    clamp_eps))``. DAC / BigVGAN v2 defaults: ``mag_weight=0``, ``log_weight=1``, ``pow=1``.

    ``loss = weight * sum_i [log_weight * L1(pow * log10 clamp(mel_hat_i), pow * log10 clamp(mel_i))
    + mag_weight * L1(mel_hat_i, mel_i)]``; the L1 is a mean over bands and (valid) frames.

    Small windows with many bands leave some mel filters empty (as in DAC); their rows are
    constant ``log10(clamp_eps)`` for both signals and add nothing to the loss.

    Args:
        sampling_rate: audio sample rate in Hz.
        window_lengths: STFT window (= FFT) length per scale.
        num_mels: mel bands per scale.
        hop_lengths: hop per scale; ``None`` means ``window // 4``.
        fmin, fmax: filterbank range in Hz, one value or one per scale (``None`` = Nyquist).
        clamp_eps: floor of the mel magnitude before the log.
        log_weight, mag_weight: weights of the log-mel and linear-mel L1 terms.
        pow: exponent of the clamped mel before the log (``log10(x ** pow) = pow * log10(x)``).
        weight: overall factor.
        length_tolerance: samples by which prediction and reference may differ (then cropped);
            ``None`` means the largest hop.

    Shapes: as :class:`MelLoss`: ``(B, T)`` or ``(B, 1, T)`` in, scalar out.
    """

    def __init__(
        self,
        sampling_rate: int,
        window_lengths: Sequence[int] = _DAC_WINDOW_LENGTHS,
        num_mels: Sequence[int] = _DAC_NUM_MELS,
        hop_lengths: Optional[Sequence[int]] = None,
        fmin: Union[float, Sequence[float]] = 0.0,
        fmax: Union[Optional[float], Sequence[Optional[float]]] = None,
        clamp_eps: float = 1e-5,
        log_weight: float = 1.0,
        mag_weight: float = 0.0,
        pow: float = 1.0,
        weight: float = 1.0,
        length_tolerance: Optional[int] = None,
    ) -> None:
        super().__init__()
        window_lengths = [int(w) for w in window_lengths]
        num_mels = [int(m) for m in num_mels]
        if not window_lengths:
            raise ValueError("MultiScaleMelLoss.window_lengths is empty: give at least one scale")
        if len(num_mels) != len(window_lengths):
            raise ValueError(
                f"MultiScaleMelLoss: {len(window_lengths)} window_lengths {window_lengths} but "
                f"{len(num_mels)} num_mels {num_mels}; give one mel count per scale"
            )
        hops = [w // 4 for w in window_lengths] if hop_lengths is None else [int(h) for h in hop_lengths]
        if len(hops) != len(window_lengths):
            raise ValueError(
                f"MultiScaleMelLoss.hop_lengths={hops}: needs one value per scale "
                f"({len(window_lengths)} scales)"
            )
        fmins = _per_scale(fmin, len(window_lengths), "fmin")
        fmaxs = _per_scale(fmax, len(window_lengths), "fmax")
        self.configs = [
            MelConfig(
                sampling_rate=sampling_rate,
                n_fft=w,
                hop_size=h,
                win_size=w,
                num_mels=m,
                fmin=float(lo),
                fmax=hi,
                center=True,
                eps=0.0,
                clip_val=clamp_eps,
                pad_mode="none",
                log_base="10",
            )
            for w, h, m, lo, hi in zip(window_lengths, hops, num_mels, fmins, fmaxs)
        ]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.scales = nn.ModuleList(PaddedMelSpectrogram(c) for c in self.configs)
        if caught:
            log.debug("MultiScaleMelLoss: %d scale(s) have empty mel filters (as in DAC)", len(caught))
        self.log_weight = float(log_weight)
        self.mag_weight = float(mag_weight)
        self.pow = float(pow)
        self.weight = float(weight)
        self.length_tolerance = max(hops) if length_tolerance is None else int(length_tolerance)

    def forward(self, audio_hat: Tensor, audio: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """Sum over scales of the (masked) L1 between log10-mels. Returns a scalar."""
        audio_hat = _audio_2d(audio_hat, "audio_hat")
        audio = _audio_2d(audio, "audio")
        audio_hat, audio = _crop_to_shorter(audio_hat, audio, self.length_tolerance)
        loss = audio_hat.new_zeros((), dtype=torch.promote_types(audio_hat.dtype, torch.float32))
        with torch.autocast(audio.device.type, enabled=False):
            for config, scale in zip(self.configs, self.scales):
                with torch.no_grad():
                    mel, mask = scale(audio, lengths)
                mel_hat, _ = scale(audio_hat, lengths)
                if self.log_weight:
                    total, frames = _masked_l1(mel_hat, mel, mask)
                    loss = loss + self.log_weight * self.pow * _per_frame(total, frames, config.num_mels)
                if self.mag_weight:
                    # The linear mel above the clamp floor; below it both sides sit at clamp_eps,
                    # where DAC's unclamped mel differs by less than clamp_eps per element.
                    total, frames = _masked_l1(10.0**mel_hat, 10.0**mel, mask)
                    loss = loss + self.mag_weight * _per_frame(total, frames, config.num_mels)
        return self.weight * loss
