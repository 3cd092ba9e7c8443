"""Mel files (``.npy`` / ``.pt``): the one reader used by training data, synthesis and identify.

Kept apart from :mod:`melvoc.features` (the feature computation) and :mod:`melvoc.data` (which brings
in Lightning), so that command-line tools can read mels without either.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["MEL_FILE_SUFFIXES", "read_mel_file"]

#: The suffixes of mel files: NumPy arrays and ``torch.save``d tensors.
MEL_FILE_SUFFIXES = (".npy", ".pt")


def read_mel_file(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray | Tensor:
    """The array stored in a mel file, as stored: ``.npy`` -> ``np.ndarray``, else a ``torch.save``d tensor.

    The one reader of mel files (training data, synthesis, identify). ``mmap=True`` memory-maps the
    file where the format allows, for reading only the shape.

    Raises:
        ValueError: the file cannot be read or holds no tensor (naming the file and the cause); callers
            re-raise it as their own error type.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r" if mmap else None)
        if mmap:
            try:
                mel = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # files from before torch's zip format cannot be memory-mapped
                mel = torch.load(path, map_location="cpu", weights_only=True)
        else:
            mel = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the mel ({type(exc).__name__}: {exc}); regenerate it") from exc
    if not isinstance(mel, Tensor):
        raise ValueError(
            f"{path}: cannot read the mel: it holds a {type(mel).__name__}, not a tensor of shape "
            "(num_mels, frames); regenerate it"
        )
    return mel
