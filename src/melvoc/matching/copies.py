"""Someone's ``mel_processing.py`` copy as something to run: fresh imports, its mel-like functions, arguments
bound by parameter name.

Each :func:`load_legacy` executes the file anew (module-level caches start empty), optionally on the
torch<2 / librosa<0.10 layer (:mod:`melvoc.matching.legacy_api`). :func:`discover` finds the
functions to compare; :func:`bind` passes them the audio (or spectrogram) and a config's numbers by
parameter name (``sampling_rate`` or ``sample_rate``/``sr``, ``hop_size`` or ``hop_length``, ...).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import itertools
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import torch
from torch import Tensor

from melvoc.features import MelConfig
from melvoc.matching.identify import UsageError
from melvoc.matching.legacy_api import LegacyApi

__all__ = ["ALIASES", "COMPRESSION", "KNOWN", "CannotRun", "bind", "call", "discover", "import_copy", "load_legacy",
           "why"]

KNOWN = (
    "mel_spectrogram_torch",
    "spectrogram_torch",
    "spec_to_mel_torch",
    "dynamic_range_compression_torch",
    "dynamic_range_decompression_torch",
    "spectral_normalize_torch",
    "spectral_de_normalize_torch",
)
COMPRESSION = {
    "dynamic_range_compression_torch": "compress",
    "spectral_normalize_torch": "compress",
    "dynamic_range_decompression_torch": "decompress",
    "spectral_de_normalize_torch": "decompress",
}
# Parameter names of the copies in the wild, per MelConfig field (first: the original's name).
ALIASES: dict[str, tuple[str, ...]] = {
    "audio": ("y", "audio", "wav", "waveform", "signal", "x", "wave"),
    "spec": ("spec", "spectrogram", "magnitudes", "magnitude", "S", "x", "linear"),
    "n_fft": ("n_fft", "filter_length", "fft_size", "nfft"),
    "num_mels": ("num_mels", "n_mels", "n_mel_channels", "mel_channels", "n_mel"),
    "sampling_rate": ("sampling_rate", "sample_rate", "sr", "fs"),
    "hop_size": ("hop_size", "hop_length", "hop"),
    "win_size": ("win_size", "win_length", "window_size", "win"),
    "fmin": ("fmin", "mel_fmin", "f_min"),
    "fmax": ("fmax", "mel_fmax", "f_max"),
    "center": ("center",),
}
_KINDS = {"mel": ("audio", "num_mels"), "spec": ("audio", "n_fft"), "spec_to_mel": ("spec", "num_mels")}
_module_counter = itertools.count()


class CannotRun(Exception):
    """A function that cannot run here; the message is one line: why, and the fix.

    ``preflight``: its first call raised (where an API the copy was written for may be missing).
    """

    def __init__(self, message: str, preflight: bool = False) -> None:
        super().__init__(message)
        self.preflight = preflight



def load_legacy(path: str | Path, layer: Optional[LegacyApi] = None) -> ModuleType:
    """Import a Python file as a fresh module with a unique name (its folder is importable meanwhile).

    Each call executes the file anew, so module-level caches start empty. ``layer``: the module runs
    on the torch<2 / librosa<0.10 APIs (:mod:`melvoc.matching.legacy_api`; in its own namespace only).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"--reference {path}: no such file (give the path of your mel_processing.py)")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"melvoc_legacy_{digest}_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"--reference {path}: not importable as a Python module (expected a .py file)")
    module = importlib.util.module_from_spec(spec)
    if layer is not None:
        module.__dict__["__builtins__"] = layer.builtins()
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise UsageError(f"--reference {path}: importing it failed: {type(error).__name__}: {error}") from error
    finally:
        sys.path.remove(str(path.parent))
    return module


def import_copy(path: str | Path) -> tuple[ModuleType, Optional[LegacyApi]]:
    """The copy imported as it is, or, where its import fails, on the torch<2 / librosa<0.10 layer
    (its module-level code may call the old APIs); the layer is None when not needed.

    Raises:
        UsageError: it imports neither way (the message is the plain import's failure).
    """
    try:
        return load_legacy(path), None
    except UsageError as error:
        layer = LegacyApi()
        try:
            module = load_legacy(path, layer)
        except UsageError:
            raise error from None
        if not layer.used:
            raise error
        return module, layer


def _kind(name: str, parameters: Sequence[str]) -> Optional[str]:
    if name in COMPRESSION:
        return COMPRESSION[name]
    names = set(parameters)
    has = {key: any(alias in names for alias in ALIASES[key]) for key in ("spec", "num_mels", "n_fft")}
    first = parameters[0] if parameters else ""
    if first in ALIASES["spec"] and first not in ("x",) and has["num_mels"]:
        return "spec_to_mel"
    if first in ALIASES["audio"] or first == "x":
        if has["num_mels"] or "mel" in name.lower():
            return "mel"
        return "spec" if has["n_fft"] else None
    return None


def discover(module: ModuleType) -> tuple[dict[str, str], list[str]]:
    """The functions to compare (name -> kind) and notes on the mel-like ones skipped."""
    found: dict[str, str] = {}
    skipped: list[str] = []
    for name, value in vars(module).items():
        if name.startswith("_") or not inspect.isfunction(value):
            continue
        # Other mel-like functions only where the copy defines them (not librosa's, imported).
        defined_here = getattr(value, "__module__", None) == module.__name__
        if name not in KNOWN and not (defined_here and ("mel" in name.lower() or "spec" in name.lower())):
            continue
        parameters = list(inspect.signature(value).parameters)
        kind = _kind(name, parameters)
        if kind is None:
            skipped.append(f"{name}({', '.join(parameters)}): not audio -> mel/spectrogram or spectrogram -> mel")
            continue
        if name not in KNOWN and kind in _KINDS:
            try:
                bind(value, kind, torch.zeros(1), MelConfig(22050, 1024, 256, 1024, 80))
            except CannotRun as error:
                skipped.append(f"{name}: {error}")
                continue
        found[name] = kind
    return found, skipped


def bind(function: Callable[..., Any], kind: str, data: Tensor, config: MelConfig) -> tuple[dict[str, Any], set[str]]:
    """Keyword arguments for ``function`` by parameter name, and the MelConfig fields they fix.

    Raises:
        CannotRun: a parameter without default has no counterpart (the message shows both signatures).
    """
    values = {"n_fft": config.n_fft, "num_mels": config.num_mels, "sampling_rate": config.sampling_rate,
              "hop_size": config.hop_size, "win_size": config.win_size, "fmin": config.fmin, "fmax": config.fmax,
              "center": config.center}
    signature = inspect.signature(function)
    kwargs: dict[str, Any] = {}
    fixed: set[str] = set()
    data_key = "spec" if kind == "spec_to_mel" else "audio"
    unbound: list[str] = []
    for position, (name, parameter) in enumerate(signature.parameters.items()):
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if position == 0:
            kwargs[name] = data
            continue
        key = next((k for k, aliases in ALIASES.items() if k not in ("audio", "spec") and name in aliases), None)
        if key is not None:
            kwargs[name] = values[key]
            fixed.add(key)
        elif parameter.default is parameter.empty:
            unbound.append(name)
    if unbound:
        expected = ", ".join(ALIASES[k][0] for k in ALIASES if k not in ("audio", "spec"))
        raise CannotRun(
            f"signature {function.__name__}({', '.join(signature.parameters)}): no counterpart for "
            f"{', '.join(map(repr, unbound))} "
            f"(melvoc passes the {data_key} and {expected}, also under the names "
            f"{', '.join(sorted({a for k, v in ALIASES.items() if k not in ('audio', 'spec') for a in v[1:]}))}); "
            "wrap it in a function with those parameters"
        )
    # Positional-only parameters cannot be passed by name.
    positional = [n for n, p in signature.parameters.items() if p.kind == p.POSITIONAL_ONLY]
    if positional:
        args = [kwargs.pop(n) for n in positional if n in kwargs]
        return {"__args__": args, **kwargs}, fixed
    return kwargs, fixed


def call(function: Callable[..., Any], kwargs: dict[str, Any]) -> Tensor:
    args = kwargs.get("__args__", [])
    named = {k: v for k, v in kwargs.items() if k != "__args__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = function(*args, **named)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        out = out[0]
    if not isinstance(out, Tensor):
        raise CannotRun(f"returned {type(out).__name__}, not a tensor (or a tuple starting with one)")
    return out


def why(error: BaseException) -> str:
    """One line: what went wrong, and the fix."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    lowered = text.lower()
    if "return_complex" in lowered:
        fix = ("torch.stft needs return_complex=True since torch 2.0: pass it and take "
               "torch.view_as_real(...) (or .abs()) of the result (compare's compatibility layer stands in "
               "for torch.stft(...) calls, not for the tensor method y.stft(...))")
    elif "has no attribute 'rfft'" in lowered or "has no attribute 'irfft'" in lowered:
        fix = ("torch.rfft/irfft were removed in torch 1.8: use torch.fft.rfft/irfft (complex results; "
               "torch.view_as_real gives the old real layout)")
    elif "positional argument" in lowered and ("mel()" in lowered or "librosa" in lowered):
        fix = ("librosa >= 0.10 takes keyword arguments only: librosa.filters.mel(sr=..., n_fft=..., "
               "n_mels=..., fmin=..., fmax=...)")
    elif isinstance(error, (KeyError, NameError)):
        fix = "it depends on state another call sets up (a module cache or global): make it build what it needs"
    else:
        fix = "make it run with this torch/librosa, then compare again"
    return f"{type(error).__name__}: {text[:200]}; fix: {fix}"


