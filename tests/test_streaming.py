"""Streaming synthesis: the receptive field from the layers, chunked == whole, latency, bad input, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf
from torch import Tensor, nn

from melvoc.features import MelConfig
from melvoc.models.bigvgan import BigVGANGenerator
from melvoc.models.vocos import VocosGenerator
from melvoc.deploy.streaming import (
    Conv,
    ConvTranspose,
    MelInputError,
    ReceptiveFieldError,
    Series,
    StreamingVocoder,
    receptive_field,
)
from melvoc.synthesize import main as synthesize_main
from tests._trained import _one_thread, run  # noqa: F401 (fixtures)
from tests.conftest import compose_config

# Layouts of the published configs at a small width: the receptive field does not depend on channels.
NARROW = {"upsample_initial_channel": 32}


def lively(generator: nn.Module, config: MelConfig, seed: int = 0) -> nn.Module:
    """``generator`` in eval mode, weight norm folded, convolution weights N(0, 1 / fan_in), ``.config`` set.

    HiFi-GAN's N(0, 0.01) init gives near-silent output, against which a 1e-4 bound says nothing;
    N(0, 1 / fan_in) keeps the signal O(1) through the stack.
    """
    generator = generator.remove_weight_norm().eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in generator.modules():
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
                fan_in = module.weight[0].numel() if isinstance(module, nn.Conv1d) else module.weight[:, 0].numel()
                module.weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
    generator.config = config
    return generator


def hifigan(model: str, seed: int = 0, **overrides) -> nn.Module:
    """The :func:`lively` generator of ``conf/model/<model>.yaml`` with ``overrides``."""
    cfg = compose_config([f"model={model}"])
    node = {**OmegaConf.to_container(cfg.model.generator, resolve=True), **overrides}
    node["num_mels"] = cfg.features.num_mels
    generator_class = get_class(node.pop("_target_"))
    return lively(generator_class(**node), MelConfig.coerce(cfg.features), seed)


def _default_features() -> MelConfig:
    return MelConfig.coerce(compose_config([]).features)


def bigvgan() -> nn.Module:
    """BigVGAN v2's layout (6 stages, AMP blocks, anti-aliased SnakeBeta) at 64 channels, 80 mels."""
    return lively(BigVGANGenerator(num_mels=80, upsample_initial_channel=64), _default_features())


def vocos(padding: str) -> nn.Module:
    """Vocos' layout (embedding conv, 3 ConvNeXt blocks, ISTFT head n_fft 1024, hop 256) at width 32, 80 mels."""
    generator = VocosGenerator(num_mels=80, dim=32, intermediate_dim=64, num_layers=3, padding=padding)
    return lively(generator, _default_features())


#: The families besides HiFi-GAN, built on demand.
OTHER_FAMILIES = {"bigvgan": bigvgan, "vocos_same": lambda: vocos("same"), "vocos_center": lambda: vocos("center")}


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return hifigan("hifigan_tiny")


def _frames_read(generator: nn.Module, frames: int, at: int) -> list[int]:
    """Input frames the audio of frame ``at`` depends on, measured, in float64.

    Measured twice: the frames with a non-zero gradient of that audio (the edge frames reach it through
    products of many edge weights, ~1e-20, below what a finite perturbation of O(1) output can show),
    and the audio stays bit for bit the same when every other frame is replaced.
    """
    generator = generator.double()
    torch.manual_seed(1)
    mel = torch.randn(1, generator.num_mels, frames, dtype=torch.float64, requires_grad=True)
    samples = slice(at * generator.hop_size, (at + 1) * generator.hop_size)
    audio = generator(mel)[0, 0, samples]
    audio.sum().backward()
    reads = [t for t in range(frames) if mel.grad[0, :, t].abs().sum() > 0]
    outside = torch.ones(frames, dtype=torch.bool)
    outside[reads] = False
    other = mel.detach().clone()
    other[..., outside] = torch.randn_like(other[..., outside])
    # With autograd recording, as above: the same arithmetic (a folded BigVGAN computes inference
    # without it through other, equal-within-rounding products).
    assert torch.equal(generator(other)[0, 0, samples].detach(), audio.detach())
    generator.float()
    return reads


@pytest.mark.parametrize(
    ("model", "overrides"),
    [
        ("hifigan_v1", NARROW),  # V1 and V2 share the layout (V2 is V1 at 128 channels)
        ("hifigan_v3", NARROW),
        # Another layout, so the walk is not tuned to the published ones: 4 stages of 4x, odd kernels.
        ("hifigan_v1", {**NARROW, "upsample_rates": [4, 4, 4, 4], "upsample_kernel_sizes": [8, 12, 4, 8],
                        "resblock_kernel_sizes": [5, 9], "resblock_dilation_sizes": [[1, 2, 4], [2, 7, 1]]}),
    ],
)
def test_computed_field_is_exactly_the_frames_an_impulse_reaches(model, overrides):
    generator = hifigan(model, **overrides)
    field = receptive_field(generator)
    assert field.hop_size == generator.hop_size == 256
    # Room on both sides, so that the utterance edges cannot hide part of the field.
    at = field.left + 5
    frames = at + field.right + 6
    assert _frames_read(generator, frames, at) == list(range(at - field.left, at + field.right + 1))


@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_other_families_stream_exactly_over_their_computed_field(family):
    generator = OTHER_FAMILIES[family]()
    field = receptive_field(generator)
    at = field.left + 3
    frames = at + field.right + 4
    assert _frames_read(generator, frames, at) == list(range(at - field.left, at + field.right + 1))
    torch.manual_seed(5)
    mel = torch.randn(2, 80, 30)
    with torch.inference_mode():
        whole = generator(mel)[:, 0]
    assert whole.abs().max() > 0.01
    for chunk in (1, 4, 30):
        torch.testing.assert_close(StreamingVocoder(generator).vocode(mel, chunk), whole, rtol=0, atol=1e-4)


def test_the_published_configs_have_the_fields_of_their_layouts():
    fields = {name: receptive_field(hifigan(name, **NARROW)) for name in ("hifigan_v1", "hifigan_v3", "hifigan_tiny")}
    # V2 differs from V1 in width only, the tiny model from V3 in width only.
    assert receptive_field(hifigan("hifigan_v2", **NARROW)) == fields["hifigan_v1"]
    assert fields["hifigan_tiny"] == fields["hifigan_v3"]
    # The larger kernels and dilations of V1 reach further than V3's.
    assert fields["hifigan_v1"].frames > fields["hifigan_v3"].frames > 1


@pytest.mark.parametrize("chunk", [1, 2, 5, 11, 40, 1000])
def test_chunked_equals_whole(tiny, chunk):
    torch.manual_seed(2)
    mel = torch.randn(2, tiny.num_mels, 40)
    with torch.inference_mode():
        whole = tiny(mel)[:, 0]
    assert whole.abs().max() > 0.1
    stream = StreamingVocoder(tiny)
    batched = stream.vocode(mel, chunk)
    single = stream.vocode(mel[1], chunk)
    assert batched.shape == whole.shape and single.shape == whole[1].shape
    torch.testing.assert_close(batched, whole, rtol=0, atol=1e-4)
    torch.testing.assert_close(single, whole[1], rtol=0, atol=1e-4)


def test_push_emits_each_frame_as_soon_as_its_lookahead_has_arrived(tiny):
    field = receptive_field(tiny)
    torch.manual_seed(3)
    mel = torch.randn(tiny.num_mels, 50)
    with torch.inference_mode():
        whole = tiny(mel.unsqueeze(0))[0, 0]
    stream = StreamingVocoder(tiny)
    pieces, pushed = [], 0
    for size in (3, 1, 17, 1, 9, 19):
        pieces.append(stream.push(mel[:, pushed : pushed + size]))
        pushed += size
        assert sum(p.shape[-1] for p in pieces) == max(0, pushed - field.right) * tiny.hop_size
    pieces.append(stream.flush())
    assert pieces[-1].shape[-1] == min(pushed, field.right) * tiny.hop_size
    torch.testing.assert_close(torch.cat(pieces), whole, rtol=0, atol=1e-4)
    # flush() ended the utterance: the next push starts a new one.
    torch.testing.assert_close(stream.vocode(mel[:, :20], 4), tiny(mel[None, :, :20])[0, 0].detach(), rtol=0, atol=1e-4)


def test_stream_reports_lookahead_and_time_per_chunk(tiny):
    field = receptive_field(tiny)
    stream = StreamingVocoder(tiny)
    assert stream.lookahead_frames == stream.stats.lookahead_frames == field.right > 0
    assert stream.stats.lookahead_seconds == field.right * tiny.hop_size / tiny.config.sampling_rate
    stream.vocode(torch.zeros(tiny.num_mels, 30), 4)
    stats = stream.stats
    # 30 frames in chunks of 4: a push emits once more than `right` frames are in, then the flush emits.
    ends = [4, 8, 12, 16, 20, 24, 28, 30]
    assert stats.chunks == sum(end > field.right for end in ends) + 1
    assert stats.frames_in == stats.frames_out == 30
    assert 0 < stats.max_chunk_seconds <= stats.seconds and stats.mean_chunk_seconds == stats.seconds / stats.chunks
    stream.reset()
    assert stream.stats.chunks == 0 and stream.stats.lookahead_frames == field.right


def test_bad_input_is_a_named_error(tiny):
    stream = StreamingVocoder(tiny)
    with pytest.raises(MelInputError, match="81 mel bins, the vocoder takes num_mels=80"):
        stream.push(torch.zeros(81, 5))
    with pytest.raises(MelInputError, match=r"looks transposed: pass \(\.\.\., 80, 7\)"):
        stream.push(torch.zeros(7, 80))
    for bad in (math.nan, math.inf, -math.inf):
        mel = torch.zeros(80, 5)
        mel[3, 2] = bad
        with pytest.raises(MelInputError, match="1 NaN/inf value"):
            stream.push(mel)
    with pytest.raises(MelInputError, match="zero frames"):
        stream.push(torch.zeros(80, 0))
    with pytest.raises(MelInputError, match=r"flush\(\): zero frames were pushed"):
        stream.flush()
    for size in (0, -3, 1.5, True):
        with pytest.raises(MelInputError, match="chunk size .* must be an integer >= 1"):
            stream.vocode(torch.zeros(80, 5), size)
    stream.push(torch.zeros(2, 80, 3))
    with pytest.raises(MelInputError, match=r"batch shape \(2,\); flush\(\) before a new shape"):
        stream.push(torch.zeros(3, 80, 3))


class _Toy(nn.Module):
    """A family melvoc does not know: a strided, padded conv stack of hop 4, describing its own field."""

    num_mels = 3

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Conv1d(3, 4, 5)  # padded 1 left, 3 right: reads 1 frame back and 3 ahead
        self.up = nn.ConvTranspose1d(4, 2, 8, stride=4, padding=2)
        self.post = nn.Conv1d(2, 1, 3, dilation=2, padding=2)

    @property
    def hop_size(self) -> int:
        return 4

    def receptive_field_layers(self) -> Series:
        return Series((Conv(5, padding=1), ConvTranspose(8, 4, 2), Conv(3, dilation=2, padding=2)))

    def forward(self, mel: Tensor) -> Tensor:
        x = torch.tanh(self.pre(nn.functional.pad(mel, (1, 3))))
        return self.post(self.up(x))


def test_a_family_plugs_in_its_own_span_description():
    toy = _Toy()
    field = receptive_field(toy)
    assert field.right > field.left  # the look-ahead of the asymmetric first conv
    assert _frames_read(toy, 20, 10) == list(range(10 - field.left, 10 + field.right + 1))
    mel = torch.randn(2, 3, 20)
    with torch.inference_mode():
        whole = toy(mel)[:, 0]
    for chunk in (1, 3, 20):
        torch.testing.assert_close(StreamingVocoder(toy).vocode(mel, chunk), whole, rtol=0, atol=1e-5)

    class Unknown(nn.Module):
        hop_size = 1

    with pytest.raises(ReceptiveFieldError, match="Unknown: no receptive field description.*receptive_field_layers"):
        receptive_field(Unknown())


@pytest.mark.parametrize("chunk", [1, 7])
def test_cli_chunk_frames_matches_the_default_synthesis(run, tmp_path, chunk, capsys):
    out = tmp_path / "out"
    args = ["--checkpoint", run.checkpoint, "--output-dir", out, "--subtype", "FLOAT", "--device", "cpu",
            "--chunk-frames", chunk, *run.val_files]
    assert synthesize_main([str(a) for a in args]) == 0
    for path in run.val_files:
        audio, rate = sf.read(out / f"{path.stem}.wav", dtype="float32")
        expected = run.val_audio[path.stem]  # what default synthesis writes, bit for bit (test_synthesize)
        assert rate == run.features.sampling_rate and audio.shape == expected.shape
        assert np.abs(expected).max() > 1e-4
        np.testing.assert_allclose(audio, expected, rtol=0, atol=1e-4)


def test_cli_rejects_a_chunk_size_below_one(run, tmp_path, capsys):
    rc = synthesize_main(["--checkpoint", str(run.checkpoint), "--output-dir", str(tmp_path / "out"),
                          "--chunk-frames", "0", "-q", str(run.val_files[0])])
    assert rc == 2
    assert "--chunk-frames 0: the chunk size must be >= 1 mel frame" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

