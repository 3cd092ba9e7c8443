"""Training orchestration: what ``python train.py`` runs around the data module and the ``GANVocoder``.

| module | what it holds |
|---|---|
| :mod:`~melvoc.training.run` | :func:`train`: instantiation, the baseline validation, fit, resume, the closing summary |
| :mod:`~melvoc.training.checks` | start-up checks of the config; which errors are the user's (message and fix) |
| :mod:`~melvoc.training.runs` | run folder id, process rank, the ``melvoc.*`` OmegaConf resolvers (registered on import) |
| :mod:`~melvoc.training.callbacks` | validation callbacks: the mel metric, quality metrics, media |
| :mod:`~melvoc.training.finetune` | ``InitFromCheckpoint``: initial weights from a melvoc or an official checkpoint |

Importing this package registers the resolvers that ``conf/`` uses, before ``@hydra.main`` composes it.
"""

from melvoc.training.checks import (
    LAST_CKPT,
    ConfigError,
    instantiate_group,
    required_keys,
    resolve_ckpt_path,
    user_error_message,
    validate_config,
)
from melvoc.training.run import VAL_METRIC, TrainingResult, format_summary, train
from melvoc.training.runs import process_rank, run_id

__all__ = [
    "LAST_CKPT",
    "VAL_METRIC",
    "ConfigError",
    "TrainingResult",
    "format_summary",
    "instantiate_group",
    "process_rank",
    "required_keys",
    "resolve_ckpt_path",
    "run_id",
    "train",
    "user_error_message",
    "validate_config",
]
