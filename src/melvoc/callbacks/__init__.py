"""Lightning callbacks of validation and test: the mel error, and spectrogram pictures and audio.

* :class:`MelMetricCallback` (``mel_metric.py``) logs ``val/mel_l1`` / ``test/mel_l1``, the
  :class:`MelL1` metric (a ``torchmetrics.Metric``: sum and frame-count states, exact across
  processes) of every validation / test batch.
* :class:`MediaCallback` (``media.py``) sends spectrogram pictures and audio of a few validation
  clips to the attached logger (TensorBoard, W&B, otherwise PNG / WAV files).
* :class:`MelLossCallback` is both in one callback, as it was before they were split: configs and
  code that name ``melvoc.callbacks.MelLossCallback`` keep working unchanged.

All of them work with any ``LightningModule`` whose ``validation_step`` / ``test_step`` returns
``{"audio_hat": (B, T') or (B, 1, T')}`` for a batch ``{"audio": (B, T), "lengths": (B,),
"names": [...]}`` (see :mod:`melvoc.callbacks.batches`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

from melvoc.callbacks.media import MediaCallback
from melvoc.callbacks.mel_metric import MelL1, MelMetricCallback
from melvoc.features import MelConfig

__all__ = ["MediaCallback", "MelL1", "MelLossCallback", "MelMetricCallback"]


class MelLossCallback(MelMetricCallback, MediaCallback):
    """:class:`MelMetricCallback` and :class:`MediaCallback` in one callback, with the arguments of both.

    Every hook of either parent passes the call on, so both run. ``conf/callbacks/default.yaml``
    uses the two callbacks separately (``callbacks.mel_metric``, ``callbacks.media``);
    ``conf/callbacks/mel_loss.yaml`` still selects this one.

    Args:
        config: the mel parameters (``${loss_features}``): a ``MelConfig`` or a mapping.
        num_media: clips to draw and play per media epoch (0 disables media).
        every_n_epochs: media cadence during ``fit``.
        audio_key: batch key of the reference audio.
        output_key: key of the predicted audio in the step's output dict.
        cmap: matplotlib colormap of the mel panels.
    """

    def __init__(
        self,
        config: Union[MelConfig, Mapping[str, Any]],
        num_media: int = 4,
        every_n_epochs: int = 1,
        audio_key: str = "audio",
        output_key: str = "audio_hat",
        cmap: str = "magma",
    ) -> None:
        MediaCallback.__init__(self, config, num_media, every_n_epochs, audio_key, output_key, cmap)
        MelMetricCallback.__init__(self, config, audio_key, output_key)
