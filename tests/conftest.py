"""Shared fixtures: the real Hydra config, composed from conf/."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose the real ``conf/`` with ``overrides`` (Hydra's own machinery, no run dir)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [], return_hydra_config=False)


def path_overrides(tmp_path: Path) -> list[str]:
    """Overrides that send a run's logs, cache and output folder into ``tmp_path``."""
    return [
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.output_dir={tmp_path / 'run'}",
    ]


@pytest.fixture
def compose_cfg():
    """``compose_cfg(["features=bigvgan_24k", ...]) -> DictConfig``."""
    yield compose_config
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def original(tmp_path_factory):
    """The original ``mel_processing`` functions, loaded live from ``../shared/seed/mel_processing.md``.

    Skips, saying so, in a clone without ``../shared``.
    """
    from ._golden import original_module

    return original_module(tmp_path_factory.mktemp("original"))
