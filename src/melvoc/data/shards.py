"""Training from packed shards, on local disk or in object storage: ``data=shards``.

``python -m melvoc.data.pack`` (:mod:`melvoc.data.pack`) writes a set: litdata chunks
(``chunk-*.bin``), litdata's ``index.json``, and last ``melvoc.json`` (the manifest: rate, encoding,
counts); a set without the manifest was not finished and is refused. Each item is one clip:
``{"audio": uint8 array, "crc": uint32 array, "meta": '{"name": ..., "origin": ...}', "sampling_rate": int,
"length": int}``, the audio bytes lossless 16/24-bit PCM or FLAC (:func:`encode_audio`), with one CRC-32
per :data:`CHECKSUM_BLOCK` bytes (:func:`block_checksums`): a training crop verifies only the blocks it
decodes, so nothing is read unverified and a crop does not pay for checking the whole clip.

litdata streams the chunks (``StreamingDataset``, ``StreamingDataLoader``): it splits them across
ranks and workers, gives every rank the same number of items, caches remote chunks on local disk
and has a loader state that Lightning saves in the checkpoint. Crop offsets are drawn from
``(seed, epoch, item index)`` (:func:`melvoc.data.resumable.item_rng`), so the loader's position is
the whole random state: a resumed run sees exactly the clips and crops the uninterrupted run would
have, provided it has the checkpoint's world size, ``num_workers`` and ``batch_size``.

litdata is an optional dependency (``pip install -e ".[shards]"`` and ``pip install --no-deps
litdata==0.2.76``, see the README); this module needs it, the rest of melvoc does not.
"""

from __future__ import annotations

import io
import json
import logging
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from melvoc.data.dataset import ShortClips, draw_below, scale_audio
from melvoc.data.datamodule import MelDataModule
from melvoc.data.io import AudioDataError
from melvoc.data.resumable import check_resume_settings, item_rng, loader_kwargs
from melvoc.data.sources import OnError
from melvoc.data.storage import StorageError, Store
from melvoc.features import MelConfig, min_audio_length

try:
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming.sampler import ChunkedIndex
except ImportError as _exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "data=shards and python -m melvoc.data.pack need litdata: pip install -e \".[shards]\" && "
        "pip install --no-deps litdata==0.2.76 (--no-deps keeps the torch you have; see the README's "
        "'Data at scale')"
    ) from _exc

__all__ = [
    "ENCODINGS",
    "INDEX",
    "MANIFEST",
    "ShardClipSettings",
    "ShardClips",
    "ShardDataModule",
    "ShardLoader",
    "ShardStream",
    "block_checksums",
    "decode_audio",
    "encode_audio",
    "open_shards",
    "stored_length",
]

log = logging.getLogger(__name__)

FORMAT = "melvoc-shards"
VERSION = 1
#: The manifest, written last: a set without it is half-written.
MANIFEST = "melvoc.json"
#: litdata's chunk index.
INDEX = "index.json"
#: Lossless storage of the resampled clip: raw little-endian PCM or FLAC, 16 or 24 bits.
ENCODINGS = ("pcm16", "pcm24", "flac16", "flac24")
#: Bytes per checksummed block of a clip's stored audio (a 0.37 s block of 22.05 kHz pcm16).
CHECKSUM_BLOCK = 16384


def block_checksums(data: bytes | memoryview | np.ndarray) -> np.ndarray:
    """CRC-32 of each :data:`CHECKSUM_BLOCK` bytes of ``data`` (the last block may be shorter): ``(blocks,)`` uint32."""
    raw = memoryview(data).cast("B")
    return np.array([zlib.crc32(raw[i : i + CHECKSUM_BLOCK]) for i in range(0, len(raw), CHECKSUM_BLOCK)],
                    dtype=np.uint32)


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def _bits(encoding: str) -> int:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding={encoding!r}: must be one of {ENCODINGS}")
    return int(encoding[-2:])


def quantize(audio: np.ndarray, bits: int) -> np.ndarray:
    """Float audio in [-1, 1] ``(T,)`` -> integers of ``bits`` bits (int16 or int32), round to nearest.

    A sample read from a ``bits``-bit file (``k / 2**(bits-1)``, as soundfile returns it) maps back
    to ``k`` exactly, so such files are stored without any change.
    """
    full = float(2 ** (bits - 1))
    q = np.clip(np.rint(audio.astype(np.float64) * full), -full, full - 1)
    return q.astype(np.int16 if bits == 16 else np.int32)


def encode_audio(audio: np.ndarray, encoding: str, sampling_rate: int) -> bytes:
    """Mono float32 ``(T,)`` in [-1, 1] -> the stored bytes of ``encoding`` (see :data:`ENCODINGS`)."""
    bits = _bits(encoding)
    q = quantize(audio, bits)
    if encoding == "pcm16":
        return q.astype("<i2").tobytes()
    if encoding == "pcm24":
        little = q.astype("<i4").view(np.uint8).reshape(-1, 4)
        return little[:, :3].tobytes()
    buffer = io.BytesIO()
    # libsndfile keeps integers exact: int16 -> PCM_16, int32 (value << 8) -> PCM_24.
    data = q if bits == 16 else q.astype(np.int32) << 8
    sf.write(buffer, data, sampling_rate, format="FLAC", subtype=f"PCM_{bits}")
    return buffer.getvalue()


def stored_length(data: bytes | memoryview | np.ndarray, encoding: str) -> int:
    """Samples held by the stored bytes of ``encoding`` (read from the FLAC header, not decoded)."""
    bits = _bits(encoding)
    if encoding.startswith("pcm"):
        return len(memoryview(data).cast("B")) // (bits // 8)
    return int(sf.info(io.BytesIO(bytes(data))).frames)


def decode_audio(data: bytes | memoryview | np.ndarray, encoding: str, start: int = 0,
                 frames: Optional[int] = None) -> np.ndarray:
    """Samples ``[start, start + frames)`` (default: to the end) of the stored bytes of ``encoding`` ->
    mono float32 ``(frames,)``, as soundfile reads such a file (``k / 2**(bits-1)``); PCM decodes only that span."""
    bits = _bits(encoding)
    if encoding.startswith("pcm"):
        width = bits // 8
        raw = memoryview(data).cast("B")
        stop = len(raw) // width if frames is None else start + frames
        span = raw[start * width : stop * width]
        if encoding == "pcm16":
            return np.frombuffer(span, dtype="<i2").astype(np.float32) / np.float32(32768.0)
        triplets = np.frombuffer(span, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = triplets[:, 0] | (triplets[:, 1] << 8) | (triplets[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float32) / np.float32(2.0**23)
    audio, _ = sf.read(io.BytesIO(bytes(data)), start=start, frames=-1 if frames is None else frames,
                       dtype="float32", always_2d=False)
    return np.ascontiguousarray(audio, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Opening a set
# --------------------------------------------------------------------------------------------------


def open_shards(uri: str, sampling_rate: Optional[int] = None, what: str = "data.train_shards") -> dict[str, Any]:
    """Check a packed set at ``uri`` and return its manifest (``melvoc.json``).

    Raises:
        StorageError: the store cannot be reached, the bucket is missing or the credentials are
            rejected; the set is empty, half-written (no manifest or no index) or not a melvoc set.
        ValueError: the set was packed at another rate than ``sampling_rate``.
    """
    store = Store(uri)
    store.check_access()
    if not store.remote and not store.path.is_dir():
        raise StorageError(f"{what}={uri}: no such folder; pack one with python -m melvoc.data.pack SOURCE {uri} "
                           "--sampling-rate SR")
    if not store.exists(MANIFEST):
        if store.is_empty():
            raise StorageError(f"{what}={uri}: empty, nothing was packed there; pack it with "
                               f"python -m melvoc.data.pack SOURCE {uri} --sampling-rate SR")
        raise StorageError(
            f"{what}={uri}: no {MANIFEST}, so packing never finished there (or it is not a melvoc set); "
            f"pack it again with python -m melvoc.data.pack SOURCE {uri} --sampling-rate SR --overwrite"
        )
    manifest = store.read_json(MANIFEST)
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise StorageError(f"{what}={uri}: {MANIFEST} is not a {FORMAT} v{VERSION} manifest "
                           f"(format={manifest.get('format')!r}, version={manifest.get('version')!r}); re-pack it")
    if not store.exists(INDEX):
        raise StorageError(f"{what}={uri}: {MANIFEST} but no {INDEX}: the set is incomplete; pack it again with "
                           "--overwrite")
    rate = int(manifest["sampling_rate"])
    if sampling_rate is not None and rate != int(sampling_rate):
        raise ValueError(
            f"{what}={uri}: packed at {rate} Hz, but features.sampling_rate={sampling_rate}; pack the source again "
            f"with --sampling-rate {sampling_rate} (into another OUTPUT), or pick a features preset at {rate} Hz"
        )
    return manifest


# --------------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardClipSettings:
    """How a stored clip becomes an item: the options of :class:`~melvoc.data.AudioDataset` that apply.

    ``segment_size`` set: a training crop; ``None``: the whole clip (validation), capped at
    ``max_samples`` and trimmed to whole hops.
    """

    encoding: str
    hop_size: int
    shortest: int
    segment_size: Optional[int] = None
    short_clips: ShortClips = "pad"
    on_error: OnError = "raise"
    peak_normalize: Optional[float] = None
    peak_normalize_scope: Literal["file", "crop"] = "file"
    gain: float = 1.0
    max_samples: Optional[int] = None
    split: str = "train"

    def make_item(self, raw: Mapping[str, Any], rng: Optional[np.random.Generator], where: object) -> Optional[dict[str, Any]]:
        """``{"audio": (T,) float32, "length": int, "name": str}``, or ``None`` for a dropped short clip.

        ``where`` (anything with a ``str``) names the shard and item in error messages.

        Raises:
            AudioDataError: a corrupt item (checksum or length mismatch), or a short clip under
                ``short_clips=error``; the message says ``where`` (shard and item) and which clip.
        """
        data = np.ascontiguousarray(raw["audio"], dtype=np.uint8)
        try:
            meta = json.loads(raw["meta"])
            name, origin = str(meta["name"]), str(meta["origin"])
        except Exception as exc:
            raise AudioDataError(f"{where}: corrupt, unreadable name and origin ({exc}); re-pack the set "
                                 "(or set data.on_error=skip to leave such items out)") from exc
        checksums = np.asarray(raw["crc"], dtype=np.uint32).reshape(-1)

        def verify(first: int, stop: int) -> None:
            """Check the blocks that hold bytes ``[first, stop)`` of the stored audio."""
            blocks = range(first // CHECKSUM_BLOCK, -(-stop // CHECKSUM_BLOCK))
            if len(checksums) != -(-len(data) // CHECKSUM_BLOCK) or any(
                    zlib.crc32(data[b * CHECKSUM_BLOCK : (b + 1) * CHECKSUM_BLOCK]) != checksums[b] for b in blocks):
                raise AudioDataError(f"{where} (clip {name!r} from {origin}): corrupt, its checksum does not "
                                     "match; re-pack the set (or set data.on_error=skip to leave such items out)")

        length = int(raw["length"])
        hop, seg = self.hop_size, self.segment_size
        by_file = self.peak_normalize is not None and self.peak_normalize_scope == "file"
        # A PCM training crop decodes, and so verifies, only its own span; anything else the whole clip.
        crop_only = seg is not None and not by_file and self.encoding.startswith("pcm")
        if not crop_only:
            verify(0, len(data))
        stored = stored_length(data, self.encoding)
        if stored != length:
            raise AudioDataError(f"{where} (clip {name!r}): {stored} samples stored, {length} listed; "
                                 "re-pack the set (or set data.on_error=skip)")
        clip = None if crop_only else decode_audio(data, self.encoding)
        if seg is not None:
            if length >= seg:
                start = draw_below(length - seg + 1, rng)
                if clip is not None:
                    audio = clip[start : start + seg].copy()
                else:
                    width = _bits(self.encoding) // 8
                    verify(start * width, (start + seg) * width)
                    audio = decode_audio(data, self.encoding, start, seg)
                valid = seg
            else:
                if self.short_clips != "pad":
                    return self._short(name, where, length, seg)
                if clip is None:
                    verify(0, len(data))
                audio, valid = np.zeros(seg, dtype=np.float32), length
                audio[:length] = clip if clip is not None else decode_audio(data, self.encoding)
        else:
            assert clip is not None
            if length < self.shortest and self.short_clips != "pad":
                return self._short(name, where, length, self.shortest)
            valid = length if self.max_samples is None else min(length, self.max_samples)
            valid = valid // hop * hop
            audio = np.pad(clip[:valid], (0, max(valid, self.shortest) - valid))
        peak = (float(np.abs(clip).max()) if clip.size else 0.0) if clip is not None and by_file else None
        audio = scale_audio(audio, self.gain, self.peak_normalize, peak)
        return {"audio": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), "length": valid,
                "name": name}

    def _short(self, name: str, where: str, length: int, shortest: int) -> None:
        if self.short_clips == "error":
            raise AudioDataError(f"{where} (clip {name!r}): {length} samples, shorter than {shortest}; set "
                                 "data.short_clips=pad or drop")
        return None


class _Where:
    """``"<uri>/<chunk>, item <i>"``, worked out only when an error message is written (not per item)."""

    def __init__(self, stream: "ShardStream", index: Any) -> None:
        self.stream, self.index = stream, index

    def __str__(self) -> str:
        return self.stream._where(self.index)


class ShardStream(StreamingDataset):
    """litdata's ``StreamingDataset`` over a packed set, yielding melvoc items (:class:`ShardClipSettings`).

    A training crop's offset comes from ``item_rng((seed, epoch, item index))``. A corrupt item
    raises an :class:`~melvoc.data.AudioDataError` naming the shard file and the item; with
    ``on_error=skip`` it is logged, counted in :attr:`skipped` and yields ``None`` (its batch is
    one item shorter).
    """

    def __init__(self, uri: str, settings: ShardClipSettings, **kwargs: Any) -> None:
        super().__init__(uri, **kwargs)
        self.uri = uri
        self.settings = settings
        self.skipped = 0

    def _where(self, index: Any) -> str:
        try:
            if not isinstance(index, ChunkedIndex):
                assert self.cache is not None
                index = ChunkedIndex(*self.cache._get_chunk_index_from_index(int(index)))
            chunk = self.cache._reader._config._chunks[index.chunk_index]["filename"]  # type: ignore[union-attr]
            return f"{self.uri}/{chunk}, item {index.index}"
        except Exception:  # the location is only for the message
            return f"{self.uri}, item {getattr(index, 'index', index)}"

    def __getitem__(self, index: Any) -> Any:
        key = getattr(index, "index", index)
        rng = item_rng((self.seed, self.current_epoch, int(key))) if self.settings.segment_size else None
        try:
            try:
                raw = super().__getitem__(index)
            except Exception as exc:
                raise AudioDataError(f"{self._where(index)}: unreadable ({type(exc).__name__}: {exc}); the chunk is "
                                     "damaged: re-pack the set (or set data.on_error=skip)") from exc
            return self.settings.make_item(raw, rng, _Where(self, index))
        except AudioDataError as exc:
            if self.settings.on_error == "raise":
                raise
            self.skipped += 1
            log.warning("%s data: skipped %s (on_error=skip, %d skipped so far in this process)",
                        self.settings.split, exc, self.skipped)
            return None


class ShardClips(Dataset):
    """Map-style view of a set, every clip once in order: validation and test (any world size)."""

    def __init__(self, stream: ShardStream, count: int) -> None:
        self.stream = stream
        self.count = int(count)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Optional[dict[str, Any]]:
        return self.stream[int(index)]


class ShardLoader(StreamingDataLoader):
    """litdata's loader, refusing to resume on another topology (litdata would re-stripe inexactly).

    With ``adopt_seed`` (a run without a fixed seed) a resume takes the checkpoint's seed.
    """

    def __init__(self, dataset: ShardStream, *, adopt_seed: bool = False, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.adopt_seed = adopt_seed
        self._resuming = False

    def __iter__(self) -> Any:
        # litdata ends its resume mode only when the resumed epoch's iterator runs to its end, but
        # Lightning stops asking after len(loader) batches: without this the next epoch would
        # replay the checkpoint's position instead of starting epoch + 1.
        if self._resuming:
            self.restore = False
        self._resuming = self.restore
        yield from super().__iter__()

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        saved = obj.get("dataset", {})
        dataset = self.dataset
        assert isinstance(dataset, ShardStream)
        if self.adopt_seed and "seed" in saved:
            dataset.seed = int(saved["seed"])
        current = {
            "world_size": dataset.distributed_env.world_size,
            "num_workers": self.num_workers or 1,
            "batch_size": self.batch_size,
            "seed": dataset.seed,
            "input_dir_url": dataset.input_dir.url,
        }
        if dataset.input_dir.url is None:
            current["input_dir_path"] = dataset.input_dir.path
        check_resume_settings(
            "the shard stream", saved, current,
            "the checkpoint's trainer.devices x trainer.num_nodes, data.num_workers (0 counts as 1), "
            "data.batch_size, seed and data.train_shards",
        )
        super().load_state_dict(obj)


# --------------------------------------------------------------------------------------------------
# The data module
# --------------------------------------------------------------------------------------------------


class ShardDataModule(MelDataModule):
    """Training crops, validation/test clips and device-side mels from packed shards.

    Options mean what they mean in :class:`~melvoc.data.VocoderDataModule` where they apply
    (``segment_size``, ``peak_normalize`` and its scope, ``gain_db``, ``short_clips``,
    ``max_val_seconds``, ``on_error``, loader settings, ``seed``). Short clips cannot be dropped
    from a stream before it is read: under ``drop`` such a clip leaves its batch one item shorter;
    under ``error`` a set whose shortest clip is shorter than ``segment_size`` fails at start-up.

    Every URI is checked when the module is set up (reachable, complete, packed at
    ``features.sampling_rate``), before any training.

    Args:
        train_shards, val_shards, test_shards: set URIs (folder or ``s3://bucket/prefix``);
            ``test_shards`` defaults to ``val_shards``.
        cache_dir: where litdata keeps downloaded chunks of remote sets.
        max_cache_size: its cap (``"100GB"``), ``None`` for litdata's default (75% of free disk).
    """

    def __init__(
        self,
        features: MelConfig | Mapping[str, Any],
        train_shards: Optional[str] = None,
        val_shards: Optional[str] = None,
        test_shards: Optional[str] = None,
        segment_size: int = 8192,
        batch_size: int = 16,
        val_batch_size: Optional[int] = None,
        num_workers: int | str = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = True,
        short_clips: ShortClips = "pad",
        on_error: OnError = "raise",
        peak_normalize: Optional[float] = None,
        peak_normalize_scope: Literal["file", "crop"] = "file",
        gain_db: float = 0.0,
        max_val_seconds: Optional[float] = None,
        cache_dir: Optional[str] = None,
        max_cache_size: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(
            features, segment_size=segment_size, batch_size=batch_size, val_batch_size=val_batch_size,
            num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent_workers,
            drop_last=drop_last, on_error=on_error, max_val_seconds=max_val_seconds, seed=seed,
        )
        if train_shards is None and val_shards is None and test_shards is None:
            raise ValueError("no data: set data.train_shards (and data.val_shards), packed with python -m melvoc.data.pack")
        if short_clips not in ("pad", "drop", "error"):
            raise ValueError(f"data.short_clips={short_clips!r}: must be one of ('pad', 'drop', 'error')")
        if peak_normalize is not None and not 0 < peak_normalize <= 1:
            raise ValueError(f"data.peak_normalize={peak_normalize}: must be in (0, 1] or null")
        if peak_normalize_scope not in ("file", "crop"):
            raise ValueError(f"data.peak_normalize_scope={peak_normalize_scope!r}: must be 'file' or 'crop'")
        if max_val_seconds is not None and max_val_seconds <= 0:
            raise ValueError(f"data.max_val_seconds={max_val_seconds}: must be > 0 (or null for no cap)")
        self.uris = {"train": train_shards, "val": val_shards, "test": test_shards or val_shards}
        self.short_clips = short_clips
        self.peak_normalize = peak_normalize
        self.peak_normalize_scope = peak_normalize_scope
        self.gain = float(10.0 ** (gain_db / 20.0))
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size
        self.manifests: dict[str, dict[str, Any]] = {}

    def _check(self) -> None:
        """Open every configured set once: reachable, complete, at the features' rate."""
        for split, uri in self.uris.items():
            if uri is not None and split not in self.manifests:
                self.manifests[split] = open_shards(uri, self.features.sampling_rate, f"data.{split}_shards")
        train = self.manifests.get("train")
        if train is not None and self.short_clips == "error" and int(train["min_length"]) < self.segment_size:
            raise AudioDataError(
                f"data.train_shards={self.uris['train']}: its shortest clip has {train['min_length']} samples, "
                f"shorter than data.segment_size={self.segment_size}; set data.short_clips=pad or drop"
            )

    def prepare_data(self) -> None:
        """Check the sets (see :meth:`setup`)."""
        self._check()

    def _settings(self, split: str, segment_size: Optional[int]) -> ShardClipSettings:
        hop = self.features.hop_size
        max_samples = (None if self.max_val_seconds is None
                       else max(hop, int(self.max_val_seconds * self.features.sampling_rate) // hop * hop))
        return ShardClipSettings(
            encoding=str(self.manifests[split]["encoding"]),
            hop_size=hop,
            shortest=max(hop, math.ceil(min_audio_length(self.features) / hop) * hop),
            segment_size=segment_size,
            short_clips=self.short_clips,
            on_error=self.on_error,  # type: ignore[arg-type]
            peak_normalize=self.peak_normalize,
            peak_normalize_scope=self.peak_normalize_scope,
            gain=self.gain,
            max_samples=max_samples,
            split=split,
        )

    def _stream(self, split: str, segment_size: Optional[int], shuffle: bool, seed: int) -> ShardStream:
        uri = self.uris[split]
        assert uri is not None
        # batch_decode=0: each clip is deserialized alone when read (litdata's "auto" decodes windows
        # of up to 256 neighbours for every item of a shuffled chunk, 5-10x slower for audio clips).
        return ShardStream(uri, self._settings(split, segment_size), cache_dir=self.cache_dir, shuffle=shuffle,
                           seed=seed, max_cache_size=self.max_cache_size, batch_decode=0)

    def setup(self, stage: Optional[str] = None) -> None:
        """Check every set, then build the streams of ``stage``."""
        self._check()
        if stage in ("fit", None) and self.uris["train"] is None:
            raise ValueError("training needs data.train_shards")
        for split in {"fit": ("val",), "validate": ("val",), "test": ("test",), "predict": ("test",),
                      None: ("val", "test")}[stage]:
            if self.uris[split] is not None and getattr(self, f"{split}_dataset") is None:
                stream = self._stream(split, None, shuffle=False, seed=0)
                setattr(self, f"{split}_dataset", ShardClips(stream, int(self.manifests[split]["clips"])))
        if stage in ("validate", "test", "predict") and self._dataset_for(stage) is None:
            raise ValueError(f"stage {stage!r} needs data: set data.val_shards or data.test_shards")

    def train_dataloader(self) -> ShardLoader:
        if not self.manifests:
            self._check()
        seed = self._data_seed()
        stream = self._stream("train", self.segment_size, shuffle=True, seed=seed)
        self.train_dataset = stream
        world_size, _ = self._world()
        return ShardLoader(
            stream,
            batch_size=self.batch_size,
            # Under DDP every rank must get the same number of items, or the collectives hang.
            drop_last=self.drop_last or world_size > 1,
            collate_fn=self._collate(),
            adopt_seed=self.seed is None,
            **loader_kwargs(self.num_workers, self.pin_memory, self.persistent_workers),
        )
