"""Real training runs on CPU: the CLI, the loss falling, resume (also after SIGKILL), bf16, DDP, the demo."""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from melvoc.data.synthetic import SyntheticSpec, make_synthetic_dataset
from melvoc.training.runs import run_id
from melvoc.training import LAST_CKPT, format_summary, train
from tests.conftest import path_overrides

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_ENV = (
    "MELVOC_RUN_ID", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED",
)


@pytest.fixture(autouse=True)
def plain_launch(monkeypatch):
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    run_id.cache_clear()


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory) -> Path:
    """Generated speech-like clips (harmonic voiced syllables with formants, fricatives, pauses) + filelists."""
    spec = SyntheticSpec(sampling_rate=22050, num_train=8, num_val=2, min_seconds=0.8, max_seconds=1.4, seed=5)
    return make_synthetic_dataset(tmp_path_factory.mktemp("speech"), spec)


def data_overrides(speech_dir: Path) -> list[str]:
    """The real default model (hifigan_tiny) on the generated files, in small batches."""
    return [
        "data=filelist",
        f"data.train_filelist={speech_dir / 'train.txt'}",
        f"data.val_filelist={speech_dir / 'val.txt'}",
        "data.batch_size=4",
        "data.segment_size=4096",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.persistent_workers=false",
    ]


def run_overrides(tmp_path: Path, speech_dir: Path, *extra: str) -> list[str]:
    return [
        *path_overrides(tmp_path),
        *data_overrides(speech_dir),
        "logger=csv",
        "trainer.log_every_n_steps=1",
        *extra,
    ]


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def series(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def adam_steps(ckpt: dict) -> list[int]:
    """Update count of each optimizer (AdamW keeps it per parameter)."""
    return [int(next(iter(opt["state"].values()))["step"]) for opt in ckpt["optimizer_states"]]


# ------------------------------------------------------------------------------------------------
# In-process runs
# ------------------------------------------------------------------------------------------------


def test_short_cpu_run_lowers_val_mel_l1(compose_cfg, tmp_path, speech_dir):
    # Neither interval divides max_steps: the run must still end validated and checkpointed at step 20.
    cfg = compose_cfg(run_overrides(
        tmp_path, speech_dir,
        "trainer.max_steps=20", "trainer.val_check_interval=15", "callbacks.model_checkpoint.every_n_train_steps=7",
    ))
    result = train(cfg)

    assert result.global_step == 20, "max_steps counts generator updates, one per batch"
    assert result.initial_val_mel_l1 is not None and result.final_val_mel_l1 is not None
    assert result.final_val_mel_l1 < 0.85 * result.initial_val_mel_l1

    rows = metrics(result.run_dir)
    val = series(rows, "val/mel_l1")
    assert len(val) == 3, "baseline pass, the validation at step 15, a final one at step 20"
    assert val[0][1] == pytest.approx(result.initial_val_mel_l1)
    assert val[-1][1] == pytest.approx(result.final_val_mel_l1)
    for key in ("train/loss_g", "train/loss_d", "train/mel_l1", "train/fm"):
        values = [v for _, v in series(rows, key)]
        assert len(values) >= 18 and all(math.isfinite(v) for v in values), key
    steps = [s for s, _ in series(rows, "train/loss_g")]
    assert max(steps) >= 18, "logged steps count batches, not optimizer calls"

    ckpt_dir = result.run_dir / "checkpoints"
    assert result.last_checkpoint == ckpt_dir / LAST_CKPT
    assert load_ckpt(result.last_checkpoint)["global_step"] == 20
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()

    summary = format_summary(result)
    assert f"{result.initial_val_mel_l1:.4f}" in summary and f"{result.final_val_mel_l1:.4f}" in summary
    assert str(result.run_dir) in summary and str(result.last_checkpoint) in summary


def test_same_seed_same_run(compose_cfg, tmp_path, speech_dir):
    def losses(folder: str) -> list[tuple[int, float]]:
        cfg = compose_cfg(run_overrides(
            tmp_path / folder, speech_dir, "seed=7", "validate_before_fit=false",
            "trainer.max_steps=3", "trainer.val_check_interval=3", "callbacks.model_checkpoint.every_n_train_steps=3",
        ))
        rows = metrics(train(cfg).run_dir)
        return series(rows, "train/loss_g") + series(rows, "train/loss_d") + series(rows, "val/mel_l1")

    first = losses("a")
    assert len(first) == 7
    assert losses("b") == first


def test_resume_from_checkpoint_path_restores_step_and_optimizers(compose_cfg, tmp_path, speech_dir):
    common = ["validate_before_fit=false", "trainer.val_check_interval=100",
              "callbacks.model_checkpoint.every_n_train_steps=2"]
    first = train(compose_cfg(run_overrides(tmp_path / "a", speech_dir, *common, "trainer.max_steps=4")))
    ckpt = load_ckpt(first.last_checkpoint)
    assert ckpt["global_step"] == 4 and adam_steps(ckpt) == [4, 4]
    assert len(ckpt["lr_schedulers"]) == 2

    second = train(compose_cfg(run_overrides(
        tmp_path / "b", speech_dir, *common, "trainer.max_steps=7", f"ckpt_path={first.last_checkpoint}",
    )))
    assert second.resumed_from == str(first.last_checkpoint)
    resumed = load_ckpt(second.last_checkpoint)
    assert resumed["global_step"] == 7
    assert adam_steps(resumed) == [7, 7], "both optimizers continue from their saved state"
    # 8 training clips, batch 4: 2 steps per epoch. The schedulers decay once per epoch, the last
    # one (cut short by max_steps) included, as in an uninterrupted 7-step run.
    assert [s["last_epoch"] for s in resumed["lr_schedulers"]] == [4, 4]
    first_step = min(s for s, _ in series(metrics(second.run_dir), "train/loss_g"))
    assert first_step >= 4, "the resumed run starts after the checkpoint's step"


def test_bf16_mixed_on_cpu(compose_cfg, tmp_path, speech_dir):
    cfg = compose_cfg(run_overrides(
        tmp_path, speech_dir, "trainer.precision=bf16-mixed", "validate_before_fit=false",
        "trainer.max_steps=2", "trainer.val_check_interval=2",
    ))
    result = train(cfg)
    assert result.global_step == 2
    rows = metrics(result.run_dir)
    for key in ("train/loss_g", "train/loss_d", "train/mel_l1", "val/mel_l1"):
        values = [v for _, v in series(rows, key)]
        assert values and all(math.isfinite(v) for v in values), key
    assert math.isfinite(result.final_val_mel_l1)


# ------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------


def cli(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *args]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cli(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"train.py {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def run_dirs(log_dir: Path, task: str) -> list[Path]:
    return sorted(p for p in (log_dir / task / "runs").iterdir() if p.is_dir())


def test_cli_fast_dev_run(tmp_path):
    proc = run_cli("debug=fdr", f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}",
                   cwd=tmp_path)
    assert "fast_dev_run finished" in proc.stdout
    assert re.search(r"val/mel_l1 +before [\d.]+ -> final [\d.]+", proc.stdout)
    (run_dir,) = run_dirs(tmp_path / "logs", "debug")
    assert f"run folder     {run_dir}" in proc.stdout
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "train.log").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "logs"], "nothing written outside paths.*"


def test_cli_resume_after_sigkill(tmp_path, speech_dir):
    logs = tmp_path / "logs"
    common = [f"paths.log_dir={logs}", f"paths.cache_dir={tmp_path / 'cache'}", *data_overrides(speech_dir),
              "logger=csv", "task_name=killed", "validate_before_fit=false", "trainer.val_check_interval=1000",
              "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=3"]
    proc = subprocess.Popen(cli(*common, "trainer.max_steps=100000"), cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 420
        saved = 0
        while saved < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1.0)
            found = list(logs.glob(f"killed/runs/*/checkpoints/{LAST_CKPT}"))
            if found:
                try:
                    saved = load_ckpt(found[0])["global_step"]
                except Exception:  # caught mid-write; the next poll reads the finished file
                    continue
        assert proc.poll() is None, "the run ended on its own before it was killed"
        assert saved >= 3, "no checkpoint appeared in time"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (killed_run,) = run_dirs(logs, "killed")
    at_kill = load_ckpt(killed_run / "checkpoints" / LAST_CKPT)
    killed_step = at_kill["global_step"]
    assert killed_step >= 3 and killed_step % 3 == 0, "last.ckpt is rewritten every 3 steps"

    target = killed_step + 4
    out = run_cli(*common, "ckpt_path=last", f"trainer.max_steps={target}", cwd=tmp_path).stdout
    assert f"resumed from   {killed_run / 'checkpoints' / LAST_CKPT}" in out
    runs = run_dirs(logs, "killed")
    assert len(runs) == 2
    resumed_run = next(r for r in runs if r != killed_run)
    resumed = load_ckpt(resumed_run / "checkpoints" / LAST_CKPT)
    assert resumed["global_step"] == target
    assert adam_steps(resumed) == [target, target]
    assert min(s for s, _ in series(metrics(resumed_run), "train/loss_g")) >= killed_step


def test_cli_folder_without_validation_set_holds_out_clips_and_says_what_it_chose(tmp_path, speech_dir):
    """A folder of wavs and nothing else: a few clips are held out for validation, the loader workers come
    from the usable cores (no torch warning), and the summary says both and where the media went."""
    from melvoc.data.datamodule import auto_num_workers, auto_val_count

    (tmp_path / "wavs").mkdir()
    wavs = sorted((speech_dir / "wavs").glob("*.wav"))
    for wav in wavs:
        (tmp_path / "wavs" / wav.name).write_bytes(wav.read_bytes())
    logs = tmp_path / "logs"
    proc = run_cli(
        "data=filelist", f"data.train_filelist={tmp_path / 'wavs'}", "data.batch_size=2", "data.segment_size=4096",
        "logger=csv", "task_name=folder", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "callbacks.quality=null", "callbacks.media.num_media=1", f"paths.log_dir={logs}",
        f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
    )
    out = proc.stdout
    (run_dir,) = run_dirs(logs, "folder")
    held_out = auto_val_count(len(wavs))
    assert (f"validation     {held_out} of {len(wavs)} clips held out of data.train_filelist "
            "(data.val_count=auto, split_seed=1234") in out
    workers, cores = auto_num_workers(1)
    assert f"loader workers {workers} per process (num_workers=auto: {cores} usable cores" in out
    assert "suggested max number of worker" not in proc.stderr
    media = run_dir / "csv" / "media"
    assert f"media          PNG + WAV files: {media}/epoch=NNN/" in out
    assert list(media.glob("epoch=*/*.png")) and list(media.glob("epoch=*/*.wav"))
    assert re.search(r"melvoc training finished: 2 steps, \d+ epoch\(s\), \d+m\d\ds", out)


@pytest.mark.slow
def test_cli_ddp_two_cpu_processes_write_one_run_folder(tmp_path, speech_dir):
    logs = tmp_path / "logs"
    out = run_cli(
        "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "task_name=ddp",
        f"paths.log_dir={logs}", f"paths.cache_dir={tmp_path / 'cache'}", *data_overrides(speech_dir),
        "data.batch_size=2", "logger=csv", "trainer.max_steps=5", "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=2", "trainer.log_every_n_steps=1",
        cwd=tmp_path,
    ).stdout
    assert out.count("melvoc training finished") == 1, "only rank 0 prints the summary"
    (run_dir,) = run_dirs(logs, "ddp")
    assert {p.name for p in tmp_path.iterdir()} <= {"cache", "logs"}, "nothing written outside paths.*"
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert (run_dir / "train.log").exists()
    # Steps 2 and 4 validate and checkpoint; the final step 5 gets a collective last validation and save.
    assert load_ckpt(run_dir / "checkpoints" / LAST_CKPT)["global_step"] == 5
    assert len(series(metrics(run_dir), "val/mel_l1")) == 4
    assert not list(run_dir.glob("*/.hydra")), "no nested per-rank run folders"


@pytest.mark.slow
def test_cli_demo_default_run(tmp_path):
    """`python train.py` with no arguments (only the output folders moved): val/mel_l1 falls >= 30%."""
    out = run_cli(f"paths.root_dir={tmp_path}", cwd=tmp_path, timeout=900).stdout
    match = re.search(r"val/mel_l1 +before ([\d.]+) -> final ([\d.]+)", out)
    assert match, out[-2000:]
    before, after = map(float, match.groups())
    assert after <= 0.7 * before
    (run_dir,) = run_dirs(tmp_path / "logs", "train")
    assert (run_dir / "checkpoints" / LAST_CKPT).exists()
    assert f"tensorboard --logdir {run_dir / 'tensorboard'}" in out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "audio": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss_g", "train/loss_d", "train/mel_l1", "train/fm", "val/mel_l1"} <= set(tags["scalars"])
    assert tags["images"] and tags["audio"], "spectrogram pictures and audio of the validation clips"
