"""``python -m melvoc.synthesize --checkpoint CKPT INPUTS...``: vocode audio files (copy-synthesis) or mel
files with a trained generator.

    python -m melvoc.synthesize --checkpoint generator.pt clips/*.wav --output-dir out/
    python -m melvoc.synthesize --checkpoint logs/train/runs/<run>/checkpoints/last.ckpt mels/ --device cuda

The command around :func:`melvoc.deploy.synthesize.synthesize` (inputs, batching and streaming are
described there).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import soundfile as sf

from melvoc.data.io import AudioDataError
from melvoc.deploy.inference import CheckpointError
from melvoc.deploy.synthesize import SUBTYPES, SynthesisError, synthesize
from melvoc.features.statistics import MelMismatchError

__all__ = ["main"]


def _synthesize_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m melvoc.synthesize",
        description=(
            "Vocode audio files (copy-synthesis: audio -> mel -> audio) or mel files (.npy/.pt, shape\n"
            "(num_mels, frames)) with a trained generator. Mels are computed and checked with the feature\n"
            "config stored in the checkpoint; WAVs are written at its sample rate as <output-dir>/<stem>.wav."
        ),
        epilog=(
            "examples:\n"
            "  python -m melvoc.synthesize --checkpoint generator.pt clip.wav other.flac\n"
            "  python -m melvoc.synthesize --checkpoint last.ckpt --output-dir out mels/ --device cuda"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="audio files (.wav .flac .ogg ...), mel files (.npy .pt) or folders of them")
    parser.add_argument("--checkpoint", "-c", required=True, type=Path,
                        help="exported generator (python -m melvoc.export) or training checkpoint (.ckpt)")
    parser.add_argument("--output-dir", "-o", type=Path, default=Path("synthesized"),
                        help="folder for the WAV files (default: %(default)s)")
    parser.add_argument("--batch-size", "-b", type=int, default=1,
                        help="files per generator call, similar lengths together; > 1 speeds up many short "
                             "files on a GPU, but padding slightly changes the last frames of the shorter "
                             "files of a batch (default: %(default)s, exact per file)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when available), cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--subtype", choices=SUBTYPES, default="PCM_16",
                        help="WAV sample encoding; FLOAT keeps the generator's float32 output exactly "
                             "(default: %(default)s)")
    parser.add_argument("--no-resample", dest="resample", action="store_false",
                        help="reject audio at another rate instead of resampling it (soxr)")
    parser.add_argument("--peak-normalize", type=float, default=None, metavar="PEAK",
                        help="scale audio inputs to this peak first, as data.peak_normalize in training "
                             "(e.g. 0.95 for the HiFi-GAN recipes; default: off)")
    parser.add_argument("--chunk-frames", type=int, default=None, metavar="N",
                        help="stream each mel N frames at a time, with the context the generator's receptive "
                             "field needs (same audio as without it; logs look-ahead and time per chunk)")
    parser.add_argument("--skip-mel-check", dest="check_mels", action="store_false",
                        help="synthesize mel files even when their floor, range or log base contradict the "
                             "checkpoint's features (see python -m melvoc.identify)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _synthesize_parser().parse_args(argv)
    if args.chunk_frames is not None and not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = synthesize(
            args.checkpoint,
            args.inputs,
            args.output_dir,
            batch_size=args.batch_size,
            device=args.device,
            subtype=args.subtype,
            resample=args.resample,
            peak_normalize=args.peak_normalize,
            progress=False if args.quiet else None,
            chunk_frames=args.chunk_frames,
            check_mels=args.check_mels,
        )
    except (FileNotFoundError, CheckpointError, SynthesisError, AudioDataError, MelMismatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        seconds = sum(sf.info(str(p)).duration for p in written)
        print(f"wrote {len(written)} file(s), {seconds:.1f} s of audio, to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
