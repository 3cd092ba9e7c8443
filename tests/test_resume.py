"""Exact resume from outside, as a user does it: ``python train.py ...``, killed, resumed with ``ckpt_path=``.

The run of issue 21: tiny HiFi-GAN, batch 2, 2 loader workers, 20 steps, a checkpoint every 5 steps,
validation and media off. One run goes through; another is killed (SIGKILL to its process group)
once its step-10 checkpoint is on disk, then resumed from that checkpoint. Both final ``last.ckpt``
must be equal in every tensor (weights and both optimizers' states). The same for the shard source
from a folder and from ``s3://`` on a local server, for 2-process DDP, and for SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from melvoc.training import LAST_CKPT
from tests.test_training import LAUNCHER_ENV, REPO

RUN = [
    "model=hifigan_tiny", "data.batch_size=2", "data.num_workers=2", "trainer.max_steps=20",
    "callbacks.model_checkpoint.every_n_train_steps=5", "callbacks.model_checkpoint.save_top_k=-1",
    # validation and media off
    "validate_before_fit=false", "trainer.limit_val_batches=0", "callbacks.media=null", "callbacks.quality=null",
    "callbacks.best_checkpoint=null", "logger=csv",
]
STEP_10 = "step_0000010.ckpt"


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    values.update(extra or {})
    return values


def command(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *RUN, f"paths.log_dir={tmp_path / name}",
            f"paths.cache_dir={tmp_path / 'cache'}", *extra]


def run(tmp_path: Path, name: str, *extra: str, environ: dict[str, str] | None = None) -> str:
    """``train.py`` to its end; its stdout. A run still going after 900 s fails the test, and its whole
    process group (DDP's other rank and every loader worker too) is killed, so nothing outlives it."""
    proc = subprocess.Popen(command(tmp_path, name, *extra), cwd=tmp_path, env=env(environ), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{name} still running after 900 s, killed:\n{out[-2000:]}\n{err[-4000:]}") from None
    assert proc.returncode == 0, f"{name} failed:\n{out[-2000:]}\n{err[-4000:]}"
    return out


def checkpoint(tmp_path: Path, name: str, file: str) -> Path:
    (path,) = (tmp_path / name).glob(f"train/runs/*/checkpoints/{file}")
    return path


def wait_for(tmp_path: Path, name: str, file: str, proc: subprocess.Popen, timeout: float = 600) -> Path:
    """The checkpoint ``file`` of run ``name`` once it is completely written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be stopped"
        for path in (tmp_path / name).glob(f"train/runs/*/checkpoints/{file}"):
            try:
                torch.load(path, map_location="cpu", weights_only=False)
                return path
            except Exception:  # caught mid-write; the next poll reads the finished file
                pass
        time.sleep(0.5)
    raise AssertionError(f"{file} did not appear in time")


def tensors(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    flat = {f"state_dict.{k}": v for k, v in ckpt["state_dict"].items()}
    for i, opt in enumerate(ckpt["optimizer_states"]):
        for pid, state in opt["state"].items():
            for key, value in state.items():
                flat[f"optimizer{i}.{pid}.{key}"] = torch.as_tensor(value)
    flat["global_step"] = torch.tensor(ckpt["global_step"])
    return flat


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} of {len(ta)} tensors differ, e.g. {different[:5]}"


def kill_and_resume(tmp_path: Path, *extra: str, environ: dict[str, str] | None = None) -> None:
    run(tmp_path, "whole", *extra, environ=environ)
    proc = subprocess.Popen(command(tmp_path, "killed", *extra), cwd=tmp_path, env=env(environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        step10 = wait_for(tmp_path, "killed", STEP_10, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    out = run(tmp_path, "resumed", *extra, f"ckpt_path={step10}", environ=environ)
    assert f"resumed from   {step10}" in out
    assert_same_tensors(checkpoint(tmp_path, "whole", LAST_CKPT), checkpoint(tmp_path, "resumed", LAST_CKPT))


@pytest.fixture
def synthetic(tmp_path) -> Path:
    """The default synthetic set (as `python train.py` makes it): its folder, with train.txt and val.txt."""
    from melvoc.data.synthetic import SyntheticSpec, make_synthetic_dataset

    spec = SyntheticSpec(sampling_rate=22050, num_train=48, num_val=6, min_seconds=1.0, max_seconds=3.0,
                         num_speakers=8, seed=0)
    return make_synthetic_dataset(tmp_path / "cache", spec)


def pack_both(folder: Path, train: str, val: str) -> None:
    """Pack the synthetic set's train.txt and val.txt into the set URIs ``train`` and ``val``."""
    from melvoc.data.pack import pack

    pack(str(folder / "train.txt"), train, 22050, chunk_bytes="600KB", num_workers=0)
    pack(str(folder / "val.txt"), val, 22050, num_workers=0)


def test_file_source_killed_and_resumed_ends_bit_identical(tmp_path):
    kill_and_resume(tmp_path)


@pytest.mark.slow
def test_shards_from_a_folder_killed_and_resumed_end_bit_identical(tmp_path, synthetic):
    pytest.importorskip("litdata")
    train, val = tmp_path / "train_shards", tmp_path / "val_shards"
    pack_both(synthetic, str(train), str(val))
    kill_and_resume(tmp_path, "data=shards", f"data.train_shards={train}", f"data.val_shards={val}")


@pytest.mark.slow
def test_shards_from_s3_killed_and_resumed_end_bit_identical(tmp_path, synthetic, monkeypatch):
    pytest.importorskip("litdata")
    from tests import s3server

    proc, server = s3server.start()
    try:
        train, val = f"s3://{s3server.BUCKET}/train", f"s3://{s3server.BUCKET}/val"
        with monkeypatch.context() as patch:
            for name, value in server.env().items():
                patch.setenv(name, value)
            pack_both(synthetic, train, val)
        kill_and_resume(tmp_path, "data=shards", f"data.train_shards={train}", f"data.val_shards={val}",
                        environ=server.env())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_ddp_two_processes_killed_and_resumed_end_bit_identical(tmp_path):
    kill_and_resume(tmp_path, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu")


@pytest.mark.slow
def test_ddp_on_an_odd_number_of_shards_killed_and_resumed_end_bit_identical(tmp_path, synthetic):
    """9 chunks over 2 ranks x 2 workers: litdata still gives both ranks the same number of batches."""
    pytest.importorskip("litdata")
    from melvoc.data.shards import open_shards

    train, val = tmp_path / "train_shards", tmp_path / "val_shards"
    pack_both(synthetic, str(train), str(val))
    assert open_shards(str(train))["shards"] == 9
    kill_and_resume(tmp_path, "data=shards", f"data.train_shards={train}", f"data.val_shards={val}",
                    "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_writes_a_checkpoint_at_the_current_step_and_says_how_to_resume(tmp_path, signum):
    """A scheduler's preemption notice (SIGTERM) or Ctrl-C (SIGINT): a checkpoint at the current step, then exit."""
    run(tmp_path, "whole")
    log = tmp_path / "stopped.out"
    with open(log, "w") as stdout:  # a file, not a pipe: nobody reads a pipe until the run ends
        proc = subprocess.Popen(command(tmp_path, "stopped"), cwd=tmp_path, env=env(), stdout=stdout,
                                stderr=subprocess.DEVNULL)
        wait_for(tmp_path, "stopped", "step_0000005.ckpt", proc)
        proc.send_signal(signum)
        proc.wait(timeout=600)
    out = log.read_text()
    assert proc.returncode == 128 + signum, out[-2000:]
    last = checkpoint(tmp_path, "stopped", LAST_CKPT)
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 5 <= step < 20
    assert f"stopped by {signal.Signals(signum).name} (checkpoint written at step {step})" in out
    assert f"resume with    python train.py ckpt_path={last}" in out
    run(tmp_path, "resumed", f"ckpt_path={last}")
    assert_same_tensors(checkpoint(tmp_path, "whole", LAST_CKPT), checkpoint(tmp_path, "resumed", LAST_CKPT))
