"""Lightning callbacks of validation and test: the mel error, and spectrogram pictures and audio.

* :class:`MelMetricCallback` (``mel_metric.py``) logs ``val/mel_l1`` / ``test/mel_l1``, the
  :class:`MelL1` metric (a ``torchmetrics.Metric``: sum and frame-count states, exact across
  processes) of every validation / test batch.
* :class:`MediaCallback` (``media.py``) sends spectrogram pictures and audio of a few validation
  clips to the attached logger (TensorBoard, W&B, otherwise PNG / WAV files).
* :class:`QualityMetricsCallback` (``quality.py``) logs ``val/pesq``, ``val/mstft``, ``val/mcd``,
  ``val/periodicity`` and ``val/vuv_f1`` (:mod:`melvoc.metrics`) on a subset of clips every N validations.
* :class:`MelLossCallback` is both in one callback, as it was before they were split: configs and
  code that name ``MelLossCallback`` keep working unchanged.

All of them work with any ``LightningModule`` whose ``validation_step`` / ``test_step`` returns
``{"audio_hat": (B, T') or (B, 1, T')}`` for a batch ``{"audio": (B, T), "lengths": (B,),
"names": [...]}`` (see :mod:`melvoc.training.callbacks.batches`).
"""

from __future__ import annotations

import functools
from typing import Any

from melvoc.training.callbacks.media import MediaCallback
from melvoc.training.callbacks.mel_metric import MelL1, MelMetricCallback
from melvoc.training.callbacks.quality import QualityMetricsCallback

__all__ = ["MediaCallback", "MelL1", "MelLossCallback", "MelMetricCallback", "QualityMetricsCallback"]


class MelLossCallback(MelMetricCallback, MediaCallback):
    """:class:`MelMetricCallback` and :class:`MediaCallback` in one callback.

    Takes :class:`MediaCallback`'s arguments (``config``, ``num_media``, ``every_n_epochs``,
    ``audio_key``, ``output_key``, ``cmap``); the metric shares ``config`` and the keys. Every hook
    of either parent passes the call on, so both run. ``conf/callbacks/default.yaml`` uses the two
    callbacks separately (``callbacks.mel_metric``, ``callbacks.media``);
    ``conf/callbacks/mel_loss.yaml`` still selects this one.
    """

    @functools.wraps(MediaCallback.__init__, assigned=("__annotations__",))
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        MediaCallback.__init__(self, *args, **kwargs)
        MelMetricCallback.__init__(self, self.config, self.audio_key, self.output_key)
