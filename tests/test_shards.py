"""Packing, the shard format, the shard and file training loaders' exact resume, object storage and bad input.

Object storage is a real S3-compatible server (moto's server mode) on 127.0.0.1, started here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from melvoc.data import AudioCollate, AudioDataset, read_source
from melvoc.data.io import AudioDataError, audio_info, read_audio
from melvoc.data.resumable import ResumableDataLoader, ResumableSampler, ResumeMismatchError
from melvoc.features import MelConfig
from tests import s3server

pytest.importorskip("litdata", reason="the shards extra (see the README's 'Data at scale')")

from melvoc.data.pack import PackError, main as pack_main, pack  # noqa: E402
from melvoc.data.shards import (  # noqa: E402
    ENCODINGS,
    MANIFEST,
    ShardDataModule,
    decode_audio,
    encode_audio,
    open_shards,
)
from melvoc.data.storage import StorageError, Store  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:An item was larger than the target chunk size")

SR = 22050
FEATURES = MelConfig(sampling_rate=SR, n_fft=1024, hop_size=256, win_size=1024, num_mels=80)


def corpus(root: Path, count: int = 10, sr: int = SR, seed: int = 0, seconds=(0.5, 1.2)) -> Path:
    """``count`` 16-bit noise clips in ``root/wavs`` and a filelist ``root/list.txt``; returns the filelist."""
    rng = np.random.default_rng(seed)
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        n = int(rng.uniform(*seconds) * sr)
        sf.write(root / "wavs" / f"c{i:02d}.wav", (0.3 * rng.standard_normal(n)).clip(-1, 1), sr, subtype="PCM_16")
        lines.append(f"wavs/c{i:02d}.wav|spk|text")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "list.txt"


@pytest.fixture(scope="module")
def s3():
    proc, server = s3server.start()
    try:
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def s3_env(s3, monkeypatch):
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


# ------------------------------------------------------------------------------------------ format
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_encodings_store_file_samples_exactly(tmp_path, encoding):
    bits = int(encoding[-2:])
    rng = np.random.default_rng(1)
    path = tmp_path / "x.wav"
    sf.write(path, (0.5 * rng.standard_normal(3000)).clip(-1, 1), SR, subtype=f"PCM_{bits}")
    audio = read_audio(audio_info(path), SR)
    data = encode_audio(audio, encoding, SR)
    assert np.array_equal(decode_audio(data, encoding), audio)
    assert np.array_equal(decode_audio(data, encoding, 100, 500), audio[100:600]), "a crop decodes only its span"
    if encoding.startswith("pcm"):
        assert len(data) == 3000 * bits // 8, "no float32 bloat"


def test_pack_folder_stores_every_clip_exactly_in_order(tmp_path):
    filelist = corpus(tmp_path / "c", 10)
    summary = pack(str(filelist), str(tmp_path / "out"), SR, chunk_bytes="40KB", num_workers=0)
    manifest = open_shards(str(tmp_path / "out"), SR)
    assert summary.clips == manifest["clips"] == 10 and summary.shards == manifest["shards"] > 1
    assert manifest["encoding"] == "pcm16" and not manifest["skipped"]
    assert summary.hours == pytest.approx(manifest["samples"] / SR / 3600)
    dm = ShardDataModule(FEATURES, train_shards=str(tmp_path / "out"), val_shards=str(tmp_path / "out"), seed=0)
    dm.setup("validate")
    entries = read_source(filelist)
    files = AudioDataset(entries, FEATURES)  # whole clips, the same options
    for i, entry in enumerate(entries):
        item, expected = dm.val_dataset[i], files[i]
        assert item["name"] == entry.name == expected["name"]
        assert torch.equal(item["audio"], expected["audio"]) and item["length"] == expected["length"]


def test_pack_output_does_not_depend_on_the_worker_count(tmp_path):
    filelist = corpus(tmp_path / "c", 8)
    pack(str(filelist), str(tmp_path / "a"), SR, chunk_bytes="30KB", num_workers=0)
    pack(str(filelist), str(tmp_path / "b"), SR, chunk_bytes="30KB", num_workers=2)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        if name == "index.json":  # litdata stamps the time of writing into it
            a, b = json.loads(a)["chunks"], json.loads(b)["chunks"]
        assert a == b, name


def test_pack_resamples_and_mixes_once(tmp_path):
    path = tmp_path / "wavs" / "stereo44k.wav"
    path.parent.mkdir()
    stereo = np.stack([np.linspace(-0.5, 0.5, 44100), np.zeros(44100)], axis=1)
    sf.write(path, stereo, 44100, subtype="PCM_24")
    pack(str(tmp_path / "wavs"), str(tmp_path / "out"), SR, encoding="pcm24", num_workers=0)
    dm = ShardDataModule(FEATURES, val_shards=str(tmp_path / "out"))
    dm.setup("validate")
    item = dm.val_dataset[0]
    expected = read_audio(audio_info(path), SR)
    assert item["length"] == expected.shape[0] // 256 * 256 and expected.shape[0] == SR
    assert np.abs(item["audio"].numpy() - expected[: item["length"]]).max() < 2.0**-22


def test_pack_refuses_existing_output_unless_overwrite(tmp_path, capsys):
    filelist = corpus(tmp_path / "c", 3)
    out = tmp_path / "out"
    assert pack_main([str(filelist), str(out), "--sampling-rate", str(SR), "--num-workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "clips     3" in printed and "shards" in printed and "skipped   0" in printed
    assert pack_main([str(filelist), str(out), "--sampling-rate", str(SR)]) == 2
    assert "a finished shard set; pass --overwrite" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "chunk-0-0.bin").write_bytes(b"x")
    assert pack_main([str(filelist), str(tmp_path / "half"), "--sampling-rate", str(SR)]) == 2
    assert "half-written" in capsys.readouterr().err
    assert pack_main([str(filelist), str(tmp_path / "half"), "--sampling-rate", str(SR), "--overwrite",
                      "--num-workers", "0"]) == 0
    assert open_shards(str(tmp_path / "half"))["clips"] == 3


def test_pack_bad_file_is_named_or_skipped_and_listed(tmp_path):
    filelist = corpus(tmp_path / "c", 4)
    (tmp_path / "c" / "wavs" / "c01.wav").write_bytes(b"RIFF not audio at all")
    with pytest.raises(PackError, match=r"c01\.wav.*\[listed at .*list\.txt:2\]"):
        pack(str(filelist), str(tmp_path / "out"), SR, num_workers=0)
    assert Store(str(tmp_path / "out")).is_empty(), "a failed pack leaves nothing half-written"
    summary = pack(str(filelist), str(tmp_path / "out"), SR, num_workers=0, on_error="skip")
    assert summary.clips == 3 and len(summary.skipped) == 1 and "c01.wav" in summary.skipped[0]
    assert "skipped   1" in summary.format() and "c01.wav" in summary.format()
    assert open_shards(str(tmp_path / "out"))["skipped"] == summary.skipped


def test_training_refuses_missing_empty_half_written_or_wrong_rate_sets(tmp_path):
    with pytest.raises(StorageError, match="no such folder"):
        open_shards(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StorageError, match="empty, nothing was packed"):
        open_shards(str(tmp_path / "empty"))
    pack(str(corpus(tmp_path / "c", 3)), str(tmp_path / "set"), SR, num_workers=0)
    (tmp_path / "set" / MANIFEST).unlink()
    with pytest.raises(StorageError, match="packing never finished.*--overwrite"):
        open_shards(str(tmp_path / "set"))
    pack(str(tmp_path / "c" / "list.txt"), str(tmp_path / "set"), 16000, num_workers=0, overwrite=True)
    with pytest.raises(ValueError, match=r"packed at 16000 Hz, but features.sampling_rate=22050.*--sampling-rate 22050"):
        ShardDataModule(FEATURES, train_shards=str(tmp_path / "set")).setup("fit")


def test_corrupt_chunk_names_shard_and_item_or_is_skipped_and_counted(tmp_path, caplog):
    pack(str(corpus(tmp_path / "c", 4)), str(tmp_path / "set"), SR, chunk_bytes="1B", num_workers=0)
    chunk = tmp_path / "set" / "chunk-0-2.bin"
    data = bytearray(chunk.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 100] = bytes(100)  # inside the stored audio: same size, other bytes
    chunk.write_bytes(bytes(data))
    dm = ShardDataModule(FEATURES, val_shards=str(tmp_path / "set"))
    dm.setup("validate")
    with pytest.raises(AudioDataError, match=r"chunk-0-2\.bin, item 2 \(clip 'c02'.*corrupt"):
        dm.val_dataset[2]
    dm = ShardDataModule(FEATURES, val_shards=str(tmp_path / "set"), on_error="skip")
    dm.setup("validate")
    with caplog.at_level(logging.WARNING):
        assert dm.val_dataset[2] is None and dm.val_dataset[1] is not None
    assert dm.val_dataset.stream.skipped == 1 and "chunk-0-2.bin" in caplog.text


def test_a_training_crop_verifies_the_blocks_it_decodes(tmp_path):
    """Per-block checksums: a crop checks only the bytes it decodes (corruption there is an error naming
    shard and item); corruption elsewhere in the clip is left to the reads that decode it."""
    from melvoc.data.dataset import draw_below
    from melvoc.data.shards import CHECKSUM_BLOCK, ShardClipSettings, block_checksums

    seg = 4096
    audio = (0.3 * np.random.default_rng(1).standard_normal(4 * SR)).astype(np.float32)
    data = bytearray(encode_audio(audio, "pcm16", SR))
    raw = {"audio": np.frombuffer(bytes(data), dtype=np.uint8), "crc": block_checksums(bytes(data)),
           "meta": json.dumps({"name": "c", "origin": "c.wav"}), "sampling_rate": SR, "length": len(audio)}
    assert len(raw["crc"]) == -(-len(data) // CHECKSUM_BLOCK) > 4
    crop = ShardClipSettings(encoding="pcm16", hop_size=256, shortest=1024, segment_size=seg)
    whole = ShardClipSettings(encoding="pcm16", hop_size=256, shortest=1024)
    start = draw_below(len(audio) - seg + 1, np.random.default_rng(7))
    inside, outside = 2 * start + 10, (2 * (start + seg) // CHECKSUM_BLOCK + 1) * CHECKSUM_BLOCK + 5
    if outside >= len(data):  # the crop ends in the last block: corrupt one before it instead
        outside = (2 * start // CHECKSUM_BLOCK - 1) * CHECKSUM_BLOCK + 5
    assert 0 <= outside < len(data)

    def corrupted(at: int) -> dict:
        bad = bytearray(data)
        bad[at] ^= 0xFF
        return {**raw, "audio": np.frombuffer(bytes(bad), dtype=np.uint8)}

    item = crop.make_item(raw, np.random.default_rng(7), "set/chunk-0-0.bin, item 3")
    np.testing.assert_array_equal(item["audio"].numpy(), decode_audio(bytes(data), "pcm16", start, seg))
    with pytest.raises(AudioDataError, match=r"chunk-0-0\.bin, item 3 \(clip 'c' from c\.wav\): corrupt"):
        crop.make_item(corrupted(inside), np.random.default_rng(7), "set/chunk-0-0.bin, item 3")
    crop.make_item(corrupted(outside), np.random.default_rng(7), "set/chunk-0-0.bin, item 3")
    with pytest.raises(AudioDataError, match="corrupt"):
        whole.make_item(corrupted(outside), None, "set/chunk-0-0.bin, item 3")


# ------------------------------------------------------------------------------------ exact resume
def _names_and_audio(batches):
    return [(b["names"], b["audio"]) for b in batches]


@pytest.mark.parametrize("workers", [0, 2])
def test_file_loader_resumes_exactly_where_it_stopped(tmp_path, workers):
    dataset = AudioDataset(read_source(corpus(tmp_path, 10)), FEATURES, segment_size=4096)

    def loader(num_workers: int) -> ResumableDataLoader:
        sampler = ResumableSampler(dataset, seed=3, drop_last=True)
        return ResumableDataLoader(dataset, sampler=sampler, batch_size=2, drop_last=True, collate_fn=AudioCollate(),
                                   num_workers=num_workers)

    first = loader(workers)
    first.sampler.set_epoch(1)
    whole = list(first)
    assert len(whole) == 5
    stopped = loader(workers)
    stopped.sampler.set_epoch(1)
    seen = []
    for batch in stopped:
        seen.append(batch)
        if len(seen) == 2:
            break
    state = stopped.state_dict()
    assert state["epoch"] == 1 and state["batches"] == 2
    resumed = loader(2 - workers)  # another worker count is fine for the file source
    resumed.load_state_dict(state)
    rest = list(resumed)
    for (names_a, audio_a), (names_b, audio_b) in zip(_names_and_audio(whole), _names_and_audio(seen + rest)):
        assert names_a == names_b and torch.equal(audio_a, audio_b)
    assert len(seen + rest) == 5
    with pytest.raises(ResumeMismatchError, match=r"world_size 1 in the checkpoint, 2 now"):
        ResumableDataLoader(dataset, sampler=ResumableSampler(dataset, num_replicas=2, rank=0, seed=3),
                            batch_size=2).load_state_dict(state)
    with pytest.raises(ResumeMismatchError, match=r"batch_size 2 in the checkpoint, 3 now"):
        ResumableDataLoader(dataset, sampler=ResumableSampler(dataset, seed=3, drop_last=True),
                            batch_size=3).load_state_dict(state)


def test_file_loader_saved_at_an_epoch_end_resumes_with_the_next_epoch(tmp_path):
    dataset = AudioDataset(read_source(corpus(tmp_path, 6)), FEATURES, segment_size=4096)

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(dataset, sampler=ResumableSampler(dataset, seed=2, drop_last=True), batch_size=2,
                                   drop_last=True, collate_fn=AudioCollate())

    whole = loader()
    epochs = []
    for epoch in (0, 1):
        whole.sampler.set_epoch(epoch)
        epochs.append([b["names"] for b in whole])
    state = whole.state_dict()
    assert state["epoch"] == 1 and state["batches"] == 3
    stopped = loader()
    stopped.sampler.set_epoch(0)
    assert [b["names"] for b in stopped] == epochs[0]
    resumed = loader()
    resumed.load_state_dict(stopped.state_dict())
    resumed.sampler.set_epoch(1)  # what Lightning does when the checkpoint's epoch was complete
    assert [b["names"] for b in resumed] == epochs[1] and epochs[1] != epochs[0]


def test_file_sampler_gives_ranks_disjoint_items_of_equal_count():
    items = list(range(11))
    ranks = [list(ResumableSampler(items, num_replicas=2, rank=r, seed=5, drop_last=True)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5
    assert not {i for i, _ in ranks[0]} & {i for i, _ in ranks[1]}
    assert len({key for rank in ranks for _, key in rank}) == 10, "every item its own crop key"


def test_shard_loader_resumes_exactly_and_refuses_another_topology(tmp_path):
    pack(str(corpus(tmp_path / "c", 12)), str(tmp_path / "set"), SR, chunk_bytes="30KB", num_workers=0)

    def loader(num_workers: int = 2):
        dm = ShardDataModule(FEATURES, train_shards=str(tmp_path / "set"), segment_size=4096, batch_size=2,
                             num_workers=num_workers, seed=11, cache_dir=str(tmp_path / "cache"))
        dm.setup("fit")
        return dm.train_dataloader()

    first = loader()
    whole = [batch for _ in range(2) for batch in first]  # two epochs
    assert len(whole) == 12
    assert sorted(n for b in whole[:6] for n in b["names"]) == [f"c{i:02d}" for i in range(12)]
    stopped = loader()
    seen = []
    for batch in stopped:
        seen.append(batch)
        if len(seen) == 3:
            break
    state = stopped.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    # As Lightning does: stop asking after len(loader) batches of the epoch, then start the next one.
    rest = [batch for _, batch in zip(range(len(resumed) - 3), resumed)]
    rest += list(resumed)
    assert len(seen + rest) == 12
    for (names_a, audio_a), (names_b, audio_b) in zip(_names_and_audio(whole), _names_and_audio(seen + rest)):
        assert names_a == names_b and torch.equal(audio_a, audio_b)
    with pytest.raises(ResumeMismatchError, match=r"num_workers 2 in the checkpoint, 1 now"):
        loader(num_workers=0).load_state_dict(state)


# ------------------------------------------------------------------------------------- object store
def test_pack_into_s3_and_read_back(tmp_path, s3_env):
    filelist = corpus(tmp_path / "c", 5)
    uri = f"s3://{s3server.BUCKET}/sets/a"
    summary = pack(str(filelist), uri, SR, chunk_bytes="40KB", num_workers=0)
    assert summary.output == uri and summary.shards > 1
    manifest = open_shards(uri, SR)
    assert manifest["clips"] == 5
    with pytest.raises(PackError, match="a finished shard set"):
        pack(str(filelist), uri, SR, num_workers=0)
    dm = ShardDataModule(FEATURES, train_shards=uri, val_shards=uri, segment_size=4096, batch_size=2,
                         cache_dir=str(tmp_path / "cache"), seed=0)
    dm.setup("fit")
    files = AudioDataset(read_source(filelist), FEATURES)
    assert all(torch.equal(dm.val_dataset[i]["audio"], files[i]["audio"]) for i in range(5))
    names = [n for batch in dm.train_dataloader() for n in batch["names"]]
    assert sorted(names) == [f"c{i:02d}" for i in range(4)] or len(names) == 4


def test_unreachable_endpoint_missing_bucket_wrong_credentials_are_one_clear_error(tmp_path, s3_env, monkeypatch):
    uri = f"s3://{s3server.BUCKET}/sets/none"
    with pytest.raises(StorageError, match=r"s3://melvoc-data/sets/none: empty, nothing was packed"):
        open_shards(uri)
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist"):
        open_shards("s3://no-such-bucket/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StorageError, match=r"s3://melvoc-data/sets/none: .*rejected the credentials"):
        open_shards(uri)
    with pytest.raises(StorageError, match="rejected the credentials"):
        pack(str(corpus(tmp_path / "c", 2)), uri, SR, num_workers=0)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{s3server.free_port()}")
    with pytest.raises(StorageError, match=r"s3://melvoc-data/sets/none: cannot reach the object store at http://127"):
        open_shards(uri)


def test_half_written_s3_set_is_refused(tmp_path, s3_env):
    uri = f"s3://{s3server.BUCKET}/sets/half"
    store = Store(uri)
    store.write_json("index.json", {"chunks": [], "config": {}})
    with pytest.raises(StorageError, match="packing never finished"):
        open_shards(uri)
    store.remove_all()
    assert store.is_empty()


def test_manifest_is_json_with_the_counts(tmp_path):
    pack(str(corpus(tmp_path / "c", 2)), str(tmp_path / "set"), SR, encoding="flac16", num_workers=0)
    manifest = json.loads((tmp_path / "set" / MANIFEST).read_text())
    assert {"sampling_rate", "encoding", "clips", "samples", "hours", "min_length", "shards", "bytes"} <= set(manifest)
    assert manifest["encoding"] == "flac16"
