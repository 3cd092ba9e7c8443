"""Training-loader throughput: melvoc's ``AudioDataset`` against a HiFi-GAN-style loader, in one run.

    python benchmarks/bench_data.py [--files 24] [--batches 40] [--workers 2] [--repeats 3]

Both loaders draw random crops of ``--segment-size`` samples from the same 16-bit WAV files of
5-30 s, with the same sampler, batch size and ``num_workers``:

- HiFi-GAN-style (``meldataset.py``'s training path): read the whole file, peak-normalise (x0.95),
  crop, and compute two log-mels in the worker (the input mel and the ``fmax_for_loss`` mel), with
  melvoc's own ``mel_spectrogram`` (the same math as the original); in the resampling case the whole
  file is resampled with soxr before the crop.
- melvoc: ``AudioDataset`` seeks and reads only the crop (resampling only the crop plus a margin);
  the reference mel is made later on the training device by ``VocoderDataModule.on_after_batch_transfer``.
  The row "+ mel in main process" adds that mel on the CPU in the consuming process, which is the
  honest comparison on a CPU-only machine; on a GPU the mel costs a fraction of a millisecond.

Files are written to a temporary folder first, so both loaders read from the page cache; the timing
starts after the first batch (worker start-up excluded), the loaders run alternately ``--repeats``
times and the median is reported. Prints a markdown table with segments/s and ratios.

A second table (skipped with ``--no-shards``, needs the shards extra) compares the training loaders
of ``data=filelist`` and ``data=shards`` on the same 22.05 kHz clips of 2-6 s (one epoch's worth of
``--batches``), workers and batches, local disk, run alternately:
the file loader (``ResumableDataLoader`` over ``AudioDataset``) against the shard loader
(``ShardDataModule``'s litdata stream over the clips packed by ``melvoc.data.pack``), with the files
each opens in one whole epoch, counted by ``strace`` (``open``/``openat`` of the data files, every
worker included) where strace is installed. A third table gives the pack throughput with 1 and 2
decoding workers (clips/s and hours of audio packed per minute), best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from melvoc.data import AudioCollate, AudioDataset
from melvoc.data.resumable import ResumableDataLoader, ResumableSampler
from melvoc.features import MelConfig, MelSpectrogram, mel_spectrogram

TARGET_RATE = 22050
FEATURES = MelConfig(sampling_rate=TARGET_RATE, n_fft=1024, hop_size=256, win_size=1024, num_mels=80, fmax=8000.0,
                     eps=1e-9)
LOSS_FEATURES = FEATURES.replace(fmax=None)


class HifiganStyleDataset(Dataset):
    """What HiFi-GAN's ``MelDataset`` does per training item (split=True, not fine-tuning)."""

    def __init__(self, paths: list[Path], segment_size: int) -> None:
        self.paths = paths
        self.segment_size = segment_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        audio, sr = sf.read(str(path), dtype="float32")  # the whole file
        if sr != TARGET_RATE:
            audio = soxr.resample(audio, sr, TARGET_RATE)
        audio = audio / max(float(np.abs(audio).max()), 1e-8) * 0.95
        audio = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0)
        if audio.size(1) >= self.segment_size:
            start = int(torch.randint(0, audio.size(1) - self.segment_size + 1, ()))
            audio = audio[:, start : start + self.segment_size]
        else:
            audio = torch.nn.functional.pad(audio, (0, self.segment_size - audio.size(1)))
        mel = mel_spectrogram(audio, FEATURES)
        mel_loss = mel_spectrogram(audio, LOSS_FEATURES)
        return mel.squeeze(), audio.squeeze(0), str(path), mel_loss.squeeze()


def write_files(folder: Path, count: int, rate: int, min_s: float, max_s: float, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        n = int(rng.uniform(min_s, max_s) * rate)
        audio = (0.2 * rng.standard_normal(n)).clip(-1, 1)
        path = folder / f"f{i:03d}.wav"
        sf.write(path, audio, rate, subtype="PCM_16")
        paths.append(path)
    return paths


def throughput(dataset: Dataset, args: argparse.Namespace, collate=None, mel: MelSpectrogram | None = None) -> float:
    """Segments per second over ``args.batches`` batches after the first one."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=(args.batches + 1) * args.batch_size)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        collate_fn=collate, drop_last=True)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    count = 0
    for batch in iterator:
        if mel is not None:
            with torch.no_grad():
                mel(batch["audio"])
        count += args.batch_size
    return count / (time.perf_counter() - start)


def drain(loader, batches: int, batch_size: int) -> float:
    """Segments per second over ``batches`` batches after the first one, in one epoch."""
    count, started = 0, None
    for _ in loader:
        if started is None:
            started = time.perf_counter()
            continue
        count += batch_size
        if count >= batches * batch_size:
            break
    assert started is not None and count, "the epoch is shorter than the timed batches"
    return count / (time.perf_counter() - started)


def make_loader(kind: str, root: Path, args: argparse.Namespace):
    """The ``data=filelist`` (``kind="file"``) or ``data=shards`` training loader over the clips under ``root``."""
    if kind == "file":
        dataset = AudioDataset(sorted((root / "wavs").glob("*.wav")), FEATURES, segment_size=args.segment_size)
        sampler = ResumableSampler(dataset, seed=0, drop_last=True)
        return ResumableDataLoader(dataset, sampler=sampler, batch_size=args.batch_size, drop_last=True,
                                   collate_fn=AudioCollate(), num_workers=args.workers)
    from melvoc.data.shards import ShardDataModule

    dm = ShardDataModule(FEATURES, train_shards=str(root / "packed-wavs-1"), segment_size=args.segment_size,
                         batch_size=args.batch_size, num_workers=args.workers, seed=0, drop_last=True,
                         cache_dir=str(root / "cache"))
    dm.setup("fit")
    return dm.train_dataloader()


def files_opened_per_epoch(kind: str, root: Path, args: argparse.Namespace) -> str:
    """Opens of data files (clips, chunks, indexes) in one whole epoch of ``kind``'s loader, every worker
    included, after the loader's set-up (which reads each clip's header once per run), counted by strace
    in a child process; ``"n/a"`` without strace."""
    if shutil.which("strace") is None:
        return "n/a (no strace)"
    log = root / f"strace-{kind}.log"
    command = ["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", str(log), sys.executable, __file__,
               "--one-epoch", kind, "--data", str(root), "--workers", str(args.workers),
               "--batch-size", str(args.batch_size), "--segment-size", str(args.segment_size)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    lines = log.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if str(root / f"epoch-start-{kind}") in line)
    data = tuple(f'"{root / folder}/' for folder in ("wavs", "packed-wavs-1", "cache"))
    count = sum(1 for line in lines[start:] if any(d in line for d in data) and " = -1 " not in line)
    return f"{count:,}"


def shard_tables(args: argparse.Namespace) -> list[str]:
    """The file loader against the shard loader, and the pack throughput (markdown lines)."""
    from melvoc.data.pack import pack

    lines = []
    # One epoch must hold all timed batches: (batches + 1) * batch_size clips of 2-6 s.
    count = (args.batches + 1) * args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        write_files(Path(tmp) / "wavs", count, TARGET_RATE, 2.0, 6.0, seed=7)
        write_files(Path(tmp) / "wavs44", count, 44100, 2.0, 6.0, seed=7)
        pack_rows = []
        for case, folder in (("22.05 kHz WAV", "wavs"), ("44.1 kHz WAV -> 22.05 kHz", "wavs44")):
            for workers in (1, 2):
                best = None
                for _ in range(args.repeats):
                    summary = pack(str(Path(tmp) / folder), str(Path(tmp) / f"packed-{folder}-{workers}"),
                                   TARGET_RATE, num_workers=workers, overwrite=True)
                    best = summary if best is None or summary.seconds < best.seconds else best
                assert best is not None
                pack_rows.append((case, workers, best.clips / best.seconds, best.hours * 60.0 / best.seconds, best))
        def file_loader() -> float:
            return drain(make_loader("file", Path(tmp), args), args.batches, args.batch_size)

        def shard_loader() -> float:
            return drain(make_loader("shard", Path(tmp), args), args.batches, args.batch_size)

        results: dict[str, list[float]] = {"file": [], "shard": []}
        for _ in range(args.repeats):
            results["file"].append(file_loader())
            results["shard"].append(shard_loader())
        file_rate, shard_rate = (statistics.median(results[k]) for k in ("file", "shard"))
        shards = pack_rows[0][4].shards
        opened = {kind: files_opened_per_epoch(kind, Path(tmp), args) for kind in ("file", "shard")}
        lines += [
            f"Training loaders, same {count} clips of 2-6 s (22.05 kHz 16-bit WAV), batch {args.batch_size}, segment "
            f"{args.segment_size}, num_workers={args.workers}, local disk, median of {args.repeats} runs of "
            f"{args.batches} batches:\n",
            "| loader | segments/s | vs file loader | files opened per epoch |",
            "|---|---:|---:|---:|",
            f"| data=filelist (AudioDataset, seek + crop) | {file_rate:,.0f} | 1.0x | {opened['file']} |",
            f"| data=shards (litdata, {shards} chunks of pcm16) | {shard_rate:,.0f} | {shard_rate / file_rate:.2f}x | "
            f"{opened['shard']} |",
            "",
            f"Pack throughput (python -m melvoc.data.pack, {count} clips, "
            f"{pack_rows[0][4].hours * 60:.1f} min of audio, to pcm16 at 22.05 kHz, best of {args.repeats}):\n",
            "| source | decoding workers | clips/s | hours packed per minute | vs 1 worker |",
            "|---|---:|---:|---:|---:|",
        ]
        for i, (case, workers, clips_s, hours_min, _) in enumerate(pack_rows):
            one = pack_rows[i - i % 2][2]
            lines.append(f"| {case} | {workers} | {clips_s:,.1f} | {hours_min:.2f} | {clips_s / one:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--segment-size", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-shards", action="store_true", help="skip the shard loader and pack tables")
    parser.add_argument("--one-epoch", choices=("file", "shard"), help=argparse.SUPPRESS)  # the strace child
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread per process: the workers are the parallelism
    if args.one_epoch:
        loader = make_loader(args.one_epoch, args.data, args)
        # Marks, in the strace log, where set-up ends and the epoch begins.
        open(args.data / f"epoch-start-{args.one_epoch}", "w").close()
        for _ in loader:
            pass
        return

    mel = MelSpectrogram(FEATURES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, rate in (("22.05 kHz WAV", 22050), ("44.1 kHz WAV -> 22.05 kHz", 44100)):
            paths = write_files(Path(tmp) / str(rate), args.files, rate, args.min_seconds, args.max_seconds, seed=rate)
            loaders = {
                "HiFi-GAN-style: whole file" + (" + whole-file resample" if rate != TARGET_RATE else "")
                + ", 2 mels in worker": lambda: throughput(HifiganStyleDataset(paths, args.segment_size), args),
                "melvoc AudioDataset (seek + crop" + (" + crop resample" if rate != TARGET_RATE else "") + ")":
                    lambda: throughput(AudioDataset(paths, FEATURES, segment_size=args.segment_size), args,
                                       AudioCollate()),
                "melvoc + mel in main process (CPU)": lambda: throughput(
                    AudioDataset(paths, FEATURES, segment_size=args.segment_size), args, AudioCollate(), mel),
            }
            results: dict[str, list[float]] = {name: [] for name in loaders}
            for _ in range(args.repeats):
                for name, run in loaders.items():
                    results[name].append(run())
            base = None
            for name, values in results.items():
                value = statistics.median(values)
                base = base or value
                rows.append((case, name, value, value / base))

    print(f"Training-loader throughput: batch {args.batch_size}, segment {args.segment_size}, "
          f"num_workers={args.workers}, {args.files} files of {args.min_seconds:g}-{args.max_seconds:g} s "
          f"(16-bit PCM), median of {args.repeats} runs of {args.batches} batches")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s) per process\n")
    print("| files | loader | segments/s | vs HiFi-GAN-style |")
    print("|---|---|---:|---:|")
    for case, name, value, ratio in rows:
        print(f"| {case} | {name} | {value:,.0f} | {ratio:.1f}x |")
    if not args.no_shards:
        print()
        print("\n".join(shard_tables(args)))


if __name__ == "__main__":
    main()
