"""Export a trained generator for inference: ``python -m melvoc.export CKPT OUT``.

The output is a generator-only ``torch.save`` file: weights with weight norm folded in, the feature
config and the generator node (``_target_`` and constructor arguments), a format version and where it
came from; no discriminators, optimizer state or training loop state (HiFi-GAN V1: 13.9 M parameters, ~55 MB).
Load it with :func:`melvoc.load_generator`; it gives the same output as the checkpoint's generator.

    python -m melvoc.export logs/train/runs/<run>/checkpoints/last.ckpt generator.pt
    python -m melvoc.synthesize --checkpoint generator.pt clip.wav

An output ending in ``.onnx`` is written as an ONNX graph instead (:mod:`melvoc.onnx_export`; needs
``pip install 'melvoc[onnx]'``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from melvoc.inference import CheckpointError, GeneratorCheckpoint, export_state, read_checkpoint

__all__ = ["export_generator", "main"]

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


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m melvoc.export",
        description=(
            "Write a generator-only file for inference from a training checkpoint: weight norm removed, "
            "no discriminators or optimizer state, the feature config and generator node "
            "included. Load it with melvoc.load_generator(path) or use it with python -m melvoc.synthesize."
        ),
    )
    parser.add_argument("checkpoint", type=Path, help="training checkpoint (.ckpt) or an exported generator")
    parser.add_argument("output", type=Path,
                        help="file to write: generator.pt (torch), or vocoder.onnx (ONNX graph, dynamic batch "
                             "and frame axes, feature config in its metadata)")
    parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    args = parser.parse_args(argv)
    if args.output.suffix.lower() == ".onnx":
        return _main_onnx(args.checkpoint, args.output, args.force)
    try:
        output = export_generator(args.checkpoint, args.output, overwrite=args.force)
    except (FileNotFoundError, FileExistsError, IsADirectoryError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    exported = read_checkpoint(output)
    params = sum(t.numel() for t in exported.generator_state.values())
    features = exported.features
    family = str(exported.generator["_target_"]).rpartition(".")[2]
    print(
        f"{output}: {family}, {params / 1e6:.2f} M parameters, {_size(output)} "
        f"(from {args.checkpoint}, {_size(args.checkpoint)})\n"
        f"  features: {features.sampling_rate} Hz, {features.num_mels} mels, hop {features.hop_size}, "
        f"n_fft {features.n_fft}, fmax {features.fmax}"
    )
    return 0


def _main_onnx(checkpoint: Path, output: Path, force: bool) -> int:
    from melvoc.onnx_export import ONNX_OPSET, OnnxDependencyError, OnnxVocoder, export_onnx

    try:
        export_onnx(checkpoint, output, overwrite=force)
        vocoder = OnnxVocoder(output)
    except (FileNotFoundError, FileExistsError, IsADirectoryError, CheckpointError, OnnxDependencyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    features = vocoder.config
    print(
        f"{output}: ONNX opset {ONNX_OPSET}, {_size(output)}, mel (batch, {vocoder.num_mels}, frames) -> "
        f"audio (batch, 1, frames * {vocoder.hop_size}) (from {checkpoint})\n"
        f"  features: {features.sampling_rate} Hz, {features.num_mels} mels, hop {features.hop_size}, "
        f"n_fft {features.n_fft}, fmax {features.fmax}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
