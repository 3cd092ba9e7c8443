"""Training orchestration behind ``train.py``: config checks, instantiation, resume, fit, summary.

``train.py`` is a thin ``@hydra.main`` wrapper around :func:`train`; everything here also works on a
config composed by hand (``hydra.compose``) with ``paths.output_dir`` set, which is how the tests
drive it.

Order of work in :func:`train`, so that a wrong config fails before any data is read:

1. :func:`~melvoc.training.checks.validate_config`: no ``???`` left, every interpolation resolves, the loss and the
   features agree on the sampling rate, ``ckpt_path`` exists (``last`` is looked up);
2. seed, then the model (which checks generator upsampling == ``features.hop_size``), the data
   module, callbacks, loggers and the ``lightning.Trainer``;
3. one full validation pass (the ``val/mel_l1`` baseline), ``trainer.fit``, a final validation
   pass when the last one was not at the last step, a final ``last.ckpt``.

The run folder, the process rank and the ``melvoc.*`` OmegaConf resolvers that
``conf/hydra/default.yaml`` uses live in :mod:`melvoc.training.runs`; importing this module registers them.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf

from melvoc.training.checks import LAST_CKPT, instantiate_group, resolve_ckpt_path, validate_config
from melvoc.training.callbacks.interrupt import StopOnSignal
from melvoc.training.callbacks.process_group import ReleaseProcessGroup, release_process_group

log = logging.getLogger(__name__)

VAL_METRIC = "val/mel_l1"

__all__ = ["LAST_CKPT", "VAL_METRIC", "TrainingResult", "format_summary", "train"]


class _ValidationTracker(Callback):
    """Remembers the step and ``val/mel_l1`` of the latest validation inside ``fit``."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.value: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self.step = trainer.global_step
        self.value = _metric(trainer.callback_metrics, VAL_METRIC)


def _metric(metrics: Mapping[str, Any], name: str) -> float | None:
    value = metrics.get(name)
    return None if value is None else float(value)


def _route_lightning_logs() -> None:
    """Send Lightning's log records to the handlers Hydra configured (console and train.log).

    Lightning installs its own console handler when it is imported before logging is configured,
    which is the case under ``@hydra.main``; its messages would then miss the run's log file.
    """
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    """What a finished :func:`train` call did and where it wrote it."""

    run_dir: Path
    global_step: int
    epoch: int
    elapsed_s: float
    initial_val_mel_l1: float | None = None
    final_val_mel_l1: float | None = None
    resumed_from: str | None = None
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    best_val_mel_l1: float | None = None
    log_dirs: dict[str, Path] = field(default_factory=dict)
    #: What the data module chose for the user (validation source, loader workers), by topic.
    data_choices: dict[str, str] = field(default_factory=dict)
    #: Where the media callbacks wrote pictures and audio, one line per destination.
    media: list[str] = field(default_factory=list)
    is_global_zero: bool = True
    interrupted: bool = False
    fast_dev_run: bool = False
    #: The signal (SIGTERM, SIGINT) that stopped the run, after writing ``last_checkpoint`` at its step.
    stopped_by: str | None = None
    stop_signal: int | None = None


def train(cfg: DictConfig) -> TrainingResult:
    """Run one training job described by the composed config ``cfg`` (see ``conf/train.yaml``)."""
    started = time.monotonic()
    _route_lightning_logs()
    # The vocoder's manual optimization saves post-update weights with the matching step and optimizer
    # states, which is what a resume needs; Lightning 2.6 warns about it on every periodic checkpoint.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)
    # Lightning 2.6's own use of a torch API that newer torch deprecates; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    validate_config(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name)
    run_dir = Path(cfg.paths.output_dir).resolve()

    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info("Instantiating model <%s>", cfg.model._target_)
    model = instantiate(cfg.model)
    log.info("Instantiating data module <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks", Callback)
    tracker = _ValidationTracker()
    stopper = StopOnSignal()
    loggers = instantiate_group(cfg.get("logger"), "logger", Logger)
    own = [tracker, stopper, ReleaseProcessGroup()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[*callbacks, *own], logger=loggers or False)

    if loggers and not trainer.fast_dev_run:
        hparams = OmegaConf.to_container(cfg, resolve=True)
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)

    initial = None
    if cfg.get("validate_before_fit", True):
        # With a checkpoint, the baseline is the resumed weights, not a fresh initialization.
        results = trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        initial = _metric(results[0], VAL_METRIC) if results else None

    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)

    finished = not trainer.interrupted and not trainer.fast_dev_run and stopper.step is None
    final = tracker.value
    if finished and tracker.step != trainer.global_step and trainer.global_step > 0:
        # The last validation (if any) was before the last step: measure the final weights.
        results = trainer.validate(model, datamodule=datamodule, verbose=False)
        final = _metric(results[0], VAL_METRIC) if results else None

    last_ckpt = _save_final_last_checkpoint(trainer) if finished else stopper.checkpoint
    best_cb = _best_checkpoint_callback(trainer)
    result = TrainingResult(
        run_dir=run_dir,
        global_step=trainer.global_step,
        epoch=trainer.current_epoch,
        elapsed_s=time.monotonic() - started,
        initial_val_mel_l1=initial,
        final_val_mel_l1=final,
        resumed_from=ckpt_path,
        last_checkpoint=last_ckpt,
        best_checkpoint=Path(best_cb.best_model_path) if best_cb and best_cb.best_model_path else None,
        best_val_mel_l1=float(best_cb.best_model_score) if best_cb and best_cb.best_model_score is not None else None,
        log_dirs={type(lg).__name__: Path(lg.log_dir) for lg in trainer.loggers if getattr(lg, "log_dir", None)},
        data_choices=dict(getattr(datamodule, "summary", {})),
        media=[line for cb in callbacks for line in getattr(cb, "written_to", {}).values()],
        is_global_zero=trainer.is_global_zero,
        interrupted=trainer.interrupted or stopper.step is not None,
        fast_dev_run=bool(trainer.fast_dev_run),
        stopped_by=stopper.signal_name,
        stop_signal=stopper.signum,
    )
    # The job is over in this process (with trainer=ddp, every rank ends here): no more collectives.
    release_process_group()
    return result


def _save_final_last_checkpoint(trainer: L.Trainer) -> Path | None:
    """Write ``last.ckpt`` at the final step unless the periodic checkpoint already did.

    ``every_n_train_steps`` rarely divides ``max_steps``; without this the newest ``last.ckpt`` would
    be up to ``every_n_train_steps - 1`` steps old at the end of a finished run.
    """
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or not callback.save_last or not callback.dirpath:
            continue
        path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        # Decided from callback state, identical on every rank: save_checkpoint is collective.
        if getattr(callback, "_last_global_step_saved", None) != trainer.global_step:
            trainer.save_checkpoint(path)
        return path.resolve()
    return None


def _best_checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor == VAL_METRIC:
            return callback
    return None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def format_summary(result: TrainingResult) -> str:
    """The closing summary that ``train.py`` prints: metric before/after and where things are."""
    state = "interrupted" if result.interrupted else "finished"
    if result.stopped_by:
        state = f"stopped by {result.stopped_by} (checkpoint written at step {result.global_step})"
    if result.fast_dev_run:
        state = "fast_dev_run finished (no checkpoints or logs are written)"
    lines = [f"melvoc training {state}: {result.global_step} steps, {result.epoch} epoch(s), "
             f"{_duration(result.elapsed_s)}"]
    before, after = result.initial_val_mel_l1, result.final_val_mel_l1
    label = "at resume" if result.resumed_from else "before"
    if before is not None and after is not None:
        change = (after - before) / before * 100.0 if before else float("nan")
        lines.append(f"  {VAL_METRIC}     {label} {before:.4f} -> final {after:.4f} ({change:+.1f}%)")
    elif after is not None:
        lines.append(f"  {VAL_METRIC}     final {after:.4f}")
    elif before is not None:
        lines.append(f"  {VAL_METRIC}     {label} {before:.4f}")
    if result.resumed_from:
        lines.append(f"  resumed from   {result.resumed_from}")
    lines.append(f"  run folder     {result.run_dir}")
    config = result.run_dir / ".hydra" / "config.yaml"
    if config.exists():
        lines.append(f"  config         {config}")
    log_file = result.run_dir / "train.log"
    if log_file.exists():
        lines.append(f"  log file       {log_file}")
    if result.last_checkpoint is not None:
        lines.append(f"  last ckpt      {result.last_checkpoint}")
        lines.append(f"  resume with    python train.py ckpt_path={result.last_checkpoint}  (or ckpt_path=last)")
    if result.best_checkpoint is not None:
        lines.append(f"  best ckpt      {result.best_checkpoint} ({VAL_METRIC} {result.best_val_mel_l1:.4f})")
    for name, directory in result.log_dirs.items():
        if name == "TensorBoardLogger":
            lines.append(f"  tensorboard    tensorboard --logdir {directory}")
        else:
            lines.append(f"  {name:<14} {directory}")
    for line in result.media:
        lines.append(f"  media          {line}")
    for topic, choice in result.data_choices.items():
        lines.append(f"  {topic:<14} {choice}")
    return "\n".join(lines)
