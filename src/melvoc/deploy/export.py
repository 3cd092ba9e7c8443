"""Export a trained generator for inference: :func:`export_generator` (the command: ``python -m melvoc.export``).

The output is a generator-only ``torch.save`` file: weights with weight norm folded in, the feature
config and the generator node (``_target_`` and constructor arguments), a format version and where it
came from; no discriminators, optimizer state or training loop state (HiFi-GAN V1: 13.9 M parameters, ~55 MB).
Load it with :func:`melvoc.load_generator`; it gives the same output as the checkpoint's generator.

    python -m melvoc.export logs/train/runs/<run>/checkpoints/last.ckpt generator.pt
    python -m melvoc.synthesize --checkpoint generator.pt clip.wav

An output ending in ``.onnx`` is written as an ONNX graph instead (:mod:`melvoc.deploy.onnx_export`; needs
``pip install 'melvoc[onnx]'``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from melvoc.deploy.inference import GeneratorCheckpoint, export_state, read_checkpoint

__all__ = ["export_generator"]

log = logging.getLogger(__name__)


def export_generator(checkpoint: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write the generator of ``checkpoint`` (training checkpoint or export) to ``output``; return its path.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        CheckpointError: ``checkpoint`` is not a melvoc checkpoint.
        FileExistsError: ``output`` exists and ``overwrite`` is false, or it is ``checkpoint`` itself.
    """
    source: GeneratorCheckpoint = read_checkpoint(checkpoint)
    output = Path(output).expanduser()
    if output.exists() and output.resolve() == source.path.resolve():
        raise FileExistsError(f"{output}: is the input checkpoint; give another output path")
    if output.is_dir():
        raise IsADirectoryError(f"{output}: is a folder; give a file name, e.g. {output / 'generator.pt'}")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output}: exists; remove it or allow overwriting (--force)")
    state = export_state(source)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so an interrupted export never leaves half a file behind.
    partial = output.with_name(output.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, output)
    log.info("exported the generator of %s to %s", source.path, output)
    return output
