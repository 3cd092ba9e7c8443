"""melvoc training entry point: ``python train.py [group=option] [key=value ...]``.

    python train.py                                   # built-in demo: synthetic data, tiny HiFi-GAN, CPU
    python train.py experiment=ljspeech_hifigan_v1 data.train_filelist=... data.val_filelist=... trainer=gpu
    python train.py ckpt_path=last                    # resume the newest last.ckpt of this task
    python train.py trainer=ddp trainer.devices=4     # DDP; see conf/trainer/ddp.yaml

SIGTERM or Ctrl-C stops a run after the current step with a checkpoint at it (exit status 128 + signal).

All logic lives in :mod:`melvoc.training`; this file only hands it the composed config and prints
the closing summary (on rank 0), or a known error's message and fix without a traceback
(``HYDRA_FULL_ERROR=1`` keeps the traceback).
"""

import os
import sys

import hydra
from omegaconf import DictConfig

from melvoc.training import format_summary, train, user_error_message


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        result = train(cfg)
    except Exception as error:
        message = user_error_message(error)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {message}\n(the traceback: HYDRA_FULL_ERROR=1 python train.py ...)", file=sys.stderr, flush=True)
        sys.exit(1)
    if result.is_global_zero:
        print(format_summary(result), flush=True)
    if result.stop_signal is not None:
        # Stopped by SIGTERM/SIGINT after writing a checkpoint: exit as a signalled process does.
        sys.exit(128 + result.stop_signal)
    # The value an optimizing sweeper (hydra --multirun) would minimize.
    return result.final_val_mel_l1


if __name__ == "__main__":
    main()
