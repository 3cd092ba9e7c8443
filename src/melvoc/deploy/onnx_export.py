"""ONNX export of a generator, and a small ONNX Runtime runner that checks the file's feature config.

``python -m melvoc.export CKPT vocoder.onnx`` writes a graph ``mel (batch, num_mels, frames) ->
audio (batch, 1, samples)`` with dynamic batch and frame axes, at opset :data:`ONNX_OPSET`, weight norm
folded in. The file carries the feature config and generator facts as ONNX ``metadata_props``
(keys ``melvoc.*``), so a runner can refuse mels made with other features:

    vocoder = OnnxVocoder("vocoder.onnx", config=my_features)   # FeatureMismatchError if they differ
    audio = vocoder(mel)                                          # (B, num_mels, F) -> (B, 1, F * hop)

Needs ``onnx`` and ``onnxruntime``: ``pip install 'melvoc[onnx]'``. The graph comes from torch's
TorchScript-based exporter (``dynamo=False``): it needs nothing beyond torch, and HiFi-GAN's
convolutions trace to a static graph. The torch.export-based exporter would also need ``onnxscript``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from melvoc.features import MelConfig
from melvoc.deploy.streaming import check_mel

__all__ = [
    "INSTALL_HINT",
    "ONNX_FORMAT",
    "ONNX_FORMAT_VERSION",
    "ONNX_OPSET",
    "FeatureMismatchError",
    "OnnxDependencyError",
    "OnnxModelError",
    "OnnxVocoder",
    "export_onnx",
]

#: ONNX opset of exported graphs (ONNX Runtime >= 1.12 runs it; every op HiFi-GAN needs exists since opset 11).
ONNX_OPSET = 17
#: ``melvoc.format`` metadata value of an exported graph, and its layout version.
ONNX_FORMAT = "melvoc.onnx"
ONNX_FORMAT_VERSION = 1
INSTALL_HINT = "pip install 'melvoc[onnx]' (the onnx and onnxruntime packages)"

_OPTIMIZATION = ("disable", "basic", "extended", "all")


class OnnxDependencyError(ImportError):
    """``onnx`` or ``onnxruntime`` is not installed; the message says what to install."""


class OnnxModelError(ValueError):
    """A file that is not a usable melvoc ONNX vocoder; the message names the file and the fix."""


class FeatureMismatchError(ValueError):
    """An ONNX vocoder used with mel features other than those it was exported with; names every differing field."""


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise OnnxDependencyError(f"ONNX export and inference need the {module!r} package: {INSTALL_HINT}") from exc


class _RealISTFT(nn.Module):
    """Vocos' ISTFT with ``irfft`` as two matrix products over a real DFT basis: ONNX has no complex tensors.

    ``irfft(re + i im)[t] = sum_k w_k (re_k cos(2 pi k t / n) - im_k sin(2 pi k t / n)) / n`` with ``w = 1`` for
    the DC and Nyquist bins (whose imaginary parts irfft ignores) and 2 for the others; windowing,
    overlap-add and the envelope are the wrapped ISTFT's own.
    """

    def __init__(self, istft: nn.Module) -> None:
        super().__init__()
        self.istft = istft
        n = istft.n_fft
        bins = torch.arange(n // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * bins[:, None] * torch.arange(n, dtype=torch.float64) / n
        weight = torch.full((n // 2 + 1, 1), 2.0, dtype=torch.float64)
        weight[0] = 1.0
        if n % 2 == 0:
            weight[-1] = 1.0
        device = istft.window.device
        self.register_buffer("cos", (weight * torch.cos(angle) / n).float().to(device), persistent=False)
        self.register_buffer("sin", (-weight * torch.sin(angle) / n).float().to(device), persistent=False)

    def forward(self, real: Tensor, imag: Tensor) -> Tensor:
        frames = real @ self.cos + imag @ self.sin
        window = self.istft.window.to(frames.dtype)
        return self.istft._overlap_add(frames * window) / self.istft._envelope(frames.shape[1], window)


@contextlib.contextmanager
def _exportable(generator: nn.Module) -> Iterator[None]:
    """Swap in export-friendly equivalents of the layers the TorchScript exporter cannot trace, then restore them."""
    if type(generator).__name__ != "VocosGenerator":
        yield
        return
    head = generator.head
    istft = head.istft
    head.istft = _RealISTFT(istft)
    try:
        yield
    finally:
        head.istft = istft


def _metadata(generator: nn.Module, config: MelConfig) -> dict[str, str]:
    from melvoc import __version__

    return {
        "melvoc.format": ONNX_FORMAT,
        "melvoc.format_version": str(ONNX_FORMAT_VERSION),
        "melvoc.version": __version__,
        "melvoc.generator": f"{type(generator).__module__}.{type(generator).__qualname__}",
        "melvoc.features": json.dumps(config.to_dict(), sort_keys=True),
        "melvoc.num_mels": str(int(generator.num_mels)),
        "melvoc.hop_size": str(int(generator.hop_size)),
        "melvoc.opset": str(ONNX_OPSET),
    }


def export_onnx(
    source: Union[str, os.PathLike, nn.Module],
    output: Union[str, os.PathLike],
    *,
    config: Optional[MelConfig] = None,
    overwrite: bool = True,
) -> Path:
    """Write ``source`` (a checkpoint/export path or a generator) as an ONNX graph to ``output``; return its path.

    Args:
        source: a file :func:`melvoc.load_generator` reads, or a generator module (used as is, in eval mode).
        output: the ``.onnx`` file (written next to itself and renamed, never half-written).
        config: the feature config, if ``source`` is a module without ``.config``.
        overwrite: replace an existing ``output``.

    Raises:
        OnnxDependencyError: ``onnx`` is not installed.
        FileExistsError, IsADirectoryError: ``output`` exists (without ``overwrite``) or is a folder.
        ValueError: no feature config.
    """
    onnx = _require("onnx")
    output = Path(output).expanduser()
    if output.is_dir():
        raise IsADirectoryError(f"{output}: is a folder; give a file name, e.g. {output / 'vocoder.onnx'}")
    if not isinstance(source, nn.Module):
        from melvoc.deploy.inference import load_generator

        source_path = Path(source).expanduser()
        if output.exists() and output.resolve() == source_path.resolve():
            raise FileExistsError(f"{output}: is the input checkpoint; give another output path")
        generator = load_generator(source_path)
    else:
        generator = source
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output}: exists; remove it or allow overwriting (--force)")
    config = config if config is not None else getattr(generator, "config", None)
    if config is None:
        raise ValueError(
            f"{type(generator).__name__} has no feature config: set generator.config or pass config=MelConfig(...)"
        )
    config = MelConfig.coerce(config)

    was_training = generator.training
    generator.eval()
    parameter = next(generator.parameters())
    example = torch.zeros(1, generator.num_mels, 16, dtype=parameter.dtype, device=parameter.device)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad(), _exportable(generator):
            # torch deprecates the TorchScript exporter in favour of one that needs onnxscript; this one
            # needs nothing more, so its deprecation notice is not the user's concern.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                generator,
                (example,),
                buffer,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["mel"],
                output_names=["audio"],
                dynamic_axes={"mel": {0: "batch", 2: "frames"}, "audio": {0: "batch", 2: "samples"}},
            )
    finally:
        generator.train(was_training)
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in _metadata(generator, config).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = "melvoc vocoder: mel (batch, num_mels, frames) -> audio (batch, 1, frames * hop_size)"
    onnx.checker.check_model(model)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    onnx.save(model, partial)
    os.replace(partial, output)
    return output


class OnnxVocoder:
    """Run an exported ONNX vocoder with ONNX Runtime: ``(B, num_mels, F) -> (B, 1, F * hop_size)``.

    Args:
        path: a file written by :func:`export_onnx`.
        config: the features your mels are made with (``MelConfig`` or mapping); when given, it must equal
            the file's, else :class:`FeatureMismatchError` names every differing field.
        threads: ONNX Runtime intra-op threads (``None``: its default, all cores).
        optimization: graph optimisation level, ``disable``, ``basic``, ``extended`` or ``all``.
        providers: execution providers (default: CPU).

    Attributes:
        config: the :class:`MelConfig` stored in the file. ``num_mels``, ``hop_size``: from the file.

    Input may be a tensor (output: a CPU tensor) or a numpy array (output: a float32 array).
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        config: Union[MelConfig, Mapping[str, Any], None] = None,
        *,
        threads: Optional[int] = None,
        optimization: str = "all",
        providers: Optional[list[str]] = None,
    ) -> None:
        ort = _require("onnxruntime")
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file; write one with python -m melvoc.export CKPT out.onnx")
        if optimization not in _OPTIMIZATION:
            raise ValueError(f"optimization {optimization!r}: one of {', '.join(_OPTIMIZATION)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs
            raise OnnxModelError(f"{self.path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from exc
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.metadata.get("melvoc.format") != ONNX_FORMAT:
            raise OnnxModelError(
                f"{self.path}: an ONNX graph without melvoc metadata (melvoc.format={self.metadata.get('melvoc.format')!r}); "
                "export it with python -m melvoc.export CKPT out.onnx"
            )
        version = int(self.metadata.get("melvoc.format_version", "0"))
        if version > ONNX_FORMAT_VERSION:
            raise OnnxModelError(
                f"{self.path}: melvoc ONNX format version {version}, this melvoc reads up to {ONNX_FORMAT_VERSION}; "
                "upgrade melvoc"
            )
        try:
            self.config = MelConfig.coerce(json.loads(self.metadata["melvoc.features"]))
            self.num_mels = int(self.metadata["melvoc.num_mels"])
            self.hop_size = int(self.metadata["melvoc.hop_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise OnnxModelError(f"{self.path}: damaged melvoc metadata ({exc}); export it again") from exc
        if config is not None:
            self.check_config(config)

    def check_config(self, config: Union[MelConfig, Mapping[str, Any]]) -> None:
        """Raise :class:`FeatureMismatchError` unless ``config`` equals the feature config in the file."""
        given = MelConfig.coerce(config)
        if given == self.config:
            return
        stored, wanted = self.config.to_dict(), given.to_dict()
        diffs = [f"{key}: file {stored[key]!r}, given {wanted[key]!r}" for key in stored if stored[key] != wanted[key]]
        raise FeatureMismatchError(
            f"{self.path}: exported for other mel features than the given config ({'; '.join(diffs)}); "
            "compute the mels with the file's features (OnnxVocoder(path).config) or export the vocoder "
            "trained on yours"
        )

    def __call__(self, mel: Union[Tensor, np.ndarray]) -> Union[Tensor, np.ndarray]:
        """``(B, num_mels, F)`` float log-mels -> ``(B, 1, F * hop_size)`` audio.

        Raises:
            MelInputError: wrong shape or number of bins, zero frames, NaN/inf values.
        """
        as_tensor = isinstance(mel, Tensor)
        array = np.require(mel.detach().cpu().float().numpy() if as_tensor else mel, np.float32, ["C", "W"])
        check_mel(torch.from_numpy(array), self.num_mels, dims=(3,))
        audio = self.session.run(["audio"], {"mel": array})[0]
        return torch.from_numpy(audio) if as_tensor else audio

