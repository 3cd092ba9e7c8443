"""A tiny HiFi-GAN trained for two steps with the real config, shared by the synthesis, export and
fine-tuning tests (trained once per test session, on demand); and the files the code before the
generic GANVocoder (main at f0f84fd) wrote, rebuilt from it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import pytest
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from melvoc.features import MelConfig
from melvoc.models import GANVocoder
from melvoc.training import train
from tests.conftest import compose_config

# Small enough for a few seconds on one CPU thread: 2 training clips, 2 validation clips of 0.5-1 s,
# batch 1, two steps, a validation at the end, no logger or media.
TINY_RUN = [
    "data=synthetic",
    "model=hifigan_tiny",
    "features=vits_22k",
    "data.synthetic.num_train=2",
    "data.synthetic.num_val=2",
    "data.synthetic.min_seconds=0.5",
    "data.synthetic.max_seconds=1.0",
    "data.batch_size=1",
    "data.val_batch_size=1",
    "data.segment_size=4096",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "+trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "callbacks.lr_monitor=null",
    "callbacks.media.num_media=0",
    "~logger",
    "validate_before_fit=false",
]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: on a shared 2-core machine more threads spin and run ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class TrainedRun:
    """The trained checkpoint and what its model produced on the validation clips."""

    root: Path
    checkpoint: Path
    features: MelConfig
    train_list: Path
    val_list: Path
    val_files: list[Path]
    #: generator output of validation, per clip stem, (frames * hop,) float32
    val_audio: dict[str, np.ndarray] = field(default_factory=dict)
    #: the data module's mel of each validation clip, (num_mels, frames) float32
    val_mel: dict[str, torch.Tensor] = field(default_factory=dict)


class _CaptureValidation(Callback):
    def __init__(self) -> None:
        self.audio: dict[str, np.ndarray] = {}
        self.mel: dict[str, torch.Tensor] = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        assert len(batch["names"]) == 1, "validation batches of one clip (data.val_batch_size=1)"
        self.audio[batch["names"][0]] = outputs["audio_hat"][0].detach().cpu().numpy().copy()
        self.mel[batch["names"][0]] = batch["mel"][0].detach().cpu().clone()


def run_overrides(root: Path) -> list[str]:
    return [*TINY_RUN, f"paths.root_dir={root}", f"paths.output_dir={root / 'run'}"]


_RUN: dict[str, TrainedRun] = {}


def trained_run(tmp_path_factory) -> TrainedRun:
    """Train the tiny model once (real ``melvoc.training.train`` on the composed config), then record
    the validation audio of its last checkpoint with a real ``Trainer.validate``."""
    if "run" in _RUN:
        return _RUN["run"]
    root = tmp_path_factory.mktemp("trained")
    with one_thread():
        cfg = compose_config(run_overrides(root))
        result = train(cfg)
        assert result.global_step == 2 and result.last_checkpoint is not None
        model = GANVocoder.load_from_checkpoint(result.last_checkpoint, map_location="cpu")
        datamodule = instantiate(cfg.data)
        capture = _CaptureValidation()
        trainer = L.Trainer(
            accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[capture],
        )
        trainer.validate(model, datamodule=datamodule, verbose=False)
    synthetic_dir = datamodule.synthetic_dir
    val_list = synthetic_dir / "val.txt"
    val_files = [Path(line.split("|")[0]) for line in val_list.read_text().splitlines() if line.strip()]
    val_files = [p if p.is_absolute() else synthetic_dir / p for p in val_files]
    assert len(capture.audio) == len(val_files) == 2
    run = TrainedRun(
        root=root,
        checkpoint=Path(result.last_checkpoint),
        features=MelConfig.coerce(cfg.features),
        train_list=synthetic_dir / "train.txt",
        val_list=val_list,
        val_files=val_files,
        val_audio=capture.audio,
        val_mel=capture.mel,
    )
    _RUN["run"] = run
    return run


# Fixtures shared by the test modules that need a trained checkpoint; each module imports them, so
# each still gets its own module-scoped run.
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> TrainedRun:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(run: TrainedRun, tmp_path_factory) -> Path:
    from melvoc.deploy.export import export_generator

    return export_generator(run.checkpoint, tmp_path_factory.mktemp("export") / "generator.pt")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


# ------------------------------------------------------------------------ files of the code before
# main at f0f84fd trained a `melvoc.models.HiFiGAN` module: its checkpoints hold the HiFi-GAN generator's
# arguments without `_target_` or num_mels, one `discriminator` entry {mpd, msd} with their arguments,
# one `optimizer` for both networks and an epoch `lr_decay`; its state keys are `discriminator.mpd.*` /
# `discriminator.msd.*`. Its exports are format_version 1 with the generator's arguments (num_mels
# included) and no `_target_`.


def legacy_checkpoint(checkpoint: Path, out: Path) -> Path:
    """``checkpoint`` (of a HiFi-GAN ``GANVocoder`` with mpd + msd) in the layout main at f0f84fd wrote."""
    data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hp = data["hyper_parameters"]
    mpd, msd = hp["discriminators"]["mpd"], hp["discriminators"]["msd"]
    data["hyper_parameters"] = {
        "features": hp["features"],
        "loss_features": hp["loss_features"],
        "generator": {k: v for k, v in hp["generator"].items() if k not in ("_target_", "num_mels")},
        "discriminator": {
            "mpd": {"periods": mpd["periods"], "channels": mpd["channels"]},
            "msd": {"scales": msd["scales"], "channels": msd["channels"]},
        },
        "optimizer": {k: v for k, v in hp["optimizer_g"].items() if not k.startswith("_")},
        "lr_decay": hp["scheduler_g"]["gamma"],
        "lambda_mel": hp["lambda_mel"],
        "lambda_fm": hp["lambda_fm"],
        "lambda_adv": hp["lambda_adv"],
        "mel_loss": "mel",
        "mel_loss_kwargs": {},
        "grad_clip": None,
    }
    data["state_dict"] = {
        ("discriminator." + k[len("discriminators."):] if k.startswith("discriminators.") else k): v
        for k, v in data["state_dict"].items()
    }
    assert any(k.startswith("discriminator.mpd.") for k in data["state_dict"])
    torch.save(data, out)
    return out


def legacy_export(exported: Path, out: Path) -> Path:
    """An export (format 2) as format_version 1 of main at f0f84fd."""
    data = torch.load(exported, map_location="cpu", weights_only=True)
    generator = {k: v for k, v in data["generator"].items() if k != "_target_"}
    torch.save({**data, "format_version": 1, "architecture": "hifigan", "generator": generator}, out)
    return out
