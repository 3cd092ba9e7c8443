"""melvoc.compat: drop-in replacements for the original mel_processing.py functions."""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings

import librosa
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from melvoc import features
from melvoc.features import compat
from melvoc.compat import (
    AudioRangeWarning,
    dynamic_range_compression_torch,
    dynamic_range_decompression_torch,
    mel_spectrogram_torch,
    spec_to_mel_torch,
    spectral_de_normalize_torch,
    spectral_normalize_torch,
    spectrogram_torch,
)
from melvoc.features import MelConfig

from ._golden import CONFIGS, float32_log_mel_bound, golden, original_mel_float32


def mel_args(p: dict) -> tuple:
    """The original mel_spectrogram_torch positional arguments after ``y``."""
    return (
        p["n_fft"], p["num_mels"], p["sampling_rate"], p["hop_size"], p["win_size"],
        p["fmin"], p["fmax"], p["center"],
    )


def spec_args(p: dict) -> tuple:
    return (p["n_fft"], p["sampling_rate"], p["hop_size"], p["win_size"], p["center"])


def filterbank_args(p: dict) -> tuple:
    return (p["n_fft"], p["num_mels"], p["sampling_rate"], p["fmin"], p["fmax"])


@pytest.fixture
def range_check_on(monkeypatch):
    """Range check enabled whatever the environment says, restored afterwards."""
    monkeypatch.setattr(compat, "_range_check", True)


def test_golden_covers_the_six_configs_including_center():
    assert len(CONFIGS) == 6
    assert any(p["center"] for p in CONFIGS.values())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mel_spectrogram_matches_golden(name):
    """float64 within 1e-10 of the golden data; float32 within the derived float32 bound of it (any host)."""
    p = CONFIGS[name]
    wav = golden(name, "wav")
    mel32 = mel_spectrogram_torch(wav, *mel_args(p))
    mel64 = mel_spectrogram_torch(wav.double(), *mel_args(p))
    expected64 = golden(name, "mel_f64")
    assert mel32.dtype == torch.float32 and mel64.dtype == torch.float64
    assert mel32.shape == expected64.shape and mel64.shape == expected64.shape
    assert (mel64 - expected64).abs().max() <= 1e-10
    assert bool(((mel32.double() - expected64).abs() <= float32_log_mel_bound(name)).all())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mel_spectrogram_float32_equals_the_original_on_this_host(original, name):
    expected = original_mel_float32(original, name)
    mel32 = mel_spectrogram_torch(golden(name, "wav"), *mel_args(CONFIGS[name]))
    assert mel32.shape == expected.shape and (mel32 - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_spectrogram_and_spec_to_mel_match_golden(name):
    p = CONFIGS[name]
    spec = spectrogram_torch(golden(name, "wav").double(), *spec_args(p))
    expected = golden(name, "spec_f64")
    assert spec.shape == expected.shape and spec.dtype == torch.float64
    assert spec.is_contiguous()
    assert (spec - expected).abs().max() <= 1e-10

    mel = spec_to_mel_torch(expected, *filterbank_args(p))
    expected_mel = golden(name, "mel_from_spec_f64")
    assert mel.shape == expected_mel.shape
    assert (mel - expected_mel).abs().max() <= 1e-10


def test_center_keyword_is_honoured():
    p = CONFIGS["odd_16k_center"]
    wav = golden("odd_16k_center", "wav").double()
    args = mel_args(p)[:-1]
    centred = mel_spectrogram_torch(wav, *args, center=True)
    assert (centred - golden("odd_16k_center", "mel_f64")).abs().max() <= 1e-10
    assert mel_spectrogram_torch(wav, *args).shape[-1] != centred.shape[-1]


def within_ulps(actual: torch.Tensor, expected: torch.Tensor, ulps: int) -> bool:
    """``|actual - expected| <= ulps`` units in the last place of ``expected`` (its own dtype)."""
    spacing = torch.from_numpy(np.spacing(np.abs(expected.numpy())))
    return actual.dtype == expected.dtype and bool(((actual - expected).abs() <= ulps * spacing).all())


def test_dynamic_range_functions_match_golden():
    """exp/log are not bit-equal across hosts (each libm is within 1 ulp of the true value, so two hosts are
    within 2 ulp); bit-equality holds against the same expression in this process."""
    x = golden("compression", "input")
    log, log_c10, exp = golden("compression", "log"), golden("compression", "log_C10"), golden("compression", "exp")
    assert within_ulps(dynamic_range_compression_torch(x), log, 2)
    assert within_ulps(dynamic_range_compression_torch(x, C=10), log_c10, 2)
    assert within_ulps(dynamic_range_decompression_torch(x), exp, 2)
    assert within_ulps(spectral_normalize_torch(x), log, 2)
    assert within_ulps(spectral_de_normalize_torch(x), exp, 2)
    assert torch.equal(dynamic_range_compression_torch(x), torch.log(torch.clamp(x, min=1e-5)))
    assert torch.equal(dynamic_range_compression_torch(x, 10), dynamic_range_compression_torch(x, C=10))
    assert torch.equal(dynamic_range_compression_torch(x, C=10), torch.log(torch.clamp(x, min=1e-5) * 10))
    assert torch.equal(dynamic_range_decompression_torch(x), torch.exp(x))
    assert torch.equal(spectral_de_normalize_torch(x), dynamic_range_decompression_torch(x))
    floor = dynamic_range_compression_torch(torch.zeros(3), clip_val=1e-7)
    assert torch.allclose(floor, torch.full((3,), float(np.log(np.float32(1e-7)))))
    round_trip = dynamic_range_decompression_torch(dynamic_range_compression_torch(x, C=10), C=10)
    above = x >= 1e-5
    assert torch.allclose(round_trip[above], x[above], rtol=1e-12, atol=0)


def test_signatures_are_the_originals_plus_keyword_only_extras():
    def positional(fn):
        return [
            (name, param.default)
            for name, param in inspect.signature(fn).parameters.items()
            if param.kind is param.POSITIONAL_OR_KEYWORD
        ]

    empty = inspect.Parameter.empty
    assert positional(spectrogram_torch) == [
        ("y", empty), ("n_fft", empty), ("sampling_rate", empty), ("hop_size", empty),
        ("win_size", empty), ("center", False),
    ]
    assert positional(spec_to_mel_torch) == [
        ("spec", empty), ("n_fft", empty), ("num_mels", empty), ("sampling_rate", empty),
        ("fmin", empty), ("fmax", empty),
    ]
    assert positional(mel_spectrogram_torch) == [
        ("y", empty), ("n_fft", empty), ("num_mels", empty), ("sampling_rate", empty),
        ("hop_size", empty), ("win_size", empty), ("fmin", empty), ("fmax", empty),
        ("center", False),
    ]
    assert positional(dynamic_range_compression_torch) == [("x", empty), ("C", 1), ("clip_val", 1e-5)]
    assert positional(dynamic_range_decompression_torch) == [("x", empty), ("C", 1)]
    for fn in (spectrogram_torch, mel_spectrogram_torch):
        assert inspect.signature(fn).parameters["check_range"].kind is inspect.Parameter.KEYWORD_ONLY
    assert compat.MAX_WAV_VALUE == 32768.0


def test_other_input_shapes_follow_the_batched_result():
    p = CONFIGS["vits_22k"]
    wav = golden("vits_22k", "wav")
    batched = mel_spectrogram_torch(wav, *mel_args(p))
    assert torch.equal(mel_spectrogram_torch(wav.unsqueeze(1), *mel_args(p)), batched)
    single = mel_spectrogram_torch(wav[1], *mel_args(p))
    assert single.shape == batched.shape[1:]
    assert torch.allclose(single, batched[1], atol=1e-6, rtol=0)
    spec = spectrogram_torch(wav[0], *spec_args(p))
    assert spec.shape == (p["n_fft"] // 2 + 1, batched.shape[-1])


def test_gradients_flow_to_the_audio():
    p = CONFIGS["hifigan_22k"]
    wav = golden("hifigan_22k", "wav").double().requires_grad_()
    mel_spectrogram_torch(wav, *mel_args(p)).sum().backward()
    assert wav.grad is not None and torch.isfinite(wav.grad).all() and wav.grad.abs().sum() > 0


# --- the original's stale-cache bug ------------------------------------------------------------

def librosa_log_mel(spec: torch.Tensor, sr: int, n_fft: int, n_mels: int, fmin: float, fmax) -> torch.Tensor:
    """Independent oracle: librosa's float32 filterbank applied in float64, then ln(clamp(., 1e-5))."""
    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return torch.log(torch.clamp(torch.from_numpy(basis).double() @ spec, min=1e-5))


# Every pair shares fmax (the original's whole cache key) and differs in something else.
SAME_FMAX_PAIRS = {
    "sampling_rate": ((22050, 1024, 256, 80, 0.0), (24000, 1024, 256, 80, 0.0)),
    "n_fft_and_mels": ((22050, 1024, 256, 80, 0.0), (24000, 2048, 512, 100, 0.0)),
    "num_mels": ((22050, 1024, 256, 80, 0.0), (22050, 1024, 256, 64, 0.0)),
    "fmin": ((22050, 1024, 256, 80, 0.0), (22050, 1024, 256, 80, 300.0)),
}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("pair", sorted(SAME_FMAX_PAIRS))
def test_same_fmax_configs_get_their_own_filterbank(pair, reverse):
    compat.clear_caches()
    fmax = 8000.0
    setups = SAME_FMAX_PAIRS[pair][::-1] if reverse else SAME_FMAX_PAIRS[pair]
    wav = golden("vits_22k", "wav").double()
    results = []
    for sr, n_fft, hop, n_mels, fmin in setups:
        mel = mel_spectrogram_torch(wav, n_fft, n_mels, sr, hop, n_fft, fmin, fmax)
        spec = spectrogram_torch(wav, n_fft, sr, hop, n_fft)
        from_spec = spec_to_mel_torch(spec, n_fft, n_mels, sr, fmin, fmax)
        oracle = librosa_log_mel(spec, sr, n_fft, n_mels, fmin, fmax)
        config = MelConfig(sr, n_fft, hop, n_fft, n_mels, fmin=fmin, fmax=fmax)
        assert mel.shape == (2, n_mels, wav.shape[-1] // hop)
        assert (from_spec - oracle).abs().max() <= 1e-10
        assert (mel - oracle).abs().max() <= 1e-10
        assert torch.equal(mel, features.mel_spectrogram(wav, config))
        results.append(mel)
    if results[0].shape == results[1].shape:
        assert (results[0] - results[1]).abs().max() > 1e-3


def test_caches_are_bounded_and_evicted_entries_are_rebuilt():
    compat.clear_caches()
    wav = golden("vits_22k", "wav")[:, :2048]
    info = compat.cache_info()
    first = mel_spectrogram_torch(wav, 256, 16, 22050, 64, 256, 0.0, 3000.0)
    for i in range(info["constants_maxsize"] + 8):
        mel_spectrogram_torch(wav, 256, 16, 22050, 64, 256, 0.0, 3100.0 + 25 * i)
    after = compat.cache_info()
    assert 0 < after["constants"] <= info["constants_maxsize"]
    assert 0 < after["configs"] <= info["configs_maxsize"]
    again = mel_spectrogram_torch(wav, 256, 16, 22050, 64, 256, 0.0, 3000.0)
    assert torch.equal(again, first)
    compat.clear_caches()
    assert compat.cache_info()["constants"] == 0 and compat.cache_info()["configs"] == 0


# --- range check ---------------------------------------------------------------------------------

def call_both(wav: torch.Tensor, **kwargs) -> None:
    p = CONFIGS["vits_22k"]
    mel_spectrogram_torch(wav, *mel_args(p), **kwargs)
    spectrogram_torch(wav, *spec_args(p), **kwargs)


def recorded(fn) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w for w in caught if issubclass(w.category, AudioRangeWarning)]


def test_in_range_audio_does_not_warn_or_print(range_check_on, capsys):
    wav = golden("vits_22k", "wav")
    assert wav.abs().max() <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call_both(wav)
        call_both(torch.cat([torch.ones(1, 4410), -torch.ones(1, 4410)]))
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("function", ["mel_spectrogram_torch", "spectrogram_torch"])
def test_out_of_range_audio_warns_with_the_values_and_does_not_print(range_check_on, capsys, function):
    p = CONFIGS["vits_22k"]
    wav = golden("vits_22k", "wav").clone()
    wav[0, 100], wav[1, 7] = 1.75, -2.5
    if function == "mel_spectrogram_torch":
        caught = recorded(lambda: mel_spectrogram_torch(wav, *mel_args(p)))
    else:
        caught = recorded(lambda: spectrogram_torch(wav, *spec_args(p)))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert function in message and "1.75" in message and "-2.5" in message
    assert "[-1, 1]" in message and "32768" in message and "set_range_check" in message
    assert caught[0].filename == __file__, "the warning should point at the caller's line"
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_audio_is_reported(range_check_on, capsys, bad):
    wav = golden("vits_22k", "wav").clone()
    wav[1, 50] = float(bad)
    wav[1, 60] = float(bad)
    caught = recorded(lambda: call_both(wav))
    assert len(caught) == 2
    message = str(caught[0].message)
    if bad == "nan":
        assert "2 NaN and 0 inf" in message
    else:
        assert "0 NaN and 2 inf" in message
    assert capsys.readouterr() == ("", "")


def test_non_finite_and_out_of_range_both_reported(range_check_on):
    wav = golden("vits_22k", "wav").clone()
    wav[0, 3], wav[1, 4] = float("nan"), 3.0
    messages = [str(w.message) for w in recorded(lambda: call_both(wav))]
    assert any("1 NaN" in m for m in messages)
    assert any("max value is 3" in m for m in messages)


def test_range_check_can_be_switched_off(range_check_on, capsys):
    wav = golden("vits_22k", "wav") * 4
    wav[0, 0] = float("nan")
    assert recorded(lambda: call_both(wav))
    assert recorded(lambda: call_both(wav, check_range=False)) == []
    compat.set_range_check(False)
    assert not compat.range_check_enabled()
    assert recorded(lambda: call_both(wav)) == []
    assert recorded(lambda: call_both(wav, check_range=True))
    compat.set_range_check(True)
    assert compat.range_check_enabled()
    assert capsys.readouterr() == ("", "")


def test_range_check_environment_variable():
    # A fresh interpreter, because the variable is read when melvoc.compat is imported.
    code = (
        "import importlib, os, warnings, torch\n"
        "from melvoc.features import compat\n"
        "for value in ('0', 'off', 'False', '1', ''):\n"
        f"    os.environ['{compat.RANGE_CHECK_ENV}'] = value\n"
        "    importlib.reload(compat)\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        compat.mel_spectrogram_torch(torch.full((1, 2048), 2.0), 1024, 80, 22050, 256, 1024, 0, None)\n"
        "    print(compat.range_check_enabled(), len(caught))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "0", "False", "0", "False", "0", "True", "1", "True", "1"]


def test_invalid_parameters_raise_value_error_naming_the_value():
    wav = golden("vits_22k", "wav")
    with pytest.raises(ValueError, match="win_size=2048"):
        mel_spectrogram_torch(wav, 1024, 80, 22050, 256, 2048, 0, None)
    with pytest.raises(ValueError, match="fmax=16000"):
        spec_to_mel_torch(torch.ones(1, 513, 4), 1024, 80, 22050, 0, 16000)
    with pytest.raises(ValueError, match="513"):
        spec_to_mel_torch(torch.ones(1, 257, 4), 1024, 80, 22050, 0, None)


class RecordOps(TorchDispatchMode):
    """Records the aten ops a call dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("switch", ["keyword", "global"])
def test_switched_off_check_reads_nothing_back_to_the_host(range_check_on, switch):
    p = CONFIGS["vits_22k"]
    wav = golden("vits_22k", "wav")
    mel_spectrogram_torch(wav, *mel_args(p))  # cache fill (window, filterbank) happens once, here
    spectrogram_torch(wav, *spec_args(p))
    with RecordOps() as checked:
        mel_spectrogram_torch(wav, *mel_args(p))
    assert any("aminmax" in op for op in checked.ops), "the range check should reduce the audio once"
    kwargs = {"check_range": False} if switch == "keyword" else {}
    if switch == "global":
        compat.set_range_check(False)
    with RecordOps() as unchecked:
        mel_spectrogram_torch(wav, *mel_args(p), **kwargs)
        spectrogram_torch(wav, *spec_args(p), **kwargs)
    assert not any("aminmax" in op or "_local_scalar_dense" in op or "isfinite" in op for op in unchecked.ops)
