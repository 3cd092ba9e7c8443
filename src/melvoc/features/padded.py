"""Mels of padded batches: each clip framed exactly as it would be on its own.

A validation batch (or a loss over clips of several lengths) holds clips of ``lengths`` samples
followed by batch padding. :func:`pad_like_unpadded` replaces the samples after each clip's end by
the padding its own STFT would have seen (reflection or zeros); framing that without further STFT
padding gives, for the first ``num_frames(length, config)`` frames of each clip, the frames of the
unpadded clip, so the batch padding never leaks into a clip's mel. Vectorised on the device.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from melvoc.features.config import MelConfig
from melvoc.features.transforms import MelSpectrogram

__all__ = ["PaddedMelSpectrogram", "pad_like_unpadded", "valid_frames"]


def _reflect_index(index: Tensor, size: Tensor) -> Tensor:
    """Map ``index`` into ``[0, size)`` as a one-bounce reflect pad does (no edge repeat)."""
    index = torch.where(index < 0, -index, index)
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def pad_like_unpadded(audio: Tensor, lengths: Tensor, config: MelConfig) -> Tensor:
    """Apply the STFT's own padding to every clip of a padded batch at the clip's true end.

    ``audio`` ``(B, T)`` holds clips of ``lengths`` ``(B,)`` samples followed by batch padding.
    Returns ``(B, T + 2 * pre_pad + 2 * (n_fft // 2 if center else 0))``: for each clip, the signal
    that ``MelSpectrogram(config)`` would frame for the clip alone, followed by filler. Framing it
    with ``config.replace(pad_mode="none", center=False)`` gives, for the first
    ``num_frames(length, config)`` frames, the frames of the unpadded clip. Vectorised on the
    device (no host reads); clips shorter than ``min_audio_length(config)`` give finite filler.
    """
    batch, total = audio.shape
    pre = config.pre_pad
    half = config.n_fft // 2 if config.center else 0
    if pre == 0 and half == 0:
        return audio
    length = lengths.to(device=audio.device, dtype=torch.long).clamp(1, total).unsqueeze(1)
    index = torch.arange(total + 2 * (pre + half), device=audio.device).unsqueeze(0)
    # torch.stft's centring pad reflects the pre-padded signal of length + 2 * pre samples.
    index = _reflect_index(index - half, length + 2 * pre) if half else index.expand(batch, -1)
    index = index - pre
    inside = (index >= 0) & (index < length)
    if config.pad_mode == "reflect":
        index = _reflect_index(index, length)
    padded = audio.gather(1, index.clamp(0, total - 1))
    if config.pad_mode == "zeros":
        padded = padded * inside
    return padded


def valid_frames(lengths: Tensor, config: MelConfig, max_frames: int) -> Tensor:
    """Frames the unpadded clips have: ``num_frames(lengths, config)`` clamped to ``[0, max_frames]``.

    ``lengths`` ``(B,)`` samples -> ``(B,)`` int64 on the same device.
    """
    padded = lengths.to(torch.long) + 2 * config.pre_pad
    if config.center:
        padded = padded + 2 * (config.n_fft // 2)
    frames = 1 + torch.div(padded - config.n_fft, config.hop_size, rounding_mode="floor")
    return frames.clamp(0, max_frames)


class PaddedMelSpectrogram(nn.Module):
    """Log-mels of single- or multi-length batches for one :class:`MelConfig`.

    Holds ``MelSpectrogram(config)`` for whole batches and a copy without STFT padding that frames
    the output of :func:`pad_like_unpadded` for padded batches. All buffers are non-persistent.
    """

    def __init__(self, config: MelConfig) -> None:
        super().__init__()
        self.config = config
        self.mel = MelSpectrogram(config)
        unpadded = config.replace(pad_mode="none", center=False)
        self.framed = MelSpectrogram(unpadded) if unpadded != config else self.mel

    def forward(self, audio: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """``(B, T)`` -> log-mel ``(B, num_mels, frames)`` and, with ``lengths``, a ``(B, frames)`` mask."""
        if lengths is None:
            return self.mel(audio), None
        lengths = torch.as_tensor(lengths, device=audio.device)
        total = audio.shape[-1]
        # The padded signal has num_frames(T, config) frames, as the batch would without lengths.
        mel = self.framed(pad_like_unpadded(audio, lengths, self.config))
        frames = mel.shape[-1]
        count = valid_frames(torch.clamp(lengths.to(mel.device), max=total), self.config, frames)
        mask = torch.arange(frames, device=mel.device).unsqueeze(0) < count.unsqueeze(1)
        return mel, mask
