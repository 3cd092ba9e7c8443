"""Log-mel features that reproduce the classic VITS / HiFi-GAN ``mel_processing.py`` functions.

The computation (default knobs, the VITS lineage), whole in :mod:`melvoc.features.reference`::

    audio (B, T) --reflect pad (n_fft - hop) // 2--> frames (B, F, n_fft) * hann(win_size)
        --rfft--> sqrt(re^2 + im^2 + eps) (B, n_fft // 2 + 1, F)
        --slaney mel filterbank--> ln(clamp(mel, clip_val)) (B, num_mels, F)

| module | what it holds |
|---|---|
| :mod:`~melvoc.features.config` | ``MelConfig``, frame counts, the Hann window and the librosa filterbank |
| :mod:`~melvoc.features.reference` | the reference path: autograd, GPUs, ``torch.compile``, ``fast=False`` |
| :mod:`~melvoc.features.fast` | the CPU no-grad fast path (same results, faster), behind ``fast`` |
| :mod:`~melvoc.features.functional` | ``spectrogram``, ``spec_to_mel``, ``mel_spectrogram``: the dispatch between the two |
| :mod:`~melvoc.features.transforms` | ``Spectrogram``, ``MelSpectrogram`` (``nn.Module``; buffers follow ``.to()``) |
| :mod:`~melvoc.features.padded` | mels of padded batches, each clip as if alone (validation, losses) |
| :mod:`~melvoc.features.compat` | the original function names and signatures, as drop-in replacements |
| :mod:`~melvoc.features.mel_files`, :mod:`~melvoc.features.statistics` | reading ``.npy``/``.pt`` mels; checking their floor, range and log base against a config |
| :mod:`~melvoc.features.presets` | the ``conf/features/`` presets as ``MelConfig`` objects |
"""

from melvoc.features.config import MelConfig, hann_window, mel_filterbank, min_audio_length, num_frames
from melvoc.features.functional import cache_info, clear_cache, mel_spectrogram, spec_to_mel, spectrogram
from melvoc.features.transforms import MelSpectrogram, Spectrogram

__all__ = [
    "MelConfig", "MelSpectrogram", "Spectrogram", "cache_info", "clear_cache", "hann_window", "mel_filterbank",
    "mel_spectrogram", "min_audio_length", "num_frames", "spec_to_mel", "spectrogram",
]
