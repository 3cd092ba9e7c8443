"""VocoderDataModule under a real Trainer, Hydra composition, the synthetic set, DDP, and the check CLI."""

from __future__ import annotations

import json
import math
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from hydra.utils import instantiate

from melvoc.data import AudioDataError, SyntheticSpec, VocoderDataModule, make_synthetic_dataset
from melvoc.data.check import main as check_main
from melvoc.features import MelConfig, MelSpectrogram
from melvoc.training.callbacks.process_group import ReleaseProcessGroup

SR = 22050


def make_corpus(root: Path, count: int, seconds=(0.6, 1.4), sr: int = SR, seed: int = 0) -> Path:
    """`count` noise clips in root/wavs and a VITS filelist root/all.txt; returns the filelist."""
    rng = np.random.default_rng(seed)
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        n = int(rng.uniform(*seconds) * sr)
        sf.write(root / "wavs" / f"c{i:03d}.wav", (0.3 * rng.standard_normal(n)).clip(-1, 1), sr, subtype="PCM_16")
        lines.append(f"wavs/c{i:03d}.wav|spk{i % 3}|some text")
    filelist = root / "all.txt"
    filelist.write_text("\n".join(lines) + "\n")
    return filelist


class Recorder(L.LightningModule):
    """Records what the steps receive; writes it to `out_dir/rank<k>.json` at the end of fit."""

    def __init__(self, out_dir: str | None = None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.out_dir = out_dir
        self.train_batches: list[dict] = []
        self.val_names: list[str] = []

    def training_step(self, batch, batch_idx):
        self.train_batches.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in batch.items()})
        return (self.weight * batch["mel"].mean()) ** 2

    def validation_step(self, batch, batch_idx):
        self.val_names.extend(batch["names"])
        assert batch["mel"].shape[-1] * 256 == batch["audio"].shape[-1]

    def on_fit_end(self) -> None:
        if self.out_dir is not None:
            record = {
                "train": [n for b in self.train_batches for n in b["names"]],
                "val": self.val_names,
            }
            Path(self.out_dir, f"rank{self.global_rank}.json").write_text(json.dumps(record))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **kwargs})


def test_filelist_config_composes_and_trains_with_mels_on_the_device(compose_cfg, tmp_path):
    filelist = make_corpus(tmp_path / "corpus", 11)
    cfg = compose_cfg([
        "data=filelist", f"data.train_filelist={filelist}", "data.val_count=3", "data.batch_size=4",
        "data.num_workers=0", "data.segment_size=4096", f"paths.cache_dir={tmp_path / 'cache'}",
    ])
    assert cfg.data.features.hop_size == cfg.features.hop_size  # interpolated, not copied
    dm = instantiate(cfg.data)
    assert isinstance(dm, VocoderDataModule)
    model = Recorder()
    _trainer(limit_train_batches=2).fit(model, datamodule=dm)
    assert len(model.train_batches) == 2 and len(model.val_names) == 3
    mel = MelSpectrogram(MelConfig.coerce(cfg.features))
    for batch in model.train_batches:
        assert batch["audio"].shape == (4, 4096) and batch["audio"].dtype == torch.float32
        assert batch["lengths"].dtype == torch.int64 and batch["lengths"].tolist() == [4096] * 4
        assert batch["mel"].dtype == torch.float32 and not batch["mel"].requires_grad
        assert batch["mel"].shape == (4, 80, 16)
        assert torch.equal(batch["mel"], mel(batch["audio"]))


def test_mel_frames_line_up_with_audio_for_center_presets(compose_cfg, tmp_path):
    """Vocos-style (center=True) mels have one extra frame; the hook keeps T // hop of them."""
    filelist = make_corpus(tmp_path, 4, sr=24000)
    cfg = compose_cfg(["data=filelist", "features=vocos_24k", f"data.train_filelist={filelist}",
                       "data.val_count=1", "data.batch_size=2", "data.num_workers=0"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    hop = cfg.features.hop_size
    assert batch["mel"].shape[-1] * hop == batch["audio"].shape[-1]
    full = MelSpectrogram(MelConfig.coerce(cfg.features))(batch["audio"])
    assert torch.equal(batch["mel"], full[..., : batch["audio"].shape[-1] // hop])


def test_validation_batches_are_padded_whole_clips_in_order(tmp_path):
    train = make_corpus(tmp_path / "a", 4)
    val = make_corpus(tmp_path / "b", 5, seconds=(0.3, 2.0), seed=1)
    features = MelConfig(SR, 1024, 256, 1024, 80)
    dm = VocoderDataModule(features, train_filelist=str(train), val_filelist=str(val), batch_size=2,
                           val_batch_size=3, max_val_seconds=1.5)
    dm.prepare_data()
    dm.setup("fit")
    batches = [dm.on_after_batch_transfer(b, 0) for b in dm.val_dataloader()]
    assert [n for b in batches for n in b["names"]] == [f"c{i:03d}" for i in range(5)]
    for b in batches:
        assert b["audio"].shape[-1] == int(b["lengths"].max())
        assert all(int(n) % 256 == 0 and int(n) <= int(1.5 * SR) for n in b["lengths"])
        assert b["mel"].shape[-1] * 256 == b["audio"].shape[-1]


def test_prepare_data_reports_all_missing_files_together(tmp_path, caplog):
    filelist = make_corpus(tmp_path, 3)
    with filelist.open("a") as f:
        f.writelines(f"wavs/gone{i}.wav|0|x\n" for i in range(7))
    features = MelConfig(SR, 1024, 256, 1024, 80)
    dm = VocoderDataModule(features, train_filelist=str(filelist), val_count=1)
    with pytest.raises(AudioDataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "7 of 10 audio files not found" in message and "... and 2 more" in message
    assert f"{filelist}:4" in message and "gone0.wav" in message and "data.root" in message
    dm = VocoderDataModule(features, train_filelist=str(filelist), val_count=1, on_error="skip")
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
        dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) == 3
    assert "7 of 10 audio files not found" in caplog.text and "left out" in caplog.text


def test_bad_settings_say_how_to_fix_them(tmp_path):
    features = MelConfig(SR, 1024, 256, 1024, 80)
    with pytest.raises(ValueError, match="segment_size=8000: must be a positive multiple of features.hop_size=256"):
        VocoderDataModule(features, train_filelist="x.txt", segment_size=8000)
    with pytest.raises(ValueError, match="data=synthetic"):
        VocoderDataModule(features)
    filelist = make_corpus(tmp_path, 3)
    dm = VocoderDataModule(features, train_filelist=str(filelist), val_count=1, batch_size=8)
    dm.setup("fit")
    with pytest.raises(ValueError, match="lower data.batch_size"):
        dm.train_dataloader()


# ---------------------------------------------------------------------------------------- synthetic
def test_synthetic_default_config_generates_once_into_the_cache(compose_cfg, tmp_path):
    cfg = compose_cfg([f"paths.cache_dir={tmp_path}", "data.synthetic.num_train=4", "data.synthetic.num_val=2",
                       "data.batch_size=2"])
    assert cfg.data._target_ == "melvoc.data.VocoderDataModule"
    dm = instantiate(cfg.data)
    dm.prepare_data()
    folder = dm.synthetic_dir
    assert folder.parent == tmp_path and folder.name.startswith("synthetic-22050hz-")
    stamp = (folder / "params.json").stat().st_mtime_ns
    instantiate(cfg.data).prepare_data()  # reused, not regenerated
    assert (folder / "params.json").stat().st_mtime_ns == stamp
    dm.setup("fit")
    assert len(dm.train_dataset) == 4 and len(dm.val_dataset) == 2
    for info in dm.train_dataset.infos + dm.val_dataset.infos:
        assert info.sampling_rate == 22050 and 1.0 <= info.seconds <= 3.0
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["audio"].shape == (2, cfg.data.segment_size)
    assert batch["audio"].abs().max() > 0.05  # not silence
    other = instantiate(compose_cfg([f"paths.cache_dir={tmp_path}", "features=bigvgan_24k",
                                     "data.synthetic.num_train=4", "data.synthetic.num_val=2"]).data)
    assert other.synthetic_dir.name.startswith("synthetic-24000hz-") and other.synthetic_dir != folder


def test_synthetic_set_is_deterministic_and_keyed_by_its_parameters(tmp_path):
    spec = SyntheticSpec(sampling_rate=16000, num_train=3, num_val=2, min_seconds=0.5, max_seconds=1.5)
    a = make_synthetic_dataset(tmp_path / "a", spec)
    b = make_synthetic_dataset(tmp_path / "b", spec)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".wav"]) == 5
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    more = SyntheticSpec(sampling_rate=16000, num_train=5, num_val=2, min_seconds=0.5, max_seconds=1.5)
    c = make_synthetic_dataset(tmp_path / "a", more)
    assert c != a and c.name != spec.folder_name
    for i in range(2):  # the validation set does not depend on num_train
        assert (c / f"wavs/val_{i:04d}.wav").read_bytes() == (a / f"wavs/val_{i:04d}.wav").read_bytes()
    durations = [sf.info(str(p)).duration for p in (a / "wavs").glob("*.wav")]
    assert all(0.5 <= d <= 1.5 for d in durations) and len(set(durations)) == 5
    audio, sr = sf.read(a / "wavs" / "train_0000.wav")
    assert sr == 16000 and 0.2 < np.abs(audio).max() < 1.0
    frames = np.abs(audio[: len(audio) // 160 * 160]).reshape(-1, 160).max(axis=1)
    assert (frames < 1e-3).any() and (frames > 0.05).any()  # pauses and sound


# ---------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_ranks_see_different_training_items_and_cover_validation_once(tmp_path):
    train = make_corpus(tmp_path / "train", 8, seconds=(0.4, 0.6))
    val = make_corpus(tmp_path / "val", 5, seconds=(0.3, 0.5), seed=1)
    features = MelConfig(SR, 1024, 256, 1024, 80)
    dm = VocoderDataModule(features, train_filelist=str(train), val_filelist=str(val), batch_size=2,
                           val_batch_size=2, segment_size=4096)
    out = tmp_path / "records"
    out.mkdir()
    trainer = _trainer(devices=2, strategy="ddp_spawn", callbacks=[ReleaseProcessGroup()])
    trainer.fit(Recorder(str(out)), datamodule=dm)
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    train0, train1 = (set(r["train"]) for r in records)
    assert len(records[0]["train"]) == len(records[1]["train"]) == 4
    assert not train0 & train1 and train0 | train1 == {f"c{i:03d}" for i in range(8)}
    val_seen = records[0]["val"] + records[1]["val"]
    assert sorted(val_seen) == [f"c{i:03d}" for i in range(5)]  # every clip exactly once


# ---------------------------------------------------------------------------------------- check CLI
def test_check_cli_summarises_and_fails_on_unusable_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    folder.mkdir()
    sf.write(folder / "good.wav", 0.1 * rng.standard_normal(SR), SR, subtype="PCM_16")
    sf.write(folder / "stereo.flac", 0.1 * rng.standard_normal((SR * 2, 2)), SR)
    sf.write(folder / "hot.wav", np.clip(3 * rng.standard_normal(SR), -1, 1), SR, subtype="PCM_16")
    sf.write(folder / "quiet.wav", np.zeros(SR), SR, subtype="PCM_16")
    sf.write(folder / "tiny.wav", 0.1 * rng.standard_normal(1000), SR, subtype="PCM_16")
    sf.write(folder / "hi.wav", 0.1 * rng.standard_normal(44100), 44100, subtype="PCM_16")
    assert check_main([str(folder), "--sampling-rate", "22050"]) == 0
    text = capsys.readouterr().out
    assert "files                 6 (6 usable, 0 unusable)" in text
    assert "22050 Hz: 5, 44100 Hz: 1  (1 will be resampled to 22050 Hz)" in text
    assert "1: 5, 2: 1" in text and "FLAC/PCM_16: 1" in text and "WAV/PCM_16: 5" in text
    assert "min 0.05 s, median 1.00 s, max 2.00 s" in text
    assert f"clipped               1: {folder / 'hot.wav'}" in text
    assert f"silent (< -60 dBFS)   1: {folder / 'quiet.wav'}" in text
    assert f"shorter than segment  1 (< 8192 samples at 22050 Hz): {folder / 'tiny.wav'}" in text
    nan = 0.1 * np.ones(SR, dtype=np.float32)
    nan[5] = np.nan
    sf.write(folder / "nan.wav", nan, SR, subtype="FLOAT")
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEjunk" * 10)
    assert check_main([str(folder), "--sampling-rate", "22050"]) == 1
    text = capsys.readouterr().out
    assert "files                 8 (6 usable, 2 unusable)" in text and "unusable files (2):" in text
    assert f"{folder / 'nan.wav'}: 1 NaN/inf sample(s)" in text and f"{folder / 'broken.wav'}: unreadable audio" in text
    assert check_main([str(folder / 'good.wav').replace("good.wav", "none.txt")]) == 2


class _MelRecorder(L.LightningModule):
    """Keeps each validation clip's lengths // hop frames of ``batch["mel"]`` and the frames after them."""

    def __init__(self) -> None:
        super().__init__()
        self.own: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def validation_step(self, batch, batch_idx):
        for row, (name, n) in enumerate(zip(batch["names"], batch["lengths"].tolist())):
            self.own[name] = batch["mel"][row, :, : n // 256].clone()
            self.after[name] = batch["mel"][row, :, n // 256 :].clone()


@pytest.mark.parametrize("center", [False, True])
def test_validation_mels_are_those_of_each_clip_alone(tmp_path, center):
    features = MelConfig(SR, 1024, 256, 1024, 80, center=center)
    val = make_corpus(tmp_path, 4, seconds=(0.3, 1.2), seed=2)
    dm = VocoderDataModule(features, val_filelist=str(val), val_batch_size=4)
    recorder = _MelRecorder()
    _trainer().validate(recorder, datamodule=dm, verbose=False)
    mel = MelSpectrogram(features)
    assert len({int(m.shape[-1]) for m in recorder.own.values()}) > 1, "clips of different lengths"
    for i, name in enumerate(sorted(recorder.own)):
        audio = dm.val_dataset[i]["audio"]
        alone = mel(audio.unsqueeze(0))[0, :, : audio.shape[-1] // 256]
        torch.testing.assert_close(recorder.own[name], alone, rtol=1e-5, atol=1e-5)
        assert (recorder.after[name] == math.log(1e-5)).all()  # the log-mel of silence after the clip
