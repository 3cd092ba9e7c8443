"""Run a copy written for torch < 2 and librosa < 0.10 the way it was meant to run, in its own namespace.

Two APIs changed under the ``mel_processing.py`` copies of that time:

- ``torch.stft`` without ``return_complex``: torch < 2 returned the real view ``(..., freqs, frames, 2)``
  (what ``torch.view_as_real`` gives of the complex result), which the copies square and sum
  (``spec.pow(2).sum(-1)``); torch 2 raises.
- ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)``: positional until librosa 0.10, keyword-only since.

:class:`LegacyApi` gives a copy's module a ``__builtins__`` whose ``__import__`` hands it stand-ins for
``torch``, ``librosa`` and ``librosa.filters`` with those two functions as they were; every other name
resolves to the real module. torch and librosa themselves are never changed, so nothing outside the
copy's module sees the old behaviour. Modules the copy imports keep the real APIs.
"""

from __future__ import annotations

import builtins
import types
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["LegacyApi"]

# librosa < 0.10's positional order of librosa.filters.mel
_MEL_PARAMETERS = ("sr", "n_fft", "n_mels", "fmin", "fmax", "htk", "norm", "dtype")
_WHAT = {
    "stft": "torch.stft without return_complex returns torch.view_as_real of the complex result",
    "mel": "librosa.filters.mel takes positional arguments",
}
_FIX = {
    "stft": "pass return_complex=True to torch.stft and take torch.view_as_real(...) of it",
    "mel": "call librosa.filters.mel with keywords (sr=..., n_fft=..., n_mels=..., fmin=..., fmax=...)",
}
NAME = "torch<2 / librosa<0.10 compatibility layer"


class _Standin(types.ModuleType):
    """A module whose attributes are the real module's, except ``overrides``."""

    def __init__(self, module: types.ModuleType, overrides: dict[str, Any]) -> None:
        super().__init__(module.__name__, module.__doc__)
        self.__dict__.update(overrides)
        self.__dict__["_standin_for"] = module

    def __getattr__(self, name: str) -> Any:  # only for names not in __dict__
        return getattr(self.__dict__["_standin_for"], name)


class LegacyApi:
    """The layer for one copy: builtins for its module, and the old behaviours it used (``used``)."""

    def __init__(self) -> None:
        self.used: dict[str, None] = {}  # "stft" / "mel", in order of first use
        self._torch = _Standin(torch, {"stft": self._stft})
        self._filters: Any = None
        self._librosa: Any = None

    def builtins(self) -> dict[str, Any]:
        """A ``__builtins__`` for the copy's module (set before its code runs)."""
        namespace = dict(vars(builtins))
        real_import = builtins.__import__

        def legacy_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                          level: int = 0) -> Any:
            return self._standin(real_import(name, globals, locals, fromlist, level))

        namespace["__import__"] = legacy_import
        return namespace

    def describe(self) -> str:
        """What the copy needed, e.g. ``torch.stft without return_complex returns ... of the complex result``."""
        return "; ".join(_WHAT[key] for key in self.used)

    def fixes(self) -> tuple[str, ...]:
        """What to change in the copy to run it without the layer, one entry per old behaviour used."""
        return tuple(_FIX[key] for key in self.used)

    def _standin(self, module: Any) -> Any:
        if module is torch:
            return self._torch
        if getattr(module, "__name__", None) == "librosa.filters":
            return self._librosa_filters(module)
        if getattr(module, "__name__", None) == "librosa":
            if self._librosa is None:
                import librosa.filters

                self._librosa = _Standin(module, {"filters": self._librosa_filters(librosa.filters)})
            return self._librosa
        return module

    def _librosa_filters(self, module: types.ModuleType) -> types.ModuleType:
        if self._filters is None:
            self._filters = _Standin(module, {"mel": self._positional_mel(module.mel)})
        return self._filters

    def _stft(self, input: Tensor, n_fft: int, *args: Any, return_complex: bool | None = None, **kwargs: Any) -> Tensor:
        if return_complex:
            return torch.stft(input, n_fft, *args, return_complex=True, **kwargs)
        self.used["stft"] = None
        return torch.view_as_real(torch.stft(input, n_fft, *args, return_complex=True, **kwargs))

    def _positional_mel(self, mel: Callable[..., Any]) -> Callable[..., Any]:
        def positional_mel(*args: Any, **kwargs: Any) -> Any:
            if args:
                if len(args) > len(_MEL_PARAMETERS):
                    raise TypeError(f"librosa.filters.mel takes at most {len(_MEL_PARAMETERS)} arguments "
                                    f"({', '.join(_MEL_PARAMETERS)}), got {len(args)}")
                self.used["mel"] = None
                kwargs = {**dict(zip(_MEL_PARAMETERS, args)), **kwargs}
            return mel(**kwargs)

        return positional_mel
