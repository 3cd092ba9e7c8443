"""BigVGAN's fast anti-aliased activation (melvoc.models.activations_fast) against the reference path:
same outputs and gradients on every published layout, float64 exactness of the block products, the
hand-written backward against finite differences, bf16, the switch, published weights, ONNX, training."""

from __future__ import annotations

import importlib
import math
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from melvoc.features import MelConfig, MelSpectrogram
from melvoc.training.finetune import InitFromCheckpoint
from melvoc.deploy.inference import load_generator
from melvoc.models.activations import AntiAliasedActivation, Snake, SnakeBeta, kaiser_sinc_filter
from melvoc.models.activations_fast import FastAntiAliasedActivation, resampling_matrices
from melvoc.models.bigvgan import BigVGANGenerator
from melvoc.deploy.onnx_export import OnnxVocoder, export_onnx
from melvoc.peers import bigvgan
from melvoc.training import train
from tests.conftest import FIXTURES, REPO, compose_config, path_overrides
from tests.test_bigvgan_training import QUIET, plain_launch, synthetic_lists  # noqa: F401 (fixture)
from tests.test_features import CountHostReads

BIGVGAN = FIXTURES / "peers" / "bigvgan_v2_24khz_100band"

V1 = {"use_tanh_at_final": True, "use_bias_at_final": True}
V2 = {"use_tanh_at_final": False, "use_bias_at_final": False}
SIX_STAGES = {"upsample_rates": [4, 4, 2, 2, 2, 2], "upsample_kernel_sizes": [8, 8, 4, 4, 4, 4]}
#: NVIDIA/BigVGAN configs/*.json (all: resblock "1", kernels 3/7/11, dilations 1/3/5, snakebeta, log scale),
#: narrowed from 1536 (512 for the base models) to 64 channels; v2 22 kHz fmax8k has v2 22 kHz's layout.
PUBLISHED = {
    "bigvgan_22khz_80band": {"num_mels": 80, **SIX_STAGES, **V1},
    "bigvgan_24khz_100band": {"num_mels": 100, **SIX_STAGES, **V1},
    "bigvgan_base_22khz_80band": {"num_mels": 80, "upsample_rates": [8, 8, 2, 2],
                                  "upsample_kernel_sizes": [16, 16, 4, 4], **V1},
    "bigvgan_base_24khz_100band": {"num_mels": 100, "upsample_rates": [8, 8, 2, 2],
                                   "upsample_kernel_sizes": [16, 16, 4, 4], **V1},
    "bigvgan_v2_22khz_80band_256x": {"num_mels": 80, **SIX_STAGES, **V2},
    "bigvgan_v2_24khz_100band_256x": {"num_mels": 100, **SIX_STAGES, **V2},
    "bigvgan_v2_44khz_128band_256x": {"num_mels": 128, **SIX_STAGES, **V2},
    "bigvgan_v2_44khz_128band_512x": {"num_mels": 128, "upsample_rates": [8, 4, 2, 2, 2, 2],
                                      "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4], **V2},
}


def perturb_snakes(module: nn.Module, seed: int = 0) -> None:
    """Move every Snake / SnakeBeta parameter off its initial value (ones or zeros), so that a formula
    that swapped or dropped a parameter could not pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (Snake, SnakeBeta)):
                for p in sub.parameters():
                    p.add_(0.3 * torch.randn(p.shape, generator=generator))


def twins(dtype: torch.dtype = torch.float32, **kwargs) -> tuple[BigVGANGenerator, BigVGANGenerator]:
    """A fast and a reference generator with the same (perturbed) weights."""
    torch.manual_seed(0)
    fast = BigVGANGenerator(**kwargs, fast_activation=True)
    perturb_snakes(fast)
    reference = BigVGANGenerator(**kwargs, fast_activation=False)
    reference.load_state_dict(fast.state_dict())
    return fast.to(dtype), reference.to(dtype)


def output_and_gradients(generator: nn.Module, mel: torch.Tensor, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    mel = mel.clone().requires_grad_()
    audio = generator(mel)
    names = ["mel", *(n for n, p in generator.named_parameters())]
    grads = torch.autograd.grad((audio * weight).sum(), [mel, *generator.parameters()])
    return {"audio": audio.detach(), **dict(zip(names, grads))}


def assert_same(fast: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], tolerance: float) -> None:
    """Every tensor within ``tolerance`` of the reference, relative to the reference's largest entry (at least 1)."""
    assert fast.keys() == reference.keys()
    for name, expected in reference.items():
        scale = max(1.0, expected.abs().max().item())
        error = (fast[name] - expected).abs().max().item()
        assert error <= tolerance * scale, f"{name}: {error:.3g} > {tolerance} x {scale:.3g}"


def compare_generators(tolerance: float = 1e-5, frames: int = 3, batch: int = 1, **kwargs) -> None:
    fast, reference = twins(**kwargs)
    torch.manual_seed(1)
    mel = torch.randn(batch, fast.num_mels, frames) * 2 - 4
    weight = torch.randn(batch, 1, frames * fast.hop_size)
    expected = output_and_gradients(reference, mel, weight)
    assert expected["audio"].abs().max() > 0.02, "a near-silent output would make the bound meaningless"
    assert_same(output_and_gradients(fast, mel, weight), expected, tolerance)


# --- the generator, fast == reference ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_fast_equals_reference_on_every_published_layout(name):
    """Output and the gradients of every parameter and of the mel within 1e-5, float32, weight norm on."""
    compare_generators(**PUBLISHED[name], upsample_initial_channel=64)


@pytest.mark.parametrize("activation", ["snake", "snakebeta"])
@pytest.mark.parametrize("logscale", [False, True])
@pytest.mark.parametrize("resblock", ["1", "2"])
def test_fast_equals_reference_for_each_activation_scale_and_block(activation, logscale, resblock):
    compare_generators(
        num_mels=20, upsample_rates=[4, 2, 2], upsample_kernel_sizes=[8, 4, 4], upsample_initial_channel=32,
        resblock=resblock, activation=activation, snake_logscale=logscale, frames=5, batch=2,
    )


def test_fast_equals_reference_at_the_published_width():
    """bigvgan_v2_24khz_100band_256x at its 1536 channels (112 M parameters), two frames."""
    compare_generators(**PUBLISHED["bigvgan_v2_24khz_100band_256x"], upsample_initial_channel=1536, frames=2)


@pytest.mark.parametrize("mode", ["autocast", "true"])
def test_bf16_error_is_the_references(mode):
    """Under bf16 the fast path is as close to the float32 output as the reference path is.

    Both round differently (matrix products vs. convolutions in bf16), so they are compared through
    their distance to float32: the fast path's may exceed the reference's by at most 25%, and neither
    may exceed 0.05 (the output is in [-1, 1])."""
    kwargs = {**PUBLISHED["bigvgan_v2_24khz_100band_256x"], "upsample_initial_channel": 64}
    fast, reference = twins(**kwargs)
    torch.manual_seed(1)
    mel = torch.randn(2, fast.num_mels, 6) * 2 - 4
    with torch.no_grad():
        exact = reference(mel)
        if mode == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outputs = {"fast": fast(mel), "reference": reference(mel)}
        else:
            outputs = {"fast": fast.bfloat16()(mel.bfloat16()), "reference": reference.bfloat16()(mel.bfloat16())}
    errors = {}
    for path, audio in outputs.items():
        assert audio.dtype == torch.bfloat16, path
        errors[path] = (audio.float() - exact).abs().max().item()
    assert errors["reference"] < 0.05 and errors["fast"] < 0.05, errors
    assert errors["fast"] <= 1.25 * errors["reference"], errors


def test_bf16_autocast_gradients_follow_the_references():
    """bf16-mixed training: the fast path's gradients are as close to float32's as the reference's."""
    kwargs = {**PUBLISHED["bigvgan_v2_24khz_100band_256x"], "upsample_initial_channel": 64}
    fast, reference = twins(**kwargs)
    torch.manual_seed(1)
    mel = torch.randn(1, fast.num_mels, 4) * 2 - 4
    weight = torch.randn(1, 1, 4 * fast.hop_size)
    exact = output_and_gradients(reference, mel, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = output_and_gradients(fast, mel, weight)
        theirs = output_and_gradients(reference, mel, weight)
    for name in ("mel", "conv_pre.parametrizations.weight.original1", "resblocks.0.acts1.0.act.alpha"):
        scale = exact[name].abs().max().item()
        ours_error = (ours[name].float() - exact[name]).abs().max().item() / scale
        theirs_error = (theirs[name].float() - exact[name]).abs().max().item() / scale
        assert ours_error < 0.1 and ours_error <= 1.5 * theirs_error + 1e-3, (name, ours_error, theirs_error)


# --- the activation itself ----------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [4, 8, 10, 12, 16])
@pytest.mark.parametrize("kind", [Snake, SnakeBeta])
@pytest.mark.parametrize("logscale", [False, True])
def test_activation_is_the_references_in_float64(kernel_size, kind, logscale):
    """The block products are an exact rewrite: equal to 1e-12 in float64, from 1 sample to several
    blocks, batch 1 and 3, every even low-pass length."""
    torch.manual_seed(kernel_size)
    for batch, channels, length in [(1, 3, 1), (3, 5, 7), (1, 4, 37), (2, 2, 100)]:
        act = kind(channels, logscale=logscale)
        perturb_snakes(act, seed=length)
        reference = AntiAliasedActivation(act, kernel_size).double()
        fast = FastAntiAliasedActivation(act, kernel_size).double()
        x = torch.randn(batch, channels, length, dtype=torch.float64, requires_grad=True)
        expected, got = reference(x), fast(x)
        assert got.shape == expected.shape == x.shape
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
        g = torch.randn_like(expected)
        inputs = [x, *act.parameters()]
        for ours, theirs in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(expected, inputs, g)):
            torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)


@pytest.mark.parametrize("frozen", ["x", "alpha", "beta", "alpha+beta"])
@pytest.mark.parametrize("kind", [Snake, SnakeBeta])
def test_gradients_of_what_requires_them_when_the_rest_is_frozen(kind, frozen):
    """Each input's gradient alone (the backward skips the others' terms) is the reference's, float64."""
    torch.manual_seed(1)
    act = kind(4, logscale=True).double()
    perturb_snakes(act)
    x = torch.randn(2, 4, 33, dtype=torch.float64, requires_grad="x" not in frozen)
    for name, param in act.named_parameters():
        param.requires_grad_(name not in frozen.split("+"))
    inputs = [t for t in (x, *act.parameters()) if t.requires_grad]
    g = torch.randn(2, 4, 33, dtype=torch.float64)
    fast = FastAntiAliasedActivation(act, 12).double()
    reference = AntiAliasedActivation(act, 12).double()
    ours = torch.autograd.grad(fast(x), inputs, g)
    theirs = torch.autograd.grad(reference(x), inputs, g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("logscale", [False, True])
@pytest.mark.parametrize("kind", [Snake, SnakeBeta])
def test_hand_written_backward_passes_gradcheck(kind, logscale):
    """The backward (the parameters' transforms included) against finite differences, independently
    of the reference path."""
    torch.manual_seed(0)
    act = kind(3, logscale=logscale).double()
    perturb_snakes(act)
    fast = FastAntiAliasedActivation(act).double()
    x = torch.randn(2, 3, 21, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *params: fast(x), (x, *act.parameters()))


def test_resampling_matrices_hold_the_filter_and_its_stride():
    taps = kaiser_sinc_filter(0.25, 0.3, 12)
    up, up_halo, down, down_halo = resampling_matrices(taps, block=16)
    assert up.shape == (16, 32) and up_halo.shape == (6, 32) and down.shape == (32, 16) and down_halo.shape == (11, 16)
    # Each up-sampled output sums one polyphase half of the filter (gain 2 in all): every column sums to 1.
    torch.testing.assert_close(torch.cat([up, up_halo]).sum(0), torch.ones(32, dtype=torch.float64))
    # Each down-sampled output is the whole filter, two samples further per output.
    full = torch.cat([down, down_halo])
    for p in range(16):
        column = full[:, p]
        start = int(column.nonzero()[0])
        assert start == 2 * p + 1
        torch.testing.assert_close(column[start : start + 12], taps)


def test_only_snake_activations_have_a_fast_path():
    with pytest.raises(ValueError, match="Snake and SnakeBeta"):
        FastAntiAliasedActivation(nn.Tanh())


def test_fast_activation_keeps_the_reference_state_dict():
    act = SnakeBeta(4, logscale=True)
    assert FastAntiAliasedActivation(act).state_dict().keys() == AntiAliasedActivation(act).state_dict().keys()
    fast, reference = twins(**PUBLISHED["bigvgan_v2_24khz_100band_256x"], upsample_initial_channel=64)
    assert fast.state_dict().keys() == reference.state_dict().keys()


def test_forward_and_backward_never_read_to_host():
    act = SnakeBeta(4, logscale=True)
    fast = FastAntiAliasedActivation(act)
    x = torch.randn(2, 4, 30, requires_grad=True)
    with CountHostReads() as counter:
        fast(x).sum().backward()
        with torch.no_grad():
            fast(x)
    assert counter.reads == 0


def test_compiles_with_torch_compile():
    """Dynamo traces the custom autograd function (aot_eager: no C++ compiler needed) to the same values."""
    torch.manual_seed(0)
    act = SnakeBeta(8, logscale=True)
    perturb_snakes(act)
    fast = FastAntiAliasedActivation(act)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 8, 50, requires_grad=True)
    expected, got = fast(x), compiled(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    inputs = [x, *act.parameters()]
    for ours, theirs in zip(torch.autograd.grad(got.sum(), inputs), torch.autograd.grad(expected.sum(), inputs)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


# --- the switch, published weights, training, export -------------------------------------------


@pytest.mark.parametrize("preset", ["bigvgan_v2_24k_100band", "bigvgan_v1_24k_100band", "bigvgan_v2_44k_128band_512x",
                                    "bigvgan_tiny"])
def test_presets_train_through_the_fast_path_and_one_switch_goes_back(preset):
    cfg = compose_config([f"model={preset}", "model.generator.upsample_initial_channel=64"])
    activations = [m for m in instantiate(cfg.model.generator).modules() if isinstance(m, AntiAliasedActivation)]
    assert activations and all(type(m) is FastAntiAliasedActivation for m in activations)
    cfg = compose_config([f"model={preset}", "model.generator.upsample_initial_channel=64",
                          "model.generator.fast_activation=false"])
    activations = [m for m in instantiate(cfg.model.generator).modules() if isinstance(m, AntiAliasedActivation)]
    assert activations and all(type(m) is AntiAliasedActivation for m in activations)


def test_published_weights_give_the_published_audio_through_both_paths():
    io = np.load(BIGVGAN / "io.npz")
    checkpoint = bigvgan.read(BIGVGAN)
    mel = torch.from_numpy(io["mel"])
    for fast in (True, False):
        generator = instantiate({**checkpoint.generator, "fast_activation": fast})
        generator.load_state_dict(checkpoint.generator_state, strict=True)
        assert generator.fast_activation is fast
        with torch.inference_mode():
            audio = generator.eval()(mel)
        np.testing.assert_allclose(audio.numpy(), io["audio_out"], atol=1e-4, rtol=0)
    # The official import leaves the switch at its default: the fast path.
    assert "fast_activation" not in checkpoint.generator
    assert instantiate(checkpoint.generator).fast_activation


def test_init_from_ignores_the_switch():
    """A run on the reference path can start from an official checkpoint (whose node has no switch)."""
    cfg = compose_config(["experiment=bigvgan_v2_24k_100band", "model.generator.upsample_initial_channel=64",
                          "model.discriminators.mpd.channels=[4,16,32,64,64]", "model.discriminators.cqtd.filters=8",
                          "model.discriminators.cqtd.max_filters=64", "model.generator.fast_activation=false"])
    model = instantiate(cfg.model)
    assert InitFromCheckpoint(BIGVGAN).apply(model)["generator"]
    io = np.load(BIGVGAN / "io.npz")
    with torch.inference_mode():
        audio = model.generator.eval()(torch.from_numpy(io["mel"]))
    np.testing.assert_allclose(audio.numpy(), io["audio_out"], atol=1e-4, rtol=0)


def test_onnx_export_of_the_fast_path_gives_the_reference_audio(tmp_path):
    """The exported graph (out-of-place products, dynamic length) against the reference path in eager mode.
    (tests/test_onnx.py exports the v2 layout, whose generator now takes the fast path by default.)"""
    small = {"num_mels": 20, "upsample_rates": [4, 4], "upsample_kernel_sizes": [8, 8], "upsample_initial_channel": 32,
             "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3]]}
    fast, reference = twins(**small)
    for g in (fast, reference):
        g.remove_weight_norm().eval()
    config = MelConfig(16000, 64, 16, 64, 20)
    path = export_onnx(fast, tmp_path / "fast.onnx", config=config)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Gemm" in ops or "MatMul" in ops
    vocoder = OnnxVocoder(path, threads=1)
    torch.manual_seed(2)
    for frames in (1, 3, 40):
        mel = torch.randn(2, 20, frames) * 2 - 4
        with torch.inference_mode():
            expected = reference(mel)
        assert expected.abs().max() > 0.02
        torch.testing.assert_close(vocoder(mel), expected, atol=1e-5, rtol=0)


def test_benchmark_runs_and_reports_ratios():
    """``benchmarks/bench_bigvgan.py --smoke`` (narrow, one round) runs every case; no time is asserted."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_bigvgan.py"), "--smoke", "--threads", "1"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| forward", "| training"))]
    assert [row.split("|")[1].strip() for row in rows] == ["forward", "forward+backward", "training step"]
    fast_vs_reference = [row.split("|")[8].strip() for row in rows]
    assert all(re.fullmatch(r"\d+\.\d\dx", cell) for cell in fast_vs_reference), rows
    assert "largest |output - " in result.stdout


def test_training_runs_through_either_path(tmp_path):
    """A real Trainer, two steps of bigvgan_tiny on the v2 recipe: the fast path by default, the reference
    with the switch off; the saved generators say which one they ran."""
    data = synthetic_lists(tmp_path, 24000)
    for fast in (True, False):
        cfg = compose_config([
            "experiment=bigvgan_v2_24k_100band", "model=bigvgan_tiny", *path_overrides(tmp_path / str(fast)), *QUIET,
            "~logger", *data, "data.batch_size=1", "data.segment_size=2048", "data.max_val_seconds=0.3",
            "trainer.max_steps=2", "trainer.val_check_interval=2",
            *([] if fast else ["model.generator.fast_activation=false"]),
        ])
        result = train(cfg)
        assert result.global_step == 2 and math.isfinite(result.final_val_mel_l1)
        generator = load_generator(result.last_checkpoint)
        kinds = {type(m) for m in generator.modules() if isinstance(m, AntiAliasedActivation)}
        assert kinds == {FastAntiAliasedActivation if fast else AntiAliasedActivation}


def test_generator_step_gradients_with_the_recipes_losses_are_the_references():
    """The generator's gradient of the v2 recipe's loss (multi-scale mel x 15, adversarial and feature
    matching against MPD + CQT-D), formed as GANVocoder.training_step does, through each path.

    In float64: the log-mel loss divides by mels near its floor, which turns float32 rounding of the
    audio into gradient differences of 1e-3 between any two ways of computing the same generator."""
    cfg = compose_config(["experiment=bigvgan_v2_24k_100band", "model=bigvgan_tiny"])
    torch.manual_seed(0)
    fast = instantiate(cfg.model).double()
    perturb_snakes(fast.generator)
    reference = instantiate({**cfg.model, "generator": {**cfg.model.generator, "fast_activation": False}}).double()
    reference.load_state_dict(fast.state_dict())
    audio = 0.3 * torch.randn(2, 1, 4096, dtype=torch.float64)
    mel = MelSpectrogram(MelConfig.coerce(cfg.features))(audio.squeeze(1))
    grads = {}
    for name, model in (("fast", fast), ("reference", reference)):
        audio_hat = model.generator(mel)
        loss_adv, loss_fm = model.adversarial_losses(audio, audio_hat)
        loss_g = loss_adv + 2 * loss_fm + 15 * model.mel_loss(audio_hat, audio)
        grads[name] = dict(zip(
            [n for n, _ in model.generator.named_parameters()],
            torch.autograd.grad(loss_g, list(model.generator.parameters())),
        ))
    assert_same(grads["fast"], grads["reference"], 1e-9)


def test_benchmark_table_has_the_cuda_kernel_columns_only_where_timed(monkeypatch):
    """The official CUDA kernel (``--device cuda``, where it builds) adds two columns; it has no backward,
    so its forward+backward cells stay empty; on the CPU the table keeps its usual columns."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = importlib.import_module("bench_bigvgan")

    def case(name: str, times: dict[str, float]) -> "bench.Case":
        c = bench.Case(name, 1536, "input")
        c.times = {who: [t] for who, t in times.items()}
        c.rounds = [dict(times)]
        return c

    timed = {bench.OFFICIAL: 0.3, bench.REFERENCE: 0.3, bench.FAST: 0.1}
    cpu = bench.table([case("forward", timed)]).splitlines()
    assert "CUDA" not in cpu[0] and cpu[2].count("|") == cpu[0].count("|")
    gpu = bench.table([case("forward", {**timed, bench.OFFICIAL_CUDA: 0.2}), case("forward+backward", timed)])
    head, _, forward, backward = gpu.splitlines()
    columns = [cell.strip() for cell in head.split("|")]
    assert columns[7:10] == ["fast vs official", "official CUDA kernel ms", "fast vs CUDA kernel"]
    assert [cell.strip() for cell in forward.split("|")][8:10] == ["200", "2.00x"]
    assert [cell.strip() for cell in backward.split("|")][8:10] == ["-", "-"]
    assert len({row.count("|") for row in gpu.splitlines()}) == 1
