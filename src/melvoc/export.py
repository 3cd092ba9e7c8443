"""``python -m melvoc.export CKPT OUT``: a generator-only file for inference (``.pt``), or an ONNX graph
(``.onnx``), from a training checkpoint.

    python -m melvoc.export logs/train/runs/<run>/checkpoints/last.ckpt generator.pt
    python -m melvoc.export last.ckpt vocoder.onnx

The command around :func:`melvoc.deploy.export.export_generator` and
:func:`melvoc.deploy.onnx_export.export_onnx`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from melvoc.deploy.export import export_generator
from melvoc.deploy.inference import CheckpointError, read_checkpoint

__all__ = ["main"]


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
    from melvoc.deploy.onnx_export import ONNX_OPSET, OnnxDependencyError, OnnxVocoder, export_onnx

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
