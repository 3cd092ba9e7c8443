"""``python -m melvoc.compare --reference path/to/mel_processing.py``: does melvoc reproduce *your* copy, and
with which MelConfig?

    python -m melvoc.compare --reference path/to/mel_processing.py [--preset NAME_OR_YAML ...]
                             [--json OUT.json] [--no-fit] [--device cpu] [--repeat N] [--conf-dir DIR]

The command around :func:`melvoc.matching.compare.run_comparison` (what is compared, and how, is
described there). ``--json OUT`` writes ``{"functions": {NAME: {"status", "config", "max_diff", "reason"}}}`` (with
several presets, NAME is ``function[preset]``). Exit codes: 0 all match, 1 some differ, 3 some
cannot run (before 1), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from melvoc.deploy.inference import parse_device
from melvoc.features.presets import load_presets, read_preset
from melvoc.matching.compare import FunctionResult, run_comparison
from melvoc.matching.copies import import_copy
from melvoc.matching.identify import UsageError

__all__ = ["format_table", "main"]


def format_table(results: dict[str, FunctionResult]) -> str:
    """The results as an aligned text table."""
    rows = [("function", "status", "max diff", "float64", "float32", "legacy/melvoc", "reason")]
    for name, r in results.items():
        rows.append((
            name, r.status, "-" if r.max_diff is None else f"{r.max_diff:.3g}",
            f"{r.diffs['float64']:.3g}" if "float64" in r.diffs else "-",
            f"{r.diffs['float32']:.3g}" if "float32" in r.diffs else "-",
            "-" if r.speed_ratio is None else f"{r.speed_ratio:.2f}x",
            r.reason + (f" [{r.override}]" if r.override else ""),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m melvoc.compare",
        description="Check which MelConfig reproduces the functions of your mel_processing.py.",
        epilog="exit codes: 0 all match, 1 some differ, 3 some cannot run, 2 usage error",
    )
    parser.add_argument("--reference", required=True, help="path of your mel_processing.py")
    parser.add_argument("--preset", action="append", default=None,
                        help="feature preset name (conf/features) or YAML path whose numbers the functions get; "
                             "repeatable (default: vits_22k, the original's)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the verdicts as JSON")
    parser.add_argument("--no-fit", dest="fit", action="store_false",
                        help="do not search for the MelConfig of functions that differ from the preset")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--repeat", type=int, default=0,
                        help="timing measurements of matching functions, best kept (default 0: no timing)")
    parser.add_argument("--conf-dir", default=None, help="folder of preset YAML files (default: conf/features)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test audio")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m melvoc.compare``; returns the exit code."""
    args = _compare_parser().parse_args(argv)
    try:
        if args.repeat < 0:
            raise UsageError("--repeat must be >= 0")
        try:
            device = parse_device(args.device)
        except ValueError as error:
            raise UsageError(str(error)) from error
        import_copy(args.reference)
        table = load_presets(args.conf_dir)
        chosen = []
        for entry in args.preset or ["vits_22k"]:
            if entry in table:
                chosen.append((entry, table[entry]))
            elif Path(entry).suffix in (".yaml", ".yml"):
                if not Path(entry).is_file():
                    raise UsageError(f"--preset {entry}: no such file")
                chosen.append((Path(entry).stem, read_preset(Path(entry))))
            else:
                raise UsageError(f"--preset {entry}: unknown; available: {', '.join(table)} (or a YAML path)")
    except ValueError as error:  # UsageError, PresetError
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"reference: {Path(args.reference).resolve()}")
    print(f"presets: {', '.join(name for name, _ in chosen)}; device {device}; torch {torch.__version__}")
    results, notes = run_comparison(args.reference, chosen, table, fit=args.fit, seed=args.seed, device=device,
                                    repeat=args.repeat)
    if results:
        print(format_table(results))
    for note in notes:
        print(f"note: {note}")
    if args.json is not None:
        args.json.write_text(json.dumps({"functions": {k: r.to_json() for k, r in results.items()}}, indent=2) + "\n")
    statuses = [r.status for r in results.values()]
    if not results:
        print("FAILED: the copy has no function to compare")
        return 1
    if "cannot_run" in statuses:
        print(f"CANNOT RUN: {statuses.count('cannot_run')} of {len(statuses)} functions (see the reasons)")
        return 3
    if "differs" in statuses:
        print(f"DIFFERS: {statuses.count('differs')} of {len(statuses)} functions match no MelConfig")
        return 1
    print(f"OK: all {len(statuses)} functions match a MelConfig")
    return 0


if __name__ == "__main__":
    sys.exit(main())
