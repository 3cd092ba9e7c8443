"""``VocoderDataModule``: the Lightning side of the data; reference mels are made on the device."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from melvoc.data.collate import AudioCollate
from melvoc.data.dataset import AudioDataset, ShortClips, silence_log_mel
from melvoc.data.io import AudioDataError
from melvoc.data.resumable import ResumableDataLoader, ResumableSampler, loader_kwargs
from melvoc.data.sources import (
    AudioEntry,
    OnError,
    check_on_error,
    read_source,
    report_missing,
    split_entries,
)
from melvoc.data.synthetic import SyntheticSpec, make_synthetic_dataset
from melvoc.features import MelConfig
from melvoc.features.padded import PaddedMelSpectrogram

__all__ = ["MelDataModule", "VocoderDataModule", "auto_num_workers", "auto_val_count"]

log = logging.getLogger(__name__)

AUTO = "auto"


def auto_val_count(num_files: int) -> int:
    """Clips ``val_count=auto`` holds out of a training source of ``num_files``: 1 in 20, 1 to 8.

    Raises:
        ValueError: fewer than 2 files (nothing would be left to train on).
    """
    if num_files < 2:
        raise ValueError(
            f"data.val_count=auto: the training source has {num_files} file(s), too few to hold out "
            "validation clips; set data.val_filelist"
        )
    return min(8, max(1, num_files // 20))


def auto_num_workers(processes_per_node: int = 1) -> tuple[int, int]:
    """``(workers per process, usable cores)`` for ``num_workers=auto``.

    The cores this process may run on (its CPU affinity, not the machine's count), shared by the
    processes of this node; each process keeps one core for itself, at most 8 workers.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    per_process = cores // max(1, processes_per_node)
    return min(8, max(0, per_process - 1)), cores


class MelDataModule(L.LightningDataModule):
    """What every melvoc data module shares: loader settings, validation/test loaders over whole clips,
    and the reference mels made on the device (:meth:`on_after_batch_transfer`).

    Subclasses (:class:`VocoderDataModule` for files, :class:`melvoc.data.shards.ShardDataModule`
    for packed shards) build ``train_dataset`` / ``val_dataset`` / ``test_dataset`` in ``setup`` and
    give ``train_dataloader``. The arguments mean what they mean in :class:`VocoderDataModule`.
    """

    def __init__(
        self,
        features: MelConfig | Mapping[str, Any],
        *,
        segment_size: int,
        batch_size: int,
        val_batch_size: Optional[int],
        num_workers: int | str,
        pin_memory: bool,
        persistent_workers: bool,
        drop_last: bool,
        on_error: OnError,
        max_val_seconds: Optional[float],
        seed: Optional[int],
    ) -> None:
        super().__init__()
        self.features = MelConfig.coerce(features)
        hop = self.features.hop_size
        if int(segment_size) <= 0 or int(segment_size) % hop:
            lower = max(hop, int(segment_size) // hop * hop)
            raise ValueError(
                f"data.segment_size={segment_size}: must be a positive multiple of features.hop_size={hop} "
                f"(e.g. {lower} or {lower + hop})"
            )
        if int(batch_size) < 1:
            raise ValueError(f"data.batch_size={batch_size}: must be >= 1")
        self.segment_size = int(segment_size)
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size) if val_batch_size is not None else self.batch_size
        if num_workers != AUTO and (isinstance(num_workers, bool) or not str(num_workers).isdigit()):
            raise ValueError(f"data.num_workers={num_workers!r}: must be a number >= 0 or `auto`")
        self._num_workers = num_workers
        # Pinned memory only helps host-to-GPU copies; on CPU-only machines torch warns about it.
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self._persistent_workers = bool(persistent_workers)
        self.drop_last = bool(drop_last)
        self.on_error = check_on_error(on_error)
        self.max_val_seconds = max_val_seconds
        self.seed = None if seed is None else int(seed)
        self.train_dataset: Any = None
        self.val_dataset: Any = None
        self.test_dataset: Any = None
        self._mels: Optional[PaddedMelSpectrogram] = None
        #: What was chosen for the user (validation source, loader workers), for the run summary.
        self.summary: dict[str, str] = {}

    @property
    def num_workers(self) -> int:
        """Loader workers per process; ``auto`` is resolved on first use, once the trainer (and so
        the number of processes on this node) is known, and logged."""
        if self._num_workers != AUTO:
            return int(self._num_workers)
        processes = self.trainer.num_devices if self.trainer is not None else 1
        workers, cores = auto_num_workers(processes)
        self._num_workers = workers
        chosen = f"{workers} per process (num_workers=auto: {cores} usable cores, {processes} process(es) on this node)"
        self.summary["loader workers"] = chosen
        log.info("data loader workers: %s", chosen)
        return workers

    @property
    def persistent_workers(self) -> bool:
        return self._persistent_workers and self.num_workers > 0

    def _dataset_for(self, stage: str) -> Any:
        return self.val_dataset if stage == "validate" else self.test_dataset

    # ------------------------------------------------------------------ loaders
    def _collate(self) -> AudioCollate:
        return AudioCollate(mel_pad_value=silence_log_mel(self.features))

    def _world(self) -> tuple[int, int]:
        """``(world size, global rank)`` of the attached trainer, ``(1, 0)`` without one."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _data_seed(self) -> int:
        """``seed``; without one, a random seed that every rank shares (rank 0's)."""
        if self.seed is not None:
            return self.seed
        seed = int(np.random.SeedSequence().generate_state(1)[0])
        trainer = self.trainer
        return int(trainer.strategy.broadcast(seed)) if trainer is not None else seed

    def _eval_loader(self, dataset: Any, stage: str) -> DataLoader:
        if dataset is None:
            raise ValueError(
                f"no {stage} data: set data.val_filelist or data.test_filelist "
                "(or data.val_count to split the training source)"
            )
        sampler = None
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            # Every clip once over all ranks (a plain DistributedSampler would repeat some to even out).
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return DataLoader(
            dataset,
            batch_size=self.val_batch_size,
            shuffle=False,
            sampler=sampler,
            collate_fn=self._collate(),
            **loader_kwargs(self.num_workers, self.pin_memory, self.persistent_workers),
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        return self._eval_loader(self.val_dataset, "validation")

    def test_dataloader(self) -> DataLoader:
        if self.test_dataset is None:
            self.setup("test")
        return self._eval_loader(self.test_dataset, "test")

    def predict_dataloader(self) -> DataLoader:
        if self.test_dataset is None:
            self.setup("predict")
        return self._eval_loader(self.test_dataset, "predict")

    # ------------------------------------------------------------------ device side
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Add ``batch["mel"]``: ``MelSpectrogram(features)`` of ``batch["audio"]`` on its device.

        Shape ``(B, num_mels, T // hop_size)``, float32, no grad; frames beyond ``T // hop_size``
        (``center=True`` presets give one more) are dropped so that ``frames * hop_size == T``.

        Validation, test and predict batches (a trainer in any stage but training) hold whole clips
        zero-padded to the longest: there each clip's first ``lengths // hop_size`` frames are
        those of the clip alone (its STFT padding at its own end, not the batch's zeros), and the
        frames after them the log-mel of silence. So a clip's mel, and what is computed from it,
        does not depend on the other clips of its batch.
        """
        if not isinstance(batch, dict) or "audio" not in batch:
            return batch
        audio = batch["audio"]
        frames = audio.shape[-1] // self.features.hop_size
        if audio.numel() == 0:
            batch["mel"] = audio.new_zeros(audio.shape[0], self.features.num_mels, frames)
            return batch
        lengths = batch.get("lengths")
        with torch.no_grad():
            if lengths is None or self.trainer is None or self.trainer.training:
                batch["mel"] = self._mel_module(audio.device)(audio.float(), None)[0][..., :frames]
            else:
                batch["mel"] = self._clip_mels(audio.float(), lengths, frames)
        return batch

    def _mel_module(self, device: torch.device) -> PaddedMelSpectrogram:
        """The features' mel module (whole batches, and clips of a padded batch) on ``device``."""
        if self._mels is None:
            self._mels = PaddedMelSpectrogram(self.features)
        self._mels = self._mels.to(device)
        return self._mels

    def _clip_mels(self, audio: torch.Tensor, lengths: torch.Tensor, frames: int) -> torch.Tensor:
        """``(B, num_mels, frames)``: each clip's mel as if alone, silence after its ``lengths // hop`` frames."""
        lengths = lengths.to(audio.device)
        mel = self._mel_module(audio.device)(audio, lengths)[0][..., :frames]
        own_frames = torch.div(lengths, self.features.hop_size, rounding_mode="floor")
        own = torch.arange(frames, device=audio.device) < own_frames.unsqueeze(1)
        return mel.masked_fill(~own.unsqueeze(1), silence_log_mel(self.features))


class VocoderDataModule(MelDataModule):
    """Training crops, validation/test clips and reference mels for a vocoder.

    Batches are ``{"audio": (B, T) float32, "lengths": (B,) int64, "names": list[str]}`` (plus
    ``"mel_target": (B, num_mels, T // hop_size)`` with ``mel_dir``). After Lightning moves a batch to
    the device, :meth:`on_after_batch_transfer` adds ``"mel": (B, num_mels, T // hop_size)`` float32,
    computed there without grad by ``MelSpectrogram(features)``; workers never compute mels. Outside
    training (validation, test, predict) every clip's mel is that of the clip alone, whatever else
    its batch holds.

    Sources (see :func:`melvoc.data.sources.read_source`): ``train_filelist`` and ``val_filelist``
    (filelists, ``metadata.csv`` or folders), or ``train_filelist`` alone split by ``val_count`` /
    ``val_fraction``; ``test_filelist`` defaults to the validation data. With ``synthetic`` set, the
    built-in smoke-test set is generated under ``cache_dir`` instead (:mod:`melvoc.data.synthetic`).

    Under DDP, the training sampler gives each rank its own items (the same count on every rank);
    validation and test use Lightning's ``UnrepeatedDistributedSampler``, so together the ranks see
    every clip exactly once (ranks may run one batch apart: sync metrics per epoch, not per step).

    Args:
        features: the mel parameters (``MelConfig`` or its fields), interpolated from the features group.
        train_filelist, val_filelist, test_filelist: data sources.
        root: folder that relative filelist paths resolve against (default: the filelist's folder).
        val_count, val_fraction, split_seed: the split of ``train_filelist`` when no ``val_filelist``;
            ``val_count="auto"`` holds out :func:`auto_val_count` clips unless ``val_fraction`` is set.
        segment_size: training crop in samples, a multiple of ``hop_size``.
        batch_size: training batch size; ``val_batch_size`` for validation/test (default ``batch_size``).
        num_workers, pin_memory, persistent_workers, drop_last: DataLoader settings (``drop_last``
            applies to training only); ``num_workers="auto"`` chooses from the usable cores
            (:func:`auto_num_workers`) once the trainer is known.
        resample: resample files at another rate with soxr (off: an error naming file and rates).
        short_clips: ``pad`` / ``drop`` / ``error`` for clips shorter than ``segment_size``.
        on_error: ``raise`` or ``skip`` bad files (skips are logged with count and names).
        peak_normalize: peak to scale audio to (HiFi-GAN, BigVGAN: 0.95) or ``None``; ``gain_db``: extra gain.
        peak_normalize_scope: ``file`` (HiFi-GAN: each file's peak) or ``crop`` (BigVGAN: each crop's).
        max_val_seconds: cap on validation/test clips, or ``None``.
        mel_dir: precomputed mels for HiFi-GAN fine-tuning (``<stem>.npy`` / ``.pt``), or ``None``.
        check_mel_stats: check the ``mel_dir`` mels' floor, range and log base against ``features``.
        synthetic: parameters of :class:`~melvoc.data.synthetic.SyntheticSpec` (without the rate),
            or ``None`` for real data; ``cache_dir``: where the synthetic set is generated.
        seed: the training order and crops (``${seed}``); ``None``: a random one, shared by the ranks.

    The training loader is resumable (:mod:`melvoc.data.resumable`): its epoch, position and the
    keys of its crops go into Lightning's checkpoints, so a resumed run sees exactly the batches
    the uninterrupted run would have.
    """

    def __init__(
        self,
        features: MelConfig | Mapping[str, Any],
        train_filelist: Optional[str] = None,
        val_filelist: Optional[str] = None,
        test_filelist: Optional[str] = None,
        root: Optional[str] = None,
        val_count: Optional[int | str] = None,
        val_fraction: Optional[float] = None,
        split_seed: int = 1234,
        segment_size: int = 8192,
        batch_size: int = 16,
        val_batch_size: Optional[int] = None,
        num_workers: int | str = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = True,
        resample: bool = True,
        short_clips: ShortClips = "pad",
        on_error: OnError = "raise",
        peak_normalize: Optional[float] = None,
        peak_normalize_scope: Literal["file", "crop"] = "file",
        gain_db: float = 0.0,
        max_val_seconds: Optional[float] = None,
        mel_dir: Optional[str] = None,
        check_mel_stats: bool = True,
        synthetic: Optional[Mapping[str, Any]] = None,
        cache_dir: Optional[str] = None,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(
            features, segment_size=segment_size, batch_size=batch_size, val_batch_size=val_batch_size,
            num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent_workers,
            drop_last=drop_last, on_error=on_error, max_val_seconds=max_val_seconds, seed=seed,
        )
        self.synthetic_dir: Optional[Path] = None
        self._synthetic_spec: Optional[SyntheticSpec] = None
        if synthetic is not None:
            if train_filelist is not None or val_filelist is not None:
                raise ValueError(
                    "data.synthetic is set together with data.train_filelist/val_filelist; use "
                    "`data=filelist` for your own audio (or set data.synthetic=null)"
                )
            if cache_dir is None:
                raise ValueError("data.synthetic needs data.cache_dir (default: ${paths.cache_dir})")
            self._synthetic_spec = SyntheticSpec(sampling_rate=self.features.sampling_rate, **dict(synthetic))
            self.synthetic_dir = Path(cache_dir).expanduser() / self._synthetic_spec.folder_name
            train_filelist = str(self.synthetic_dir / "train.txt")
            val_filelist = str(self.synthetic_dir / "val.txt")
        if train_filelist is None and val_filelist is None and test_filelist is None:
            raise ValueError(
                "no data: set data.train_filelist (and data.val_filelist, or data.val_count to split it), "
                "or use the built-in smoke-test set with `data=synthetic`"
            )
        self.train_filelist = train_filelist
        self.val_filelist = val_filelist
        self.test_filelist = test_filelist
        self.root = root
        if val_count is not None and val_count != AUTO and (isinstance(val_count, bool) or not str(val_count).isdigit()):
            raise ValueError(f"data.val_count={val_count!r}: must be a number of clips, `auto` or null")
        self.val_count = val_count
        self.val_fraction = val_fraction
        self.split_seed = int(split_seed)
        self._dataset_kwargs: dict[str, Any] = dict(
            resample=resample,
            short_clips=short_clips,
            on_error=on_error,
            peak_normalize=peak_normalize,
            peak_normalize_scope=peak_normalize_scope,
            gain_db=gain_db,
            mel_dir=mel_dir,
            check_mel_stats=check_mel_stats,
        )

    # ------------------------------------------------------------------ sources
    def _ensure_synthetic(self) -> None:
        if self._synthetic_spec is not None:
            assert self.synthetic_dir is not None
            make_synthetic_dataset(self.synthetic_dir.parent, self._synthetic_spec)

    def _sources(self, report: bool = False) -> dict[str, list[AudioEntry]]:
        """Read the sources and check that the files exist (before any split, so that all missing
        files are reported together); with ``on_error=skip`` missing files are left out."""
        raw: dict[str, list[AudioEntry]] = {}
        named = {"train": self.train_filelist, "val": self.val_filelist, "test": self.test_filelist}
        for split, source in named.items():
            if source is not None:
                raw[split] = read_source(source, self.root, self.on_error)
        problems = [m for split, entries in raw.items() if (m := report_missing(entries, f"{split} data"))]
        if problems:
            if self.on_error == "raise":
                raise AudioDataError("\n".join(problems))
            if report:
                for message in problems:
                    log.warning("%s\n(on_error=skip: these files are left out)", message)
            raw = {split: [e for e in entries if e.path.is_file()] for split, entries in raw.items()}
        sources = dict(raw)
        if "train" in raw and "val" not in raw and (self.val_count is not None or self.val_fraction is not None):
            count = self.val_count
            if count == AUTO:
                count = None if self.val_fraction is not None else auto_val_count(len(raw["train"]))
            sources["train"], sources["val"] = split_entries(raw["train"], count, self.val_fraction, self.split_seed)
            how = f"val_count={self.val_count}" if count is not None else f"val_fraction={self.val_fraction}"
            self.summary["validation"] = (
                f"{len(sources['val'])} of {len(raw['train'])} clips held out of data.train_filelist "
                f"(data.{how}, split_seed={self.split_seed}; data.val_filelist or data.val_count to choose)"
            )
        return sources

    def prepare_data(self) -> None:
        """Generate the synthetic set if asked, then check that every listed file exists.

        Missing files are reported together (count and the first few); with ``on_error=skip`` they
        are logged and left out.
        """
        self._ensure_synthetic()
        self._sources(report=True)

    def setup(self, stage: Optional[str] = None) -> None:
        """Build the datasets for ``stage`` (``fit``, ``validate``, ``test``, ``predict`` or all)."""
        self._ensure_synthetic()
        sources = self._sources()
        wanted = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
            None: ("train", "val", "test"),
        }[stage]
        if "train" in wanted and self.train_dataset is None:
            if "train" not in sources:
                raise ValueError("training needs data.train_filelist")
            self.train_dataset = self._dataset(sources["train"], "train", segment_size=self.segment_size)
        if "val" in wanted and self.val_dataset is None and "val" in sources:
            self.val_dataset = self._dataset(sources["val"], "val", max_seconds=self.max_val_seconds)
        if "test" in wanted and self.test_dataset is None:
            if "test" in sources:
                self.test_dataset = self._dataset(sources["test"], "test", max_seconds=self.max_val_seconds)
            else:
                if self.val_dataset is None and "val" in sources:
                    self.val_dataset = self._dataset(sources["val"], "val", max_seconds=self.max_val_seconds)
                self.test_dataset = self.val_dataset
        if stage in ("validate", "test", "predict") and self._dataset_for(stage) is None:
            raise ValueError(
                f"stage {stage!r} needs data: set data.val_filelist or data.test_filelist "
                "(or data.val_count to split the training source)"
            )

    def _dataset(self, entries: list[AudioEntry], split: str, **kwargs: Any) -> AudioDataset:
        dataset = AudioDataset(entries, self.features, split=split, **self._dataset_kwargs, **kwargs)
        seconds = sum(dataset.lengths) / self.features.sampling_rate
        log.info("%s data: %d clips, %.2f h", split, len(dataset), seconds / 3600)
        return dataset

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        if self.drop_last and len(self.train_dataset) < self.batch_size:
            raise ValueError(
                f"{len(self.train_dataset)} training clips but data.batch_size={self.batch_size} with "
                "data.drop_last=true gives no batch; lower data.batch_size or set data.drop_last=false"
            )
        world_size, rank = self._world()
        sampler = ResumableSampler(self.train_dataset, num_replicas=world_size, rank=rank,
                                   seed=self._data_seed(), drop_last=self.drop_last)
        return ResumableDataLoader(
            self.train_dataset,
            sampler=sampler,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            collate_fn=self._collate(),
            adopt_seed=self.seed is None,
            **loader_kwargs(self.num_workers, self.pin_memory, self.persistent_workers),
        )
