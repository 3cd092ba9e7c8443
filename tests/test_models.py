"""melvoc.models: HiFi-GAN generator, discriminators, GAN losses and the LightningModule on CPU."""

from __future__ import annotations

import csv
import math
import os

import hydra
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from melvoc.features import MelConfig, MelSpectrogram
from melvoc.models import (
    CombinedDiscriminator,
    Generator,
    HiFiGAN,
    MultiPeriodDiscriminator,
    MultiScaleDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)

FEATURES = MelConfig(sampling_rate=22050, n_fft=1024, hop_size=256, win_size=1024, num_mels=80)
TINY_GENERATOR = {
    "upsample_rates": [8, 8, 4],
    "upsample_kernel_sizes": [16, 16, 8],
    "upsample_initial_channel": 32,
    "resblock": "2",
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 2], [2, 6]],
}
TINY_DISCRIMINATOR = {
    "mpd": {"periods": [2, 3, 5, 7, 11], "channels": [2, 4, 8, 8, 8]},
    "msd": {"scales": 3, "channels": [4, 4, 8, 8, 8, 8, 8]},
}


def _generator_from_preset(compose_cfg, preset: str) -> Generator:
    cfg = compose_cfg([f"model={preset}"])
    args = OmegaConf.to_container(cfg.model.generator, resolve=True)
    return Generator(num_mels=cfg.features.num_mels, **args)


# ---------------------------------------------------------------------------------- generator


@pytest.mark.parametrize(
    ("preset", "published_params_m"),
    [("hifigan_v1", 13.92), ("hifigan_v2", 0.92), ("hifigan_v3", 1.46)],
)
def test_published_generators_shapes_and_sizes(compose_cfg, preset, published_params_m):
    generator = _generator_from_preset(compose_cfg, preset)
    mel = torch.randn(2, 80, 5)
    with torch.no_grad():
        audio = generator(mel)
    # Table 1 of the HiFi-GAN paper counts the inference network (weight norm folded), truncated.
    n_params = sum(p.numel() for p in generator.remove_weight_norm().parameters())
    assert math.floor(n_params / 1e4) / 100 == published_params_m
    assert audio.shape == (2, 1, 5 * 256)
    assert audio.abs().max() <= 1.0


def test_hop512_preset_upsamples_by_512(compose_cfg):
    generator = _generator_from_preset(compose_cfg, "hifigan_v1_hop512")
    assert generator.hop_size == 512
    with torch.no_grad():
        assert generator(torch.randn(1, 80, 3)).shape == (1, 1, 3 * 512)


def test_upsampling_mismatch_is_a_clear_error():
    features_512 = FEATURES.replace(sampling_rate=44100, n_fft=2048, win_size=2048, hop_size=512)
    with pytest.raises(ValueError, match=r"8 x 8 x 4 = 256 does not match features.hop_size = 512"):
        HiFiGAN(features=features_512, generator=TINY_GENERATOR, discriminator=TINY_DISCRIMINATOR)


def test_hydra_preset_mismatch_fails_at_instantiation(compose_cfg):
    cfg = compose_cfg(["features=sovits_44k", "model=hifigan_v3"])
    with pytest.raises(Exception, match=r"= 256 does not match features.hop_size = 512"):
        hydra.utils.instantiate(cfg.model)


def test_bad_generator_arguments_are_rejected():
    with pytest.raises(ValueError, match="kernel - rate even"):
        Generator(upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 15, 8])
    with pytest.raises(ValueError, match="same length"):
        Generator(upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16])
    with pytest.raises(ValueError, match="resblock"):
        Generator(resblock="3")


def test_remove_weight_norm_keeps_the_output():
    torch.manual_seed(0)
    generator = Generator(num_mels=80, **TINY_GENERATOR).eval()
    mel = torch.randn(2, 80, 6)
    with torch.no_grad():
        before = generator(mel)
        generator.remove_weight_norm()
        after = generator(mel)
    assert not any("parametrizations" in name for name, _ in generator.named_parameters())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- discriminators


def test_multi_period_discriminator_outputs():
    mpd = MultiPeriodDiscriminator(periods=[2, 3, 5, 7, 11], channels=[2, 4, 8, 8, 8])
    audio = torch.randn(3, 1, 1000)  # not a multiple of any period: each pads to the next multiple
    logits, fmaps = mpd(audio)
    assert len(logits) == 5
    assert len(fmaps) == 5 * 6  # 5 convs + conv_post per period
    for k, period in enumerate([2, 3, 5, 7, 11]):
        first = fmaps[6 * k]
        assert first.shape[0] == 3 and first.shape[-1] == period
        assert first.shape[2] == math.ceil(math.ceil(1000 / period) / 3)
        assert logits[k].dim() == 2 and logits[k].shape[0] == 3


def test_multi_scale_discriminator_outputs():
    msd = MultiScaleDiscriminator(scales=3, channels=[4, 4, 8, 8, 8, 8, 8])
    logits, fmaps = msd(torch.randn(2, 4096))
    assert len(logits) == 3
    assert len(fmaps) == 3 * 8  # 7 convs + conv_post per scale
    # each scale sees audio average-pooled by 2 more, so its last layer is ~half as long
    assert logits[0].shape[1] > logits[1].shape[1] > logits[2].shape[1]
    assert all(lo.shape[0] == 2 for lo in logits)


def test_published_discriminator_feature_maps():
    disc = CombinedDiscriminator(
        {"periods": [2, 3, 5, 7, 11]}, {"scales": 3}
    )
    n_params = sum(p.numel() for p in disc.parameters())
    assert 70e6 < n_params < 71e6  # MPD 41.1 M + MSD 29.6 M
    with torch.no_grad():
        logits, fmaps = disc(torch.randn(1, 1, 2048))
    assert len(logits) == 8 and len(fmaps) == 30 + 24


def test_discriminator_needs_one_part():
    with pytest.raises(ValueError, match="enable at least one"):
        CombinedDiscriminator(None, None)


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
    real = [torch.tensor([[1.0, 2.0]]), torch.tensor([[[0.0, 0.0, 3.0]]])]
    fake = [torch.tensor([[0.0, 4.0]]), torch.tensor([[[0.0, 0.0, 0.0]]])]
    # mean |diff| per map: (1 + 2) / 2 = 1.5 and 3 / 3 = 1.0
    assert feature_matching_loss(real, fake).item() == pytest.approx(2.5)


def test_gan_losses_are_float32_for_half_inputs():
    logits = [torch.full((2, 4), 300.0, dtype=torch.bfloat16)]
    assert discriminator_loss(logits, logits).dtype == torch.float32
    assert generator_loss(logits).dtype == torch.float32
    big = [torch.full((4, 4), 255.0, dtype=torch.float16)]
    small = [torch.full((4, 4), -255.0, dtype=torch.float16)]
    assert feature_matching_loss(big, small).item() == 510.0


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


def _tiny_module(**kwargs) -> HiFiGAN:
    return HiFiGAN(
        features=FEATURES,
        loss_features=FEATURES.replace(fmax=None),
        generator=TINY_GENERATOR,
        discriminator=TINY_DISCRIMINATOR,
        **kwargs,
    )


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
    for key in ("train/loss_g", "train/loss_d", "train/mel_l1", "train/fm", "train/lr_g", "train/lr_d"):
        assert torch.isfinite(trainer.callback_metrics[key]), key

    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        steps = sorted({int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss_g")})
    assert steps == [0, 1, 2, 3, 4]


def test_learning_rate_decays_once_per_epoch(tmp_path):
    model = _tiny_module(lr_decay=0.5)
    trainer = _trainer(tmp_path, max_epochs=3)
    trainer.fit(model, datamodule=_StubData(count=4, batch_size=2))
    assert trainer.global_step == 6
    for optimizer in trainer.optimizers:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.5**3)


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


def test_wrong_mel_channels_is_a_clear_error():
    model = _tiny_module()
    with pytest.raises(ValueError, match=r"expected \(B, 80, frames\)"):
        model.predict_step(torch.randn(1, 100, 4), 0)


def test_bf16_mixed_trains_without_nans(tmp_path):
    torch.manual_seed(0)
    model = _tiny_module(grad_clip=100.0)
    trainer = _trainer(tmp_path, max_steps=3, precision="bf16-mixed")
    trainer.fit(model, datamodule=_StubData(count=4, batch_size=2))
    assert trainer.global_step == 3
    for key in ("train/loss_g", "train/loss_d", "train/mel_l1", "train/fm"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_gradient_clipping_bounds_the_gradient_norm(tmp_path):
    norms: list[float] = []

    class Recording(HiFiGAN):
        def on_before_optimizer_step(self, optimizer):
            super().on_before_optimizer_step(optimizer)  # clips
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    model = Recording(
        features=FEATURES, generator=TINY_GENERATOR, discriminator=TINY_DISCRIMINATOR, grad_clip=1e-3
    )
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(model, datamodule=_StubData(count=4, batch_size=2))
    assert len(norms) == 4  # two optimizers x two steps
    assert max(norms) <= 1e-3 * 1.001


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """6 generator steps (3 epochs of 2 batches), lr_decay 0.5, a checkpoint after every step."""
    root = tmp_path_factory.mktemp("straight")
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1)
    torch.manual_seed(0)
    model = _tiny_module(lr_decay=0.5)
    trainer = _trainer(root, max_steps=6, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(model, datamodule=_StubData(count=4, batch_size=2))
    return model, {int(p.stem.split("step=")[1]): p for p in (root / "ckpt").glob("*.ckpt")}


def test_checkpoint_carries_features_and_both_optimizers(straight_run):
    _, checkpoints = straight_run
    assert sorted(checkpoints) == [1, 2, 3, 4, 5, 6]
    state = torch.load(checkpoints[3], map_location="cpu", weights_only=False)
    assert state["global_step"] == 3 and state["epoch"] == 1
    assert state["hyper_parameters"]["features"] == FEATURES.to_dict()
    assert state["hyper_parameters"]["loss_features"]["fmax"] is None
    assert isinstance(state["hyper_parameters"]["generator"], dict)
    assert len(state["optimizer_states"]) == 2
    assert [s["last_epoch"] for s in state["lr_schedulers"]] == [1, 1]
    # the checkpoint rebuilds the module from its hyper-parameters alone
    restored = HiFiGAN.load_from_checkpoint(checkpoints[3], map_location="cpu")
    assert restored.features == FEATURES
    assert restored.hparams.lr_decay == 0.5


# step 2 and 4 end an epoch (saved before that epoch's on_train_epoch_end), step 3 is mid-epoch
@pytest.mark.parametrize("resume_step", [2, 3, 4])
def test_resume_restores_step_optimizers_and_lr_decay(tmp_path, straight_run, resume_step):
    straight, checkpoints = straight_run
    resumed = _tiny_module(lr_decay=0.5)
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


# -------------------------------------------------------------------------------- Hydra presets


@pytest.mark.parametrize("preset", ["hifigan_tiny", "hifigan_v1", "hifigan_v2", "hifigan_v3"])
def test_presets_instantiate_with_the_default_features(compose_cfg, preset):
    cfg = compose_cfg([f"model={preset}"])
    model = hydra.utils.instantiate(cfg.model)
    assert isinstance(model, HiFiGAN)
    assert model.generator.hop_size == cfg.features.hop_size
    assert model.hparams.features == MelConfig.coerce(cfg.features).to_dict()
    assert model.hparams.loss_features["fmax"] is None
    assert model.hparams.lambda_mel == 45.0 and model.hparams.lambda_fm == 2.0
    assert model.hparams.optimizer["lr"] == 2e-4 and list(model.hparams.optimizer["betas"]) == [0.8, 0.99]


def test_hop512_preset_instantiates_with_44k_features(compose_cfg):
    cfg = compose_cfg(["features=sovits_44k", "model=hifigan_v1_hop512"])
    model = hydra.utils.instantiate(cfg.model)
    assert model.generator.hop_size == 512 == model.features.hop_size


def test_multiscale_mel_loss_is_selectable(compose_cfg):
    from melvoc.loss import MultiScaleMelLoss

    cfg = compose_cfg(["model=hifigan_tiny", "model.mel_loss=multiscale"])
    model = hydra.utils.instantiate(cfg.model)
    assert isinstance(model.mel_loss, MultiScaleMelLoss)


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
