"""The golden outputs of the original ``mel_processing.py`` and what each dtype of them promises anywhere.

``tests/fixtures/seed_mel_golden.*`` were made by the original functions on one host. Their float64
values hold on any host to 1e-10 (float64 FFT rounding is far below that). Their float32 values do not:
a float32 FFT on another CPU (another FFT library, vector width or summation order) rounds
differently, and the log amplifies that in quiet bins. So float32 is checked two ways:

* against the original functions run live on the same host, in float32, within 1e-5
  (:func:`original_module`: the code block of ``../shared/seed/mel_processing.md``, loaded at test time
  and never copied into the project);
* against the float64 golden values within :func:`float32_log_mel_bound`, an element-wise bound derived
  from the rounding error of a float32 FFT, which holds on any IEEE-754 host.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import Tensor

from melvoc.features import MelConfig, mel_filterbank

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SEED_PAGE = Path(__file__).resolve().parents[2] / "shared" / "seed" / "mel_processing.md"
GOLDEN = np.load(FIXTURES / "seed_mel_golden.npz")
GOLDEN_META = json.loads((FIXTURES / "seed_mel_golden.json").read_text())
CONFIGS: dict[str, dict] = GOLDEN_META["configs"]

UNIT_ROUNDOFF = 2.0**-24  # float32


def gamma(n: float | Tensor) -> float | Tensor:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative error bound of ``n`` float32 roundings."""
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def golden(name: str, key: str) -> Tensor:
    """One array of the golden data as a tensor (float64 or float32, as stored)."""
    return torch.from_numpy(GOLDEN[f"{name}/{key}"])


def seed_source() -> str:
    """The original ``mel_processing.py`` source, from the code block of ``../shared/seed/mel_processing.md``.

    Skips (saying why) where the page or its code block is absent: a clone without ``../shared`` then
    checks float32 against the float64 golden data only.
    """
    if not SEED_PAGE.is_file():
        pytest.skip(f"{SEED_PAGE} is absent (a clone without ../shared): the original functions cannot run "
                    "live here; float32 is checked against the float64 golden data and its derived bound only")
    blocks = re.findall(r"```py(?:thon)?\n(.*?)```", SEED_PAGE.read_text(), re.S)
    source = next((block for block in blocks if "def mel_spectrogram_torch" in block), None)
    if source is None:
        pytest.skip(f"{SEED_PAGE} holds no code block defining mel_spectrogram_torch")
    return source


def original_module(tmp_dir: Path) -> ModuleType:
    """Import the original functions from :func:`seed_source` (written to ``tmp_dir``) as a module."""
    path = tmp_dir / "original_mel_processing.py"
    path.write_text(seed_source())
    spec = importlib.util.spec_from_file_location("original_mel_processing", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def original_mel_float32(original: ModuleType, name: str) -> Tensor:
    """The original ``mel_spectrogram_torch`` on config ``name``'s golden waveform, in float32, on this host.

    Its caches are cleared first: they are keyed by ``fmax`` and dtype alone, so a filterbank of one
    config would otherwise be reused for another (the golden data was made with fresh caches).
    """
    p = CONFIGS[name]
    original.mel_basis.clear()
    original.hann_window.clear()
    return original.mel_spectrogram_torch(
        golden(name, "wav").float(), p["n_fft"], p["num_mels"], p["sampling_rate"], p["hop_size"],
        p["win_size"], p["fmin"], p["fmax"], p["center"])


def float32_log_mel_bound(name: str) -> Tensor:
    """Element-wise bound ``(B, num_mels, F)`` on |float32 log-mel - float64 log-mel| for golden config ``name``.

    The float32 computation differs from the float64 one (same float32 waveform, window and filterbank)
    only by rounding. With ``u = 2^-24``, per frame ``j`` with full-spectrum norm ``||X_j||`` and mel band
    ``i`` with filter row ``f_i`` (``n_i`` non-zero taps):

    * window product and FFT: ``||dX_j|| <= rho ||X_j||``, ``rho = r + u (1 + r)``, where
      ``r = L eta / (1 - L eta)``, ``L = ceil(log2 n_fft)``, ``eta = u + gamma_4 (sqrt 2 + u)`` is the
      error bound of a radix-2 FFT with twiddles correct to ``u`` (Higham, *Accuracy and Stability of
      Numerical Algorithms*, 2nd ed., Thm. 24.2; mixed-radix and real-input FFTs have bounds of the same
      form);
    * magnitude ``sqrt(re^2 + im^2 + eps)``: 1-Lipschitz in ``|X_k|``, and its own rounding ``<= 3u``
      relative;
    * projection onto band ``i``: ``sum_k f_ik |dX_jk| <= ||f_i|| ||dX_j||`` (Cauchy-Schwarz), and the
      float32 sum of ``n_i`` non-negative products ``<= gamma_{n_i} m_ij`` (zero taps add nothing);
    * ``log(max(m, clip_val))`` moves by at most ``dm / max(m - dm, clip_val)``, and the float32 log
      itself by at most 2 ulp (``2u |log m|``).

    ``m_ij`` and ``||X_j||`` come from the float64 golden spectrogram (``|X_k|^2 = spec^2 - eps``; the
    interior bins of a one-sided spectrum count twice in the full-spectrum norm).
    """
    config = MelConfig(**CONFIGS[name])
    u = UNIT_ROUNDOFF
    stages = math.ceil(math.log2(config.n_fft))
    eta = u + gamma(4) * (math.sqrt(2) + u)
    r = stages * eta / (1 - stages * eta)
    rho = r + u * (1 + r)

    spec = golden(name, "spec_f64")  # (B, bins, F), sqrt(|X|^2 + eps)
    power = (spec.square() - config.eps).clamp_min(0)
    twice = torch.full((power.shape[-2], 1), 2.0, dtype=torch.float64)
    twice[0] = 1.0
    if config.n_fft % 2 == 0:
        twice[-1] = 1.0
    frame_norm = (power * twice).sum(-2).sqrt()  # (B, F)

    basis = mel_filterbank(config).double()  # (num_mels, bins)
    mel = basis @ spec  # (B, num_mels, F)
    row_norm = basis.norm(dim=-1)[None, :, None]
    taps = (basis > 0).sum(-1).double()[None, :, None]
    dm = row_norm * rho * frame_norm[:, None, :] + (3 * u + gamma(taps)) * mel
    floor = torch.tensor(config.clip_val, dtype=torch.float64)
    log_mel = golden(name, "mel_f64")
    return dm / torch.maximum(mel - dm, floor) + 2 * u * log_mel.abs()
