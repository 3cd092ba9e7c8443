"""Cost of each melvoc.metrics metric, and how much the tiny CREPE changes the pitch metrics.

    python benchmarks/bench_metrics.py [--seconds 20] [--threads 2] [--clips 6]

Speed: one speech-like signal of ``--seconds`` at 22.05 kHz (clips of melvoc's synthetic set strung
together) against a copy with white noise at 20 dB SNR; each metric is timed alone (the pitch metrics
track both signals, as a first call on a new pair does) after a warm-up call, and reported as seconds
per minute of audio, wall-clock and process CPU time (all threads; on a shared machine the CPU time
is the steadier number). ``--threads`` sets torch's intra-op threads.

Values: periodicity and V/UV F1 with the full and the tiny CREPE on ``--clips`` speech-like clips,
each degraded three ways (white noise at 10 and 30 dB SNR, a 3 kHz low-pass); prints both, and the
mean absolute difference over clips.

Callback: the seconds one scoring validation of ``QualityMetricsCallback`` (the proposed defaults:
tiny CREPE, the first 4 clips) adds to a ``Trainer.validate`` over the demo's synthetic validation set.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import scipy.signal
import torch

from melvoc.data.synthetic import synthesize_clip
from melvoc.metrics import mcd, mstft, pesq, score

SR = 22050


def _speaker(rng: np.random.Generator) -> dict[str, float]:
    return {"f0": float(rng.uniform(90, 230)), "range": float(rng.uniform(0.2, 0.4)),
            "formant_scale": float(rng.uniform(0.9, 1.2)), "breath": float(rng.uniform(0.02, 0.06)), "rate": 1.0}


def _clip(seed: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return synthesize_clip(rng, _speaker(rng), SR, seconds)


def _noise(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(audio.shape)
    noise *= np.sqrt(np.mean(audio.astype(np.float64) ** 2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (audio + noise).astype(np.float32)


def _low_pass(audio: np.ndarray) -> np.ndarray:
    return scipy.signal.sosfiltfilt(scipy.signal.butter(8, 3000, fs=SR, output="sos"), audio).astype(np.float32)


def speed(seconds: float) -> None:
    reference = np.concatenate([_clip(seed, 3.0) for seed in range(int(np.ceil(seconds / 3.0)))])[: int(seconds * SR)]
    predicted = _noise(reference, 20.0, 0)
    runs = [
        ("pesq", lambda: pesq(reference, predicted, SR)),
        ("mstft", lambda: mstft(reference, predicted, SR)),
        ("mcd", lambda: mcd(reference, predicted, SR)),
        ("periodicity + vuv_f1, tiny CREPE", lambda: score(reference, predicted, SR, ("periodicity", "vuv_f1"), pitch_model="tiny")),
        ("periodicity + vuv_f1, full CREPE", lambda: score(reference, predicted, SR, ("periodicity", "vuv_f1"), pitch_model="full")),
    ]
    short = (reference[: SR * 2], predicted[: SR * 2])
    for model in ("tiny", "full"):  # warm-up: weights, numba's Viterbi, freqt matrix
        score(*short, SR, ("pesq", "mstft", "mcd", "periodicity"), pitch_model=model)
    print(f"\n{seconds:.0f} s of speech-like audio at {SR} Hz, torch threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}\n")
    print("| metric | wall s per minute of audio | CPU s per minute of audio |\n|---|---|---|")
    wall, cpu = {}, {}
    for name, run in runs:
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall[name] = (time.perf_counter() - start) * 60.0 / seconds
        cpu[name] = (time.process_time() - start_cpu) * 60.0 / seconds
        print(f"| {name} | {wall[name]:.1f} | {cpu[name]:.1f} |")
    for model in ("tiny", "full"):
        names = ("pesq", "mstft", "mcd", f"periodicity + vuv_f1, {model} CREPE")
        print(f"| all five, {model} CREPE | {sum(wall[n] for n in names):.1f} | {sum(cpu[n] for n in names):.1f} |")


def values(clips: int) -> None:
    print("\n| condition | periodicity full | periodicity tiny | V/UV F1 full | V/UV F1 tiny |\n|---|---|---|---|---|")
    conditions = {
        "noise 30 dB": lambda x, s: _noise(x, 30.0, s),
        "noise 10 dB": lambda x, s: _noise(x, 10.0, s),
        "low-pass 3 kHz": lambda x, s: _low_pass(x),
    }
    for label, degrade in conditions.items():
        rows = {"full": [], "tiny": []}
        for seed in range(clips):
            reference = _clip(100 + seed, 2.5)
            predicted = degrade(reference, seed)
            for model in rows:
                rows[model].append(score(reference, predicted, SR, ("periodicity", "vuv_f1"), pitch_model=model))
        mean = {m: {k: float(np.mean([r[k] for r in rows[m]])) for k in ("periodicity", "vuv_f1")} for m in rows}
        diff = {k: float(np.mean([abs(a[k] - b[k]) for a, b in zip(rows["full"], rows["tiny"])]))
                for k in ("periodicity", "vuv_f1")}
        print(f"| {label} | {mean['full']['periodicity']:.3f} | {mean['tiny']['periodicity']:.3f} "
              f"(mean abs diff {diff['periodicity']:.3f}) | {mean['full']['vuv_f1']:.3f} | "
              f"{mean['tiny']['vuv_f1']:.3f} (mean abs diff {diff['vuv_f1']:.3f}) |")


def callback_cost(clips: int) -> None:
    """Seconds one scoring validation adds with the proposed conf/callbacks/quality.yaml (tiny CREPE,
    the first ``clips`` clips of the demo's synthetic validation set), timed in a real Trainer."""
    import tempfile
    import warnings

    import lightning.pytorch as pl
    import soundfile as sf
    from torch.utils.data import DataLoader

    from melvoc.training.callbacks.quality import QualityMetricsCallback
    from melvoc.data.synthetic import SyntheticSpec, make_synthetic_dataset

    with tempfile.TemporaryDirectory() as cache:
        folder = make_synthetic_dataset(cache, SyntheticSpec(sampling_rate=SR))
        lines = (folder / "val.txt").read_text().split()
        audio = [torch.from_numpy(sf.read(folder / line.split("|")[0], dtype="float32")[0]) for line in lines]

    def collate(items):
        longest = max(a.shape[0] for a in items)
        batch = torch.zeros(len(items), longest)
        for row, item in enumerate(items):
            batch[row, : item.shape[0]] = item
        return {"audio": batch, "lengths": torch.tensor([a.shape[0] for a in items]),
                "names": [f"val_{i}" for i in range(len(items))]}

    class Noisy(pl.LightningModule):
        def validation_step(self, batch, batch_idx):
            return {"audio_hat": batch["audio"] + 0.003 * torch.randn_like(batch["audio"])}

    callback = QualityMetricsCallback(SR, clips=clips)
    loader = DataLoader(audio, batch_size=1, collate_fn=collate)
    wall, cpu = {}, {}
    # The first scoring validation also loads CREPE and compiles librosa's Viterbi (numba) once.
    for label, callbacks in (("without", []), ("first", [callback]), ("later", [callback])):
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start, start_cpu = time.perf_counter(), time.process_time()
            trainer.validate(Noisy(), loader, verbose=False)
        wall[label], cpu[label] = time.perf_counter() - start, time.process_time() - start_cpu
    scored = sum(a.shape[0] for a in audio[:clips]) / SR
    print(f"\nquality callback (tiny CREPE, first {clips} of {len(audio)} validation clips, {scored:.1f} s of audio), "
          "added to one validation, wall / CPU seconds:")
    for label in ("first", "later"):
        print(f"- {label} scoring validation: +{wall[label] - wall['without']:.1f} s wall, "
              f"+{cpu[label] - cpu['without']:.1f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--skip-values", action="store_true", help="no full-vs-tiny value table")
    parser.add_argument("--callback-clips", type=int, default=4, help="clips the callback cost is measured on")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    speed(args.seconds)
    callback_cost(args.callback_clips)
    if not args.skip_values:
        values(args.clips)


if __name__ == "__main__":
    main()
