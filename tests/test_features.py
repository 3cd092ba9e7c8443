"""melvoc.features: golden parity with the original functions, a NumPy oracle, and edge cases."""

from __future__ import annotations

import warnings

import librosa
import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate
from torch.utils._python_dispatch import TorchDispatchMode

from melvoc import features as F
from melvoc.features import (
    MelConfig,
    MelSpectrogram,
    Spectrogram,
    mel_spectrogram,
    min_audio_length,
    num_frames,
    spec_to_mel,
    spectrogram,
)

from ._golden import CONFIGS as GOLDEN_CONFIGS
from ._golden import GOLDEN, float32_log_mel_bound, original_mel_float32
from .conftest import CONF

PRESETS = sorted(p.stem for p in (CONF / "features").glob("*.yaml"))


def golden(name: str, key: str) -> np.ndarray:
    return GOLDEN[f"{name}/{key}"]


# --------------------------------------------------------------------------- golden data


@pytest.mark.parametrize("name", sorted(GOLDEN_CONFIGS))
@pytest.mark.parametrize("api", ["function", "module"])
def test_golden_mel(name: str, api: str) -> None:
    """float64 equals the golden data to 1e-10 on any host; float32 stays within the derived float32 bound."""
    config = MelConfig(**GOLDEN_CONFIGS[name])
    wav = torch.from_numpy(golden(name, "wav"))
    compute = (lambda a: mel_spectrogram(a, config)) if api == "function" else MelSpectrogram(config)
    mel64 = compute(wav.double())
    mel32 = compute(wav.float())
    assert mel64.dtype == torch.float64 and mel32.dtype == torch.float32
    assert mel64.shape == golden(name, "mel_f64").shape
    np.testing.assert_allclose(mel64.numpy(), golden(name, "mel_f64"), rtol=0, atol=1e-10)
    error = (mel32.double() - torch.from_numpy(golden(name, "mel_f64"))).abs()
    assert bool((error <= float32_log_mel_bound(name)).all()), error.max()


@pytest.mark.parametrize("name", sorted(GOLDEN_CONFIGS))
@pytest.mark.parametrize("fast", [True, False])
def test_float32_equals_the_original_run_on_this_host(original, name: str, fast: bool) -> None:
    """float32: the original functions, run live here in float32, within 1e-5 (both feature paths)."""
    config = MelConfig(**GOLDEN_CONFIGS[name])
    expected = original_mel_float32(original, name)
    mel32 = mel_spectrogram(torch.from_numpy(golden(name, "wav")).float(), config, fast=fast)
    assert mel32.dtype == expected.dtype == torch.float32 and mel32.shape == expected.shape
    assert (mel32 - expected).abs().max() <= 1e-5


def test_float32_bound_rejects_a_half_precision_feature() -> None:
    """The derived bound is tight enough to fail a feature computed at lower precision (bfloat16 mels)."""
    name = "hifigan_22k"
    config = MelConfig(**GOLDEN_CONFIGS[name])
    mel = mel_spectrogram(torch.from_numpy(golden(name, "wav")).float(), config)
    coarse = mel.exp().bfloat16().double().clamp_min(config.clip_val).log()
    error = (coarse - torch.from_numpy(golden(name, "mel_f64"))).abs()
    assert not bool((error <= float32_log_mel_bound(name)).all())


@pytest.mark.parametrize("name", sorted(GOLDEN_CONFIGS))
def test_golden_spectrogram_and_spec_to_mel(name: str) -> None:
    config = MelConfig(**GOLDEN_CONFIGS[name])
    wav = torch.from_numpy(golden(name, "wav")).double()
    spec = spectrogram(wav, config)
    np.testing.assert_allclose(spec.numpy(), golden(name, "spec_f64"), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(Spectrogram(config)(wav).numpy(), golden(name, "spec_f64"), rtol=1e-12, atol=1e-12)
    mel = spec_to_mel(torch.from_numpy(golden(name, "spec_f64")), config)
    np.testing.assert_allclose(mel.numpy(), golden(name, "mel_from_spec_f64"), rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- NumPy oracle


def numpy_oracle(audio: np.ndarray, config: MelConfig, window: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Independent float64 reference: pad, frame, window, rfft, magnitude, filterbank, log."""
    pad = config.pre_pad
    x = audio
    if pad:
        x = np.pad(x, (pad, pad), mode="reflect" if config.pad_mode == "reflect" else "constant")
    if config.center:
        x = np.pad(x, (config.n_fft // 2, config.n_fft // 2), mode="reflect")
    count = 1 + (len(x) - config.n_fft) // config.hop_size
    idx = np.arange(config.n_fft)[None, :] + config.hop_size * np.arange(count)[:, None]
    spectrum = np.fft.rfft(x[idx] * window, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    magnitude = np.sqrt(power + config.eps)
    mel = basis @ magnitude.T
    mel = np.maximum(mel, config.clip_val)
    return np.log(mel) if config.log_base == "e" else np.log10(mel)


def random_config(rng: np.random.Generator) -> MelConfig:
    sr = int(rng.choice([8000, 16000, 22050, 24000, 44100]))
    n_fft = int(rng.integers(32, 600))
    win = int(rng.integers(max(4, n_fft // 2), n_fft + 1))
    hop = int(rng.integers(4, win + 1))
    fmin = float(rng.uniform(0, sr / 8))
    fmax = None if rng.random() < 0.3 else float(rng.uniform(sr / 4, sr / 2))
    return MelConfig(
        sampling_rate=sr, n_fft=n_fft, hop_size=hop, win_size=win,
        num_mels=int(rng.integers(4, 40)), fmin=fmin, fmax=fmax,
        center=bool(rng.random() < 0.4), eps=float(rng.choice([0.0, 1e-9, 1e-6])),
        clip_val=float(rng.choice([1e-5, 1e-7])), pad_mode=str(rng.choice(["reflect", "zeros", "none"])),
        log_base=str(rng.choice(["e", "10"])), mel_scale=str(rng.choice(["slaney", "htk"])),
        mel_norm=rng.choice(["slaney", None]),
    )


@pytest.mark.parametrize("seed", range(12))
def test_numpy_oracle_random_configs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    config = random_config(rng)
    length = min_audio_length(config) + int(rng.integers(0, 3000))
    audio = rng.uniform(-1, 1, size=(2, length))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some random configs have empty mel bands
        window = F.hann_window(config).double().numpy()
        basis = F.mel_filterbank(config).double().numpy()
        got = mel_spectrogram(torch.from_numpy(audio), config).numpy()
        got_module = MelSpectrogram(config)(torch.from_numpy(audio)).numpy()
    expected = np.stack([numpy_oracle(a, config, window, basis) for a in audio])
    assert got.shape == expected.shape == (2, config.num_mels, num_frames(length, config))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(got, got_module)


@pytest.mark.parametrize("win_size,n_fft", [(800, 1000), (1024, 1024), (63, 63), (17, 32)])
def test_constants_are_float32_rounded_hann_and_librosa(win_size: int, n_fft: int) -> None:
    config = MelConfig(16000, n_fft, 8, win_size, 10)
    window = F.hann_window(config)
    assert window.dtype == torch.float32 and window.shape == (n_fft,)
    left = (n_fft - win_size) // 2
    exact = np.sin(np.pi * np.arange(win_size) / win_size) ** 2  # periodic Hann
    np.testing.assert_allclose(window[left : left + win_size].numpy(), exact, atol=3e-7)
    assert window[:left].abs().sum() == 0 and window[left + win_size :].abs().sum() == 0
    basis = F.mel_filterbank(config)
    expected = librosa.filters.mel(sr=16000, n_fft=n_fft, n_mels=10, fmin=0.0, fmax=8000.0, dtype=np.float32)
    np.testing.assert_array_equal(basis.numpy(), expected)


# --------------------------------------------------------------------------- shapes and lengths

VITS = MelConfig(22050, 1024, 256, 1024, 80)


def test_shapes() -> None:
    audio = torch.rand(3, 256 * 20) - 0.5
    mel = MelSpectrogram(VITS)
    assert mel(audio).shape == (3, 80, 20)
    assert mel(audio.unsqueeze(1)).shape == (3, 80, 20)
    assert mel(audio[0]).shape == (80, 20)
    torch.testing.assert_close(mel(audio[0]), mel(audio)[0], rtol=0, atol=0)
    assert Spectrogram(VITS)(audio).shape == (3, 513, 20)
    assert spectrogram(audio[0], VITS).shape == (513, 20)
    assert num_frames(256 * 20, VITS) == 20
    for bad in (torch.rand(2, 2, 4096), torch.rand(1, 1, 1, 4096)):
        with pytest.raises(ValueError, match=r"expected \(T,\), \(B, T\) or \(B, 1, T\)"):
            mel(bad)
    with pytest.raises(ValueError, match="integer PCM"):
        mel(torch.zeros(4096, dtype=torch.int16))
    # an empty batch (e.g. the last shard of a filtered list) gives an empty result, also with grad
    empty = torch.zeros(0, 256 * 20, requires_grad=True)
    assert mel(empty).shape == (0, 80, 20) and Spectrogram(VITS)(empty).shape == (0, 513, 20)
    mel(empty).sum().backward()
    assert empty.grad.shape == empty.shape
    with torch.no_grad():
        assert mel(empty.detach()).shape == (0, 80, 20)


@pytest.mark.parametrize("length", [1024, 4096, 5000, 22050])
def test_frames_for_multiples_of_hop(length: int) -> None:
    expected = length // 256 if length % 256 == 0 else num_frames(length, VITS)
    assert MelSpectrogram(VITS)(torch.zeros(length)).shape[-1] == expected


def test_short_audio_raises_with_length_and_minimum() -> None:
    minimum = min_audio_length(VITS)
    assert minimum == (1024 - 256) // 2 + 1
    with pytest.raises(ValueError, match=rf"audio of {minimum - 1} samples is too short.*at least {minimum}"):
        mel_spectrogram(torch.zeros(minimum - 1), VITS)
    assert mel_spectrogram(torch.zeros(minimum), VITS).shape == (80, num_frames(minimum, VITS))


def test_odd_n_fft_minus_hop_truncates_like_the_original() -> None:
    config = MelConfig(16000, 1000, 201, 800, 40)
    assert config.pre_pad == int((1000 - 201) / 2) == 399
    audio = torch.rand(2, 4020, dtype=torch.float64) - 0.5
    expected = torch.stft(
        torch.nn.functional.pad(audio.unsqueeze(1), (399, 399), mode="reflect").squeeze(1),
        1000, 201, 800, window=torch.hann_window(800).double(), center=False, return_complex=True,
    ).abs()
    got = spectrogram(audio, config.replace(eps=0.0))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_center_matches_torch_stft_after_prepad() -> None:
    config = MelConfig(16000, 512, 128, 400, 40, center=True, eps=0.0)
    audio = torch.rand(2, 3000, dtype=torch.float64) - 0.5
    padded = torch.nn.functional.pad(audio.unsqueeze(1), (192, 192), mode="reflect").squeeze(1)
    window = torch.hann_window(400).double()  # float32-rounded, as the original
    expected = torch.stft(padded, 512, 128, 400, window=window, center=True, pad_mode="reflect", return_complex=True)
    torch.testing.assert_close(spectrogram(audio, config), expected.abs(), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- dtypes, autocast, host reads, grads


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_in_float32(dtype: torch.dtype) -> None:
    audio = torch.rand(2, 4096) - 0.5
    module = MelSpectrogram(VITS)
    reference = module(audio)
    with torch.autocast("cpu", dtype=dtype):
        out = module(audio)
        out_fn = mel_spectrogram(audio, VITS)
    assert out.dtype == out_fn.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    leaf = audio.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        (module(leaf.to(dtype)) * torch.linspace(0, 1, reference.shape[-1])).sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    half_in = module(audio.to(dtype))
    assert half_in.dtype == torch.float32
    torch.testing.assert_close(half_in, module(audio.to(dtype).float()), rtol=0, atol=0)


def test_float64_stays_float64_and_buffers_follow_module() -> None:
    module = MelSpectrogram(VITS)
    assert module.state_dict() == {}
    assert {name for name, _ in module.named_buffers()} == {"window", "mel_basis"}
    assert module(torch.zeros(4096, dtype=torch.float64)).dtype == torch.float64
    module = module.double()
    assert all(buffer.dtype == torch.float64 for buffer in module.buffers())
    assert module(torch.zeros(4096)).dtype == torch.float32


class CountHostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("config", [VITS, MelConfig(24000, 1024, 256, 1024, 100, center=True, eps=0.0, pad_mode="none")])
def test_forward_and_backward_never_read_to_host(config: MelConfig) -> None:
    module = MelSpectrogram(config)
    audio = (torch.rand(2, 4096) - 0.5).requires_grad_()
    mel_spectrogram(audio.detach(), config)  # warm the functional cache outside the counter
    with CountHostReads() as counter:
        module(audio).sum().backward()
        mel_spectrogram(audio, config)
        spectrogram(audio, config)
        with torch.no_grad():
            module(audio)
    assert counter.reads == 0
    # the counter does see reads when there are some
    with CountHostReads() as counter:
        audio.max().item()
    assert counter.reads == 1


@pytest.mark.parametrize(
    "config",
    [
        MelConfig(8000, 64, 16, 48, 10, fmax=3000.0),
        MelConfig(8000, 63, 15, 63, 10),
        MelConfig(8000, 64, 20, 64, 8, center=True, log_base="10"),
        MelConfig(8000, 64, 16, 64, 8, eps=0.0, pad_mode="none", center=True, mel_scale="htk", mel_norm=None),
    ],
)
def test_gradcheck_float64(config: MelConfig) -> None:
    audio = (torch.rand(2, 160, dtype=torch.float64) - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(MelSpectrogram(config), (audio,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda a: spectrogram(a, config), (audio,), fast_mode=True)
    # the full Jacobian, element by element, on one short clip
    assert torch.autograd.gradcheck(lambda a: mel_spectrogram(a, config), (audio[:1, :96].detach().requires_grad_(),))


@pytest.mark.slow
def test_torch_compile_traces_the_reference_path_in_one_graph() -> None:
    module = MelSpectrogram(VITS.replace(eps=1e-9))
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break fails
    audio = (torch.rand(2, 4096, dtype=torch.float64) - 0.5).requires_grad_()
    (got_grad,) = torch.autograd.grad(compiled(audio).sum(), audio)
    (want_grad,) = torch.autograd.grad(module(audio).sum(), audio)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-10)
    with torch.no_grad():  # under compile the fast path stands aside
        torch.testing.assert_close(compiled(audio), module(audio), rtol=0, atol=1e-10)


@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_gradients_finite_on_digital_silence(eps: float) -> None:
    silence = torch.zeros(2, 4096, requires_grad=True)
    MelSpectrogram(VITS.replace(eps=eps))(silence).sum().backward()
    assert torch.isfinite(silence.grad).all()


# --------------------------------------------------------------------------- config validation and caches


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"win_size": 2048}, r"win_size=2048: must be in \[1, n_fft=1024\]"),
        ({"hop_size": 0}, r"hop_size=0: must be > 0"),
        ({"hop_size": -5}, r"hop_size=-5"),
        ({"fmax": 12000.0}, r"fmax=12000.0: must be in \(0, sampling_rate/2=11025\]"),
        ({"fmin": 9000.0, "fmax": 8000.0}, r"fmin=9000.0: must be below fmax=8000"),
        ({"num_mels": 0}, r"num_mels=0: must be >= 1"),
        ({"pad_mode": "circular"}, r"pad_mode='circular'"),
        ({"log_base": "2"}, r"log_base='2'"),
        ({"mel_scale": "bark"}, r"mel_scale='bark'"),
        ({"mel_norm": "l2"}, r"mel_norm='l2'"),
        ({"clip_val": 0.0}, r"clip_val=0.0: must be > 0"),
        ({"eps": -1.0}, r"eps=-1.0: must be >= 0"),
        ({"n_fft": 1024.5}, r"n_fft=1024.5: must be a positive integer"),
    ],
)
def test_invalid_config_raises(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VITS.replace(**changes)


def test_empty_filters_warn_naming_the_config() -> None:
    config = MelConfig(16000, 128, 32, 128, 128)
    with pytest.warns(UserWarning, match=r"mel filters are empty.*MelConfig\(sampling_rate=16000, n_fft=128"):
        MelSpectrogram(config)


def test_coerce_accepts_mappings_and_rejects_unknown_keys() -> None:
    assert MelConfig.coerce({"_target_": "x", **VITS.to_dict()}) == VITS
    with pytest.raises(ValueError, match=r"unknown MelConfig field\(s\) \['hop_length'\]"):
        MelConfig.coerce({**VITS.to_dict(), "hop_length": 256})


def test_functional_cache_keys_every_parameter_and_is_bounded() -> None:
    audio = torch.rand(1, 8192) - 0.5
    a = MelConfig(22050, 1024, 256, 1024, 80, fmax=8000.0)
    b = MelConfig(16000, 512, 128, 512, 64, fmax=8000.0)  # same fmax, everything else differs
    for first, second in ((a, b), (b, a)):
        F.clear_cache()
        mel_spectrogram(audio, first)
        torch.testing.assert_close(mel_spectrogram(audio, second), MelSpectrogram(second)(audio), rtol=0, atol=0)
    maxsize = F.cache_info()["maxsize"]
    for sr in range(8000, 8000 + 100 * (maxsize + 5), 100):
        mel_spectrogram(audio, MelConfig(sr, 256, 64, 256, 8))
    info = F.cache_info()
    assert (info["size"], info["maxsize"]) == (maxsize, maxsize)
    F.clear_cache()
    assert F.cache_info()["size"] == F.cache_info()["plans"] == F.cache_info()["plan_bytes"] == 0


def test_constants_first_built_in_inference_mode_still_allow_a_backward() -> None:
    F.clear_cache()
    config = VITS.replace(eps=1e-7)
    module = MelSpectrogram(config)
    audio = torch.rand(2, 4096, dtype=torch.float64) - 0.5
    with torch.inference_mode():
        module(audio)
        mel_spectrogram(audio, config)
    for compute in (module, lambda a: mel_spectrogram(a, config)):
        leaf = audio.clone().requires_grad_()
        compute(leaf).sum().backward()
        assert torch.isfinite(leaf.grad).all()


def preset_config(name: str) -> MelConfig:
    return MelConfig.coerce(yaml.safe_load((CONF / "features" / f"{name}.yaml").read_text()))


@pytest.mark.parametrize("case", [*PRESETS, *range(12)])
def test_mel_bins_hold_every_nonzero_filter_weight(case: str | int) -> None:
    """The reference and fast paths compute only these STFT bins: every other filter weight is 0."""
    config = preset_config(case) if isinstance(case, str) else random_config(np.random.default_rng(case))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some random configs have empty mel bands
        basis = F.mel_filterbank(config)
    band = config.mel_bins
    assert 0 <= band.start < band.stop <= config.n_freqs
    assert basis[:, : band.start].abs().sum() == 0 and basis[:, band.stop :].abs().sum() == 0


# --------------------------------------------------------------------------- Hydra presets


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_instantiates(compose_cfg, preset: str) -> None:
    cfg = compose_cfg([f"features={preset}"])
    config = instantiate(cfg.features)
    assert isinstance(config, MelConfig)
    assert MelConfig.coerce(cfg.features) == config
    loss = instantiate(cfg.loss_features)
    assert loss == config.replace(fmax=None)
    audio = torch.rand(2, config.hop_size * 16) - 0.5
    assert MelSpectrogram(config)(audio).shape == (2, config.num_mels, num_frames(config.hop_size * 16, config))


def test_presets_cover_the_lineages() -> None:
    assert {"vits_22k", "hifigan_22k", "sovits_44k", "bigvgan_24k", "bigvgan_44k", "vocos_24k"} <= set(PRESETS)
