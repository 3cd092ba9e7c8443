"""melvoc.models.mel_loss: MelLoss and MultiScaleMelLoss against direct feature computations."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from melvoc.features import MelConfig, mel_spectrogram, num_frames
from melvoc.features.padded import pad_like_unpadded, valid_frames
from melvoc.models.mel_loss import MelLoss, MultiScaleMelLoss

SR = 16000
CONFIG = MelConfig(sampling_rate=SR, n_fft=512, hop_size=128, win_size=512, num_mels=40)
SMALL = MelConfig(sampling_rate=8000, n_fft=64, hop_size=16, win_size=48, num_mels=8, eps=1e-6)


def _signals(batch: int = 2, length: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / SR
    base = torch.stack([0.4 * torch.sin(2 * math.pi * (220 + 110 * i) * t) for i in range(batch)])
    audio = base + 0.02 * torch.randn(batch, length, generator=generator)
    audio_hat = 0.8 * audio + 0.01 * torch.randn(batch, length, generator=generator)
    return audio_hat, audio


def _per_clip_l1(audio_hat, audio, lengths, config) -> float:
    total, count = 0.0, 0
    for row, length in enumerate(lengths):
        predicted = mel_spectrogram(audio_hat[row, :length], config)
        diff = (predicted - mel_spectrogram(audio[row, :length], config)).abs()
        assert diff.shape[-1] == num_frames(length, config)
        total += diff.double().sum().item()
        count += diff.numel()
    return total / count


def test_identity_is_exactly_zero():
    _, audio = _signals()
    assert MelLoss(CONFIG)(audio, audio).item() == 0.0
    lengths = torch.tensor([4096, 3000])
    assert MelLoss(CONFIG)(audio, audio, lengths).item() == 0.0


def test_equals_l1_of_direct_mels():
    audio_hat, audio = _signals()
    expected = F.l1_loss(mel_spectrogram(audio_hat, CONFIG), mel_spectrogram(audio, CONFIG))
    got = MelLoss(CONFIG)(audio_hat, audio)
    assert got.item() > 0.01
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_accepts_channel_dim_and_mapping_config():
    audio_hat, audio = _signals()
    loss = MelLoss(CONFIG.to_dict() | {"_target_": "melvoc.features.MelConfig"})
    torch.testing.assert_close(loss(audio_hat.unsqueeze(1), audio.unsqueeze(1)), loss(audio_hat, audio))
    with pytest.raises(ValueError, match=r"\(2, 2, 4096\)"):
        loss(torch.stack([audio_hat, audio_hat], 1), audio)


def test_crops_within_one_hop_and_rejects_more():
    audio_hat, audio = _signals()
    loss = MelLoss(CONFIG)
    longer = F.pad(audio_hat, (0, CONFIG.hop_size - 1))
    torch.testing.assert_close(loss(longer, audio), loss(audio_hat, audio))
    torch.testing.assert_close(loss(audio_hat, audio[:, :-5]), loss(audio_hat[:, :-5], audio[:, :-5]))
    with pytest.raises(ValueError, match=r"4224 samples, audio 4096"):
        loss(F.pad(audio_hat, (0, CONFIG.hop_size)), audio)


@pytest.mark.parametrize(
    "config",
    [
        CONFIG,
        CONFIG.replace(pad_mode="zeros"),
        CONFIG.replace(pad_mode="none", center=True, eps=0.0),
        CONFIG.replace(center=True),
        CONFIG.replace(pad_mode="zeros", center=True),
        CONFIG.replace(n_fft=500, win_size=400, hop_size=125),
    ],
    ids=["reflect", "zeros", "vocos", "reflect+center", "zeros+center", "odd"],
)
def test_padded_batch_equals_clips_one_by_one(config):
    audio_hat, audio = _signals(batch=3, length=5000)
    lengths = [5000, 3210, 2048]
    # Batch padding that differs between prediction and reference would leak into unmasked frames.
    for row, length in enumerate(lengths):
        audio[row, length:] = 0.0
        audio_hat[row, length:] = torch.linspace(-0.9, 0.9, 5000 - length)
    got = MelLoss(config)(audio_hat, audio, torch.tensor(lengths))
    assert got.item() == pytest.approx(_per_clip_l1(audio_hat, audio, lengths, config), rel=1e-5)


def test_full_lengths_equal_no_lengths():
    audio_hat, audio = _signals(length=4000)
    loss = MelLoss(CONFIG)
    torch.testing.assert_close(loss(audio_hat, audio, torch.tensor([4000, 4000])), loss(audio_hat, audio))


def test_pad_like_unpadded_reproduces_the_stft_padding():
    audio = torch.randn(2, 300, dtype=torch.float64)
    lengths = torch.tensor([300, 200])
    config = SMALL.replace(center=True)
    padded = pad_like_unpadded(audio, lengths, config)
    alone = F.pad(audio[1:, :200].unsqueeze(1), (config.pre_pad,) * 2, mode="reflect")
    alone = F.pad(alone, (config.n_fft // 2,) * 2, mode="reflect").squeeze(1)
    torch.testing.assert_close(padded[1, : alone.shape[-1]], alone[0], rtol=0, atol=0)
    frames = valid_frames(lengths, config, 10**6)
    assert frames.tolist() == [num_frames(300, config), num_frames(200, config)]


def test_default_config_counts_length_over_hop_frames():
    lengths = torch.tensor([4096, 2560, 512])
    config = MelConfig(sampling_rate=22050, n_fft=1024, hop_size=256, win_size=1024, num_mels=80)
    assert valid_frames(lengths, config, 10**6).tolist() == [16, 10, 2]


def test_gradients_match_finite_differences():
    generator = torch.Generator().manual_seed(3)
    loss = MelLoss(SMALL)
    audio = 0.3 * torch.randn(1, 64, dtype=torch.float64, generator=generator)
    noise = 0.05 * torch.randn(1, 64, dtype=torch.float64, generator=generator)
    audio_hat = (audio + noise).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: loss(x, audio), (audio_hat,), eps=1e-6, atol=1e-6)
    # With lengths (batch padding masked out), a random-direction check keeps it quick.
    audio = 0.3 * torch.randn(2, 128, dtype=torch.float64, generator=generator)
    noise = 0.05 * torch.randn(2, 128, dtype=torch.float64, generator=generator)
    audio_hat = (audio + noise).requires_grad_()
    lengths = torch.tensor([128, 90])
    assert torch.autograd.gradcheck(
        lambda x: loss(x, audio, lengths), (audio_hat,), eps=1e-6, atol=1e-6, fast_mode=True
    )


def test_reference_carries_no_gradient():
    audio_hat, audio = _signals()
    audio_hat.requires_grad_()
    audio.requires_grad_()
    MelLoss(CONFIG)(audio_hat, audio).backward()
    assert audio.grad is None
    assert audio_hat.grad is not None and audio_hat.grad.abs().sum() > 0


def test_float32_under_autocast():
    audio_hat, audio = _signals()
    loss = MelLoss(CONFIG)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(audio_hat, audio)
        half_input = loss(audio_hat.bfloat16(), audio.bfloat16())
    assert mixed.dtype == torch.float32 and half_input.dtype == torch.float32
    torch.testing.assert_close(mixed, loss(audio_hat, audio))


# ------------------------------------------------------------------ MultiScaleMelLoss


def _dac_style_reference(x, y, sampling_rate, window, n_mels, pow_=1.0) -> torch.Tensor:
    """One scale the way audiotools / BigVGAN v2 computes it: torch.stft(center=True), |X|, librosa."""
    hann = torch.hann_window(window, dtype=x.dtype)
    basis = torch.from_numpy(librosa.filters.mel(sr=sampling_rate, n_fft=window, n_mels=n_mels)).to(x.dtype)

    def logmel(signal):
        spec = torch.stft(signal, window, window // 4, window=hann, center=True, return_complex=True).abs()
        return torch.log10((basis @ spec).clamp(min=1e-5).pow(pow_))

    return F.l1_loss(logmel(x), logmel(y))


def test_multiscale_defaults_are_dac():
    loss = MultiScaleMelLoss(44100)
    assert [c.win_size for c in loss.configs] == [32, 64, 128, 256, 512, 1024, 2048]
    assert [c.n_fft for c in loss.configs] == [32, 64, 128, 256, 512, 1024, 2048]
    assert [c.hop_size for c in loss.configs] == [8, 16, 32, 64, 128, 256, 512]
    assert [c.num_mels for c in loss.configs] == [5, 10, 20, 40, 80, 160, 320]
    for config in loss.configs:
        assert (config.log_base, config.clip_val, config.center) == ("10", 1e-5, True)
        assert (config.pad_mode, config.eps, config.fmax) == ("none", 0.0, None)
    assert (loss.log_weight, loss.mag_weight, loss.pow) == (1.0, 0.0, 1.0)


def test_multiscale_single_scale_matches_dac_style_computation():
    audio_hat, audio = _signals(length=4000)
    audio_hat, audio = audio_hat.double(), audio.double()
    loss = MultiScaleMelLoss(SR, window_lengths=[256], num_mels=[40])
    expected = _dac_style_reference(audio_hat, audio, SR, 256, 40)
    torch.testing.assert_close(loss(audio_hat, audio), expected, rtol=1e-6, atol=0)
    squared = MultiScaleMelLoss(SR, window_lengths=[256], num_mels=[40], pow=2.0)
    expected = _dac_style_reference(audio_hat, audio, SR, 256, 40, pow_=2.0)
    torch.testing.assert_close(squared(audio_hat, audio), expected)


def test_multiscale_is_the_sum_of_its_scales_and_symmetric():
    audio_hat, audio = _signals(length=6000)
    full = MultiScaleMelLoss(SR)
    parts = [
        MultiScaleMelLoss(SR, window_lengths=[w], num_mels=[m])(audio_hat, audio)
        for w, m in zip([32, 64, 128, 256, 512, 1024, 2048], [5, 10, 20, 40, 80, 160, 320])
    ]
    value = full(audio_hat, audio)
    assert value.shape == ()
    assert value.item() > 0.1
    torch.testing.assert_close(value, torch.stack(parts).sum(), rtol=1e-5, atol=0)
    torch.testing.assert_close(full(audio, audio_hat), value)
    assert full(audio, audio).item() == 0.0
    torch.testing.assert_close(full(audio_hat.unsqueeze(1), audio.unsqueeze(1)), value)
    torch.testing.assert_close(
        MultiScaleMelLoss(SR, weight=15.0)(audio_hat, audio), 15.0 * value, rtol=1e-6, atol=0
    )


def test_multiscale_magnitude_term():
    audio_hat, audio = _signals(length=4000)
    loss = MultiScaleMelLoss(SR, window_lengths=[512], num_mels=[40], log_weight=0.0, mag_weight=1.0)
    config = loss.configs[0]
    linear = lambda x: 10.0 ** mel_spectrogram(x, config)  # noqa: E731
    torch.testing.assert_close(loss(audio_hat, audio), F.l1_loss(linear(audio_hat), linear(audio)))


def test_multiscale_lengths_mask_every_scale():
    audio_hat, audio = _signals(batch=2, length=6000)
    lengths = [6000, 4100]
    audio_hat[1, 4100:] = 0.5
    loss = MultiScaleMelLoss(SR, window_lengths=[64, 512], num_mels=[10, 40])
    expected = sum(_per_clip_l1(audio_hat, audio, lengths, config) for config in loss.configs)
    assert loss(audio_hat, audio, torch.tensor(lengths)).item() == pytest.approx(expected, rel=1e-5)


def test_multiscale_rejects_mismatched_scales():
    with pytest.raises(ValueError, match="num_mels"):
        MultiScaleMelLoss(SR, window_lengths=[64, 128], num_mels=[10])
    with pytest.raises(ValueError, match="fmin"):
        MultiScaleMelLoss(SR, window_lengths=[64, 128], num_mels=[10, 20], fmin=[0.0])


def test_loss_features_node_builds_the_loss(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg(["features=bigvgan_24k"])
    loss = MelLoss(instantiate(cfg.loss_features))
    features = instantiate(cfg.features)
    assert loss.config == features.replace(fmax=None)
    assert np.isclose(loss.config.f_max, features.sampling_rate / 2)


def test_multiscale_float32_under_autocast_and_list_lengths():
    audio_hat, audio = _signals(length=3000)
    loss = MultiScaleMelLoss(SR, window_lengths=[128, 512], num_mels=[20, 40])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(audio_hat.bfloat16(), audio)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, loss(audio_hat.bfloat16().float(), audio))
    as_list = loss(audio_hat, audio, [3000, 2000])
    torch.testing.assert_close(as_list, loss(audio_hat, audio, torch.tensor([3000, 2000])))
