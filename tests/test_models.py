"""melvoc.models: the HiFi-GAN generator, discriminators, GAN losses and the generic GANVocoder on CPU."""

from __future__ import annotations

import csv
import math
import os

import hydra
import lightning as L
from hydra.utils import instantiate
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from melvoc.features import MelConfig, MelSpectrogram
from melvoc.deploy.inference import load_generator
from melvoc.models import (
    GANVocoder,
    VocoderGenerator,
    HiFiGANGenerator,
    MultiPeriodDiscriminator,
    MultiScaleDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)
from melvoc.training import train
from tests._trained import TINY_RUN, _one_thread, legacy_checkpoint, run  # noqa: F401 (fixtures)
from tests.conftest import compose_config

# The demo preset made smaller still: V3's layout at 32 channels, narrow discriminators.
TINY = [
    "model=hifigan_tiny",
    "model.generator.upsample_initial_channel=32",
    "model.generator.resblock_kernel_sizes=[3,5]",
    "model.generator.resblock_dilation_sizes=[[1,2],[2,6]]",
    "model.discriminators.mpd.channels=[2,4,8,8,8]",
    "model.discriminators.msd.channels=[4,4,8,8,8,8,8]",
]
TINY_GENERATOR = {
    "num_mels": 80,
    "upsample_rates": [8, 8, 4],
    "upsample_kernel_sizes": [16, 16, 8],
    "upsample_initial_channel": 32,
    "resblock": "2",
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 2], [2, 6]],
}
FEATURES = MelConfig.coerce(compose_config().features)


def _tiny_module(*overrides: str) -> GANVocoder:
    """The tiny GANVocoder from the real config plus Hydra ``overrides``."""
    return hydra.utils.instantiate(compose_config([*TINY, *overrides]).model)


def _generator_from_preset(preset: str, *overrides: str) -> HiFiGANGenerator:
    return hydra.utils.instantiate(compose_config([f"model={preset}", *overrides]).model.generator)


# ---------------------------------------------------------------------------------- generator


@pytest.mark.parametrize(
    ("preset", "published_params_m"),
    [("hifigan_v1", 13.92), ("hifigan_v2", 0.92), ("hifigan_v3", 1.46)],
)
def test_published_generators_shapes_and_sizes(preset, published_params_m):
    generator = _generator_from_preset(preset)
    assert isinstance(generator, HiFiGANGenerator)
    mel = torch.randn(2, 80, 5)
    with torch.no_grad():
        audio = generator(mel)
    # Table 1 of the HiFi-GAN paper counts the inference network (weight norm folded), truncated.
    n_params = sum(p.numel() for p in generator.remove_weight_norm().parameters())
    assert math.floor(n_params / 1e4) / 100 == published_params_m
    assert audio.shape == (2, 1, 5 * 256)
    assert audio.abs().max() <= 1.0


def test_hop512_preset_upsamples_by_512():
    generator = _generator_from_preset("hifigan_v1_hop512", "features=sovits_44k")
    assert generator.hop_size == 512
    with torch.no_grad():
        assert generator(torch.randn(1, 80, 3)).shape == (1, 1, 3 * 512)


def test_upsampling_mismatch_is_a_clear_error():
    with pytest.raises(Exception, match=r"makes 256 samples per frame, which does not match features.hop_size = 512"):
        _tiny_module("features=sovits_44k")


def test_bad_generator_arguments_are_rejected():
    with pytest.raises(ValueError, match="kernel - rate even"):
        HiFiGANGenerator(**{**TINY_GENERATOR, "upsample_kernel_sizes": [16, 15, 8]})
    with pytest.raises(ValueError, match="same length"):
        HiFiGANGenerator(**{**TINY_GENERATOR, "upsample_kernel_sizes": [16, 16]})
    with pytest.raises(ValueError, match="resblock"):
        HiFiGANGenerator(**{**TINY_GENERATOR, "resblock": "3"})
    with pytest.raises(TypeError, match="upsample_rates"):
        HiFiGANGenerator(num_mels=80)  # every layout value comes from the config


def test_remove_weight_norm_keeps_the_output():
    torch.manual_seed(0)
    generator = HiFiGANGenerator(**TINY_GENERATOR).eval()
    mel = torch.randn(2, 80, 6)
    with torch.no_grad():
        before = generator(mel)
    generator.remove_weight_norm()
    with torch.no_grad():
        after = generator(mel)
    assert not any("parametrizations" in name for name, _ in generator.named_parameters())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_remove_weight_norm_under_no_grad_keeps_parameters(context):
    generator = HiFiGANGenerator(**TINY_GENERATOR)
    # one (g, v) pair per weight-normalised conv becomes one weight
    folded = sum(1 for name, _ in generator.named_parameters() if name.endswith("original0"))
    count = len(list(generator.parameters()))
    with context():
        generator.remove_weight_norm()
    names = [name for name, _ in generator.named_parameters()]
    assert len(names) == count - folded
    assert all(isinstance(module.weight, nn.Parameter) for module in generator.modules() if hasattr(module, "weight"))
    assert not list(generator.buffers())
    assert all(p.requires_grad for p in generator.parameters())
    # the folded weights are ordinary tensors: autograd works on them outside the context
    generator(torch.randn(1, 80, 4)).square().sum().backward()
    assert generator.conv_pre.weight.grad is not None


def test_generator_init_is_pytorchs_default_under_weight_norm():
    """The official init_weights (N(0, 0.01)) has no effect under weight norm, here as there."""
    torch.manual_seed(0)
    generator = _generator_from_preset("hifigan_v1")
    conv = generator.conv_post  # Conv1d(32 -> 1, kernel 7): fan_in 224
    v = conv.parametrizations.weight.original1
    g = conv.parametrizations.weight.original0
    bound = 1 / math.sqrt(32 * 7)
    assert v.abs().max() <= bound
    assert v.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)  # U(-b, b), not N(0, 0.01)
    torch.testing.assert_close(g, torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True))
    torch.testing.assert_close(conv.weight, v)


# ----------------------------------------------------------------------------- discriminators


def test_multi_period_discriminator_outputs():
    mpd = MultiPeriodDiscriminator(periods=[2, 3, 5, 7, 11], channels=[2, 4, 8, 8, 8])
    audio = torch.randn(3, 1, 1000)  # not a multiple of any period: each pads to the next multiple
    logits, fmaps = mpd(audio)
    assert len(logits) == len(fmaps) == 5
    for k, period in enumerate([2, 3, 5, 7, 11]):
        assert len(fmaps[k]) == 6  # 5 convs + conv_post
        first = fmaps[k][0]
        assert first.shape[0] == 3 and first.shape[-1] == period
        assert first.shape[2] == math.ceil(math.ceil(1000 / period) / 3)
        assert logits[k].dim() == 2 and logits[k].shape[0] == 3


def test_multi_scale_discriminator_outputs():
    msd = MultiScaleDiscriminator(scales=3, channels=[4, 4, 8, 8, 8, 8, 8])
    logits, fmaps = msd(torch.randn(2, 1, 4096))
    assert len(logits) == len(fmaps) == 3
    assert all(len(f) == 8 for f in fmaps)  # 7 convs + conv_post per scale
    # each scale sees audio average-pooled by 2 more, so its last layer is ~half as long
    assert logits[0].shape[1] > logits[1].shape[1] > logits[2].shape[1]
    assert all(lo.shape[0] == 2 for lo in logits)


def test_published_discriminators_from_the_v1_preset():
    cfg = compose_config(["model=hifigan_v1"])
    mpd = hydra.utils.instantiate(cfg.model.discriminators.mpd)
    msd = hydra.utils.instantiate(cfg.model.discriminators.msd)
    assert sum(p.numel() for p in mpd.parameters()) == pytest.approx(41.1e6, rel=1e-2)
    assert sum(p.numel() for p in msd.parameters()) == pytest.approx(29.6e6, rel=1e-2)
    with torch.no_grad():
        logits, fmaps = mpd(torch.randn(1, 1, 2048))
    assert len(logits) == 5 and sum(len(f) for f in fmaps) == 30


def test_no_discriminator_is_an_error():
    with pytest.raises(Exception, match="none is set"):
        _tiny_module("model.discriminators.mpd=null", "model.discriminators.msd=null")


# ----------------------------------------------------------------------------------- losses


def test_lsgan_losses_on_known_inputs():
    ones, zeros = torch.ones(2, 3), torch.zeros(2, 3)
    # perfect discriminator: real -> 1, fake -> 0
    assert discriminator_loss([ones, ones], [zeros, zeros]).item() == 0.0
    # fooled on both: (1 - 0)^2 + 1^2 per sub-discriminator
    assert discriminator_loss([zeros, zeros], [ones, ones]).item() == 4.0
    half = torch.full((2, 3), 0.5)
    assert discriminator_loss([half], [half]).item() == pytest.approx(0.25 + 0.25)
    assert generator_loss([ones, ones]).item() == 0.0
    assert generator_loss([zeros, half]).item() == pytest.approx(1.0 + 0.25)
    real = [[torch.tensor([[1.0, 2.0]])], [torch.tensor([[[0.0, 0.0, 3.0]]])]]
    fake = [[torch.tensor([[0.0, 4.0]])], [torch.tensor([[[0.0, 0.0, 0.0]]])]]
    # mean |diff| per map: (1 + 2) / 2 = 1.5 and 3 / 3 = 1.0
    assert feature_matching_loss(real, fake).item() == pytest.approx(2.5)


def test_hinge_losses_on_known_inputs():
    real = torch.tensor([[2.0, 0.5, -1.0]])  # relu(1 - x): 0, 0.5, 2
    fake = torch.tensor([[-2.0, 0.0, 1.0]])  # relu(1 + x): 0, 1, 2
    assert discriminator_loss([real], [fake], "hinge").item() == pytest.approx(2.5 / 3 + 3.0 / 3)
    # generator: relu(1 - D(fake)) = 3, 1, 0
    assert generator_loss([fake], "hinge").item() == pytest.approx(4.0 / 3)
    assert generator_loss([fake], "lsgan").item() == pytest.approx((9 + 1 + 0) / 3)
    with pytest.raises(ValueError, match="lsgan, hinge"):
        generator_loss([fake], "wasserstein")


def test_gan_losses_are_float32_for_half_inputs():
    logits = [torch.full((2, 4), 300.0, dtype=torch.bfloat16)]
    for kind in ("lsgan", "hinge"):
        assert discriminator_loss(logits, logits, kind).dtype == torch.float32
        assert generator_loss(logits, kind).dtype == torch.float32
    big = [[torch.full((4, 4), 255.0, dtype=torch.float16)]]
    small = [[torch.full((4, 4), -255.0, dtype=torch.float16)]]
    assert feature_matching_loss(big, small).item() == 510.0


class ConstantDiscriminator(nn.Module):
    """Sub-discriminator ``k`` answers ``logits[k]`` everywhere and has one feature map, ``scales[k] * audio``."""

    def __init__(self, logits: list[float], scales: list[float]) -> None:
        super().__init__()
        self.logits, self.scales = logits, scales
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, audio: torch.Tensor):
        full = [torch.full((audio.size(0), 3), v) + 0 * self.unused for v in self.logits]
        return full, [[s * audio] for s in self.scales]


def _module_with_losses(weights: dict, reduction: str, kind: str = "lsgan") -> GANVocoder:
    """The tiny module with two constant discriminators: ``a`` (2 sub-discriminators) and ``b`` (3)."""
    node = OmegaConf.to_container(compose_config(TINY).model, resolve=True)
    stub = f"{__name__}.ConstantDiscriminator"
    node["discriminators"] = {
        "a": {"_target_": stub, "logits": [0.5, 0.0], "scales": [1.0, 2.0]},
        "b": {"_target_": stub, "logits": [2.0, 1.0, -1.0], "scales": [1.0, 1.0, 4.0]},
    }
    node.update(discriminator_weights=weights, sub_discriminator_reduction=reduction, adversarial_loss=kind)
    return hydra.utils.instantiate(node)


@pytest.mark.parametrize(
    ("weights", "reduction", "kind", "expected_d", "expected_adv", "expected_fm"),
    [
        # lsgan D: a (0.25 + 0.25) + (1 + 0) = 1.5; b (1 + 4) + (0 + 1) + (4 + 1) = 11.
        # lsgan G: a 0.25 + 1 = 1.25; b 1 + 0 + 4 = 5.  FM (|audio - audio_hat| = 0.5): a 0.5 + 1 = 1.5; b 3.
        pytest.param({}, "sum", "lsgan", 1.5 + 11, 1.25 + 5, 1.5 + 3, id="sum-unweighted"),
        pytest.param({}, "mean", "lsgan", 1.5 / 2 + 11 / 3, 1.25 / 2 + 5 / 3, 1.5 / 2 + 3 / 3, id="mean"),
        pytest.param({"b": 0.1}, "sum", "lsgan", 1.5 + 1.1, 1.25 + 0.5, 1.5 + 0.3, id="sum-weighted"),
        # hinge D: a (0.5 + 1.5) + (1 + 1) = 4; b (0 + 3) + (0 + 2) + (2 + 0) = 7.
        # hinge G: a 0.5 + 1 = 1.5; b 0 + 0 + 2 = 2.
        pytest.param({"b": 0.1}, "mean", "hinge", 4 / 2 + 0.1 * 7 / 3, 1.5 / 2 + 0.1 * 2 / 3, 1.5 / 2 + 0.1 * 3 / 3,
                     id="vocos-form"),
    ],
)
def test_discriminator_weights_and_reduction_on_known_inputs(weights, reduction, kind, expected_d, expected_adv,
                                                             expected_fm):
    module = _module_with_losses(weights, reduction, kind)
    audio, audio_hat = torch.full((2, 1, 64), 0.25), torch.full((2, 1, 64), -0.25)
    assert module.discriminator_loss(torch.cat([audio, audio_hat])).item() == pytest.approx(expected_d)
    adv, fm = module.adversarial_losses(audio, audio_hat)
    assert (adv.item(), fm.item()) == (pytest.approx(expected_adv), pytest.approx(expected_fm))


def test_sum_with_unit_weights_is_the_plain_sum_of_the_gan_losses():
    """The HiFi-GAN presets' setting adds the per-discriminator losses as before, bit for bit."""
    torch.manual_seed(0)
    module = _tiny_module().eval()  # eval: the MSD's spectral norm would otherwise iterate on every call
    assert module.hparams.sub_discriminator_reduction == "sum" and module.hparams.discriminator_weights == {}
    audio, audio_hat = torch.randn(2, 1, 2048), torch.randn(2, 1, 2048)
    both = torch.cat([audio, audio_hat])
    expected_d = expected_adv = expected_fm = 0.0
    for discriminator in module.discriminators.values():
        logits, _ = discriminator(both)
        expected_d = expected_d + discriminator_loss(*zip(*(lo.chunk(2) for lo in logits)))
        fake_logits, fake_fmaps = discriminator(audio_hat)
        expected_adv = expected_adv + generator_loss(fake_logits)
        expected_fm = expected_fm + feature_matching_loss(discriminator(audio)[1], fake_fmaps)
    assert torch.equal(module.discriminator_loss(both), expected_d)
    adv, fm = module.adversarial_losses(audio, audio_hat)
    assert torch.equal(adv, expected_adv) and torch.equal(fm, expected_fm)


@pytest.mark.parametrize("preset", ["hifigan_tiny", "hifigan_v1", "hifigan_v1_hop512", "hifigan_v2", "hifigan_v3"])
def test_hifigan_presets_state_a_plain_sum(preset):
    model = compose_config([f"model={preset}"]).model
    assert model.discriminator_weights == {} and model.sub_discriminator_reduction == "sum"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+model.discriminator_weights.msdd=0.5", "discriminator_weights names msdd, which model.discriminators"),
        ("+model.discriminator_weights.msd=0", r"discriminator_weights.msd = 0: must be a positive number"),
        ("+model.discriminator_weights.msd=abc", r"discriminator_weights.msd = 'abc': must be a positive"),
        ("model.sub_discriminator_reduction=avg", "sub_discriminator_reduction = 'avg': expected one of sum, mean"),
    ],
)
def test_bad_loss_combinations_are_named(override, message):
    with pytest.raises(Exception, match=message):  # Hydra wraps the ValueError
        _tiny_module(override)


def test_mpd_first_feature_map_leaves_out_the_first_layers():
    torch.manual_seed(0)
    every = MultiPeriodDiscriminator([2, 3], [4, 8, 8, 8, 8])
    vocos = MultiPeriodDiscriminator([2, 3], [4, 8, 8, 8, 8], first_feature_map=1)
    vocos.load_state_dict(every.state_dict())
    audio = torch.randn(2, 1, 999)
    (logits_all, fmaps_all), (logits, fmaps) = every(audio), vocos(audio)
    assert all(torch.equal(a, b) for a, b in zip(logits_all, logits))
    assert [len(f) for f in fmaps] == [5, 5] and [len(f) for f in fmaps_all] == [6, 6]
    assert all(torch.equal(a, b) for full, part in zip(fmaps_all, fmaps) for a, b in zip(full[1:], part))
    with pytest.raises(ValueError, match="first_feature_map 6: must be in 0..5"):
        MultiPeriodDiscriminator([2], [4, 8, 8, 8, 8], first_feature_map=6)


# ------------------------------------------------------------------------- LightningModule


class _Clips(Dataset):
    """Deterministic harmonic clips (a few partials with vibrato), ``{"audio": (T,)}``."""

    def __init__(self, count: int, samples: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        t = torch.arange(samples) / FEATURES.sampling_rate
        self.clips = []
        for _ in range(count):
            f0 = 100 + 150 * torch.rand((), generator=g)
            phase = 2 * math.pi * torch.cumsum(f0 * (1 + 0.05 * torch.sin(2 * math.pi * 4 * t)), 0)
            phase = phase / FEATURES.sampling_rate
            clip = sum(torch.sin(k * phase) / k for k in range(1, 8)) * 0.3
            self.clips.append(clip + 0.01 * torch.randn(samples, generator=g))

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        audio = self.clips[i]
        return {"audio": audio, "lengths": torch.tensor(audio.numel()), "names": f"clip{i}"}


class _StubData(L.LightningDataModule):
    """The datamodule contract in miniature: dict batches, ``mel`` added on the device."""

    def __init__(self, count: int = 4, samples: int = 2048, batch_size: int = 2) -> None:
        super().__init__()
        self.train_set = _Clips(count, samples)
        self.val_set = _Clips(2, samples, seed=1)
        self.batch_size = batch_size
        self.mel = MelSpectrogram(FEATURES)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=2)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        with torch.no_grad():
            batch["mel"] = self.mel.to(batch["audio"].device)(batch["audio"])
        return batch


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def _optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    param = optimizer.param_groups[0]["params"][0]
    return int(optimizer.state[param]["step"])


def test_max_steps_counts_generator_updates_and_logged_steps_count_batches(tmp_path):
    torch.manual_seed(0)
    model = _tiny_module()
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = _trainer(tmp_path, max_steps=5, logger=logger, log_every_n_steps=1)
    trainer.fit(model, datamodule=_StubData(count=4, batch_size=2))

    opt_g, opt_d = (o for o in trainer.optimizers)
    assert trainer.global_step == 5
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 5
    assert _optimizer_steps(opt_g) == 5 and _optimizer_steps(opt_d) == 5
    for key in ("train/loss_g", "train/loss_d", "train/mel_l1", "train/fm", "train/adv", "train/lr_g", "train/lr_d"):
        assert torch.isfinite(trainer.callback_metrics[key]), key

    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        steps = sorted({int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss_g")})
    assert steps == [0, 1, 2, 3, 4]


def test_learning_rate_decays_once_per_epoch(tmp_path):
    model = _tiny_module("model.scheduler_g.gamma=0.5")
    trainer = _trainer(tmp_path, max_epochs=3)
    trainer.fit(model, datamodule=_StubData(count=4, batch_size=2))
    assert trainer.global_step == 6
    for optimizer in trainer.optimizers:  # scheduler_d follows scheduler_g
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.5**3)


def test_learning_rate_decays_once_per_step(tmp_path):
    model = _tiny_module("model.scheduler_g.gamma=0.5", "model.scheduler_interval=step")
    trainer = _trainer(tmp_path, max_steps=5)
    trainer.fit(model, datamodule=_StubData(count=4, batch_size=2))
    assert trainer.global_step == 5
    for optimizer in trainer.optimizers:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.5**5)
    assert trainer.callback_metrics["train/lr_g"].item() == pytest.approx(2e-4 * 0.5**5)


def test_validation_and_predict_return_audio():
    model = _tiny_module().eval()
    mel = torch.randn(2, 80, 7)
    with torch.no_grad():
        out = model.validation_step({"audio": torch.zeros(2, 7 * 256), "mel": mel}, 0)
        assert out["audio_hat"].shape == (2, 7 * 256) and out["audio_hat"].dtype == torch.float32
        # fine-tuning batches feed mel_target to the generator instead of mel
        target = torch.randn(2, 80, 5)
        out = model.test_step({"audio": torch.zeros(2, 7 * 256), "mel": mel, "mel_target": target}, 0)
        assert out["audio_hat"].shape == (2, 5 * 256)
        assert model.predict_step(mel, 0).shape == (2, 7 * 256)
        # without "mel" the module computes it from the audio with `features`
        assert model.predict_step({"audio": torch.zeros(1, 4 * 256)}, 0).shape == (1, 4 * 256)


def test_validation_vocodes_each_clip_alone():
    torch.manual_seed(0)
    model = _tiny_module().eval()
    mel = torch.randn(3, 80, 9)
    lengths = torch.tensor([9 * 256, 4 * 256, 6 * 256])
    with torch.no_grad():
        out = model.validation_step({"audio": torch.zeros(3, 9 * 256), "mel": mel, "lengths": lengths}, 0)
        for row, n in enumerate(lengths.tolist()):
            alone = model(mel[row : row + 1, :, : n // 256])[0]
            torch.testing.assert_close(out["audio_hat"][row, :n], alone, rtol=0, atol=0)
            assert not out["audio_hat"][row, n:].any()
        # the batch as the generator would see it padded: the short clips' ends differ
        padded = model(mel)
    assert not torch.allclose(padded[1, : 4 * 256], out["audio_hat"][1, : 4 * 256], atol=1e-6)


def test_wrong_mel_channels_is_a_clear_error():
    model = _tiny_module()
    with pytest.raises(ValueError, match=r"expected \(B, 80, frames\)"):
        model.predict_step(torch.randn(1, 100, 4), 0)


def test_config_values_are_checked():
    with pytest.raises(Exception, match="adversarial_loss = 'wgan'"):
        _tiny_module("model.adversarial_loss=wgan")
    with pytest.raises(Exception, match="scheduler_interval = 'batch'"):
        _tiny_module("model.scheduler_interval=batch")
    with pytest.raises(Exception, match="grad_clip_d = -1.0: must be positive"):
        _tiny_module("model.grad_clip_d=-1.0")
    with pytest.raises(Exception, match="not a melvoc.models.base.VocoderGenerator"):
        _tiny_module("model.generator={_target_: torch.nn.Identity}")


def test_bf16_mixed_trains_without_nans(tmp_path):
    torch.manual_seed(0)
    model = _tiny_module("model.grad_clip_g=100.0", "model.grad_clip_d=100.0")
    trainer = _trainer(tmp_path, max_steps=3, precision="bf16-mixed")
    trainer.fit(model, datamodule=_StubData(count=4, batch_size=2))
    assert trainer.global_step == 3
    for key in ("train/loss_g", "train/loss_d", "train/mel_l1", "train/fm"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _norm(module: nn.Module) -> float:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


def test_gradient_clipping_is_per_network(tmp_path):
    norms: list[dict[str, float]] = []

    class Recording(GANVocoder):
        def on_before_optimizer_step(self, optimizer):
            super().on_before_optimizer_step(optimizer)  # clips
            stepped = {"generator": self.generator} if optimizer is self.trainer.optimizers[0] else self.discriminators
            norms.append({name: _norm(network) for name, network in stepped.items()})

    cfg = compose_config([*TINY, "model.grad_clip_g=1e-3", "model.grad_clip_d=2e-3"])
    # Hydra cannot import a class defined in a test: build it from the model node's entries.
    model = Recording(**{key: cfg.model[key] for key in cfg.model if not key.startswith("_")})
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(model, datamodule=_StubData(count=4, batch_size=2))
    assert [sorted(n) for n in norms] == [["mpd", "msd"], ["generator"]] * 2  # discriminators, then generator
    for n in norms:
        assert n.get("generator", 0) <= 1e-3 * 1.001
        assert n.get("mpd", 0) <= 2e-3 * 1.001 and n.get("msd", 0) <= 2e-3 * 1.001
    # each discriminator on its own: together they exceed the bound of one
    assert any(math.hypot(n["mpd"], n["msd"]) > 2e-3 * 1.01 for n in norms if "mpd" in n)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """6 generator steps (3 epochs of 2 batches), gamma 0.5 per epoch, a checkpoint after every step."""
    root = tmp_path_factory.mktemp("straight")
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1)
    torch.manual_seed(0)
    model = _tiny_module("model.scheduler_g.gamma=0.5")
    trainer = _trainer(root, max_steps=6, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(model, datamodule=_StubData(count=4, batch_size=2))
    return model, {int(p.stem.split("step=")[1]): p for p in (root / "ckpt").glob("*.ckpt")}


def test_checkpoint_carries_features_nodes_and_both_optimizers(straight_run):
    _, checkpoints = straight_run
    assert sorted(checkpoints) == [1, 2, 3, 4, 5, 6]
    state = torch.load(checkpoints[3], map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 and state["epoch"] == 1
    hp = state["hyper_parameters"]
    assert hp["features"] == FEATURES.to_dict()
    assert hp["loss_features"]["fmax"] is None
    assert hp["generator"]["_target_"] == "melvoc.models.hifigan.HiFiGANGenerator"
    assert hp["generator"]["num_mels"] == 80 and hp["generator"]["upsample_initial_channel"] == 32
    assert hp["discriminators"]["mpd"]["_target_"] == "melvoc.models.discriminators.MultiPeriodDiscriminator"
    assert hp["optimizer_g"]["_partial_"] is True and hp["scheduler_d"]["gamma"] == 0.5
    assert any(k.startswith("discriminators.msd.") for k in state["state_dict"])
    assert len(state["optimizer_states"]) == 2
    assert [s["last_epoch"] for s in state["lr_schedulers"]] == [1, 1]
    # the checkpoint rebuilds the module from its hyper-parameters alone
    restored = GANVocoder.load_from_checkpoint(checkpoints[3], map_location="cpu")
    assert restored.features == FEATURES
    assert restored.hparams.scheduler_g["gamma"] == 0.5


# step 2 and 4 end an epoch (saved before that epoch's on_train_epoch_end), step 3 is mid-epoch
@pytest.mark.parametrize("resume_step", [2, 3, 4])
def test_resume_restores_step_optimizers_and_lr_decay(tmp_path, straight_run, resume_step):
    straight, checkpoints = straight_run
    resumed = _tiny_module("model.scheduler_g.gamma=0.5")
    trainer = _trainer(tmp_path, max_steps=6)
    trainer.fit(resumed, datamodule=_StubData(count=4, batch_size=2), ckpt_path=checkpoints[resume_step])
    assert trainer.global_step == 6 and trainer.current_epoch == 3
    for optimizer in trainer.optimizers:
        assert _optimizer_steps(optimizer) == 6
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.5**3)
    if resume_step % 2 == 0:
        # from an epoch boundary the data order is the same: resuming reproduces the straight run
        for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
            torch.testing.assert_close(b, a, msg=name)


def test_resume_from_a_checkpoint_of_the_hifigan_module(tmp_path, straight_run):
    """ckpt_path= of a checkpoint in the layout main at f0f84fd wrote gives the same run."""
    straight, checkpoints = straight_run
    legacy = legacy_checkpoint(checkpoints[2], tmp_path / "legacy.ckpt")
    assert "discriminator" in torch.load(legacy, weights_only=True)["hyper_parameters"]
    resumed = _tiny_module("model.scheduler_g.gamma=0.5")
    trainer = _trainer(tmp_path, max_steps=6)
    trainer.fit(resumed, datamodule=_StubData(count=4, batch_size=2), ckpt_path=legacy)
    assert trainer.global_step == 6
    for optimizer in trainer.optimizers:
        assert _optimizer_steps(optimizer) == 6
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.5**3)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)


# -------------------------------------------------------------------------------- Hydra presets


@pytest.mark.parametrize("preset", ["hifigan_tiny", "hifigan_v1", "hifigan_v2", "hifigan_v3"])
def test_presets_instantiate_with_the_default_features(preset):
    cfg = compose_config([f"model={preset}"])
    model = hydra.utils.instantiate(cfg.model)
    assert isinstance(model, GANVocoder) and isinstance(model.generator, HiFiGANGenerator)
    assert model.generator.hop_size == cfg.features.hop_size
    assert model.generator.config == model.features
    assert sorted(model.discriminators) == ["mpd", "msd"]
    assert model.hparams.features == MelConfig.coerce(cfg.features).to_dict()
    assert model.hparams.loss_features["fmax"] is None
    assert model.hparams.lambda_mel == 45.0 and model.hparams.lambda_fm == 2.0
    assert model.hparams.adversarial_loss == "lsgan" and model.hparams.scheduler_interval == "epoch"
    for node in (model.hparams.optimizer_g, model.hparams.optimizer_d):
        assert node["lr"] == 2e-4 and list(node["betas"]) == [0.8, 0.99]


def test_hop512_preset_instantiates_with_44k_features():
    cfg = compose_config(["features=sovits_44k", "model=hifigan_v1_hop512"])
    model = hydra.utils.instantiate(cfg.model)
    assert model.generator.hop_size == 512 == model.features.hop_size


def test_multiscale_mel_loss_is_selectable():
    from melvoc.models.mel_loss import MelLoss, MultiScaleMelLoss

    assert type(_tiny_module().mel_loss) is MelLoss
    model = _tiny_module("model/mel_loss=multiscale")
    assert isinstance(model.mel_loss, MultiScaleMelLoss)
    assert model.hparams.mel_loss["sampling_rate"] == FEATURES.sampling_rate


def test_ddp_without_find_unused_parameters_fails_at_setup(tmp_path):
    environ = dict(os.environ)
    trainer = _trainer(tmp_path, max_steps=1, strategy="ddp", devices=1)
    try:
        with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
            trainer.fit(_tiny_module(), datamodule=_StubData(count=2, batch_size=2))
    finally:
        # leave no process group or MASTER_PORT behind for the tests that follow
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)


# ------------------------------------------------------------------ training runs from config alone


def _run_overrides(root, *overrides: str) -> list[str]:
    """The tiny demo run of tests/_trained.py with ``overrides`` (a ``model=`` one replaces its preset)."""
    base = [o for o in TINY_RUN if not (o.startswith("model=") and any(x.startswith("model=") for x in overrides))]
    return [*base, *overrides, f"paths.root_dir={root}", f"paths.output_dir={root / 'run'}"]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param([], id="hifigan_tiny-mpd+msd-lsgan-epoch"),
        # A second set from overrides of the real config only: another generator layout, the MPD
        # alone with two periods, hinge loss, schedulers stepped per generator update.
        pytest.param(
            [
                "model=hifigan_v2",
                "model.generator.upsample_initial_channel=32",
                "model.discriminators.msd=null",
                "model.discriminators.mpd.periods=[2,3]",
                "model.discriminators.mpd.channels=[4,8,16,16,16]",
                "model.adversarial_loss=hinge",
                "model.scheduler_g.gamma=0.9",
                "model.scheduler_interval=step",
                "model.grad_clip_d=10.0",
            ],
            id="hifigan_v2-mpd-hinge-step",
        ),
    ],
)
def test_two_model_sets_train_from_config_alone(tmp_path, overrides):
    cfg = compose_config(_run_overrides(tmp_path, *overrides))
    result = train(cfg)
    assert result.global_step == 2 and result.final_val_mel_l1 is not None
    assert math.isfinite(result.final_val_mel_l1)
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    hp = state["hyper_parameters"]
    assert hp["generator"]["upsample_initial_channel"] == cfg.model.generator.upsample_initial_channel
    names = sorted(name for name, node in hp["discriminators"].items() if node is not None)
    assert names == sorted(name for name, node in cfg.model.discriminators.items() if node is not None)
    assert {k.split(".")[1] for k in state["state_dict"] if k.startswith("discriminators.")} == set(names)
    assert hp["adversarial_loss"] == cfg.model.adversarial_loss
    # Two training clips at batch 1: the two steps are the first epoch, which ends with one decay.
    decays = 2 if cfg.model.scheduler_interval == "step" else 1
    assert [s["last_epoch"] for s in state["lr_schedulers"]] == [decays, decays]
    for optimizer_state in state["optimizer_states"]:
        assert optimizer_state["param_groups"][0]["lr"] == pytest.approx(2e-4 * cfg.model.scheduler_g.gamma**decays)
    generator = load_generator(result.last_checkpoint)
    with torch.no_grad():
        assert generator(torch.zeros(1, 80, 3)).shape == (1, 1, 3 * 256)


def test_val_mel_l1_does_not_depend_on_the_validation_batch_size(run, tmp_path):
    """Four validation clips of different lengths, one per batch and three per batch: the same val/mel_l1."""
    values = {}
    for batch_size in (1, 3):
        cfg = compose_config(_run_overrides(tmp_path, "data.synthetic.num_val=4", f"data.val_batch_size={batch_size}"))
        callbacks = [instantiate(node) for node in cfg.callbacks.values() if node is not None]
        trainer = L.Trainer(
            accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[c for c in callbacks if not isinstance(c, ModelCheckpoint)],
        )
        model = GANVocoder.load_from_checkpoint(run.checkpoint, map_location="cpu")
        datamodule = instantiate(cfg.data)
        values[batch_size] = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/mel_l1"]
        frames = [datamodule.val_dataset.lengths[i] // 256 for i in range(4)]
        assert len(set(frames[:3])) > 1, "clips of different lengths, so the batch of three pads"
    assert values[3] == pytest.approx(values[1], rel=1e-5)



def test_checkpoint_naming_the_mel_loss_by_its_old_module_loads(run, tmp_path):
    """Checkpoints written before the layout change name ``melvoc.loss.MelLoss``; they still load."""
    data = torch.load(run.checkpoint, map_location="cpu", weights_only=False)
    assert data["hyper_parameters"]["mel_loss"]["_target_"] == "melvoc.models.mel_loss.MelLoss"
    data["hyper_parameters"]["mel_loss"]["_target_"] = "melvoc.loss.MelLoss"
    old = tmp_path / "old.ckpt"
    torch.save(data, old)
    model = GANVocoder.load_from_checkpoint(old, map_location="cpu")
    assert type(model.mel_loss).__module__ == "melvoc.models.mel_loss" and model.hparams.mel_loss["_target_"].endswith(
        "models.mel_loss.MelLoss")


# ----------------------------------------------------------------- a new family: a class and a YAML file


class FrameRepeatGenerator(VocoderGenerator):
    """A family in a dozen lines (the README's worked example): a conv over the mels, then one
    transposed conv that turns every frame into ``hop_size`` samples. ``(B, num_mels, F) -> (B, 1, F * hop)``."""

    def __init__(self, num_mels: int, hop_size: int, channels: int) -> None:
        super().__init__()
        self.num_mels = num_mels
        self._hop_size = hop_size
        self.conv = nn.Conv1d(num_mels, channels, 3, padding=1)
        self.up = nn.ConvTranspose1d(channels, 1, 2 * hop_size, stride=hop_size, padding=hop_size // 2)

    @property
    def hop_size(self) -> int:
        return self._hop_size

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.up(F.leaky_relu(self.conv(mel), 0.1)))


FAMILY_YAML = f"""\
_target_: melvoc.models.GANVocoder
_recursive_: false
features: ${{features}}
loss_features: ${{loss_features}}
generator:
  _target_: {__name__}.FrameRepeatGenerator
  num_mels: ${{features.num_mels}}
  hop_size: ${{features.hop_size}}
  channels: 32
discriminators:
  mpd:
    _target_: melvoc.models.discriminators.MultiPeriodDiscriminator
    periods: [2, 3, 5]
    channels: [4, 8, 16, 16, 16]
adversarial_loss: hinge
discriminator_weights: {{}}
sub_discriminator_reduction: sum
lambda_adv: 1.0
lambda_fm: 2.0
lambda_mel: 45.0
mel_loss:
  _target_: melvoc.models.mel_loss.MelLoss
  config: ${{loss_features}}
optimizer_g:
  _target_: torch.optim.AdamW
  _partial_: true
  lr: 2.0e-4
  betas: [0.8, 0.99]
optimizer_d: ${{.optimizer_g}}
scheduler_g: null
scheduler_d: null
scheduler_interval: step
grad_clip_g: 100.0
grad_clip_d: null
"""


def test_a_new_family_is_a_generator_class_and_a_yaml_file(tmp_path):
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "frame_repeat.yaml").write_text(FAMILY_YAML)
    overrides = _run_overrides(tmp_path, "model=frame_repeat", f"hydra.searchpath=[file://{conf}]")
    result = train(compose_config(overrides))
    assert result.global_step == 2 and math.isfinite(result.final_val_mel_l1)
    generator = load_generator(result.last_checkpoint)
    assert type(generator) is FrameRepeatGenerator and generator.config == FEATURES
    with torch.no_grad():
        assert generator(torch.zeros(1, 80, 3)).shape == (1, 1, 3 * 256)
