"""Batching ``AudioDataset`` items into the dict batches the models consume."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

__all__ = ["AudioCollate"]


class AudioCollate:
    """Stack items into ``{"audio": (B, T) float32, "lengths": (B,) int64, "names": list[str]}``.

    Items of different lengths (validation clips) are zero-padded at the end to the longest; their
    ``lengths`` keep the true sample counts. ``mel_target`` items, when present, become
    ``(B, num_mels, T // hop_size)`` padded with ``mel_pad_value`` (the log-mel of silence).
    Items that are ``None`` (skipped with ``on_error=skip``) are left out.
    """

    def __init__(self, mel_pad_value: float = 0.0) -> None:
        self.mel_pad_value = float(mel_pad_value)

    def __call__(self, items: Sequence[Optional[dict[str, Any]]]) -> dict[str, Any]:
        items = [item for item in items if item is not None]
        if not items:
            return {"audio": torch.zeros(0, 0), "lengths": torch.zeros(0, dtype=torch.int64), "names": []}
        audios = [item["audio"] for item in items]
        longest = max(a.shape[-1] for a in audios)
        if all(a.shape[-1] == longest for a in audios):
            audio = torch.stack(audios)
        else:
            audio = torch.zeros(len(audios), longest, dtype=torch.float32)
            for row, a in zip(audio, audios):
                row[: a.shape[-1]] = a
        batch: dict[str, Any] = {
            "audio": audio,
            "lengths": torch.tensor([item["length"] for item in items], dtype=torch.int64),
            "names": [item["name"] for item in items],
        }
        if "mel_target" in items[0]:
            mels = [item["mel_target"] for item in items]
            frames = max(m.shape[-1] for m in mels)
            mel = torch.full((len(mels), mels[0].shape[0], frames), self.mel_pad_value, dtype=torch.float32)
            for row, m in zip(mel, mels):
                row[:, : m.shape[-1]] = m
            batch["mel_target"] = mel
        return batch
