"""BigVGAN generator, its activations, and the MRD / MBD / CQT-D discriminators."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from melvoc.models.activations import AntiAliasedActivation, Snake, SnakeBeta, kaiser_sinc_filter
from melvoc.models.base import VocoderGenerator
from melvoc.models.bigvgan import BigVGANGenerator
from melvoc.models.cqt_discriminator import ConstantQTransform, MultiScaleSubbandCQTDiscriminator, SincResample
from melvoc.models.stft_discriminators import MultiBandDiscriminator, MultiResolutionDiscriminator

PEERS = Path(__file__).parent / "fixtures" / "peers"

TINY = dict(
    num_mels=20,
    upsample_rates=[4, 2],
    upsample_kernel_sizes=[8, 4],
    upsample_initial_channel=16,
    resblock_kernel_sizes=[3, 5],
    resblock_dilation_sizes=[[1, 3], [1, 2]],
)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- generator --------------------------------------------------------------------------------


def test_published_v2_24khz_100band_256x_has_bigvgans_parameter_count():
    config = json.loads((PEERS / "bigvgan_v2_24khz_100band" / "config.json").read_text())
    # The fixture narrows the width; the published model has 1536 channels (configs/bigvgan_v2_24khz_100band_256x.json).
    assert config["upsample_initial_channel"] == 64
    fields = ("num_mels", "upsample_rates", "upsample_kernel_sizes", "resblock", "resblock_kernel_sizes",
              "resblock_dilation_sizes", "activation", "snake_logscale", "use_tanh_at_final", "use_bias_at_final")
    with torch.device("meta"):
        g = BigVGANGenerator(**{k: config[k] for k in fields}, upsample_initial_channel=1536)
    # BigVGAN's README: 112M for bigvgan_v2_24khz_100band_256x (weight-norm g and v counted, as its train.py does).
    assert round(_count(g) / 1e5) == 1124
    assert g.hop_size == 256


def test_v1_base_has_14m_parameters():
    with torch.device("meta"):
        g = BigVGANGenerator(upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4],
                             upsample_initial_channel=512, use_tanh_at_final=True, use_bias_at_final=True)
    assert round(_count(g) / 1e6) == 14  # README: bigvgan_base_24khz_100band, 14M


@pytest.mark.parametrize("resblock", ["1", "2"])
@pytest.mark.parametrize("activation", ["snake", "snakebeta"])
def test_forward_shape_and_bounds(resblock, activation):
    torch.manual_seed(0)
    g = BigVGANGenerator(**TINY, resblock=resblock, activation=activation, snake_logscale=activation == "snake")
    assert isinstance(g, VocoderGenerator)
    mel = torch.randn(2, 20, 7) * 3
    y = g(mel)
    assert y.shape == (2, 1, 7 * g.hop_size)
    assert y.abs().max() <= 1.0
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g.parameters() if p.requires_grad)


def test_amp_block_types_differ_in_layout():
    g1 = BigVGANGenerator(**TINY, resblock="1")
    g2 = BigVGANGenerator(**TINY, resblock="2")
    assert hasattr(g1.resblocks[0], "convs2") and not hasattr(g2.resblocks[0], "convs2")
    assert _count(g1) > _count(g2)


def test_final_tanh_and_bias_options():
    with_bias = BigVGANGenerator(**TINY, use_bias_at_final=True)
    without = BigVGANGenerator(**TINY, use_bias_at_final=False)
    assert with_bias.conv_post.bias is not None and without.conv_post.bias is None
    torch.manual_seed(0)
    g = BigVGANGenerator(**TINY, use_tanh_at_final=False)
    with torch.no_grad():
        g.conv_post.parametrizations.weight.original0.mul_(100.0)
        y = g(torch.randn(1, 20, 5))
    # Without tanh the output is clamped: large values sit exactly on the bounds.
    assert (y.abs() == 1.0).any()


def test_remove_weight_norm_keeps_parameters_and_outputs():
    torch.manual_seed(0)
    g = BigVGANGenerator(**TINY).eval()
    mel = torch.randn(1, 20, 6)
    with torch.no_grad():
        before = g(mel)
        assert g.remove_weight_norm() is g
        after = g(mel)
    assert not any("parametrizations" in k for k in g.state_dict())
    assert isinstance(g.conv_pre.weight, nn.Parameter) and isinstance(g.ups[0].weight, nn.Parameter)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"upsample_rates": [4, 2], "upsample_kernel_sizes": [8]}, "same length"),
        ({"upsample_rates": [4, 2], "upsample_kernel_sizes": [7, 4]}, "kernel - rate even"),
        ({"resblock": "3"}, "resblock"),
        ({"activation": "relu"}, "activation"),
        ({"upsample_initial_channel": 2}, "reaches 0 channels"),
    ],
)
def test_invalid_arguments_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BigVGANGenerator(**{**TINY, **kwargs})


# --- activations ------------------------------------------------------------------------------


def test_snake_and_snakebeta_formulas_with_log_scale():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11)
    snake = Snake(3, logscale=False)
    beta = SnakeBeta(3, logscale=True)
    with torch.no_grad():
        snake.alpha.copy_(torch.tensor([0.5, 1.0, 2.0]))
        beta.alpha.copy_(torch.tensor([0.1, -0.2, 0.3]))
        beta.beta.copy_(torch.tensor([-0.5, 0.0, 0.4]))
    a = torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1)
    torch.testing.assert_close(snake(x), x + torch.sin(a * x) ** 2 / (a + 1e-9))
    a, b = torch.tensor([0.1, -0.2, 0.3]).exp().view(1, 3, 1), torch.tensor([-0.5, 0.0, 0.4]).exp().view(1, 3, 1)
    torch.testing.assert_close(beta(x), x + torch.sin(a * x) ** 2 / (b + 1e-9))
    # Log scale initialises to 0, i.e. a = b = 1, the same function as the linear scale's init of 1.
    torch.testing.assert_close(SnakeBeta(3, logscale=True)(x), SnakeBeta(3, logscale=False)(x))


def test_kaiser_sinc_filter_is_symmetric_with_unit_dc_gain():
    taps = kaiser_sinc_filter(0.25, 0.3, 12)
    assert taps.shape == (12,)
    torch.testing.assert_close(taps, taps.flip(0), atol=0, rtol=0)
    assert abs(taps.sum().item() - 1.0) < 1e-12
    assert taps.argmax() in (5, 6)  # the main lobe in the middle


def test_anti_aliasing_keeps_constants_and_low_frequencies():
    aa = AntiAliasedActivation(nn.Identity())
    constant = torch.full((2, 3, 50), 0.7)
    torch.testing.assert_close(aa.upsample(constant), torch.full((2, 3, 100), 0.7))
    torch.testing.assert_close(aa(constant), constant)
    t = torch.arange(2048, dtype=torch.float32)
    low = torch.sin(2 * math.pi * 0.05 * t).view(1, 1, -1)
    assert (aa(low) - low)[..., 64:-64].abs().max() < 1e-2


def test_anti_aliasing_suppresses_folded_harmonics():
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    n = 4096
    t = torch.arange(n, dtype=torch.float64)
    x = torch.sin(2 * math.pi * 0.35 * t).view(1, 1, -1).float()
    # x^2 has a component at 0.7 fs, which a plain elementwise square folds to 0.3 fs.
    aliased = AntiAliasedActivation(Square())(x)[0, 0, 512:-512].double()
    plain = (x * x)[0, 0, 512:-512].double()
    tt = t[512:-512]

    def amplitude(y):
        return (2 * (y * torch.exp(-2j * math.pi * 0.3 * tt)).mean()).abs().item()

    assert amplitude(plain) > 0.45
    assert amplitude(aliased) < 0.5 * amplitude(plain)


def test_anti_aliased_filter_matches_the_peers_saved_buffers():
    state = torch.load(PEERS / "bigvgan_v2_24khz_100band" / "bigvgan_generator.pt", weights_only=True)["generator"]
    ours = AntiAliasedActivation(nn.Identity()).filter
    saved = [v for k, v in state.items() if k.endswith(".filter")]
    assert saved
    for v in saved:
        torch.testing.assert_close(v, ours, atol=1e-7, rtol=0)


# --- discriminators ---------------------------------------------------------------------------


def _check_discriminator(d: nn.Module, audio: torch.Tensor, n_sub: int) -> None:
    logits, fmaps = d(audio)
    assert len(logits) == len(fmaps) == n_sub
    for logit, fmap in zip(logits, fmaps):
        assert logit.dim() == 2 and logit.shape[0] == audio.shape[0]
        assert isinstance(fmap, list) and fmap and all(f.shape[0] == audio.shape[0] for f in fmap)
    loss = sum(l.square().mean() for l in logits) + sum(f.abs().mean() for fm in fmaps for f in fm)
    loss.backward()
    assert audio.grad is not None and audio.grad.abs().sum() > 0
    for name, p in d.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_mrd_shapes_and_gradients():
    torch.manual_seed(0)
    audio = (0.1 * torch.randn(2, 1, 4096)).requires_grad_()
    d = MultiResolutionDiscriminator(channels=8)
    _check_discriminator(d, audio, 3)
    logits, fmaps = d(audio)
    # (B, channels, n_fft // 2 + 1, frames) of the reflect-padded, uncentred STFT (n_fft 1024, hop 120).
    frames = (4096 + 2 * ((1024 - 120) // 2) - 1024) // 120 + 1
    assert fmaps[0][0].shape == (2, 8, 513, frames)
    assert fmaps[0][3].shape[-1] == math.ceil(math.ceil(math.ceil(frames / 2) / 2) / 2)


def test_mrd_spectral_norm_option():
    d = MultiResolutionDiscriminator(channels=8, use_spectral_norm=True)
    assert any("parametrizations.weight.0._u" in k for k in d.state_dict())


def test_mbd_shapes_and_gradients():
    torch.manual_seed(0)
    audio = (0.1 * torch.randn(2, 1, 4096)).requires_grad_()
    d = MultiBandDiscriminator(fft_sizes=(512, 256), channels=8)
    _check_discriminator(d, audio, 2)
    # Five bands, four feature maps each, plus the output conv.
    assert len(d(audio)[1][0]) == 5 * 4 + 1


def test_cqtd_shapes_and_gradients():
    torch.manual_seed(0)
    audio = (0.1 * torch.randn(2, 1, 4096)).requires_grad_()
    d = MultiScaleSubbandCQTDiscriminator(24000, filters=8, max_filters=16)
    _check_discriminator(d, audio, 3)
    logits, fmaps = d(audio)
    # (B, C, frames, bins): 9 octaves x 24 bins, halved by each of the three strided convs.
    assert fmaps[0][0].shape == (2, 8, 2 * 4096 // 512 + 1, 9 * 24)
    assert fmaps[0][-1].shape[-1] == 9 * 24 // 8


def test_cqtd_under_bf16_autocast_is_finite():
    torch.manual_seed(0)
    d = MultiScaleSubbandCQTDiscriminator(24000, hop_lengths=[256], n_octaves=[8], bins_per_octaves=[12], filters=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = d(0.1 * torch.randn(1, 1, 2048))
    assert torch.isfinite(logits[0].float()).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda: MultiResolutionDiscriminator([[256, 64, 256]], channels=8),
        lambda: MultiBandDiscriminator([256], channels=8),
        lambda: MultiScaleSubbandCQTDiscriminator(24000, [256], [8], [12], filters=8),
        lambda: BigVGANGenerator(**TINY),
    ],
)
def test_true_bf16_weights_run(make):
    """``precision="bf16-true"``: weights and input in bf16; the spectra are still computed in float32."""
    torch.manual_seed(0)
    model = make().to(torch.bfloat16)
    x = torch.randn(1, 20, 8) if isinstance(model, BigVGANGenerator) else 0.1 * torch.randn(1, 1, 2048)
    out = model(x.to(torch.bfloat16))
    first = out if isinstance(out, torch.Tensor) else out[0][0]
    assert first.dtype == torch.bfloat16 and torch.isfinite(first.float()).all()


def test_cqt_equals_nnaudio_cqt2010v2():
    golden = np.load(PEERS / "bigvgan_v2_24khz_100band" / "cqt_nnaudio.npz")
    audio = torch.from_numpy(golden["audio"]).view(1, 1, -1)
    for name, (sr, hop, bins, octaves) in json.loads(str(golden["cases"])).items():
        cqt = ConstantQTransform(sr, hop, bins * octaves, bins)
        ours = cqt(audio).permute(0, 2, 3, 1)  # nnAudio's (B, n_bins, frames, 2)
        expected = torch.from_numpy(golden[name])
        assert ours.shape == expected.shape, name
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5, msg=name)
    assert ConstantQTransform(48000, 512, 48, 12).early_factor == 16  # the early-downsampling case is exercised


def test_sinc_resample_2x_interpolates_a_sine():
    sr = 24000
    t = torch.arange(2400, dtype=torch.float64)
    x = torch.sin(2 * math.pi * 1000 * t / sr).float()
    y = SincResample(sr, 2 * sr)(x.view(1, 1, -1))
    assert y.shape == (1, 1, 4800)
    t2 = torch.arange(4800, dtype=torch.float64)
    expected = torch.sin(2 * math.pi * 1000 * t2 / (2 * sr)).float()
    # Away from the zero-padded edges the band-limited interpolation is near exact.
    assert (y[0, 0, 200:-200] - expected[200:-200]).abs().max() < 1e-2


def test_cqt_rejects_bins_above_nyquist_and_misaligned_hops():
    with pytest.raises(ValueError, match="Nyquist"):
        ConstantQTransform(16000, 512, 9 * 24, 24)
    with pytest.raises(ValueError, match="divisible"):
        ConstantQTransform(48000, 300, 9 * 24, 24)
