"""Time melvoc's MelSpectrogram against the original mel_processing.py functions and other peers.

    python benchmarks/bench_features.py [--reference PATH/mel_processing.py] [--device cpu|cuda]

All contenders run in the same process, interleaved, on the same inputs; each time is the best of
``--rounds`` rounds of ``--iters`` calls (robust against a busy machine). The last column is the median
over rounds of the original's time divided by melvoc's, each pair timed back to back: > 1 means
melvoc is faster. The page-fault line counts the minor page faults per call of each contender.
``melvoc fast=False`` is melvoc's reference path (what autograd and GPUs run) on calls that would
take the CPU fast path (``melvoc.features.fast``); the line under the table says what the fast path brings.

Page faults matter on the CPU: glibc hands freed multi-MB blocks back to the kernel (heap trimming)
and the next call faults them in again, 4 KiB at a time, which can cost more than the computation.
melvoc's fast path reuses its buffers (``melvoc.features.fast`` plans); the original allocates per call, and whether
its blocks get trimmed depends on the heap's history, so its time moves between runs.
``--allocator keep`` reruns the script with glibc told never to trim or mmap (``GLIBC_TUNABLES``),
so that no contender faults and the ratio compares computation alone.

Without ``--reference`` the original functions are taken from ``../shared/seed/mel_processing.md``
beside the repository (its code block is written to a temporary file at run time; this repository
does not store that code). Peers that are not installed (torchaudio, nnAudio) are skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from melvoc import compat
from melvoc.features import MelConfig, MelSpectrogram

REPO = Path(__file__).resolve().parents[1]
SEED = REPO.parent / "shared" / "seed" / "mel_processing.md"

# hifigan_22k (conf/features/hifigan_22k.yaml) with the original's fixed eps, so outputs are comparable.
CONFIG = MelConfig(22050, 1024, 256, 1024, 80, fmin=0.0, fmax=8000.0, eps=1e-6)
KEEP_TUNABLES = "glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=33554432"


def load_reference(path: str | None):
    """Import a legacy mel_processing.py (or the seed description's code block) as a module."""
    if path is None:
        if not SEED.exists():
            return None
        match = re.search(r"```py\n(.*?)```", SEED.read_text(), re.S)
        if match is None:
            return None
        tmp = Path(tempfile.mkdtemp()) / "seed_mel_processing.py"
        tmp.write_text(match.group(1))
        path = str(tmp)
    spec = importlib.util.spec_from_file_location("legacy_mel_processing", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def best_ms(
    fns: dict[str, Callable[[], object]], iters: int, rounds: int, sync: Callable[[], None],
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, object]:
    """Best time (ms per call) of each contender, plus every round's times for paired ratios."""
    best = {name: float("inf") for name in fns}
    faults = {name: 0 for name in fns}
    per_round: list[dict[str, float]] = []
    for _ in range(rounds):
        this_round = {}
        for name, fn in fns.items():
            fn()
            sync()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = clock()
            for _ in range(iters):
                fn()
            sync()
            this_round[name] = (clock() - start) / iters * 1e3
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            best[name] = min(best[name], this_round[name])
        per_round.append(this_round)
    return {**best, "_rounds": per_round, "_faults": {k: v / (rounds * iters) for k, v in faults.items()}}


class MachineLoad:
    """CPU time the rest of the machine used while this process was timed, from ``/proc/stat`` (Linux).

    A contender's time is only comparable to a quiet machine's when nothing else ran: on a 2-core VM
    a process holding one core (or the hypervisor stealing it) makes every 2-thread call wait for
    its second thread. ``share()`` is (other processes, hypervisor steal) as fractions of all CPUs'
    time since the object was made, or ``None`` where ``/proc/stat`` does not exist.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[list[int], float] | None:
        try:
            with open("/proc/stat") as stat:
                fields = [int(v) for v in stat.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return fields, usage.ru_utime + usage.ru_stime

    def share(self) -> tuple[float, float] | None:
        end = self._sample()
        if self._start is None or end is None:
            return None
        (before, own_before), (after, own_after) = self._start, end
        delta = [a - b for a, b in zip(after, before)]  # user nice system idle iowait irq softirq steal
        total = sum(delta)
        if total <= 0:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy = (delta[0] + delta[1] + delta[2] + delta[5] + delta[6]) / tick
        others = max(0.0, busy - (own_after - own_before)) / (total / tick)
        return others, delta[7] / total


def paired_ratio(times: dict[str, object], slow: str, fast: str) -> float:
    """Median over rounds of ``slow / fast``, each pair timed back to back (robust to a drifting machine)."""
    rounds = [r for r in times["_rounds"] if slow in r and fast in r]  # type: ignore[union-attr]
    return float(np.median([r[slow] / r[fast] for r in rounds]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", help="a legacy mel_processing.py to time against")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="cpu: this process's CPU time (all threads), steadier than wall time on a machine others share",
    )
    parser.add_argument(
        "--allocator", choices=("default", "keep"), default="default",
        help="keep: rerun with glibc never trimming or mmapping freed memory (no page faults for anyone)",
    )
    args = parser.parse_args(argv)
    if args.allocator == "keep" and "glibc.malloc.trim_threshold" not in os.environ.get("GLIBC_TUNABLES", ""):
        env = dict(os.environ, GLIBC_TUNABLES=KEEP_TUNABLES)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    legacy = load_reference(args.reference)
    melvoc_mel = MelSpectrogram(CONFIG).to(device)
    melvoc_reference = MelSpectrogram(CONFIG, fast=False).to(device)
    c = CONFIG

    def original(audio: torch.Tensor) -> torch.Tensor:
        return legacy.mel_spectrogram_torch(
            audio, c.n_fft, c.num_mels, c.sampling_rate, c.hop_size, c.win_size, c.fmin, c.fmax
        )

    def drop_in(audio: torch.Tensor) -> torch.Tensor:
        return compat.mel_spectrogram_torch(
            audio, c.n_fft, c.num_mels, c.sampling_rate, c.hop_size, c.win_size, c.fmin, c.fmax
        )

    # melvoc.compat keeps the original's range check (two host reads) on by default.
    peers: dict[str, Callable[[torch.Tensor], object]] = {
        "melvoc": melvoc_mel, "melvoc fast=False": melvoc_reference, "melvoc.compat": drop_in
    }
    if legacy is not None:
        peers["original"] = original
    try:
        import librosa

        def librosa_mel(audio: torch.Tensor) -> object:
            return librosa.feature.melspectrogram(
                y=audio.cpu().numpy(), sr=c.sampling_rate, n_fft=c.n_fft, hop_length=c.hop_size,
                win_length=c.win_size, n_mels=c.num_mels, fmin=c.fmin, fmax=c.fmax, center=False, power=1.0,
            )

        peers["librosa"] = librosa_mel
    except ImportError:
        pass
    try:
        import torchaudio

        ta = torchaudio.transforms.MelSpectrogram(
            c.sampling_rate, c.n_fft, c.win_size, c.hop_size, c.fmin, c.fmax, n_mels=c.num_mels,
            power=1.0, center=False, norm="slaney", mel_scale="slaney",
        ).to(device)
        peers["torchaudio"] = ta
    except (ImportError, OSError):  # OSError: installed, but its compiled library does not load with this torch
        pass

    gen = torch.Generator().manual_seed(0)
    batch = (torch.rand(16, 8192, generator=gen) * 1.8 - 0.9).to(device)
    utterance = (torch.rand(1, 10 * c.sampling_rate, generator=gen) * 1.8 - 0.9).to(device)
    if legacy is not None:
        diff = (melvoc_mel(batch.double()) - original(batch.double())).abs().max().item()
        print(f"max |melvoc - original| on the benchmark batch (float64): {diff:.2e}")

    # The torch contenders are interleaved; librosa (NumPy) is timed in a phase of its own, after
    # them, because its BLAS threads keep spinning after each call and would slow whatever runs next.
    torch_peers = {k: f for k, f in peers.items() if k != "librosa"}
    rows = []
    load = MachineLoad()
    with torch.no_grad():
        for case, audio in (("forward, batch 16 x 8192", batch), ("forward, one 10 s utterance", utterance)):
            times = best_ms({k: (lambda f=f: f(audio)) for k, f in torch_peers.items()}, args.iters, args.rounds, sync, clock)
            rows.append((case, times))

    def train_step(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        leaf = batch.clone().requires_grad_()

        def run() -> None:
            fn(leaf).sum().backward()
            leaf.grad = None

        return run

    # with autograd every melvoc call takes the reference path: fast=False would time melvoc again
    grad_peers = {k: train_step(f) for k, f in peers.items() if k not in ("librosa", "melvoc fast=False")}
    rows.append(("forward+backward, batch 16 x 8192", best_ms(grad_peers, args.iters, args.rounds, sync, clock)))
    if "librosa" in peers:
        for case, times in rows[:2]:
            audio = batch if "batch" in case else utterance
            lib = best_ms({"librosa": lambda: peers["librosa"](audio)}, args.iters, args.rounds, sync, clock)
            times["librosa"] = lib["librosa"]

    names = list(peers)
    allocator = "glibc keeps freed memory" if "trim_threshold" in os.environ.get("GLIBC_TUNABLES", "") else "default allocator"
    print(
        f"\ndevice={device} threads={args.threads} torch={torch.__version__} {allocator}"
        f"  ({args.clock} ms per call, best of {args.rounds})"
    )
    header = "| case | " + " | ".join(f"{n} ms" for n in names) + " | original / melvoc |"
    print(header)
    print("|" + "---|" * (len(names) + 2))
    for case, times in rows:
        cells = " | ".join(f"{times[n]:.3f}" if n in times else "-" for n in names)
        ratio = f"{paired_ratio(times, 'original', 'melvoc'):.2f}x" if "original" in times else "-"
        print(f"| {case} | {cells} | {ratio} |")
    print("\nfast path: reference / fast, paired: " + "; ".join(
        f"{case}: {paired_ratio(times, 'melvoc fast=False', 'melvoc'):.2f}x"
        for case, times in rows if "melvoc fast=False" in times
    ))
    print("\nminor page faults per call: " + "; ".join(
        f"{case}: " + ", ".join(f"{n} {times['_faults'][n]:.0f}" for n in names if n in times["_faults"])
        for case, times in rows
    ))
    share = load.share()
    if share is not None:
        others, steal = share
        print(f"\nCPU time not ours while timing: other processes {others:.0%}, hypervisor steal {steal:.0%}")
        if others + steal > 0.1:
            print(
                "warning: the machine was busy; these times are not a quiet machine's, and the ratios move "
                "(2-thread calls wait for a core that something else holds). Rerun when it is idle."
            )
    if legacy is None:
        print("\n(no original to compare with: pass --reference PATH/mel_processing.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
