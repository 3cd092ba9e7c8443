"""melvoc.features.fast: the CPU no-grad fast path equals the reference path; its plans stay bounded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from melvoc import features as F
from melvoc.features import fast as FF
from melvoc.features import MelConfig, MelSpectrogram, mel_spectrogram, num_frames

from .conftest import REPO
from .test_features import PRESETS, VITS, preset_config

SHAPES = {"(T,)": lambda a: a[0], "(B, T)": lambda a: a, "(B, 1, T)": lambda a: a.unsqueeze(1)}


def reference(module: MelSpectrogram, audio: torch.Tensor) -> torch.Tensor:
    module.fast = False
    try:
        return module(audio)
    finally:
        module.fast = True


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_path_equals_the_reference_path(monkeypatch, preset: str, dtype: torch.dtype) -> None:
    calls = []
    monkeypatch.setattr(FF, "log_mel", lambda *args, fast=FF.log_mel: calls.append(1) or fast(*args))
    config = preset_config(preset)
    module = MelSpectrogram(config)
    length = 3 * config.n_fft + 37
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
    for size in (0, 1, 2, 5):
        audio = torch.rand(max(size, 1), length, dtype=dtype, generator=torch.Generator().manual_seed(size)) - 0.5
        audio[0, : length // 2] = 0  # silence, where the log floor binds for eps <= 1e-9
        audio = audio[:size]
        for name, shape in SHAPES.items():
            if name == "(T,)" and size != 1:
                continue
            with torch.no_grad():
                calls.clear()
                fast = module(shape(audio))
                assert len(calls) == (size > 0), "the fast path takes every non-empty no-grad CPU call"
                fast_fn = mel_spectrogram(shape(audio), config)
                slow_fn = mel_spectrogram(shape(audio), config, fast=False)
            slow = reference(module, shape(audio))
            expected_shape = (config.num_mels, num_frames(length, config))
            if name != "(T,)":
                expected_shape = (size, *expected_shape)
            assert fast.shape == slow.shape == expected_shape and fast.dtype == slow.dtype == dtype
            torch.testing.assert_close(fast, slow, rtol=0, atol=tolerance, msg=f"{preset} {dtype} {name} B={size}")
            torch.testing.assert_close(fast_fn, fast, rtol=0, atol=0)
            torch.testing.assert_close(slow_fn, slow, rtol=0, atol=0)
        F.clear_cache()


def test_switch_off_or_autograd_never_takes_the_fast_path(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("fast path taken")

    monkeypatch.setattr(FF, "log_mel", fail)
    audio = torch.rand(2, 4096) - 0.5
    with torch.no_grad():
        MelSpectrogram(VITS, fast=False)(audio)
        mel_spectrogram(audio, VITS, fast=False)
    MelSpectrogram(VITS)(audio.requires_grad_())
    monkeypatch.setattr(FF, "_compiling", lambda: True)  # torch.compile traces the reference path
    with torch.no_grad():
        MelSpectrogram(VITS)(audio)


def test_plan_is_reused_and_every_result_is_a_fresh_tensor() -> None:
    F.clear_cache()
    module = MelSpectrogram(VITS)
    first_audio, second_audio = torch.rand(2, 3, 4096) - 0.5
    with torch.no_grad():
        first = module(first_audio)
        kept = first.clone()
        second = module(second_audio)
    assert F.cache_info()["plans"] == 1 and F.cache_info()["plan_bytes"] > 0
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
    torch.testing.assert_close(first, kept, rtol=0, atol=0)  # the second call did not write into the first result
    torch.testing.assert_close(second, reference(module, second_audio), rtol=0, atol=1e-5)


def test_plans_are_bounded_in_count_and_memory() -> None:
    F.clear_cache()
    module = MelSpectrogram(VITS)
    info = F.cache_info()
    with torch.no_grad():
        for length in range(2048, 2048 + 256 * (FF._plans.maxsize + 4), 256):
            module(torch.rand(2, length) - 0.5)
        assert F.cache_info()["plans"] == FF._plans.maxsize
        # a call whose buffers exceed the bound runs on a plan of its own, which is not kept
        length = info["plan_max_bytes"] // (4 * VITS.n_fft) * VITS.hop_size
        big = module(torch.zeros(1, length))
    assert big.shape == (1, 80, num_frames(length, VITS))
    assert F.cache_info()["plans"] <= FF._plans.maxsize
    assert F.cache_info()["plan_bytes"] <= info["plan_max_bytes"]
    F.clear_cache()


def test_projection_indices_count_towards_the_plan_bound() -> None:
    F.clear_cache()
    config = preset_config("bigvgan_44k")  # many filter entries
    module = MelSpectrogram(config)
    with torch.no_grad():
        module(torch.zeros(64, 4096))
        (plan,) = FF._plans._items.values()
        buffers = sum(t.untyped_storage().nbytes() for t in (plan.padded, plan.frames, plan.magnitude))
        assert plan.bags and plan.nbytes > buffers
        for size in (96, 128, 160, 192, 224, 256):
            module(torch.zeros(size, 4096))
    assert F.cache_info()["plan_bytes"] <= F.cache_info()["plan_max_bytes"]
    F.clear_cache()


def test_inference_mode_then_grad_mode_reuse_the_same_plan() -> None:
    F.clear_cache()
    audio = torch.rand(2, 4096) - 0.5
    with torch.inference_mode():
        module = MelSpectrogram(VITS)  # inference-tensor buffers
        inside = module(audio)
    outside = module(audio)  # grad mode on, no grad needed: the plan made in inference mode is written again
    with torch.no_grad():
        again = module(audio)
    assert inside.is_inference() and not outside.is_inference()
    assert F.cache_info()["plans"] == 1
    torch.testing.assert_close(inside, outside, rtol=0, atol=0)
    torch.testing.assert_close(again, outside, rtol=0, atol=0)


def test_threads_sharing_a_module_get_their_own_results() -> None:
    module = MelSpectrogram(VITS)
    inputs = [torch.rand(4, 8192, generator=torch.Generator().manual_seed(i)) - 0.5 for i in range(8)]
    expected = [reference(module, audio) for audio in inputs]

    def run(i: int) -> torch.Tensor:
        with torch.no_grad():
            return [module(inputs[i]) for _ in range(5)][-1]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, range(8)))
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_cache_info_while_other_threads_compute() -> None:
    module = MelSpectrogram(MelConfig(16000, 64, 16, 64, 8))
    stop, errors = threading.Event(), []

    def compute() -> None:
        with torch.no_grad():
            i = 0
            while not stop.is_set():
                module(torch.rand(1, 64 + i % 40))
                i += 1

    def report() -> None:
        while not stop.is_set():
            try:
                F.cache_info()
            except Exception as error:  # noqa: BLE001 - any error is the failure under test
                errors.append(error)

    threads = [threading.Thread(target=compute), threading.Thread(target=report)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_replaced_or_edited_filterbank_is_projected_again() -> None:
    module = MelSpectrogram(VITS)
    silence = torch.zeros(1, 4096)
    with torch.no_grad():
        original = module(silence)
        module.mel_basis = module.mel_basis * 1e-3  # a caller's own (rescaled) filterbank: the floor binds
        replaced = module(silence)
        torch.testing.assert_close(replaced, reference(module, silence), rtol=0, atol=1e-5)
        assert replaced.min() == torch.tensor(np.log(VITS.clip_val), dtype=torch.float32)
        module.mel_basis.mul_(1e3)  # edited in place
        edited = module(silence)
    torch.testing.assert_close(edited, reference(module, silence), rtol=0, atol=1e-5)
    torch.testing.assert_close(edited, original, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_half_input_take_the_fast_path_in_float32(dtype: torch.dtype) -> None:
    audio = torch.rand(2, 4096) - 0.5
    module = MelSpectrogram(VITS)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = module(audio)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference(module, audio), rtol=0, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            assert module(audio.to(dtype)).dtype == torch.float32


def test_feature_benchmark_times_every_case_and_reports_the_machine_load() -> None:
    """``benchmarks/bench_features.py`` runs (one round) and says how busy the machine was; no time is asserted."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_features.py"), "--rounds", "1", "--iters", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| forward")]
    assert [row.split("|")[1].strip() for row in rows] == [
        "forward, batch 16 x 8192", "forward, one 10 s utterance", "forward+backward, batch 16 x 8192",
    ]
    if (REPO.parent / "shared" / "seed" / "mel_processing.md").exists():
        assert all(re.search(r"\| \d+\.\d\dx \|$", row) for row in rows), rows  # a ratio against the original
    load = re.search(r"other processes (\d+)%, hypervisor steal (\d+)%", result.stdout)
    if os.path.exists("/proc/stat"):
        assert load is not None, result.stdout
        assert all(0 <= int(v) <= 100 for v in load.groups())
