"""melvoc.training.callbacks: the mel metric, the media and their union MelLossCallback, with real Lightning Trainers."""

from __future__ import annotations

import csv
import math
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import matplotlib.image
import pytest
import soundfile
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from melvoc.training.callbacks import MediaCallback, MelL1, MelLossCallback, MelMetricCallback
from melvoc.training.callbacks.process_group import ReleaseProcessGroup, release_process_group
from melvoc.features import MelConfig, mel_spectrogram
from melvoc.models.mel_loss import MelLoss

SR = 8000
CONFIG = MelConfig(sampling_rate=SR, n_fft=256, hop_size=64, win_size=256, num_mels=20)
LENGTHS = (1600, 1000, 1344, 700, 1920)


def _clip(index: int, length: int) -> torch.Tensor:
    t = torch.arange(length) / SR
    generator = torch.Generator().manual_seed(index)
    tone = 0.3 * torch.sin(2 * math.pi * (200 + 150 * index) * t)
    return tone + 0.01 * torch.randn(length, generator=generator)


class Clips(Dataset):
    """Whole clips of different lengths, as the validation set of the data module serves them."""

    def __init__(self, lengths=LENGTHS) -> None:
        self.clips = [_clip(i, n) for i, n in enumerate(lengths)]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        return {"audio": self.clips[index], "name": f"spk/clip_{index}.wav"}


def collate(items: list[dict]) -> dict:
    """Pad to the longest clip with noise, so padding that leaked into the metric would show."""
    longest = max(item["audio"].shape[-1] for item in items)
    audio = 0.5 * torch.ones(len(items), longest)
    for row, item in enumerate(items):
        audio[row, : item["audio"].shape[-1]] = item["audio"]
    return {
        "audio": audio,
        "lengths": torch.tensor([item["audio"].shape[-1] for item in items]),
        "names": [item["name"] for item in items],
    }


def perturb(audio: torch.Tensor) -> torch.Tensor:
    """A known, sample-wise prediction error (same values on a clip alone or padded in a batch)."""
    t = torch.arange(audio.shape[-1], dtype=audio.dtype, device=audio.device)
    return 0.7 * audio + 0.02 * torch.cos(2 * math.pi * 1234.0 * t / SR)


class Vocoder(pl.LightningModule):
    """Returns ``audio_hat`` as a vocoder's validation_step does; ``mode`` picks the prediction."""

    def __init__(self, mode: str = "identity") -> None:
        super().__init__()
        self.mode = mode
        self.gain = torch.nn.Parameter(torch.ones(()))

    def _predict(self, batch: dict) -> dict:
        audio = batch["audio"]
        if self.mode == "identity":
            return {"audio_hat": audio.clone()}
        if self.mode == "perturb":
            return {"audio_hat": perturb(audio).unsqueeze(1)}  # (B, 1, T) is accepted too
        if self.mode == "longer":  # a generator whose output overshoots by less than a hop
            return {"audio_hat": torch.nn.functional.pad(perturb(audio), (0, CONFIG.hop_size - 1))}
        return {"wav": audio}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._predict(batch)

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._predict(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return (self.gain * batch["audio"]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _loader(batch_size: int, lengths=LENGTHS) -> DataLoader:
    return DataLoader(Clips(lengths), batch_size=batch_size, collate_fn=collate)


def _split(num_media: int = 4, **media) -> list[pl.Callback]:
    """The default configuration's pair: the metric and the media as two callbacks."""
    return [MelMetricCallback(CONFIG), MediaCallback(CONFIG, num_media=num_media, **media)]


def _trainer(tmp_path: Path, callbacks, logger=False, **kwargs) -> pl.Trainer:
    kwargs.setdefault("devices", 1)
    return pl.Trainer(
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks if isinstance(callbacks, list) else [callbacks],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


def _expected(lengths=LENGTHS) -> float:
    """The frame-weighted mean |mel error|, straight from melvoc.features, one clip at a time."""
    total, count = 0.0, 0
    for index, length in enumerate(lengths):
        audio = _clip(index, length).double()
        diff = (mel_spectrogram(perturb(audio), CONFIG) - mel_spectrogram(audio, CONFIG)).abs()
        total += diff.sum().item()
        count += diff.numel()
    return total / count


def _validate(tmp_path, mode: str, batch_size: int, num_media: int = 0, legacy: bool = False, **kwargs) -> float:
    callbacks = MelLossCallback(CONFIG, num_media=num_media) if legacy else _split(num_media)
    trainer = _trainer(tmp_path, callbacks, **kwargs)
    results = trainer.validate(Vocoder(mode), _loader(batch_size), verbose=False)
    return results[0]["val/mel_l1"]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        yield


def test_identity_model_gives_exactly_zero(tmp_path):
    assert _validate(tmp_path, "identity", batch_size=2) == 0.0


@pytest.mark.parametrize("legacy", [False, True], ids=["split", "MelLossCallback"])
def test_known_perturbation_matches_features(tmp_path, legacy):
    expected = _expected()
    assert expected > 0.1
    assert _validate(tmp_path, "perturb", batch_size=5, legacy=legacy) == pytest.approx(expected, rel=1e-5)


def test_metric_is_the_loss_weighted_by_frames():
    """MelL1 accumulates MelLoss.l1_sum: one batch gives the loss itself, batches weigh by frames."""
    batches = [collate([Clips()[i] for i in rows]) for rows in ((0, 1), (2, 3, 4))]
    loss = MelLoss(CONFIG)
    metric = MelL1(CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns of a compute before any update
        assert metric.compute() is None  # no frames: nothing to log
    for index, batch in enumerate(batches):
        metric.update(perturb(batch["audio"]), batch["audio"], batch["lengths"])
        if index == 0:
            assert metric.compute().item() == pytest.approx(
                loss(perturb(batch["audio"]), batch["audio"], batch["lengths"]).item(), rel=1e-6
            )
            metric.reset()
            metric.update(perturb(batch["audio"]), batch["audio"], batch["lengths"])
    assert metric.sum.dtype == metric.count.dtype == torch.float64
    assert metric.count.item() == sum(length // CONFIG.hop_size for length in LENGTHS)
    assert metric.compute().item() == pytest.approx(_expected(), rel=1e-5)


def test_padded_batches_equal_unpadded(tmp_path):
    padded = _validate(tmp_path, "perturb", batch_size=3)
    unpadded = _validate(tmp_path, "perturb", batch_size=1)
    assert padded == pytest.approx(unpadded, rel=1e-6)
    # A prediction longer by less than one hop is cropped to the reference.
    assert _validate(tmp_path, "longer", batch_size=3) == pytest.approx(unpadded, rel=1e-6)


def test_test_stage_logs_test_metric(tmp_path):
    trainer = _trainer(tmp_path, _split(num_media=2))
    results = trainer.test(Vocoder("perturb"), _loader(2), verbose=False)
    assert results[0]["test/mel_l1"] == pytest.approx(_expected(), rel=1e-5)
    assert "val/mel_l1" not in results[0]
    assert not (tmp_path / "media").exists()  # media are for validation clips


def test_missing_audio_hat_names_hook_and_key(tmp_path):
    trainer = _trainer(tmp_path, MelMetricCallback(CONFIG))
    expected = r"MelMetricCallback: Vocoder.validation_step must return a dict with key 'audio_hat'.*\['wav'\]"
    with pytest.raises(ValueError, match=expected):
        trainer.validate(Vocoder("missing"), _loader(2), verbose=False)
    trainer = _trainer(tmp_path, MelMetricCallback(CONFIG))
    with pytest.raises(ValueError, match=r"Vocoder.test_step must return a dict with key 'audio_hat'"):
        trainer.test(Vocoder("missing"), _loader(2), verbose=False)
    trainer = _trainer(tmp_path, MediaCallback(CONFIG, num_media=1))
    with pytest.raises(ValueError, match=r"MediaCallback: Vocoder.validation_step must return a dict"):
        trainer.validate(Vocoder("missing"), _loader(2), verbose=False)


def test_media_files_without_logger(tmp_path):
    _validate(tmp_path, "perturb", batch_size=2, num_media=3)
    folder = tmp_path / "media" / "epoch=000"
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:02d}_spk_clip_{i}.wav_mel.png" for i in range(3)]
    image = matplotlib.image.imread(pngs[0])
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    for index in range(3):
        for kind in ("reference", "predicted"):
            wave, rate = soundfile.read(folder / f"{index:02d}_spk_clip_{index}.wav_{kind}.wav")
            assert rate == SR
            assert wave.shape == (LENGTHS[index],)  # trimmed to the clip, no batch padding
        reference, _ = soundfile.read(folder / f"{index:02d}_spk_clip_{index}.wav_reference.wav")
        assert abs(reference - _clip(index, LENGTHS[index]).numpy()).max() < 1e-4


@pytest.mark.parametrize("legacy", [False, True], ids=["split", "MelLossCallback"])
def test_media_files_with_csv_logger_every_n_epochs(tmp_path, legacy):
    logger = CSVLogger(tmp_path, name="run")
    if legacy:
        callback = MelLossCallback(CONFIG, num_media=1, every_n_epochs=2)
        assert isinstance(callback, MelMetricCallback) and isinstance(callback, MediaCallback)
    else:
        callback = _split(num_media=1, every_n_epochs=2)
    trainer = _trainer(
        tmp_path,
        callback,
        logger=logger,
        max_epochs=3,
        limit_train_batches=1,
        num_sanity_val_steps=1,
        log_every_n_steps=1,
    )
    trainer.fit(Vocoder("perturb"), _loader(2), _loader(2))
    media = Path(logger.log_dir) / "media"
    assert sorted(p.name for p in media.iterdir()) == ["epoch=001"]
    assert len(list((media / "epoch=001").glob("*.png"))) == 1
    assert len(list((media / "epoch=001").glob("*.wav"))) == 2
    assert trainer.callback_metrics["val/mel_l1"].item() == pytest.approx(_expected(), rel=1e-5)
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("val/mel_l1")]
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]  # the sanity check logs nothing


def test_fast_dev_run_writes_no_media(tmp_path):
    trainer = _trainer(tmp_path, _split(num_media=2), fast_dev_run=True)
    trainer.fit(Vocoder("perturb"), _loader(2), _loader(2))
    assert "val/mel_l1" in trainer.callback_metrics
    assert not (tmp_path / "media").exists()


def test_media_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    _validate(tmp_path, "perturb", batch_size=2, num_media=2, logger=logger)
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "audio": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == [f"val_media/{i:02d}_spk_clip_{i}.wav/mel" for i in range(2)]
    assert sorted(events.Tags()["audio"]) == sorted(
        f"val_media/{i:02d}_spk_clip_{i}.wav/{kind}" for i in range(2) for kind in ("predicted", "reference")
    )
    assert not (tmp_path / "media").exists()


def test_media_to_wandb_without_wandb_installed(tmp_path, monkeypatch):
    """The W&B branch, with a stand-in ``wandb`` module (the real one is an optional extra)."""
    import types

    from lightning.pytorch.loggers import Logger, WandbLogger

    stand_in = types.SimpleNamespace(
        Image=lambda data, **kw: ("image", data.shape, kw),
        Audio=lambda data, **kw: ("audio", data.shape, kw),
    )
    monkeypatch.setitem(sys.modules, "wandb", stand_in)

    class RecordingWandb(WandbLogger):
        def __init__(self) -> None:
            Logger.__init__(self)
            self._experiment, self._checkpoint_callback, self.logged = None, None, []

        name = version = save_dir = property(lambda self: None)
        experiment = property(lambda self: None)

        def log_hyperparams(self, *args, **kwargs) -> None:
            pass

        def log_metrics(self, metrics, step=None) -> None:
            self.logged.append(metrics)

    logger = RecordingWandb()
    _validate(tmp_path, "perturb", batch_size=2, num_media=2, logger=logger)
    media = {key: value for metrics in logger.logged for key, value in metrics.items() if "media" in key}
    assert sorted(media) == ["val_media/mel", "val_media/predicted", "val_media/reference"]
    assert [item[0] for item in media["val_media/mel"]] == ["image", "image"]
    assert [item[1] for item in media["val_media/reference"]] == [(LENGTHS[0],), (LENGTHS[1],)]
    assert media["val_media/predicted"][0][2] == {"sample_rate": SR, "caption": "spk/clip_0.wav"}
    assert any("val/mel_l1" in metrics for metrics in logger.logged)
    assert not (tmp_path / "media").exists()


def test_media_failure_is_a_warning(tmp_path, monkeypatch):
    import melvoc.training.callbacks.media

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(melvoc.training.callbacks.media, "_render", broken)
    with pytest.warns(UserWarning, match="MediaCallback: could not log media.*no fonts"):
        value = _validate(tmp_path, "perturb", batch_size=2, num_media=2)
    assert value == pytest.approx(_expected(), rel=1e-5)


def test_hydra_nodes_instantiate_with_loss_features(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg(["features=hifigan_22k"])
    loss_features = instantiate(cfg.features).replace(fmax=None)
    metric, media = instantiate(cfg.callbacks.mel_metric), instantiate(cfg.callbacks.media)
    assert isinstance(metric, MelMetricCallback) and isinstance(media, MediaCallback)
    assert metric.config == media.config == loss_features
    assert media.num_media >= 1 and media.every_n_epochs >= 1
    # The union as it was before the split, for configs that still pick it.
    legacy = instantiate(compose_cfg(["features=hifigan_22k", "callbacks=[mel_loss]"]).callbacks.mel_loss)
    assert isinstance(legacy, MelLossCallback) and legacy.config == loss_features
    assert legacy.num_media == media.num_media and legacy.every_n_epochs == media.every_n_epochs


@pytest.mark.parametrize("kind", [MediaCallback, MelLossCallback])
def test_rejects_bad_arguments(kind):
    with pytest.raises(ValueError, match=f"{kind.__name__}.every_n_epochs=0"):
        kind(CONFIG, every_n_epochs=0)
    with pytest.raises(ValueError, match=f"{kind.__name__}.num_media=-1"):
        kind(CONFIG, num_media=-1)


def test_repeated_last_clip_finds_the_distributed_sampler_repeat():
    """5 clips on 2 ranks: rank 1's last clip repeats clip 0; only there, in the last batch, is it found."""
    import types

    from torch.utils.data import DistributedSampler

    from melvoc.training.callbacks.batches import repeated_last_clip

    def found(rank: int, batch_idx: int, **loader_args) -> bool:
        sampler = DistributedSampler(Clips(), num_replicas=2, rank=rank, shuffle=False)
        loader = DataLoader(Clips(), sampler=sampler, batch_size=2, collate_fn=collate, **loader_args)
        trainer = types.SimpleNamespace(world_size=2, val_dataloaders=loader, num_val_batches=[len(loader)])
        return repeated_last_clip(trainer, "val", batch_idx, 0)

    assert [found(1, index) for index in range(2)] == [False, True]
    assert [found(0, index) for index in range(2)] == [False, False]
    # A batch sampler that is not the plain one over the sampler: the repeat cannot be placed.
    with pytest.warns(UserWarning, match="custom batch sampler.*1 repeated clip"):
        assert found(1, 0, drop_last=True) is False


def _ddp_value(tmp_path: Path, devices: int, strategy: str) -> float:
    trainer = _trainer(tmp_path, [*_split(num_media=2), ReleaseProcessGroup()], strategy=strategy, devices=devices)
    results = trainer.validate(Vocoder("perturb"), _loader(2), verbose=False)
    return results[0]["val/mel_l1"]


@pytest.mark.slow
def test_two_ddp_processes_equal_one(tmp_path):
    # 5 clips on 2 ranks: DistributedSampler repeats clip 0 as rank 1's last clip; it must not count.
    one = _ddp_value(tmp_path / "one", devices=1, strategy="auto")
    two = _ddp_value(tmp_path / "two", devices=2, strategy="ddp_spawn")
    assert one == pytest.approx(_expected(), rel=1e-5)
    assert two == pytest.approx(one, rel=1e-6)
    # Media come from rank 0 only: its clips 0, 2 (of 0, 2, 4).
    names = sorted(p.name for p in (tmp_path / "two" / "media" / "epoch=000").glob("*.png"))
    assert names == ["00_spk_clip_0.wav_mel.png", "01_spk_clip_2.wav_mel.png"]


# ------------------------------------------------------------------ process group at the end of a run
def test_release_process_group_destroys_an_initialized_group(tmp_path):
    assert release_process_group() is False  # nothing to destroy
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert release_process_group() is True
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class _GroupProbe(pl.Callback):
    """Writes, per rank, whether the process group is still up when the call tears down."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def teardown(self, trainer, pl_module, stage) -> None:
        alive = torch.distributed.is_initialized()
        (Path(self.folder) / f"rank{trainer.global_rank}").write_text(str(alive))


@pytest.mark.slow
def test_spawned_processes_destroy_their_process_group(tmp_path):
    # Without it a spawned rank could abort at exit (SIGABRT, "terminate called without an active exception").
    trainer = _trainer(tmp_path, [ReleaseProcessGroup(), _GroupProbe(str(tmp_path))], strategy="ddp_spawn", devices=2)
    trainer.validate(Vocoder("perturb"), _loader(2), verbose=False)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["False", "False"]
    # In a process that goes on (no multiprocessing launcher), the callback leaves things alone.
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        local = _trainer(tmp_path / "local", [ReleaseProcessGroup(), _GroupProbe(str(tmp_path))])
        local.validate(Vocoder("perturb"), _loader(2), verbose=False)
        assert (tmp_path / "rank0").read_text() == "True"
    finally:
        release_process_group()
