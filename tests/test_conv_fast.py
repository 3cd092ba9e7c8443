"""melvoc.models.conv_fast: BigVGAN's inference convolutions as per-tap products on tap-major weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from melvoc.models.bigvgan import BigVGANGenerator
from melvoc.models.conv_fast import conv1d_taps, conv_transpose1d_taps, is_tap_major, tap_major_
from tests.test_bigvgan_fast import PUBLISHED, twins

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


def tap_major_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with its weight stored tap-major."""
    return tap_major_(copy.deepcopy(module))


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = max(1.0, expected.abs().max().item())
    error = (actual - expected).abs().max().item()
    assert error <= TOLERANCE[expected.dtype] * scale, f"{error:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (3, 5), (7, 3), (11, 5), (1, 1)])
@pytest.mark.parametrize("length", [1, 4, 37])
def test_conv1d_taps_is_the_convolution(dtype, kernel, dilation, length):
    """Every tap, including taps that reach past a short input (zero padding), with bias and residual."""
    torch.manual_seed(kernel * 100 + length)
    for bias in (True, False):
        conv = nn.Conv1d(6, 5 if kernel == 1 else 6, kernel, dilation=dilation,
                         padding=dilation * (kernel - 1) // 2, bias=bias).to(dtype).requires_grad_(False)
        fast = tap_major_copy(conv)
        assert is_tap_major(fast.weight) and torch.equal(fast.weight, conv.weight)
        x = torch.randn(2, 6, length, dtype=dtype)
        with torch.inference_mode():
            assert_close(conv1d_taps(x, fast), conv(x))
            if conv.out_channels == 6:
                residual = torch.randn(2, 6, length, dtype=dtype)
                assert_close(conv1d_taps(x, fast, residual=residual), residual + conv(x))
            # A strided view (an activation's output) is read as it is.
            wide = torch.randn(2, 6, length + 9, dtype=dtype)[..., 3 : 3 + length]
            assert_close(conv1d_taps(wide, fast), conv(wide))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel,stride", [(8, 4), (4, 2), (16, 8), (2, 2)])
@pytest.mark.parametrize("length", [1, 3, 20])
def test_conv_transpose1d_taps_is_the_transposed_convolution(dtype, kernel, stride, length):
    torch.manual_seed(kernel + length)
    for bias in (True, False):
        up = nn.ConvTranspose1d(6, 3, kernel, stride, padding=(kernel - stride) // 2, bias=bias).to(dtype)
        up.requires_grad_(False)
        fast = tap_major_copy(up)
        x = torch.randn(2, 6, length, dtype=dtype)
        with torch.inference_mode():
            out = conv_transpose1d_taps(x, fast)
            assert out.shape == (2, 3, length * stride)
            assert_close(out, up(x))


def test_the_module_runs_where_the_products_do_not():
    """Autograd recording, plain (not tap-major) weights: the module's own convolution, same results."""
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 4, 3, padding=1)
    fast = tap_major_copy(conv)
    fast.weight.requires_grad_(True)
    x = torch.randn(1, 4, 9, requires_grad=True)
    y = conv1d_taps(x, fast, residual=x)
    y.sum().backward()
    assert fast.weight.grad is not None and x.grad is not None
    assert_close(y.detach(), (x + conv(x)).detach())
    with torch.inference_mode():
        assert_close(conv1d_taps(x.detach(), conv), conv(x.detach()))  # plain weights
    with pytest.raises(ValueError, match="same"):
        with torch.inference_mode():
            conv1d_taps(x.detach(), tap_major_copy(nn.Conv1d(4, 4, 3, padding=0)))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_folded_fast_generator_is_the_folded_reference(name):
    """Inference after remove_weight_norm (what every entry point runs): tap-major weights, same audio,
    a state dict that the reference path loads."""
    fast, reference = twins(**PUBLISHED[name], upsample_initial_channel=64)
    fast.remove_weight_norm().eval()
    reference.remove_weight_norm().eval()
    amp_convs = [m for block in fast.resblocks for m in block.modules() if isinstance(m, nn.Conv1d)]
    assert len(amp_convs) == 6 * 3 * len(fast.ups)
    assert all(is_tap_major(m.weight) for m in [*fast.ups, *amp_convs])
    assert not is_tap_major(fast.conv_pre.weight)
    torch.manual_seed(1)
    mel = torch.randn(2, fast.num_mels, 4) * 2 - 4
    with torch.inference_mode():
        expected = reference(mel)
        assert_close(fast(mel), expected)
    with torch.no_grad():
        assert_close(fast(mel), expected)
    again = BigVGANGenerator(**PUBLISHED[name], upsample_initial_channel=64, fast_activation=False).remove_weight_norm()
    again.load_state_dict(fast.state_dict())
    with torch.inference_mode():
        assert_close(again.eval()(mel), expected)


def test_training_evaluates_each_weight_norm_once():
    """With weight norm on (training), the fast path's convolutions read each weight once, as torch's do:
    asking whether the products run must not evaluate the norm again."""
    fast, _ = twins(**PUBLISHED["bigvgan_v2_24khz_100band_256x"], upsample_initial_channel=64)
    calls: dict[str, int] = {}
    for name, module in fast.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            calls[name] = 0
            module.parametrizations.weight[0].register_forward_hook(
                lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
            )
    fast(torch.randn(1, fast.num_mels, 3)).sum().backward()
    assert len(calls) == 2 + len(fast.ups) * (1 + 6 * 3)
    assert set(calls.values()) == {1}, {n: c for n, c in calls.items() if c != 1}
