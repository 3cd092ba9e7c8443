"""melvoc.training.callbacks.quality.QualityMetricsCallback in real Lightning Trainers on CPU."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from melvoc.training.callbacks.process_group import ReleaseProcessGroup
from melvoc.training.callbacks.quality import QualityMetricsCallback
from melvoc.data.synthetic import synthesize_clip
from melvoc.metrics import score

SR = 16000
SECONDS = (0.9, 0.6, 0.75, 0.5, 0.8)
CHEAP = ("mstft", "mcd")
_SPEAKER = {"f0": 150.0, "range": 0.3, "formant_scale": 1.0, "breath": 0.03, "rate": 1.0}


def _clip(index: int) -> torch.Tensor:
    return torch.from_numpy(synthesize_clip(np.random.default_rng(index), _SPEAKER, SR, SECONDS[index]))


def perturb(audio: torch.Tensor) -> torch.Tensor:
    """A sample-wise prediction error: the same values for a clip alone or padded in a batch."""
    t = torch.arange(audio.shape[-1], dtype=audio.dtype)
    return 0.8 * audio + 0.01 * torch.cos(2 * math.pi * 2345.0 * t / SR)


class Clips(Dataset):
    def __len__(self) -> int:
        return len(SECONDS)

    def __getitem__(self, index: int) -> dict:
        return {"audio": _clip(index), "name": f"clip_{index}"}


def collate(items: list[dict]) -> dict:
    """Pads with loud noise, so padding that leaked into a metric would show."""
    longest = max(item["audio"].shape[-1] for item in items)
    audio = 0.5 * torch.randn(len(items), longest, generator=torch.Generator().manual_seed(7))
    for row, item in enumerate(items):
        audio[row, : item["audio"].shape[-1]] = item["audio"]
    return {
        "audio": audio,
        "lengths": torch.tensor([item["audio"].shape[-1] for item in items]),
        "names": [item["name"] for item in items],
    }


class Vocoder(pl.LightningModule):
    """A stand-in vocoder whose validation_step returns ``{"audio_hat": (B, 1, T)}``."""

    def __init__(self, mode: str = "perturb") -> None:
        super().__init__()
        self.mode = mode
        self.gain = torch.nn.Parameter(torch.ones(()))

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        audio = batch["audio"]
        if self.mode == "silent":
            return {"audio_hat": torch.zeros_like(audio).unsqueeze(1)}
        return {"audio_hat": perturb(audio).unsqueeze(1)}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return (self.gain * batch["audio"]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _trainer(tmp_path: Path, callback: QualityMetricsCallback | list[pl.Callback], **kwargs) -> pl.Trainer:
    kwargs.setdefault("devices", 1)
    kwargs.setdefault("logger", False)
    return pl.Trainer(
        accelerator="cpu",
        callbacks=callback if isinstance(callback, list) else [callback],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


def _loader(batch_size: int) -> DataLoader:
    return DataLoader(Clips(), batch_size=batch_size, collate_fn=collate)


def _expected(indices, metrics, pitch_model: str = "tiny") -> dict[str, float]:
    per_clip = [score(_clip(i), perturb(_clip(i)), SR, metrics, pitch_model=pitch_model) for i in indices]
    return {name: float(np.mean([values[name] for values in per_clip])) for name in metrics}


def _validate(tmp_path: Path, batch_size: int = 2, **kwargs) -> dict[str, float]:
    callback = QualityMetricsCallback(SR, **kwargs)
    return _trainer(tmp_path, callback).validate(Vocoder(), _loader(batch_size), verbose=False)[0]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        yield


def test_all_five_metrics_are_the_mean_over_clips(tmp_path):
    results = _validate(tmp_path, clips=2)
    expected = _expected(range(2), ("pesq", "mstft", "mcd", "periodicity", "vuv_f1"))
    assert set(results) == {f"val/{name}" for name in expected}
    for name, value in expected.items():
        assert results[f"val/{name}"] == pytest.approx(value, rel=1e-6, abs=1e-7)
    assert results["val/pesq"] < 4.4  # the perturbation is audible: not the identity


def test_batch_size_and_padding_do_not_change_the_values(tmp_path):
    one = _validate(tmp_path / "one", batch_size=1, metrics=CHEAP)
    three = _validate(tmp_path / "three", batch_size=3, metrics=CHEAP)
    assert one == pytest.approx(three, rel=1e-6)
    assert one["val/mcd"] == pytest.approx(_expected(range(5), CHEAP)["mcd"], rel=1e-6)


def test_clip_subsets_by_count_and_by_name(tmp_path):
    first3 = _validate(tmp_path / "count", metrics=CHEAP, clips=3)
    assert first3["val/mstft"] == pytest.approx(_expected(range(3), CHEAP)["mstft"], rel=1e-6)
    named = _validate(tmp_path / "names", metrics=CHEAP, clips=["clip_4", "clip_1"])
    assert named["val/mstft"] == pytest.approx(_expected([1, 4], CHEAP)["mstft"], rel=1e-6)


def test_every_n_validations_during_fit(tmp_path):
    callback = QualityMetricsCallback(SR, metrics=("mcd",), every_n_validations=2, clips=1)
    logger = CSVLogger(tmp_path, name="", version="")
    trainer = _trainer(tmp_path, callback, logger=logger, max_epochs=4, num_sanity_val_steps=2,
                       log_every_n_steps=1)
    trainer.fit(Vocoder(), _loader(2), _loader(2))
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/mcd")]
    assert [int(row["epoch"]) for row in rows] == [0, 2]  # validations 1 and 3; never the sanity check
    assert float(rows[0]["val/mcd"]) == pytest.approx(_expected([0], ("mcd",))["mcd"], rel=1e-6)


def test_unscorable_clips_warn_and_leave_the_mean(tmp_path):
    callback = QualityMetricsCallback(SR, metrics=("pesq", "mstft"), clips=2)
    with pytest.warns(UserWarning) as record:
        results = _trainer(tmp_path, callback).validate(Vocoder("silent"), _loader(2), verbose=False)[0]
    messages = [str(w.message) for w in record]
    assert any("clip_0 (pesq): pesq: the prediction is silent" in m and "clip_1 (pesq)" in m for m in messages)
    assert any("no clip could be scored for pesq" in m for m in messages)
    assert "val/pesq" not in results
    assert results["val/mstft"] > 1.0


def test_bad_arguments_and_outputs(tmp_path):
    with pytest.raises(ValueError, match="every_n_validations=0"):
        QualityMetricsCallback(SR, every_n_validations=0)
    with pytest.raises(ValueError, match="clips=0"):
        QualityMetricsCallback(SR, clips=0)
    with pytest.raises(ValueError, match="choose from"):
        QualityMetricsCallback(SR, metrics="pesq,utmos")
    with pytest.raises(ValueError, match="pitch_model='large'"):
        QualityMetricsCallback(SR, pitch_model="large")

    class NoAudioHat(Vocoder):
        def validation_step(self, batch, batch_idx):
            return {"wav": batch["audio"]}

    trainer = _trainer(tmp_path, QualityMetricsCallback(SR, metrics=CHEAP))
    with pytest.raises(ValueError, match=r"NoAudioHat.validation_step must return .*'audio_hat'"):
        trainer.validate(NoAudioHat(), _loader(2), verbose=False)


def test_hydra_node_takes_the_features_rate(compose_cfg):
    cfg = compose_cfg(["callbacks=[quality]", "features=bigvgan_24k"])
    callback = instantiate(cfg.callbacks.quality)
    assert isinstance(callback, QualityMetricsCallback)
    assert callback.sampling_rate == 24000
    assert callback.metrics == ("pesq", "mstft", "mcd", "periodicity", "vuv_f1")


def _ddp(tmp_path: Path, devices: int, strategy: str) -> dict[str, float]:
    callback = QualityMetricsCallback(SR, clips=None)
    trainer = _trainer(tmp_path, [callback, ReleaseProcessGroup()], devices=devices, strategy=strategy)
    return trainer.validate(Vocoder(), _loader(2), verbose=False)[0]


@pytest.mark.slow
def test_two_ddp_processes_equal_one(tmp_path):
    # 5 clips on 2 ranks: DistributedSampler repeats clip 0 as rank 1's last clip; it must not count.
    one = _ddp(tmp_path / "one", devices=1, strategy="auto")
    two = _ddp(tmp_path / "two", devices=2, strategy="ddp_spawn")
    expected = _expected(range(5), ("pesq", "mstft", "mcd", "periodicity", "vuv_f1"))
    assert one == pytest.approx({f"val/{name}": value for name, value in expected.items()}, rel=1e-6)
    assert set(two) == set(one)
    for name in one:
        assert two[name] == pytest.approx(one[name], rel=1e-6)
