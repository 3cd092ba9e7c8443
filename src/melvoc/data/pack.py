"""``python -m melvoc.data.pack SOURCE OUTPUT --sampling-rate SR``: pack audio into shards for ``data=shards``.

SOURCE is anything ``data.train_filelist`` accepts (filelist, path list, ``metadata.csv``, folder;
``--root`` as ``data.root``). OUTPUT is a local folder or ``s3://bucket/prefix`` (boto3's standard
environment: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ... so a local S3-compatible server works).

Each clip is decoded once, mixed to mono, resampled once to SR (soxr), checked (missing, unreadable,
empty, NaN/inf samples: the data check's checks) and stored lossless (16/24-bit PCM or FLAC, see
:func:`melvoc.data.shards.encode_audio`) with its name, rate, length, origin and a checksum, in source
order, as litdata chunks of about ``--chunk-bytes``. ``--num-workers`` processes decode; this
process writes, so the output does not depend on the worker count. ``melvoc.json`` is written last:
a set without it is half-written and training refuses it. A bad file stops the pack with its name
(``--on-error raise``, the default; what was written is removed) or is skipped, counted and listed
(``--on-error skip``). An existing, non-empty OUTPUT is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from melvoc.data.io import AudioDataError, audio_info, problem_listing, read_audio
from melvoc.data.sources import AudioEntry, OnError, check_on_error, read_source, report_missing
from melvoc.data.shards import ENCODINGS, FORMAT, INDEX, MANIFEST, VERSION, block_checksums, encode_audio
from melvoc.data.storage import StorageError, Store

__all__ = ["PackError", "PackSummary", "PackedClip", "main", "pack", "pack_clip", "parse_bytes"]

#: litdata's default chunk size.
DEFAULT_CHUNK_BYTES = "64MB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class PackError(ValueError):
    """Packing cannot proceed; the message names the file or OUTPUT and the fix."""


def parse_bytes(text: str | int) -> int:
    """``"64MB"`` -> 64000000 (KB/MB/GB decimal, KiB/MiB/GiB binary, or a plain number of bytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"--chunk-bytes {text!r}: give bytes, e.g. 64MB, 256MiB or 1000000")
    value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])
    if value < 1:
        raise ValueError(f"--chunk-bytes {text!r}: must be at least one byte")
    return value


@dataclass(frozen=True)
class PackedClip:
    """One clip ready for a shard (see :mod:`melvoc.data.shards` for the item layout)."""

    name: str
    origin: str
    length: int
    data: bytes

    def item(self, sampling_rate: int) -> dict[str, Any]:
        # Arrays and one JSON string: litdata would take raw bytes or a str that names an existing
        # .wav file for media and decode them with torchcodec.
        return {"audio": np.frombuffer(self.data, dtype=np.uint8), "crc": block_checksums(self.data),
                "meta": json.dumps({"name": self.name, "origin": self.origin}), "sampling_rate": sampling_rate,
                "length": self.length}


def pack_clip(entry: AudioEntry, sampling_rate: int, encoding: str) -> PackedClip | str:
    """Decode, check, resample and encode one file; a string is the named problem of a bad file."""
    try:
        info = audio_info(entry.path)
        audio = read_audio(info, sampling_rate, resample=True)
    except AudioDataError as exc:
        message = str(exc)
    except Exception as exc:  # anything else still names the file
        message = f"{entry.path}: {type(exc).__name__}: {exc}"
    else:
        if audio.shape[0] == 0:
            return f"{entry.path}: no samples at {sampling_rate} Hz; remove it from the list"
        return PackedClip(entry.name, entry.origin, int(audio.shape[0]), encode_audio(audio, encoding, sampling_rate))
    if entry.origin != str(entry.path):
        message += f" [listed at {entry.origin}]"
    return message


def _pack_task(task: tuple[AudioEntry, int, str]) -> PackedClip | str:
    return pack_clip(*task)


@dataclass
class PackSummary:
    """What a pack wrote."""

    output: str
    sampling_rate: int
    encoding: str
    clips: int = 0
    samples: int = 0
    shards: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)

    @property
    def hours(self) -> float:
        return self.samples / self.sampling_rate / 3600.0

    def format(self, show: int = 10) -> str:
        lines = [
            f"melvoc pack: {self.output}",
            f"{'clips':<10}{self.clips}",
            f"{'hours':<10}{self.hours:.3f} at {self.sampling_rate} Hz ({self.encoding})",
            f"{'shards':<10}{self.shards}",
            f"{'bytes':<10}{self.bytes:,}",
            f"{'skipped':<10}{len(self.skipped)}",
        ]
        lines.extend(f"  {problem}" for problem in self.skipped[:show])
        if len(self.skipped) > show:
            lines.append(f"  ... and {len(self.skipped) - show} more")
        rate = self.clips / self.seconds if self.seconds > 0 else float("nan")
        lines.append(f"{'took':<10}{self.seconds:.1f} s ({rate:.1f} clips/s, "
                     f"{self.hours * 60.0 / max(self.seconds, 1e-9):.3f} h of audio per minute)")
        lines.append(f"train on it: python train.py data=shards data.train_shards={self.output} ...")
        return "\n".join(lines)


def _results(tasks: list[tuple[AudioEntry, int, str]], num_workers: int) -> Iterator[PackedClip | str]:
    if num_workers < 1:
        yield from map(_pack_task, tasks)
        return
    with multiprocessing.Pool(num_workers) as pool:
        yield from pool.imap(_pack_task, tasks, chunksize=4)


def pack(
    source: str,
    output: str,
    sampling_rate: int,
    *,
    root: Optional[str] = None,
    encoding: str = "pcm16",
    chunk_bytes: int | str = DEFAULT_CHUNK_BYTES,
    num_workers: int = 1,
    on_error: OnError = "raise",
    overwrite: bool = False,
    progress: bool = False,
) -> PackSummary:
    """Pack ``source`` into a shard set at ``output`` (see the module docstring).

    ``num_workers`` decoding processes (0: decode in this process).

    Raises:
        PackError: OUTPUT exists and is not empty (without ``overwrite``), a file is bad
            (``on_error="raise"``), or no file is usable.
        StorageError: OUTPUT's store cannot be reached or written.
    """
    check_on_error(on_error)
    if encoding not in ENCODINGS:
        raise ValueError(f"--encoding {encoding!r}: must be one of {ENCODINGS}")
    if int(sampling_rate) <= 0:
        raise ValueError(f"--sampling-rate {sampling_rate}: must be a positive rate in Hz")
    limit = parse_bytes(chunk_bytes)
    store = Store(output)
    store.check_access()
    if not store.remote and store.path.exists() and not store.path.is_dir():
        raise PackError(f"{output}: a file, not a folder; choose another OUTPUT")
    if not store.is_empty():
        if not overwrite:
            state = "a finished shard set" if store.exists(MANIFEST) else "not empty (a half-written set?)"
            raise PackError(f"{output}: {state}; pass --overwrite to replace everything there, or choose another OUTPUT")
        store.remove_all()

    try:
        entries = read_source(source, root, on_error)
    except AudioDataError as exc:
        raise PackError(str(exc)) from exc
    summary = PackSummary(output=store.uri if store.remote else str(store.path.resolve()), sampling_rate=int(sampling_rate), encoding=encoding)
    missing = report_missing(entries, "pack")
    if missing:
        if on_error == "raise":
            raise PackError(missing.replace("data.root", "--root").replace("data.on_error=skip", "--on-error skip"))
        summary.skipped.extend(f"{e.path}: file not found [listed at {e.origin}]" for e in entries if not e.path.is_file())
        entries = [e for e in entries if e.path.is_file()]

    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="melvoc-pack-") as staging:
            _write(store, entries, summary, Path(staging), limit, num_workers, on_error, progress)
    except BaseException:
        # Nothing half-written stays behind when we can help it (a SIGKILL still can: training refuses that).
        try:
            store.remove_all()
        except StorageError:
            pass
        raise
    summary.seconds = time.monotonic() - started
    return summary


def _write(store: Store, entries: Sequence[AudioEntry], summary: PackSummary, staging: Path, limit: int,
           num_workers: int, on_error: OnError, progress: bool) -> None:
    from litdata.streaming.writer import BinaryWriter

    # A local OUTPUT receives the chunks directly; a remote one gets each chunk uploaded once written.
    folder = staging if store.remote else store.path
    folder.mkdir(parents=True, exist_ok=True)
    writer = BinaryWriter(str(folder), chunk_bytes=limit)
    min_length: Optional[int] = None

    def ship(paths: Sequence[str]) -> None:
        for path in paths:
            if store.remote:
                store.upload(Path(path), Path(path).name)
                Path(path).unlink()

    tasks = [(entry, summary.sampling_rate, summary.encoding) for entry in entries]
    results = _results(tasks, num_workers)
    for result in tqdm(results, total=len(tasks), desc="packing", unit="clip", disable=not progress):
        if isinstance(result, str):
            if on_error == "raise":
                raise PackError(problem_listing("pack: a bad file", [result],
                                                "Fix or remove it, or pass --on-error skip to leave such files out", 1))
            summary.skipped.append(result)
            continue
        written = writer.add_item(summary.clips, result.item(summary.sampling_rate))
        ship([written] if written else [])
        summary.clips += 1
        summary.samples += result.length
        min_length = result.length if min_length is None else min(min_length, result.length)
    if summary.clips == 0:
        raise PackError(problem_listing(f"pack: no usable clips out of {len(entries)}", summary.skipped or ["(none)"],
                                        "Check SOURCE and --root", 10))
    ship(writer.done())
    writer.merge(1)
    index = folder / INDEX
    for leftover in folder.glob(f"*.{INDEX}"):  # the writer's own partial index
        leftover.unlink()
    chunks = json.loads(index.read_text())["chunks"]
    summary.shards = len(chunks)
    summary.bytes = sum(int(c["chunk_bytes"]) for c in chunks)
    ship([str(index)])
    store.write_json(MANIFEST, {
        "format": FORMAT,
        "version": VERSION,
        "sampling_rate": summary.sampling_rate,
        "encoding": summary.encoding,
        "clips": summary.clips,
        "samples": summary.samples,
        "hours": summary.hours,
        "min_length": min_length,
        "shards": summary.shards,
        "bytes": summary.bytes,
        "skipped": summary.skipped,
    })


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m melvoc.data.pack",
        description="Pack audio (filelist, metadata.csv or folder) into shards for `python train.py data=shards`.",
    )
    parser.add_argument("source", help="filelist (path|...), metadata.csv, or a folder of audio files")
    parser.add_argument("output", help="a local folder or s3://bucket/prefix")
    parser.add_argument("--sampling-rate", type=int, required=True, help="the rate you will train at (Hz)")
    parser.add_argument("--root", default=None, help="folder that relative filelist paths resolve against")
    parser.add_argument("--encoding", choices=ENCODINGS, default="pcm16",
                        help="how clips are stored, all lossless after resampling (default pcm16)")
    parser.add_argument("--chunk-bytes", default=DEFAULT_CHUNK_BYTES, help=f"shard size (default {DEFAULT_CHUNK_BYTES})")
    parser.add_argument("--num-workers", type=int, default=2, help="decoding processes (0: this one; default 2)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="a bad file stops the pack (raise) or is skipped and listed (skip)")
    parser.add_argument("--overwrite", action="store_true", help="replace whatever is at OUTPUT")
    args = parser.parse_args(argv)
    try:
        summary = pack(args.source, args.output, args.sampling_rate, root=args.root, encoding=args.encoding,
                       chunk_bytes=args.chunk_bytes, num_workers=args.num_workers, on_error=args.on_error,
                       overwrite=args.overwrite, progress=True)
    except (PackError, StorageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
