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
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from melvoc.data import AudioCollate, AudioDataset
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
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread per process: the workers are the parallelism

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


if __name__ == "__main__":
    main()
