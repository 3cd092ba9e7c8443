"""experiment=finetune_hifigan and InitFromCheckpoint: fine-tuning from an exported or full checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue

from melvoc.data import audio_info, read_audio
from melvoc.features import MelSpectrogram
from melvoc.training.finetune import InitFromCheckpoint
from melvoc.deploy.inference import CheckpointError, load_generator, read_checkpoint
from melvoc.training import train, validate_config
from tests._trained import TINY_RUN, TrainedRun, _one_thread, exported, legacy_checkpoint, run  # noqa: F401
from tests.conftest import compose_config


def _model(*overrides: str):
    """A freshly initialized model of the tiny run's config (plus ``overrides``)."""
    return instantiate(compose_config([*TINY_RUN, *overrides]).model)


def _write_teacher_forced_mels(run: TrainedRun, mel_dir: Path) -> None:
    """Stand-ins for an acoustic model's teacher-forced mels: the clip's own mel, perturbed."""
    mel_dir.mkdir()
    generator = torch.Generator().manual_seed(0)
    mel_fn = MelSpectrogram(run.features)
    for filelist in (run.train_list, run.val_list):
        for line in filelist.read_text().splitlines():
            path = filelist.parent / line.split("|")[0]
            audio = torch.from_numpy(read_audio(audio_info(path), run.features.sampling_rate))
            mel = mel_fn(audio)
            mel = mel + 0.1 * torch.randn(mel.shape, generator=generator)
            np.save(mel_dir / f"{path.stem}.npy", mel.numpy())


def test_finetune_experiment_trains_from_an_exported_generator(run, exported, tmp_path):
    mel_dir = tmp_path / "gta_mels"
    _write_teacher_forced_mels(run, mel_dir)
    cfg = compose_config([
        "experiment=finetune_hifigan",
        # The presets the vocoder was trained with (the tiny demo run), over the experiment's defaults.
        "features=vits_22k",
        "model=hifigan_tiny",
        f"init_from={exported}",
        f"data.train_filelist={run.train_list}",
        f"data.val_filelist={run.val_list}",
        f"data.mel_dir={mel_dir}",
        "data.peak_normalize=null",
        "data.batch_size=1",
        "data.segment_size=4096",
        "data.num_workers=0",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.enable_model_summary=false",
        "+trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "callbacks.lr_monitor=null",
        "callbacks.media.num_media=0",
        "~logger",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path / 'run'}",
    ])
    assert cfg.task_name == "finetune_hifigan" and cfg.data.mel_dir == str(mel_dir)
    assert cfg.callbacks.init_from_checkpoint.path == str(exported)
    result = train(cfg)
    assert result.global_step == 2 and result.last_checkpoint is not None
    assert result.initial_val_mel_l1 is not None and result.final_val_mel_l1 is not None

    # The fine-tuned generator started from the exported one: two steps at lr 1e-5 move each weight by
    # ~1e-5, while a fresh initialization would be nowhere near it.
    start = read_checkpoint(exported).generator_state
    tuned = load_generator(result.last_checkpoint).state_dict()
    assert set(tuned) == set(start)
    largest = max((tuned[k] - start[k]).abs().max().item() for k in start)
    assert 0 < largest < 1e-3
    fresh = _model().generator.remove_weight_norm().state_dict()
    assert max((fresh[k] - start[k]).abs().max().item() for k in start) > 1e-2


@pytest.mark.parametrize("layout", ["current", "hifigan_module"])
def test_init_from_a_full_checkpoint_loads_generator_and_discriminators(run, tmp_path, layout):
    path = run.checkpoint if layout == "current" else legacy_checkpoint(run.checkpoint, tmp_path / "old.ckpt")
    model = _model()
    callback = InitFromCheckpoint(path)
    loaded = callback.apply(model)
    assert loaded["generator"] and loaded["discriminators"] == ["mpd", "msd"]
    assert loaded["source"]["global_step"] == 2
    state = torch.load(run.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_init_from_an_export_converts_to_weight_norm_and_keeps_fresh_discriminators(run, exported):
    model = _model()
    discriminator_before = {k: v.clone() for k, v in model.discriminators.state_dict().items()}
    loaded = InitFromCheckpoint(exported).apply(model)
    assert loaded == {"generator": True, "discriminators": [], "source": loaded["source"]}
    assert any("parametrizations" in k for k in model.generator.state_dict())
    mel = run.val_mel[sorted(run.val_mel)[0]].unsqueeze(0)
    with torch.inference_mode():
        torch.testing.assert_close(model.generator(mel), load_generator(exported)(mel), rtol=1e-4, atol=1e-5)
    for key, value in model.discriminators.state_dict().items():
        assert torch.equal(value, discriminator_before[key])


def test_other_features_or_generator_are_an_error_listing_the_overrides(run, exported):
    with pytest.raises(CheckpointError) as excinfo:
        InitFromCheckpoint(exported).apply(_model("features=hifigan_22k"))
    message = str(excinfo.value)
    assert "features.fmax=null (this run: 8000" in message
    assert "features.eps=1e-06 (this run: 1e-09)" in message
    with pytest.raises(CheckpointError, match=r"model\.generator\.upsample_initial_channel=64 \(this run: 32\)"):
        InitFromCheckpoint(run.checkpoint).apply(_model("model.generator.upsample_initial_channel=32"))


def test_discriminators_that_do_not_fit(run, caplog):
    overrides = ("model.discriminators.mpd.channels=[8,16,32,64,64]",)
    model = _model(*overrides)
    before = {k: v.clone() for k, v in model.discriminators.mpd.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="melvoc.training.finetune"):
        loaded = InitFromCheckpoint(run.checkpoint).apply(model)
    # by name: the MPD that does not fit starts fresh, the MSD that fits is loaded
    assert loaded["generator"] and loaded["discriminators"] == ["msd"]
    assert "discriminator 'mpd' does not fit" in caplog.text and "starts fresh" in caplog.text
    assert all(torch.equal(v, before[k]) for k, v in model.discriminators.mpd.state_dict().items())
    with pytest.raises(CheckpointError, match="'mpd' does not fit"):
        InitFromCheckpoint(run.checkpoint, strict_discriminators=True).apply(_model(*overrides))
    # a discriminator the checkpoint lacks
    model = _model("+model.discriminators.mpd2={_target_: melvoc.models.discriminators.MultiPeriodDiscriminator,"
                   "periods: [2], channels: [2,2,2,2,2]}")
    with pytest.raises(CheckpointError, match="it has no discriminator 'mpd2'"):
        InitFromCheckpoint(run.checkpoint, strict_discriminators=True).apply(model)


def test_a_resumed_run_keeps_its_checkpoint_weights(run):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    callback = InitFromCheckpoint(run.checkpoint)
    callback.on_validation_start(SimpleNamespace(ckpt_path="/runs/x/checkpoints/last.ckpt"), model)
    callback.on_fit_start(SimpleNamespace(ckpt_path=None), model)  # once decided, not applied later
    assert callback.loaded is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    fresh = InitFromCheckpoint(run.checkpoint)
    fresh.on_validation_start(SimpleNamespace(ckpt_path=None), model)
    assert fresh.loaded is not None and fresh.loaded["discriminators"] == ["mpd", "msd"]


def test_experiment_requires_init_from_and_mels():
    cfg = compose_config(["experiment=finetune_hifigan"])
    with pytest.raises(MissingMandatoryValue) as excinfo:
        validate_config(cfg)
    for key in ("init_from", "data.mel_dir", "data.train_filelist", "data.val_filelist"):
        assert key in str(excinfo.value)
    with pytest.raises(ValueError, match="init_from="):
        InitFromCheckpoint("???")
