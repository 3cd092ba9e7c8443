"""Every config group and experiment composes and instantiates; start-up checks fail early and clearly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from melvoc import training
from melvoc.training import run as training_run
from melvoc.training.callbacks import MediaCallback, MelMetricCallback
from melvoc.features import MelConfig
from melvoc.training.runs import process_rank, run_id
from melvoc.training import instantiate_group, required_keys, resolve_ckpt_path, validate_config
from tests.conftest import path_overrides

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

LAUNCHER_ENV = (
    "MELVOC_RUN_ID", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "SLURM_JOB_ID",
    "SLURM_NTASKS", "SLURM_PROCID", "TORCHELASTIC_RUN_ID",
)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(autouse=True)
def plain_launch(monkeypatch):
    """No launcher variables from the environment the tests run in; a fresh run id per test."""
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    run_id.cache_clear()
    yield
    run_id.cache_clear()


def hop_of(model_cfg) -> int:
    """The hop of a model preset's generator, built from its node alone."""
    return instantiate(model_cfg.generator).hop_size


def features_for_hop(hop: int) -> str:
    for name in options("features"):
        if OmegaConf.load(CONF / "features" / f"{name}.yaml").hop_size == hop:
            return name
    raise AssertionError(f"no features preset with hop {hop}")


# ------------------------------------------------------------------------------------------------
# Groups
# ------------------------------------------------------------------------------------------------


def test_groups_have_the_documented_options():
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"tensorboard", "csv", "wandb"} <= set(options("logger"))
    expected = {"default", "model_checkpoint", "mel_metric", "media", "mel_loss", "progress_bar", "lr_monitor"}
    assert expected <= set(options("callbacks"))
    assert {"fdr", "overfit", "limit"} <= set(options("debug"))
    assert {"ljspeech_hifigan_v1", "vctk_44k", "bigvgan_v2_24k_100band"} <= set(options("experiment"))
    assert options("paths") == ["default"] and options("hydra") == ["default"]


def test_default_config_is_the_demo(compose_cfg, tmp_path):
    cfg = compose_cfg(path_overrides(tmp_path))
    validate_config(cfg)
    assert cfg.model._target_ == "melvoc.models.GANVocoder"
    assert cfg.model.generator._target_ == "melvoc.models.hifigan.HiFiGANGenerator"
    assert cfg.data.synthetic is not None, "the default data must be the built-in synthetic set"
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_steps > 0
    assert cfg.seed is not None and cfg.ckpt_path is None and cfg.validate_before_fit
    assert set(cfg.logger) == {"tensorboard"}
    # loss_features follows features field by field, with fmax null.
    features, loss = MelConfig.coerce(cfg.features), MelConfig.coerce(cfg.loss_features)
    assert loss == features.replace(fmax=None)


@pytest.mark.parametrize("name", options("features"))
def test_features_presets_instantiate(compose_cfg, tmp_path, name):
    cfg = compose_cfg([f"features={name}", *path_overrides(tmp_path)])
    assert isinstance(instantiate(cfg.features), MelConfig)
    assert isinstance(instantiate(cfg.loss_features), MelConfig)


@pytest.mark.parametrize("name", options("model"))
def test_model_presets_instantiate_with_matching_features(compose_cfg, tmp_path, name):
    hop = hop_of(compose_cfg([f"model={name}", *path_overrides(tmp_path)]).model)
    cfg = compose_cfg([f"model={name}", f"features={features_for_hop(hop)}", *path_overrides(tmp_path)])
    model = instantiate(cfg.model)
    assert isinstance(model, L.LightningModule)
    mel = torch.zeros(1, cfg.features.num_mels, 4)
    with torch.no_grad():
        assert model(mel).shape[-1] == 4 * cfg.features.hop_size


def test_model_hop_mismatch_is_a_clear_error(compose_cfg, tmp_path):
    cfg = compose_cfg(["model=hifigan_v1", "features=sovits_44k", *path_overrides(tmp_path)])
    with pytest.raises(InstantiationException, match=r"makes 256 samples per frame, which does not match .* = 512"):
        instantiate(cfg.model)


@pytest.mark.parametrize("name", options("data"))
def test_data_options_instantiate(compose_cfg, tmp_path, name):
    from melvoc.data.datamodule import MelDataModule

    if name == "shards":
        pytest.importorskip("litdata", reason="the shards extra")
    overrides = [f"data={name}", *path_overrides(tmp_path)]
    probe = compose_cfg(overrides)
    for key in required_keys(probe):
        listfile = tmp_path / f"{key.replace('.', '_')}.txt"
        listfile.write_text("a.wav\n")
        overrides.append(f"{key}={listfile}")
    datamodule = instantiate(compose_cfg(overrides).data)
    assert isinstance(datamodule, MelDataModule)


@pytest.mark.parametrize("name", options("callbacks"))
def test_callback_options_instantiate(compose_cfg, tmp_path, name):
    cfg = compose_cfg([f"callbacks={name}", *path_overrides(tmp_path)])
    callbacks = instantiate_group(cfg.callbacks, "callbacks", Callback)
    assert callbacks and all(isinstance(c, Callback) for c in callbacks)


def test_default_callbacks(compose_cfg, tmp_path):
    cfg = compose_cfg(path_overrides(tmp_path))
    assert set(cfg.callbacks) == {
        "model_checkpoint", "best_checkpoint", "mel_metric", "media", "quality", "progress_bar", "lr_monitor",
        "init_from_checkpoint",
    }
    callbacks = {name: instantiate(node) for name, node in cfg.callbacks.items()}
    periodic, best = callbacks["model_checkpoint"], callbacks["best_checkpoint"]
    assert isinstance(periodic, ModelCheckpoint) and periodic.save_last is True
    assert periodic._every_n_train_steps == cfg.callbacks.model_checkpoint.every_n_train_steps > 0
    assert Path(periodic.dirpath) == tmp_path / "run" / "checkpoints"
    assert best.monitor == "val/mel_l1" and best.mode == "min"
    assert isinstance(callbacks["progress_bar"], TQDMProgressBar)
    # The mel error and the media are separate callbacks, both on the loss's mels.
    assert type(callbacks["mel_metric"]) is MelMetricCallback and type(callbacks["media"]) is MediaCallback
    assert callbacks["mel_metric"].config == callbacks["media"].config == instantiate(cfg.loss_features)
    # A callback can be switched off from the command line.
    cfg = compose_cfg(["callbacks.lr_monitor=null", *path_overrides(tmp_path)])
    assert len(instantiate_group(cfg.callbacks, "callbacks", Callback)) == len(callbacks) - 1


@pytest.mark.parametrize("name", options("logger"))
def test_logger_options(compose_cfg, tmp_path, name):
    cfg = compose_cfg([f"logger={name}", *path_overrides(tmp_path)])
    assert set(cfg.logger) == {name}
    if name == "wandb":
        pytest.importorskip("wandb")
        cfg.logger.wandb.offline = True
    (logger,) = instantiate_group(cfg.logger, "logger", Logger)
    assert isinstance(logger, Logger)
    assert Path(logger.save_dir) == tmp_path / "run"


def test_several_loggers_at_once(compose_cfg, tmp_path):
    cfg = compose_cfg(["logger=[tensorboard,csv]", *path_overrides(tmp_path)])
    assert len(instantiate_group(cfg.logger, "logger", Logger)) == 2
    no_logger = compose_cfg(["~logger", *path_overrides(tmp_path)]).get("logger")
    assert instantiate_group(no_logger, "logger", Logger) == []


def test_instantiate_group_names_the_entry_of_the_wrong_kind():
    nodes = OmegaConf.create({"fine": None, "odd": {"_target_": "builtins.dict"}})
    with pytest.raises(TypeError, match=r"callbacks\.odd: builtins\.dict is not a lightning Callback"):
        instantiate_group(nodes, "callbacks", Callback)


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options_instantiate(compose_cfg, tmp_path, name):
    cfg = compose_cfg([f"trainer={name}", *path_overrides(tmp_path)])
    assert cfg.trainer._target_ == "lightning.Trainer"
    if name == "gpu" and not torch.cuda.is_available():
        assert cfg.trainer.accelerator == "gpu"
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.benchmark = False
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert isinstance(trainer, L.Trainer)
    assert trainer.max_steps == cfg.trainer.max_steps
    assert Path(trainer.default_root_dir) == tmp_path / "run"


def test_ddp_trainer_takes_devices_and_nodes(compose_cfg, tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    cfg = compose_cfg(["trainer=ddp", "trainer.devices=2", "trainer.num_nodes=1", "trainer.accelerator=cpu",
                       *path_overrides(tmp_path)])
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == 2 and trainer.num_nodes == 1
    assert trainer.strategy._get_process_group_backend() == "gloo"
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") is True, "GANVocoder's two backward passes"


@pytest.mark.parametrize("name", options("debug"))
def test_debug_options(compose_cfg, tmp_path, name):
    cfg = compose_cfg([f"debug={name}", *path_overrides(tmp_path)])
    assert cfg.task_name == "debug"
    validate_config(cfg)
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    if name == "fdr":
        assert trainer.fast_dev_run
    elif name == "overfit":
        assert trainer.overfit_batches == 1
    else:
        assert trainer.limit_train_batches == cfg.trainer.limit_train_batches
        assert trainer.max_steps == cfg.trainer.max_steps


# ------------------------------------------------------------------------------------------------
# Experiments
# ------------------------------------------------------------------------------------------------

REQUIRED = {
    "ljspeech_hifigan_v1": {"data.train_filelist", "data.val_filelist"},
    "vctk_44k": {"data.train_filelist"},
    "bigvgan_v1_24k_100band": {"data.train_filelist", "data.val_filelist"},
    "bigvgan_v2_24k_100band": {"data.train_filelist", "data.val_filelist"},
    "bigvgan_v2_44k_128band_512x": {"data.train_filelist", "data.val_filelist"},
}


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_compose_instantiate_and_agree(compose_cfg, tmp_path, name):
    base = [f"experiment={name}", *path_overrides(tmp_path)]
    probe = compose_cfg(base)
    missing = set(required_keys(probe))
    assert missing == REQUIRED.get(name, missing), "the experiment's required paths changed"
    with pytest.raises(MissingMandatoryValue, match=re.escape(sorted(missing)[0])):
        validate_config(probe)

    paths = []
    for key in sorted(missing):
        listfile = tmp_path / f"{key.split('.')[-1]}.txt"
        listfile.write_text("clip.wav\n")
        paths.append(f"{key}={listfile}")
    cfg = compose_cfg(base + paths)
    validate_config(cfg)
    assert cfg.task_name == name, "ckpt_path=last looks up checkpoints by task_name: one per experiment"

    features, loss = MelConfig.coerce(cfg.features), MelConfig.coerce(cfg.loss_features)
    assert loss == features.replace(fmax=None)
    assert hop_of(cfg.model) == features.hop_size
    assert cfg.data.segment_size % features.hop_size == 0
    assert cfg.trainer.max_steps >= 10_000, "a real run length, not the demo's"

    model = instantiate(cfg.model)
    assert model.generator.hop_size == features.hop_size
    assert model.features == features and model.loss_features == loss
    datamodule = instantiate(cfg.data)
    assert datamodule.features == features
    cfg.trainer.accelerator = "cpu"
    assert instantiate(cfg.trainer, logger=False).max_steps == cfg.trainer.max_steps


# ------------------------------------------------------------------------------------------------
# Start-up failures
# ------------------------------------------------------------------------------------------------


def test_wrong_overrides_fail_at_composition(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="max_stepz"):
        compose_cfg(["trainer.max_stepz=3"])
    with pytest.raises(MissingConfigException, match="hifigan_v9"):
        compose_cfg(["model=hifigan_v9"])


def test_mismatched_loss_sampling_rate_is_rejected(compose_cfg, tmp_path):
    cfg = compose_cfg(["loss_features.sampling_rate=16000", *path_overrides(tmp_path)])
    with pytest.raises(ValueError, match="16000.*22050"):
        validate_config(cfg)


def test_broken_interpolation_is_rejected_at_startup(compose_cfg, tmp_path):
    cfg = compose_cfg(["data.cache_dir=${paths.nowhere}", *path_overrides(tmp_path)])
    with pytest.raises(Exception, match="nowhere"):
        validate_config(cfg)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )


def test_cli_rejects_unknown_key_before_running(tmp_path):
    proc = run_cli("trainer.max_stepz=3", f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "max_stepz" in proc.stderr and "not in struct" in proc.stderr
    assert not (tmp_path / "logs").exists(), "nothing may run (or be written) after a bad override"


def test_cli_missing_required_path_fails_before_data_loading(tmp_path):
    proc = run_cli("experiment=ljspeech_hifigan_v1", f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "data.train_filelist" in proc.stderr and "data.val_filelist" in proc.stderr
    assert "Instantiating" not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------
# Run folder and launcher environment
# ------------------------------------------------------------------------------------------------


def compose_with_hydra(overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def log_file_name(cfg) -> str:
    """The job log file's name (its folder, hydra.runtime.output_dir, is only known inside a run)."""
    handler = cfg.hydra.job_logging.handlers.file
    raw = OmegaConf.to_container(handler, resolve=False)["filename"]
    assert raw.startswith("${hydra.runtime.output_dir}/")
    handler.filename = raw.replace("${hydra.runtime.output_dir}/", "")
    return handler.filename


def test_run_dir_is_per_task_under_log_dir(tmp_path):
    cfg = compose_with_hydra([f"paths.log_dir={tmp_path}", "task_name=mytask"])
    run_dir = Path(cfg.hydra.run.dir)
    assert run_dir.parent == tmp_path / "mytask" / "runs"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", run_dir.name)
    assert cfg.hydra.run.dir == cfg.hydra.run.dir, "the run id must not change between reads"
    assert cfg.hydra.output_subdir == ".hydra"
    assert log_file_name(cfg) == "train.log"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MELVOC_RUN_ID": "my-run", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "my-run"),
        ({"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8", "SLURM_PROCID": "3"}, "slurm-4242"),
        ({"TORCHELASTIC_RUN_ID": "abc123", "RANK": "1"}, "torchrun-abc123"),
    ],
)
def test_run_id_is_shared_by_the_processes_of_a_launch(monkeypatch, tmp_path, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert run_id() == expected
    cfg = compose_with_hydra([f"paths.log_dir={tmp_path}"])
    assert Path(cfg.hydra.run.dir) == tmp_path / "train" / "runs" / expected


def test_run_id_under_torchrun_without_rdzv_id(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert run_id() == f"torchrun-{os.uname().nodename}-{os.getppid()}"


def test_single_task_slurm_job_uses_a_timestamp(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", run_id())
    assert process_rank() == (0, 0)


@pytest.mark.parametrize(
    ("env", "rank", "suffix"),
    [
        ({}, (0, 0), ""),
        ({"RANK": "3", "LOCAL_RANK": "1"}, (0, 3), "_rank3"),
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8"}, (0, 5), "_rank5"),
        ({"LOCAL_RANK": "1"}, (0, 1), "_rank1"),
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, (1, 0), "_node1_rank0"),
    ],
)
def test_only_rank_zero_writes_the_hydra_folder(monkeypatch, tmp_path, env, rank, suffix):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert process_rank() == rank
    cfg = compose_with_hydra([f"paths.log_dir={tmp_path}"])
    assert cfg.hydra.output_subdir == (".hydra" if rank == (0, 0) else None)
    assert log_file_name(cfg) == f"train{suffix}.log"


# ------------------------------------------------------------------------------------------------
# ckpt_path
# ------------------------------------------------------------------------------------------------


def make_ckpt(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_ckpt_path_last_is_the_newest_of_the_task(tmp_path):
    old = make_ckpt(tmp_path / "exp" / "runs" / "2026-01-02_00-00-00" / "checkpoints" / "last.ckpt", 2_000_000)
    new = make_ckpt(tmp_path / "exp" / "runs" / "2026-01-01_00-00-00" / "checkpoints" / "last.ckpt", 3_000_000)
    make_ckpt(tmp_path / "other" / "runs" / "x" / "checkpoints" / "last.ckpt", 4_000_000)
    make_ckpt(tmp_path / "exp" / "runs" / "y" / "checkpoints" / "step_0000010.ckpt", 5_000_000)
    assert resolve_ckpt_path("last", tmp_path, "exp") == str(new.resolve())
    assert resolve_ckpt_path(str(old), tmp_path, "exp") == str(old.resolve())
    assert resolve_ckpt_path(None, tmp_path, "exp") is None
    # A SLURM pre-emption checkpoint written after it is the newer resume point.
    hpc = make_ckpt(tmp_path / "exp" / "runs" / "slurm-7" / "hpc_ckpt_1.ckpt", 3_500_000)
    assert resolve_ckpt_path("last", tmp_path, "exp") == str(hpc.resolve())


def test_ckpt_path_errors_name_what_was_searched(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"task_name='nothing'.*ckpt_path=/path/to/last.ckpt"):
        resolve_ckpt_path("last", tmp_path, "nothing")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        resolve_ckpt_path(tmp_path / "missing.ckpt", tmp_path, "exp")


def test_train_checks_ckpt_path_before_building_anything(compose_cfg, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(training_run, "instantiate", lambda *a, **k: built.append(a) or None)
    cfg = compose_cfg(["ckpt_path=last", *path_overrides(tmp_path)])
    with pytest.raises(FileNotFoundError, match="ckpt_path=last"):
        training.train(cfg)
    assert built == []


def test_invalid_feature_value_names_the_key_the_user_typed(compose_cfg, tmp_path):
    cfg = compose_cfg(["features.n_fft=-5", *path_overrides(tmp_path)])
    with pytest.raises(training.ConfigError, match=r"^features\.n_fft=-5: must be > 0$"):
        validate_config(cfg)
    cfg = compose_cfg(["+features.hop=3", *path_overrides(tmp_path)])
    with pytest.raises(training.ConfigError, match=r"^features: unknown MelConfig field\(s\) \['hop'\]"):
        validate_config(cfg)


def test_cli_known_errors_print_the_message_and_fix_without_a_traceback(tmp_path):
    """A bad config value and bad data: one message with the fix; the traceback only with HYDRA_FULL_ERROR=1."""
    bad_value = run_cli("features.n_fft=-5", f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert bad_value.returncode == 1
    assert "Error: features.n_fft=-5: must be > 0" in bad_value.stderr
    assert "Traceback" not in bad_value.stderr and "full_key: model" not in bad_value.stderr
    assert "HYDRA_FULL_ERROR=1" in bad_value.stderr

    missing = tmp_path / "no_such_folder"
    bad_data = run_cli("data=filelist", f"data.train_filelist={missing}", "validate_before_fit=false",
                       "trainer.max_steps=1", f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert bad_data.returncode == 1
    assert f"Error: {missing}: data source not found" in bad_data.stderr and "data.train_filelist" in bad_data.stderr
    assert "Traceback" not in bad_data.stderr

    full = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "features.n_fft=-5", f"paths.root_dir={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert full.returncode != 0 and "Traceback" in full.stderr and "ConfigError" in full.stderr


def test_user_error_message_keeps_bugs_as_tracebacks():
    """Only melvoc's own checks and config errors count as user errors; anything else is a bug."""
    def ours():
        validate_config(OmegaConf.create({"data": {"_target_": "x"}, "model": None, "trainer": {"_target_": "y"}}))

    with pytest.raises(training.ConfigError) as error:
        ours()
    assert training.user_error_message(error.value) == "config group `model` must be a node with `_target_`, got None"
    with pytest.raises(ValueError) as foreign:
        int("x")
    assert training.user_error_message(foreign.value) is None
    with pytest.raises(MissingMandatoryValue) as missing:
        OmegaConf.create({"a": "???"}).a  # noqa: B018
    assert training.user_error_message(missing.value).startswith("MissingMandatoryValue: Missing mandatory value: a")
