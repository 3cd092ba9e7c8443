"""The file source's training loader, made resumable: Lightning saves its position in the checkpoint.

Lightning (2.2+) stores a training loader's ``state_dict()`` in the checkpoint, and hands it back to
``load_state_dict()`` on resume, only when the loader itself has both methods. A plain
``DataLoader`` has neither, so a resumed run restarts its epoch: clips are seen twice or never.

Here nothing random is kept as hidden generator state. The order of an epoch is a permutation drawn
from ``(seed, epoch)``, and every item carries a key ``(seed, epoch, position)`` from which the
dataset draws its crop offset (and, under ``on_error=skip``, its replacement items) with a fresh
``numpy`` generator. So the position (epoch, batches consumed) is the whole random state of the main
process and of every worker, and a resumed loader yields exactly the batches the uninterrupted run
would have: the same clips, the same crops, whatever ``num_workers`` is. The world size and the
batch size must be the checkpoint's (they decide which items a rank's position points at); another
value is an error at start-up.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

__all__ = ["ItemKey", "ResumableDataLoader", "ResumableSampler", "ResumeMismatchError", "check_resume_settings", "item_rng", "loader_kwargs",
           "quiet_worker"]

#: What the sampler hands the dataset: ``(index, (seed, epoch, position))``.
ItemKey = tuple[int, tuple[int, int, int]]


class ResumeMismatchError(ValueError):
    """A checkpoint's loader state that this run cannot continue exactly (other world size, batch, data)."""


def check_resume_settings(what: str, saved: Mapping[str, Any], current: Mapping[str, Any], fix: str) -> None:
    """Raise :class:`ResumeMismatchError` naming every setting of ``current`` that differs from the
    checkpoint's ``saved`` one (``what`` cannot resume exactly; ``fix`` says what to resume with)."""
    wrong = [f"{key} {saved.get(key)!r} in the checkpoint, {value!r} now"
             for key, value in current.items() if saved.get(key) != value]
    if wrong:
        raise ResumeMismatchError(f"cannot resume {what} exactly: " + "; ".join(wrong) + f". Resume with {fix}")


def item_rng(key: tuple[int, ...]) -> np.random.Generator:
    """The generator an item draws its crop from: a pure function of its key, in any process."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def quiet_worker(worker_id: int) -> None:
    """``worker_init_fn``: loader workers ignore SIGINT/SIGTERM; the main process decides when to stop.

    A Ctrl-C or a scheduler's SIGTERM reaches the whole process group; a worker that died of it would
    make the main process fail on its next batch instead of saving a checkpoint and exiting cleanly.
    The workers end when the main process shuts its loaders down (or exits).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class ResumableSampler(DistributedSampler):
    """Per-epoch permutation from ``(seed, epoch)``, split across ranks, resumable at any item.

    Yields :data:`ItemKey` tuples. Like :class:`~torch.utils.data.distributed.DistributedSampler`
    (whose subclass it is, so Lightning keeps it under DDP instead of wrapping it), every rank gets
    ``len(self)`` items: with ``drop_last`` the tail that does not divide evenly is left out,
    otherwise the first items are repeated to fill it up. Lightning calls :meth:`set_epoch` before
    every epoch.

    Args:
        dataset: the map-style dataset (only its length is used).
        num_replicas, rank: the world size and this process' global rank.
        seed: the base of every permutation and crop key.
        drop_last: drop the uneven tail instead of padding.
    """

    def __init__(self, dataset: Sized, *, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=int(seed),
                         drop_last=drop_last)
        self._skip: tuple[int, int] | None = None

    def skip_next(self, epoch: int, items: int) -> None:
        """Start the next :meth:`__iter__`, if it is of ``epoch``, after the first ``items`` items of
        this rank's epoch (a checkpoint written at an epoch's end resumes at the next one instead)."""
        if not 0 <= items <= self.num_samples:
            raise ValueError(f"cannot skip {items} items of an epoch of {self.num_samples}")
        self._skip = (int(epoch), int(items))

    def __iter__(self) -> Iterator[ItemKey]:
        n = len(self.dataset)  # type: ignore[arg-type]
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        if self.drop_last:
            order = order[: self.total_size]
        else:
            order = np.resize(order, self.total_size)  # repeats from the start to fill up
        skip, self._skip = self._skip, None
        start = skip[1] if skip is not None and skip[0] == self.epoch else 0
        for position in range(self.rank + start * self.num_replicas, self.total_size, self.num_replicas):
            yield int(order[position]), (self.seed, self.epoch, position)


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` over a :class:`ResumableSampler` with ``state_dict``/``load_state_dict``.

    The state is the epoch and the number of batches this loader has handed to the training loop in
    it (not what its workers have prefetched), plus the settings that must match on resume. It has a
    ``__len__``, so Lightning's fetcher does not read a batch ahead and the count is exact when a
    checkpoint is written. With ``adopt_seed`` (a run without a fixed seed), a resume takes the
    checkpoint's seed instead of requiring the same.
    """

    def __init__(self, dataset: Dataset, *, sampler: ResumableSampler, batch_size: int, adopt_seed: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.adopt_seed = adopt_seed
        self._yielded = 0
        self._resumed: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        resumed, self._resumed = self._resumed, None
        epoch = getattr(self.sampler, "epoch", None)
        self._yielded = resumed[1] if resumed is not None and resumed[0] == epoch else 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def _settings(self) -> dict[str, Any]:
        sampler = self.sampler
        assert isinstance(sampler, ResumableSampler)
        return {
            "world_size": sampler.num_replicas,
            "batch_size": self.batch_size,
            "items": len(sampler.dataset),  # type: ignore[arg-type]
            "seed": sampler.seed,
            "drop_last": bool(sampler.drop_last),
        }

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "batches", "world_size", "batch_size", "items", "seed", "drop_last", "num_workers"}``;
        empty when Lightning replaced the sampler (``overfit_batches``: a fixed subset, nothing to resume)."""
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):
            return {}
        return {"epoch": sampler.epoch, "batches": self._yielded, "num_workers": self.num_workers, **self._settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after ``state["batches"]`` batches of epoch ``state["epoch"]``.

        Raises:
            ResumeMismatchError: the world size, batch size, clip count, seed or ``drop_last`` differ
                from the checkpoint's (the message names both values and the fix).
        """
        sampler = self.sampler
        if not state or not isinstance(sampler, ResumableSampler):
            return
        if self.adopt_seed:
            sampler.seed = int(state["seed"])
        current = self._settings()
        check_resume_settings(
            "the training data", state, current,
            "the checkpoint's trainer.devices x trainer.num_nodes, data.batch_size, data.drop_last, seed "
            "and training files (data.num_workers may change)",
        )
        epoch, batches = int(state["epoch"]), int(state["batches"])
        sampler.set_epoch(epoch)
        sampler.skip_next(epoch, min(batches * self.batch_size, sampler.num_samples))  # type: ignore[operator]
        self._resumed = (epoch, batches)


def loader_kwargs(num_workers: int, pin_memory: bool, persistent_workers: bool) -> dict[str, Any]:
    """The ``DataLoader`` arguments melvoc's loaders share (quiet workers, see :func:`quiet_worker`)."""
    kwargs: dict[str, Any] = dict(num_workers=num_workers, pin_memory=pin_memory,
                                  persistent_workers=persistent_workers)
    if num_workers > 0:
        kwargs["worker_init_fn"] = quiet_worker
    return kwargs
