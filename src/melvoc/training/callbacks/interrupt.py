"""SIGTERM (a cluster's preemption notice) and SIGINT (Ctrl-C) end a training run with a checkpoint.

Lightning 2.6 on its own stops a single-process run on SIGTERM only at the end of the epoch (and
under DDP raises at the next step without saving), and turns Ctrl-C into a ``KeyboardInterrupt``
wherever the process happens to be, possibly between the discriminator and the generator update.
:class:`StopOnSignal` replaces both handlers while ``fit`` runs: the signal only sets a flag, the
current step finishes, then ``last.ckpt`` is written at that step (weights, optimizers, schedulers,
loop counters and the training loader's position: an exact resume point) and the run stops. A
second Ctrl-C stops at once, without a checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

__all__ = ["StopOnSignal", "resume_checkpoint_path"]

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def resume_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where the run's resume point goes: the ``last.ckpt`` of its first ``ModelCheckpoint`` with
    ``save_last``, else ``<default_root_dir>/checkpoints/last.ckpt``."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class StopOnSignal(Callback):
    """Stop ``fit`` after the current step on SIGTERM or SIGINT, with a resumable checkpoint at that step.

    After ``fit``: :attr:`signal_name` (``"SIGTERM"``/``"SIGINT"`` or ``None``), :attr:`signum`,
    :attr:`step` and :attr:`checkpoint` (the file written) say what happened. Under DDP the ranks
    decide together after every step (one all-reduce of a flag, next to Lightning's own per-step
    broadcast of its SIGTERM flag), so any rank's signal stops all of them at the same step; a
    SIGTERM that only rank 0 receives is passed on to the processes Lightning's launcher started.
    Handlers are installed only in the main thread.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.signal_name: Optional[str] = None
        self.step: Optional[int] = None
        self.checkpoint: Optional[Path] = None
        self._received: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self._launcher: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._launcher = trainer.strategy.launcher
        for signum in _SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        first = self._received is None
        self._received = signum
        if signum == signal.SIGTERM and self._launcher is not None and hasattr(self._launcher, "kill"):
            self._launcher.kill(signum)
        if first:
            log.warning("%s received: the run stops after this step and writes a checkpoint at it "
                        "(press Ctrl-C again to stop at once, without one)", signal.Signals(signum).name)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        requested = self._received is not None
        if trainer.world_size > 1:
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested or self.step is not None:
            return
        path = resume_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                # Their end-of-epoch save must not replace the resume point with a later state.
                callback._last_global_step_saved = trainer.global_step
        trainer.should_stop = True
        self.step = trainer.global_step
        self.checkpoint = path.resolve()
        self.signum = self._received
        self.signal_name = signal.Signals(self._received).name if self._received else "a signal to another rank"
        log.warning("%s: wrote %s at step %d; resume with ckpt_path=%s", self.signal_name, path, self.step,
                    self.checkpoint)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
