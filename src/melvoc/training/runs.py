"""Run folder, process rank and the ``melvoc.*`` OmegaConf resolvers, read from the launcher's environment.

Every process of one distributed launch must agree on one run folder before any process group
exists, so the answers come from the variables the launcher sets (torchrun, srun, Lightning's own
DDP launcher). ``conf/hydra/default.yaml`` uses them through the resolvers registered here:
``${melvoc.run_id:}`` names the run folder, ``${melvoc.rank_zero_only:...}`` keeps ``.hydra/`` to
rank 0, ``${melvoc.rank_suffix:}`` gives the other ranks their own log file, and
``${melvoc.required:}`` marks a value that must be given where ``???`` cannot.

Importing this module registers the resolvers (:func:`register_resolvers`).
"""

from __future__ import annotations

import functools
import os
from datetime import datetime
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

__all__ = ["REQUIRED_MARK", "process_rank", "register_resolvers", "run_id"]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def process_rank() -> tuple[int, int]:
    """``(node_rank, rank)`` of this process as its launcher set it, ``(0, 0)`` for a plain run.

    ``rank`` is the global rank where the launcher says it (torchrun: ``RANK``, srun:
    ``SLURM_PROCID``), otherwise the local rank that Lightning's own DDP launcher sets
    (``LOCAL_RANK``, with ``NODE_RANK`` for multi-node launches by hand).
    """
    node = _env_int("NODE_RANK") or _env_int("GROUP_RANK") or 0
    for name in ("RANK", "SLURM_PROCID"):
        rank = _env_int(name)
        if rank is not None and (name != "SLURM_PROCID" or (_env_int("SLURM_NTASKS") or 1) > 1):
            return node, rank
    return node, _env_int("LOCAL_RANK") or 0


def _is_rank_zero() -> bool:
    return process_rank() == (0, 0)


@functools.cache
def run_id() -> str:
    """The name of this run's folder, the same in every process of one distributed launch.

    ``MELVOC_RUN_ID`` if set; ``slurm-<job id>`` for a multi-task SLURM step; ``torchrun-<rdzv id>``
    under torchrun; otherwise the start time ``YYYY-MM-DD_HH-MM-SS``. Computed once per process, so
    every read of ``hydra.run.dir`` agrees.
    """
    explicit = os.environ.get("MELVOC_RUN_ID", "").strip()
    if explicit:
        return explicit
    if "SLURM_JOB_ID" in os.environ and (_env_int("SLURM_NTASKS") or 1) > 1:
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    rdzv = os.environ.get("TORCHELASTIC_RUN_ID", "").strip()
    if rdzv and rdzv != "none":
        return f"torchrun-{rdzv}"
    if rdzv == "none":
        # Static rendezvous without an id: the workers of one node share their torchrun agent.
        return f"torchrun-{os.uname().nodename}-{os.getppid()}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def _rank_zero_only(value: Any) -> Any:
    return value if _is_rank_zero() else None


def _rank_suffix() -> str:
    node, rank = process_rank()
    if (node, rank) == (0, 0):
        return ""
    if _env_int("RANK") is None and _env_int("SLURM_PROCID") is None and node:
        return f"_node{node}_rank{rank}"
    return f"_rank{rank}"


REQUIRED_MARK = "${melvoc.required:"


def _required(*, _node_: Any) -> Any:
    key = _node_._get_full_key(None)
    raise MissingMandatoryValue(f"Missing required config value: {key}. Give it on the command line: {key}=...")


def register_resolvers() -> None:
    """Register the ``melvoc.*`` resolvers (idempotent).

    ``melvoc.run_id``, ``melvoc.rank_zero_only`` and ``melvoc.rank_suffix`` serve
    ``conf/hydra/default.yaml``. ``${melvoc.required:}`` marks a value that must be given where
    ``???`` cannot: a later config's ``???`` does not replace an earlier value when OmegaConf merges
    (an experiment cannot make ``data.val_filelist``, ``null`` in ``data/filelist.yaml``, required).
    """
    OmegaConf.register_new_resolver("melvoc.required", _required, replace=True)
    OmegaConf.register_new_resolver("melvoc.run_id", run_id, replace=True)
    OmegaConf.register_new_resolver("melvoc.rank_zero_only", _rank_zero_only, replace=True)
    OmegaConf.register_new_resolver("melvoc.rank_suffix", _rank_suffix, replace=True)


register_resolvers()
