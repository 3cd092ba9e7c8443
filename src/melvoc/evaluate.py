"""``python -m melvoc.evaluate REFERENCE --predicted PRED ...``: score vocoded audio against references.

    python -m melvoc.evaluate refs/ --predicted hifigan/ --predicted bigvgan/ --json scores.json --report ab.html
    python -m melvoc.evaluate val.txt --checkpoint last.ckpt --metrics pesq,mstft

The command around :func:`melvoc.evaluation.scoring.evaluate` (inputs and scoring are described
there) and :mod:`melvoc.evaluation.report` (table, JSON, HTML report).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from melvoc.evaluation.report import format_table, to_json, write_report
from melvoc.evaluation.scoring import evaluate
from melvoc.metrics import CREPE_MODELS, DEFAULT_METRICS, parse_metrics

__all__ = ["main"]


def _evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m melvoc.evaluate",
        description=(
            "Score predicted audio against references with PESQ, M-STFT, MCD, periodicity and V/UV F1\n"
            "(melvoc.metrics). Predictions pair with references by file stem."
        ),
        epilog=(
            "examples:\n"
            "  python -m melvoc.evaluate refs/ --predicted hifigan/ --predicted bigvgan/ --report ab.html\n"
            "  python -m melvoc.evaluate val.txt --checkpoint last.ckpt --json scores.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("reference", metavar="REFERENCE", help="folder, filelist or metadata.csv of reference audio")
    parser.add_argument("--predicted", "-p", action="append", default=[], metavar="PRED",
                        help="folder of predicted audio (<stem>.wav per reference); repeat for A/B sets")
    parser.add_argument("--checkpoint", "-c", action="append", default=[], metavar="CKPT",
                        help="copy-synthesize the references with this generator first and score it as a set")
    parser.add_argument("--metrics", "-m", default=",".join(DEFAULT_METRICS),
                        help="comma-separated: pesq,mstft,mcd,periodicity,vuv_f1,f0_rmse (default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the scores as JSON")
    parser.add_argument("--report", type=Path, metavar="OUT.html", help="write a self-contained HTML report")
    parser.add_argument("--report-files", type=int, default=20, metavar="N",
                        help="files with players and spectrograms in the report (default: %(default)s)")
    parser.add_argument("--sampling-rate", type=int, default=None, metavar="HZ",
                        help="score at this rate (default: each reference file's rate)")
    parser.add_argument("--hop-size", type=int, default=None,
                        help="length difference that warns (default: the checkpoint's hop, else 256)")
    parser.add_argument("--no-resample", dest="resample", action="store_false",
                        help="reject predictions at another rate than their reference instead of resampling")
    parser.add_argument("--pitch-model", choices=CREPE_MODELS, default="full",
                        help="CREPE for periodicity / V/UV F1: full (the CARGAN/BigVGAN protocol) or tiny "
                             "(about 15x less CPU time) (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device for CREPE and synthesis (default: %(default)s)")
    parser.add_argument("--synthesized-dir", type=Path, default=None,
                        help="keep the copy-synthesis of --checkpoint here (default: a temporary folder)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _evaluate_parser().parse_args(argv)
    try:
        metrics = parse_metrics(args.metrics)
        # The report plays the synthesized audio: without --synthesized-dir it lives in a temporary
        # folder that must outlast the report.
        with tempfile.TemporaryDirectory(prefix="melvoc-evaluate-") as scratch:
            sets = evaluate(
                args.reference, args.predicted, checkpoints=args.checkpoint, metrics=metrics,
                sampling_rate=args.sampling_rate, hop_size=args.hop_size, resample=args.resample,
                pitch_model=args.pitch_model, device=args.device,
                synthesized_dir=args.synthesized_dir or scratch, progress=False if args.quiet else None,
            )
            print(format_table(sets, metrics))
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(to_json(sets, metrics), indent=2) + "\n", encoding="utf-8")
                print(f"wrote {args.json}")
            if args.report:
                write_report(args.report, args.reference, sets, metrics, sampling_rate=args.sampling_rate,
                             media_files=args.report_files)
                print(f"wrote {args.report}")
    except (FileNotFoundError, ValueError) as error:  # EvaluationError, AudioDataError, checkpoint and synthesis errors
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
