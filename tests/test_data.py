"""Sources, AudioDataset (crops, whole clips, short clips, bad files, fine-tuning mels) and collate."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from melvoc.data import AudioCollate, AudioDataError, AudioDataset, read_source, split_entries
from melvoc.features import MelConfig

SR = 22050
FEATURES = MelConfig(sampling_rate=SR, n_fft=1024, hop_size=256, win_size=1024, num_mels=80)


def ramp(n: int) -> np.ndarray:
    """Strictly increasing float32 audio: every sample tells its position (float WAV keeps it exactly)."""
    return (np.arange(n, dtype=np.float64) / n * 1.8 - 0.9).astype(np.float32)


def write(path: Path, audio: np.ndarray, sr: int = SR) -> Path:
    """Float WAV (exact samples), or the suffix's default encoding (FLAC, OGG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr, subtype="FLOAT" if path.suffix == ".wav" else None)
    return path


# ---------------------------------------------------------------------------------------- sources
def test_vits_filelist_resolves_against_root_or_its_folder(tmp_path):
    write(tmp_path / "lists" / "wavs" / "a.wav", np.zeros(100, np.float32))
    write(tmp_path / "corpus" / "b.wav", np.zeros(100, np.float32))
    filelist = tmp_path / "lists" / "train.txt"
    filelist.write_text("wavs/a.wav|0|hello world\n\n" + f"{tmp_path}/corpus/b.wav|1|absolute\n")
    entries = read_source(filelist)
    assert [e.path for e in entries] == [tmp_path / "lists" / "wavs" / "a.wav", tmp_path / "corpus" / "b.wav"]
    assert [e.origin for e in entries] == [f"{filelist}:1", f"{filelist}:3"]
    assert [e.name for e in entries] == ["a", "b"]
    entries = read_source(filelist, root=tmp_path / "elsewhere")
    assert entries[0].path == tmp_path / "elsewhere" / "wavs" / "a.wav"


def test_hifigan_filelist_without_suffix_and_plain_path_list(tmp_path):
    write(tmp_path / "wavs" / "LJ001-0001.wav", np.zeros(100, np.float32))
    write(tmp_path / "wavs" / "LJ001-0002.flac", np.zeros(100, np.float32))
    hifigan = tmp_path / "training.txt"
    hifigan.write_text("LJ001-0001|Printing, in the only sense|Printing\nLJ001-0002|x|x\n")
    paths = [e.path for e in read_source(hifigan, root=tmp_path / "wavs")]
    assert paths == [tmp_path / "wavs" / "LJ001-0001.wav", tmp_path / "wavs" / "LJ001-0002.flac"]
    plain = tmp_path / "plain.txt"
    plain.write_text("wavs/LJ001-0001.wav\n")
    assert [e.path for e in read_source(plain)] == [tmp_path / "wavs" / "LJ001-0001.wav"]


def test_ljspeech_metadata_csv_and_its_folder(tmp_path):
    root = tmp_path / "LJSpeech-1.1"
    for name in ("LJ001-0001", "LJ001-0002"):
        write(root / "wavs" / f"{name}.wav", np.zeros(100, np.float32))
    (root / "metadata.csv").write_text("LJ001-0001|Text one|Text one\nLJ001-0002|Text two|Text two\n")
    expected = [root / "wavs" / "LJ001-0001.wav", root / "wavs" / "LJ001-0002.wav"]
    assert [e.path for e in read_source(root / "metadata.csv")] == expected
    assert [e.path for e in read_source(root)] == expected


def test_folder_is_searched_recursively_in_sorted_order(tmp_path):
    for rel in ("p226/b.flac", "p225/a.wav", "p225/c.ogg", "notes.txt"):
        if rel.endswith(".txt"):
            (tmp_path / rel).write_text("x")
        else:
            write(tmp_path / rel, np.zeros(2000, np.float32))
    assert [e.path.relative_to(tmp_path).as_posix() for e in read_source(tmp_path)] == [
        "p225/a.wav", "p225/c.ogg", "p226/b.flac"
    ]


def test_filelist_line_without_path_names_file_and_line(tmp_path, caplog):
    filelist = tmp_path / "train.txt"
    filelist.write_text("a.wav|0|x\n|1|no path here\nb.wav|2|y\n")
    with pytest.raises(AudioDataError) as err:
        read_source(filelist)
    assert f"{filelist}:2" in str(err.value) and "must start with the audio path" in str(err.value)
    with caplog.at_level(logging.WARNING):
        entries = read_source(filelist, on_error="skip")
    assert [e.name for e in entries] == ["a", "b"]
    assert "skipped 1 line(s)" in caplog.text and f"{filelist}:2" in caplog.text


def test_missing_source_and_empty_folder_say_what_to_pass(tmp_path):
    with pytest.raises(AudioDataError, match="data source not found"):
        read_source(tmp_path / "nope.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AudioDataError, match="no audio files"):
        read_source(tmp_path / "empty")


def test_split_is_deterministic_disjoint_and_complete(tmp_path):
    filelist = tmp_path / "all.txt"
    filelist.write_text("".join(f"c{i:03d}.wav\n" for i in range(50)))
    entries = read_source(filelist)
    train, val = split_entries(entries, val_count=7, seed=3)
    train2, val2 = split_entries(entries, val_count=7, seed=3)
    assert [e.name for e in val] == [e.name for e in val2] and len(val) == 7
    assert {e.name for e in train} | {e.name for e in val} == {e.name for e in entries}
    assert not {e.name for e in train} & {e.name for e in val}
    _, val_other = split_entries(entries, val_count=7, seed=4)
    assert [e.name for e in val_other] != [e.name for e in val]
    assert len(split_entries(entries, val_fraction=0.1)[1]) == 5
    with pytest.raises(ValueError, match="val_count=50"):
        split_entries(entries, val_count=50)


# ---------------------------------------------------------------------------------------- dataset
def test_training_items_are_random_crops_of_the_file(tmp_path):
    n = SR * 3
    path = write(tmp_path / "clip.wav", ramp(n))
    full = ramp(n)
    ds = AudioDataset([path], FEATURES, segment_size=8192)
    starts = set()
    torch.manual_seed(0)
    for _ in range(20):
        item = ds[0]
        audio = item["audio"].numpy()
        assert item["audio"].dtype == torch.float32 and audio.shape == (8192,) and item["length"] == 8192
        start = int(np.searchsorted(full, audio[0]))
        np.testing.assert_array_equal(audio, full[start : start + 8192])
        starts.add(start)
    assert len(starts) > 10


def test_segment_size_must_be_a_multiple_of_hop(tmp_path):
    path = write(tmp_path / "clip.wav", ramp(SR))
    with pytest.raises(ValueError, match=r"segment_size=8000: must be a positive multiple of hop_size=256 \(e.g. 7936 or 8192\)"):
        AudioDataset([path], FEATURES, segment_size=8000)


def test_validation_items_are_whole_clips_trimmed_to_hop_in_order(tmp_path):
    lengths = [SR + 100, 3000, SR * 2 + 255]
    paths = [write(tmp_path / f"v{i}.wav", ramp(n)) for i, n in enumerate(lengths)]
    ds = AudioDataset(paths, FEATURES)
    items = [ds[i] for i in range(len(ds))]
    assert [it["name"] for it in items] == ["v0", "v1", "v2"]
    for item, n in zip(items, lengths):
        assert item["length"] == n // 256 * 256 == item["audio"].shape[0]
        np.testing.assert_array_equal(item["audio"].numpy(), ramp(n)[: n // 256 * 256])
    batch = AudioCollate()(items)
    assert batch["audio"].shape == (3, (SR * 2 + 255) // 256 * 256)
    assert batch["lengths"].dtype == torch.int64 and batch["lengths"].tolist() == [n // 256 * 256 for n in lengths]
    assert batch["names"] == ["v0", "v1", "v2"]
    assert torch.all(batch["audio"][1, batch["lengths"][1] :] == 0)


def test_validation_cap_in_seconds(tmp_path):
    path = write(tmp_path / "long.wav", ramp(SR * 4))
    item = AudioDataset([path], FEATURES, max_seconds=1.0)[0]
    assert item["length"] == item["audio"].shape[0] == SR // 256 * 256


def test_short_clips_pad_drop_or_error(tmp_path, caplog):
    short = write(tmp_path / "short.wav", ramp(3000))
    ok = write(tmp_path / "ok.wav", ramp(SR))
    with caplog.at_level(logging.INFO):
        padded = AudioDataset([short, ok], FEATURES, segment_size=8192, short_clips="pad")
    assert padded.num_padded == 1 and "1 clip(s) shorter than 8192" in caplog.text
    item = padded[0]
    assert item["audio"].shape == (8192,) and item["length"] == 3000
    np.testing.assert_array_equal(item["audio"][:3000].numpy(), ramp(3000))
    assert torch.all(item["audio"][3000:] == 0)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dropped = AudioDataset([short, ok], FEATURES, segment_size=8192, short_clips="drop")
    assert dropped.names == ["ok"] and dropped.num_dropped == 1
    assert "dropped 1 clip(s)" in caplog.text and str(short) in caplog.text
    with pytest.raises(AudioDataError) as err:
        AudioDataset([short, ok], FEATURES, segment_size=8192, short_clips="error")
    assert str(short) in str(err.value) and "shorter than data.segment_size=8192" in str(err.value)
    assert "data.short_clips=pad" in str(err.value)


def test_bad_files_are_reported_together_or_skipped_with_names(tmp_path, caplog):
    write(tmp_path / "good.wav", ramp(SR))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"\x00\x01garbage" * 100)
    low = write(tmp_path / "low.wav", ramp(8000), sr=8000)
    filelist = tmp_path / "train.txt"
    filelist.write_text("good.wav\nempty.wav\ngarbage.wav\nlow.wav\nmissing.wav\n")
    entries = read_source(filelist)
    with pytest.raises(AudioDataError) as err:
        AudioDataset(entries, FEATURES, segment_size=4096, resample=False)
    message = str(err.value)
    assert "4 of 5 files unusable" in message and "data.on_error=skip" in message
    for path in (empty, garbage, low, tmp_path / "missing.wav"):
        assert str(path) in message
    assert f"{filelist}:3" in message  # the filelist line of garbage.wav
    assert "8000 Hz, expected 22050 Hz" in message
    with caplog.at_level(logging.WARNING):
        ds = AudioDataset(entries, FEATURES, segment_size=4096, resample=False, on_error="skip")
    assert ds.names == ["good"] and len(ds.skipped) == 4
    assert "skipped 4 of 5 unusable files" in caplog.text and str(garbage) in caplog.text


def test_nan_file_inside_a_worker_names_the_file_or_is_skipped(tmp_path, caplog):
    audio = ramp(SR)
    audio[::1000] = np.nan  # every crop meets some
    bad = write(tmp_path / "nan.wav", audio)
    good = write(tmp_path / "good.wav", ramp(SR))
    ds = AudioDataset([bad], FEATURES, segment_size=SR // 256 * 256)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=AudioCollate())
    with pytest.raises(AudioDataError) as err:
        next(iter(loader))
    assert str(bad) in str(err.value) and "NaN/inf" in str(err.value)
    val = AudioDataset([bad, good], FEATURES, on_error="skip")
    with caplog.at_level(logging.WARNING):
        batch = AudioCollate()([val[0], val[1]])
    assert batch["names"] == ["good"] and str(bad) in caplog.text and val.skipped
    train = AudioDataset([bad, good], FEATURES, segment_size=8192, on_error="skip")
    torch.manual_seed(0)
    assert all(train[0]["name"] == "good" for _ in range(3))  # a broken crop is replaced by another item


def test_peak_normalize_uses_the_whole_file_peak_and_gain(tmp_path):
    audio = ramp(SR * 2) * 0.5  # peak 0.45
    path = write(tmp_path / "clip.wav", audio)
    whole = AudioDataset([path], FEATURES, peak_normalize=0.95)[0]["audio"]
    assert whole.abs().max().item() == pytest.approx(0.95, abs=1e-6)
    crop = AudioDataset([path], FEATURES, segment_size=1024, peak_normalize=0.95)[0]["audio"]
    np.testing.assert_allclose(crop.numpy() / (0.95 / 0.45), crop.numpy() * 0.45 / 0.95, rtol=1e-6)
    start = int(np.searchsorted(audio * 0.95 / 0.45, crop[0].item() - 1e-7))
    np.testing.assert_allclose(crop.numpy(), (audio * 0.95 / 0.45)[start : start + 1024], atol=1e-6)
    gained = AudioDataset([path], FEATURES, gain_db=-6.0)[0]["audio"]
    assert gained.abs().max().item() == pytest.approx(0.45 * 10 ** (-6 / 20), rel=1e-5)


def test_resampled_training_crops(tmp_path):
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal(44100 * 2)).clip(-1, 1).astype(np.float32)
    path = write(tmp_path / "hi.wav", audio, sr=44100)
    ds = AudioDataset([path], FEATURES, segment_size=8192)
    assert ds.lengths == [SR * 2]
    item = ds[0]
    assert item["audio"].shape == (8192,) and item["audio"].abs().max() <= 1.0
    with pytest.raises(AudioDataError, match="44100 Hz, expected 22050 Hz"):
        AudioDataset([path], FEATURES, segment_size=8192, resample=False)


# ---------------------------------------------------------------------------------------- fine-tuning
def _frame_index_mel(frames: int) -> np.ndarray:
    """A 'mel' whose every frame holds its own index, so crops can be located (no log-mel: the
    datasets below read it with check_mel_stats=False)."""
    return np.tile(np.arange(frames, dtype=np.float32), (FEATURES.num_mels, 1))


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_finetuning_crops_audio_and_mel_in_lock_step(tmp_path, suffix):
    hop, seg = FEATURES.hop_size, 8192
    n = hop * 200
    path = write(tmp_path / "wavs" / "utt1.wav", ramp(n))
    mel = _frame_index_mel(n // hop)
    mel_dir = tmp_path / "mels"
    mel_dir.mkdir()
    if suffix == ".npy":
        np.save(mel_dir / "utt1.npy", mel)
    else:
        torch.save(torch.from_numpy(mel)[None], mel_dir / "utt1.pt")  # HiFi-GAN's (1, num_mels, frames)
    ds = AudioDataset([path], FEATURES, segment_size=seg, mel_dir=mel_dir, check_mel_stats=False)
    torch.manual_seed(1)
    for _ in range(10):
        item = ds[0]
        target = item["mel_target"]
        assert target.shape == (FEATURES.num_mels, seg // hop)
        first = int(target[0, 0])
        np.testing.assert_array_equal(target[0].numpy(), np.arange(first, first + seg // hop))
        np.testing.assert_array_equal(item["audio"].numpy(), ramp(n)[first * hop : first * hop + seg])
    whole = AudioDataset([path], FEATURES, mel_dir=mel_dir, check_mel_stats=False)[0]
    assert whole["mel_target"].shape[-1] * hop == whole["audio"].shape[0] == n


def test_finetuning_one_frame_off_is_fine_more_is_an_error(tmp_path):
    hop = FEATURES.hop_size
    n = hop * 100
    path = write(tmp_path / "utt.wav", ramp(n))
    np.save(tmp_path / "utt.npy", _frame_index_mel(101))
    item = AudioDataset([path], FEATURES, mel_dir=tmp_path, check_mel_stats=False)[0]
    assert item["mel_target"].shape[-1] == 100 and item["audio"].shape[0] == n
    np.save(tmp_path / "utt.npy", _frame_index_mel(97))
    with pytest.raises(AudioDataError) as err:
        AudioDataset([path], FEATURES, mel_dir=tmp_path, check_mel_stats=False)[0]
    assert str(tmp_path / "utt.npy") in str(err.value)
    assert "97 mel frames" in str(err.value) and "gives 100 frames" in str(err.value)


def test_finetuning_missing_or_misshapen_mel(tmp_path):
    path = write(tmp_path / "utt.wav", ramp(256 * 50))
    with pytest.raises(AudioDataError, match="no precomputed mel"):
        AudioDataset([path], FEATURES, mel_dir=tmp_path / "mels")
    np.save(tmp_path / "utt.npy", np.zeros((50, 80), np.float32))
    with pytest.raises(AudioDataError, match=r"mel of shape \(50, 80\), expected \(80, frames\)"):
        AudioDataset([path], FEATURES, mel_dir=tmp_path)[0]


def test_finetuning_collate_pads_mels_with_log_silence(tmp_path):
    hop = FEATURES.hop_size
    for name, frames in (("a", 40), ("b", 60)):
        write(tmp_path / f"{name}.wav", ramp(hop * frames))
        np.save(tmp_path / f"{name}.npy", _frame_index_mel(frames))
    ds = AudioDataset([tmp_path / "a.wav", tmp_path / "b.wav"], FEATURES, mel_dir=tmp_path, check_mel_stats=False)
    batch = AudioCollate(mel_pad_value=float(np.log(FEATURES.clip_val)))([ds[0], ds[1]])
    assert batch["mel_target"].shape == (2, 80, 60) and batch["audio"].shape == (2, 60 * hop)
    assert torch.allclose(batch["mel_target"][0, :, 40:], torch.tensor(float(np.log(1e-5))))
