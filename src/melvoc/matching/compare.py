"""Does melvoc reproduce *your* copy of ``mel_processing.py``, and with which MelConfig?

:func:`run_comparison` (the command: ``python -m melvoc.compare``).

Every mel-like function of the copy is run on deterministic audio (in [-1, 1], with a stretch of
digital silence; several batch sizes and lengths), in float32 and float64, with the numbers of a
feature preset (default ``vits_22k``, the original's; presets come from ``conf/features/*.yaml``),
and compared with :mod:`melvoc.features` under the preset's *whole* config (its ``eps``,
``clip_val``, log base, mel scale and norm, padding). Mel functions also get quiet probes: silence
and noise stepping down to 1e-8, with the preset's numbers and with as many mel bands as STFT bins
(empty filters, 0 before the log whatever the eps): an eps that keeps every usual input above the
log floor would otherwise leave ``clip_val`` unseen. The functions:

- ``mel_spectrogram_torch``, ``spectrogram_torch``, ``spec_to_mel_torch``, the compression pairs
  ``dynamic_range_(de)compression_torch`` and ``spectral_(de_)normalize_torch``;
- any other function whose name holds ``mel`` or ``spec`` (``mel_spectrogram``, ``*_data``
  wrappers, ...) when its parameters can be bound; the others are listed as skipped.

Arguments are bound by parameter name (``sampling_rate`` or ``sample_rate``/``sr``, ``hop_size`` or
``hop_length``, ...); a function that needs a parameter with no counterpart gets ``cannot_run``
with the signature difference. Each function runs in a freshly imported copy of the module, per
dtype, so no function sees a cache (``mel_basis``, ``hann_window``) another one filled. A first
call (pre-flight) that raises, or an import that fails, is tried again on the torch<2 / librosa<0.10
compatibility layer (:mod:`melvoc.matching.legacy_api`: ``torch.stft`` without ``return_complex`` returns the
real view, ``librosa.filters.mel`` takes positional arguments; in the copy's own module only): where
the copy needed it, the reason and a note say so and what to change. What still raises gives
``cannot_run`` with one line saying why and the fix. A tuple return ``(mel, energy, ...)`` is
compared by its first element.

A function that differs from the preset is fitted (``--no-fit`` turns this off): the knobs its
signature does not fix (``eps``, ``clip_val``, log base, mel scale/norm, padding; also ``fmin``/
``fmax`` where it takes none) are searched with :mod:`melvoc.matching.search`, and the config
found is verified against :mod:`melvoc.features` in both dtypes. Status per function:

- ``match``: a MelConfig reproduces it in float64 (1e-10) and float32 (1e-5); ``config`` holds it
  (the preset's own, or the fitted one, with the Hydra override that selects it);
- ``differs``: no config searched reproduces it (``reason`` gives the closest);
- ``cannot_run``: it raised here (on the compatibility layer too), or its signature cannot be bound.

Tolerances are absolute in the log domain: log-mels as they are, linear outputs (spectrogram,
decompression) through ``ln`` (an eps difference under the square root shows there, where a
tolerance relative to the peak hid it).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from melvoc.features import MelConfig, compat, mel_spectrogram, min_audio_length, spec_to_mel, spectrogram
from melvoc.features.presets import override_line
from melvoc.features.statistics import nice_value
from melvoc.matching.copies import KNOWN, CannotRun, bind, call, discover, import_copy, load_legacy, why
from melvoc.matching.identify import UsageError
from melvoc.matching.legacy_api import NAME as LEGACY_LAYER
from melvoc.matching.legacy_api import LegacyApi
from melvoc.matching.search import EPS_GRID, PADDINGS, fit_config

__all__ = ["TOLERANCE", "FunctionResult", "make_audio", "run_comparison"]

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


@dataclass
class FunctionResult:
    """The verdict on one function (on one preset)."""

    status: str  # match | differs | cannot_run
    config: Optional[dict[str, Any]] = None
    max_diff: Optional[float] = None
    reason: str = ""
    override: str = ""
    speed_ratio: Optional[float] = None
    diffs: dict[str, float] = field(default_factory=dict)
    legacy_fixes: tuple[str, ...] = ()  # what to change to run it without the torch<2 / librosa<0.10 layer

    def to_json(self) -> dict[str, Any]:
        diff = self.max_diff if self.max_diff is None or math.isfinite(self.max_diff) else None
        return {"status": self.status, "config": self.config, "max_diff": diff, "reason": self.reason}



# --------------------------------------------------------------------------------------------------
# Audio and comparisons
# --------------------------------------------------------------------------------------------------


def make_audio(config: MelConfig, seed: int, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    """Deterministic test signals in [-0.95, 0.95]: sines + noise with a stretch of digital silence.

    Three cases: one 1 s clip, a batch of 4 odd-length clips, a batch of 2 near the minimum length.
    """
    generator = torch.Generator().manual_seed(seed)
    shortest = max(min_audio_length(config), config.n_fft) + 3 * config.hop_size + 1
    cases = [(1, config.sampling_rate), (4, 16 * config.hop_size + 37), (2, shortest)]
    audio = []
    for batch, length in cases:
        t = torch.arange(length, dtype=torch.float64) / config.sampling_rate
        freqs = 50.0 + torch.rand(batch, 3, 1, generator=generator, dtype=torch.float64) * (config.f_max - 50.0)
        phases = torch.rand(batch, 3, 1, generator=generator, dtype=torch.float64) * 2 * math.pi
        signal = torch.sin(2 * math.pi * freqs * t + phases).sum(1)
        signal = signal + 0.5 * torch.randn(batch, length, generator=generator, dtype=torch.float64)
        silent = slice(length // 3, length // 3 + min(length // 4, 2 * config.n_fft))
        signal[:, silent] = 0.0
        signal = 0.95 * signal / signal.abs().amax(dim=-1, keepdim=True)
        audio.append(signal.to(device=device, dtype=dtype))
    return audio


def quiet_audio(config: MelConfig, seed: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(2, T)``: digital silence, and white noise whose level steps down a decade every ``2 n_fft``
    samples from 1e-2 to 1e-8 (then silence): the mels there pass through every log floor in use."""
    generator = torch.Generator().manual_seed(seed + 2)
    step = 2 * config.n_fft
    levels = torch.tensor([10.0**-k for k in range(2, 9)] + [0.0], dtype=torch.float64).repeat_interleave(step)
    noise = torch.randn(levels.numel(), generator=generator, dtype=torch.float64) * levels
    return torch.stack([torch.zeros_like(noise), noise]).to(device=device, dtype=dtype)


def _log_diff(out: Tensor, ref: Tensor, linear: bool) -> float:
    """Max abs difference, through ``ln`` for linear outputs; equal infinities count as equal."""
    if tuple(out.shape) != tuple(ref.shape):
        return math.inf
    a, b = out.detach().double().cpu(), ref.detach().double().cpu()
    if linear:
        a, b = a.clamp_min(0).log(), b.clamp_min(0).log()
    same = (a == b) | (a.isnan() & b.isnan())
    diff = torch.where(same, torch.zeros_like(a), (a - b).abs())
    if diff.isnan().any():
        return math.inf
    return float(diff.max()) if diff.numel() else 0.0


def _worst(outputs: Sequence[Tensor], references: Sequence[Tensor], linear: bool) -> float:
    return max((_log_diff(o, r, linear) for o, r in zip(outputs, references)), default=0.0)


def _melvoc(kind: str, data: Sequence[Tensor], config: MelConfig) -> list[Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "mel":
            return [mel_spectrogram(y, config) for y in data]
        if kind == "spec":
            return [spectrogram(y, config) for y in data]
        return [spec_to_mel(s, config) for s in data]


@dataclass
class _Run:
    """One function's outputs per dtype on the shared inputs, and on the quiet probes.

    The quiet probes (mel-like functions only) are :func:`quiet_audio` (for ``spec_to_mel``: its
    spectrogram without eps), called with the preset's numbers and, where the function takes
    ``num_mels``, with as many mel bands as STFT bins: then some filters are empty, their bands
    are 0 before the log whatever the eps, and show the log floor itself. ``quiet_mels`` holds the
    ``num_mels`` each probe was called with (None: the preset's numbers, compared with a candidate's own).
    """

    inputs: dict[torch.dtype, list[Tensor]]
    outputs: dict[torch.dtype, list[Tensor]]
    fixed: set[str]
    quiet_inputs: dict[torch.dtype, list[Tensor]] = field(default_factory=dict)
    quiet_outputs: dict[torch.dtype, list[Tensor]] = field(default_factory=dict)
    quiet_mels: list[Optional[int]] = field(default_factory=list)
    layer: Optional[LegacyApi] = None  # the torch<2 / librosa<0.10 layer it ran on, if any
    notes: list[str] = field(default_factory=list)  # for the verdict's reason


def _run_function(reference: Path, name: str, kind: str, config: MelConfig, seed: int, device: torch.device,
                  legacy: bool = False) -> _Run:
    """Run ``name`` on every audio case in float32 and float64, each dtype in a fresh copy of the
    module (the float32 run is the pre-flight), then the quiet probes.

    A pre-flight that raises is tried once more on the torch<2 / librosa<0.10 layer (``run.layer``
    then holds it, with what the copy used of it); raising there too means cannot_run. ``legacy``:
    the copy imports only on the layer, so it runs on it from the start.
    """
    try:
        return _run_once(reference, name, kind, config, seed, device, LegacyApi() if legacy else None)
    except CannotRun as error:
        if legacy or not error.preflight:
            raise
        retry = LegacyApi()
        try:
            return _run_once(reference, name, kind, config, seed, device, retry)
        except CannotRun as again:
            if not retry.used or str(again) == str(error):
                raise error from None
            raise CannotRun(f"{again} (on the {LEGACY_LAYER}, which it needed: {retry.describe()})") from again


def _run_once(reference: Path, name: str, kind: str, config: MelConfig, seed: int, device: torch.device,
              layer: Optional[LegacyApi]) -> _Run:
    inputs: dict[torch.dtype, list[Tensor]] = {}
    outputs: dict[torch.dtype, list[Tensor]] = {}
    fixed: set[str] = set()
    for dtype in (torch.float32, torch.float64):
        audio = make_audio(config, seed, dtype, device)
        data = audio if kind != "spec_to_mel" else _melvoc("spec", audio, config)
        try:
            function = getattr(load_legacy(reference, layer), name)
        except UsageError as error:  # an import that needs the layer
            raise CannotRun(str(error), preflight=True) from error
        results = []
        for index, item in enumerate(data):
            kwargs, fixed = bind(function, kind, item, config)
            try:
                results.append(call(function, kwargs))
            except CannotRun:
                raise
            except Exception as error:
                if index == 0 and dtype == torch.float32:
                    raise CannotRun(why(error), preflight=True) from error
                raise CannotRun(f"raised on a later input ({tuple(item.shape)}, {dtype}): {why(error)}") from error
        inputs[dtype], outputs[dtype] = data, results
    run = _Run(inputs, outputs, fixed, layer=layer)
    if kind in ("mel", "spec_to_mel"):
        _probe_quiet(reference, name, kind, config, seed, device, run)
    return run


def _probe_quiet(reference: Path, name: str, kind: str, config: MelConfig, seed: int, device: torch.device,
                 run: _Run) -> None:
    """Run the quiet probes (see :class:`_Run`) into ``run``, each ``num_mels`` in a fresh copy of the module."""
    band_counts: list[Optional[int]] = [None]
    if "num_mels" in run.fixed and config.n_freqs != config.num_mels:
        band_counts.append(config.n_freqs)
    for num_mels in band_counts:
        numbers = config.replace(num_mels=num_mels or config.num_mels)
        probes = []
        for dtype in (torch.float32, torch.float64):
            audio = quiet_audio(config, seed, dtype, device)
            data = audio if kind == "mel" else _melvoc("spec", [audio], config.replace(eps=0.0))[0]
            function = getattr(load_legacy(reference, run.layer), name)
            try:
                out = call(function, bind(function, kind, data, numbers)[0])
            except Exception as error:
                raise CannotRun(f"raised on silence ({tuple(data.shape)}, {dtype}, num_mels={numbers.num_mels}): "
                                f"{error if isinstance(error, CannotRun) else why(error)}") from error
            probes.append((dtype, data, out))
        bands = probes[0][2].shape[-2] if probes[0][2].dim() >= 2 else None
        if num_mels is not None and bands != num_mels:
            run.notes.append(f"called with num_mels={num_mels} it gave {bands} bands, so the log floor was "
                             f"probed with num_mels={config.num_mels} only")
            continue
        for dtype, data, out in probes:
            run.quiet_inputs.setdefault(dtype, []).append(data)
            run.quiet_outputs.setdefault(dtype, []).append(out)
        run.quiet_mels.append(num_mels)


def _check(kind: str, run: _Run, config: MelConfig) -> dict[str, float]:
    """Max log-domain difference per dtype of melvoc.features with ``config``; the quiet probes are
    included where the usual inputs are within the tolerance (else that difference is the answer)."""
    diffs = {}
    for dtype in run.outputs:
        worst = _worst(run.outputs[dtype], _melvoc(kind, run.inputs[dtype], config), linear=kind == "spec")
        quiet = zip(run.quiet_inputs.get(dtype, []), run.quiet_outputs.get(dtype, []), run.quiet_mels)
        for data, out, num_mels in quiet if worst <= TOLERANCE[dtype] else ():
            numbers = config if num_mels is None else config.replace(num_mels=num_mels)
            worst = max(worst, _log_diff(out, _melvoc(kind, [data], numbers)[0], False))
        diffs[str(dtype).removeprefix("torch.")] = worst
    return diffs


def _quiet_floors(run: _Run) -> dict[str, float]:
    """The log floor the quiet probes show, as ``clip_val`` per log base; {} where they show none.

    The floor is where a band of the noise item stays at the probes' minimum through every level, from
    1e-2 to silence: a band that is 0 before the log (an empty filter) clamped. Silence alone would not
    do: under an eps each band of it sits at a constant value of its own.
    """
    noise = [out.detach().double().cpu().reshape(-1, *out.shape[-2:])[-1]
             for out in run.quiet_outputs.get(torch.float64, [])]
    if not noise:
        return {}
    low = min(float(out.min()) for out in noise)
    if not math.isfinite(low) or not any(bool((out == low).all(dim=-1).any()) for out in noise):
        return {}
    floors = {}
    for base, clip in (("e", math.exp(low)), ("10", 10.0**low)):
        if 0 < clip < math.inf:
            floors[base] = nice_value(clip, rel=1e-6) or clip
    return floors


def _within(diffs: dict[str, float]) -> bool:
    return all(diffs[str(dtype).removeprefix("torch.")] <= tol for dtype, tol in TOLERANCE.items()
               if str(dtype).removeprefix("torch.") in diffs)


def _fit(kind: str, run: _Run, config: MelConfig) -> list[MelConfig]:
    """Configs that may reproduce the function, best first (verified by the caller)."""
    audio64, out64 = run.inputs[torch.float64], run.outputs[torch.float64]
    if kind == "spec":
        return _fit_spectrogram(audio64, out64, config, run.fixed)
    fixed = {key: getattr(config, key) for key in run.fixed}
    if kind == "spec_to_mel":
        fixed.setdefault("n_fft", config.n_fft)
    items_in, items_out = [], []
    for data, out in zip(audio64, out64):
        data2 = data.reshape(-1, *data.shape[-(2 if kind == "spec_to_mel" else 1):])
        out2 = out.reshape(-1, *out.shape[-2:])
        if out2.shape[0] != data2.shape[0]:
            return []
        items_in.extend(data2.numpy())
        items_out.extend(out2.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "spec_to_mel":
            candidates = fit_config(items_out, [np.zeros(1)] * len(items_out), config.sampling_rate, fixed=fixed,
                                    tolerance=1e-8, spectra=items_in)
        else:
            candidates = fit_config(items_out, items_in, config.sampling_rate, fixed=fixed, tolerance=1e-8)
    configs = [c.config for c in candidates]
    if kind == "spec_to_mel":
        # spec_to_mel does not see the STFT: keep the preset's STFT fields.
        configs = [c.replace(hop_size=config.hop_size, win_size=config.win_size, eps=config.eps,
                             pad_mode=config.pad_mode, center=config.center) for c in configs]
    return configs


def _fit_spectrogram(audio: Sequence[Tensor], outputs: Sequence[Tensor], config: MelConfig,
                     fixed: set[str]) -> list[MelConfig]:
    """eps from ``out^2 - |X|^2`` (its median, snapped to a round value) for each padding family."""
    paddings = [(mode, center) for mode, center in PADDINGS if "center" not in fixed or center == config.center]
    configs = []
    for pad_mode, center in paddings:
        try:
            base = config.replace(pad_mode=pad_mode, center=center, eps=0.0)
            powers = [spectrogram(y, base).double() ** 2 for y in audio]
        except ValueError:
            continue
        if any(p.shape != o.shape for p, o in zip(powers, outputs)):
            continue
        estimate = float(torch.cat([(o.double() ** 2 - p).reshape(-1) for p, o in zip(powers, outputs)]).median())
        values = [v for v in (nice_value(estimate, rel=1e-3), max(estimate, 0.0)) if v is not None] + list(EPS_GRID)
        configs.extend(base.replace(eps=v) for v in dict.fromkeys(values))
    return configs


def _compare_compression(reference: Path, name: str, kind: str, seed: int, device: torch.device,
                         layer: Optional[LegacyApi]) -> FunctionResult:
    """A compression function against melvoc.compat's, called as callers do (defaults, C, clip_val);
    where it differs, its floor and log base are read off its outputs."""
    generator = torch.Generator().manual_seed(seed + 1)
    decades = torch.rand(4096, generator=generator, dtype=torch.float64) * 12 - 8
    magnitudes = torch.cat([torch.zeros(4), 10**decades])
    logs = torch.rand(4096, generator=generator, dtype=torch.float64) * 19 - 12
    data = magnitudes if kind == "compress" else logs
    diffs: dict[str, float] = {}
    outputs: dict[torch.dtype, Tensor] = {}
    for dtype in (torch.float32, torch.float64):
        x = data.to(device=device, dtype=dtype)
        function = getattr(load_legacy(reference, layer), name)
        try:
            out = call(function, {"__args__": [x]})
        except CannotRun as error:
            return FunctionResult("cannot_run", reason=str(error))
        except Exception as error:
            return FunctionResult("cannot_run", reason=why(error))
        outputs[dtype] = out
        expected = getattr(compat, name)(x)
        diffs[str(dtype).removeprefix("torch.")] = _log_diff(out, expected, linear=kind == "decompress")
    worst = max(diffs.values())
    if _within(diffs):
        fields = {"clip_val": 1e-5, "log_base": "e"} if kind == "compress" else {"log_base": "e"}
        return FunctionResult("match", fields, worst, "as melvoc.compat (ln, clip_val 1e-5)", diffs=diffs)
    # Read the knobs off the float64 outputs: the floor (compression) and the log base.
    out = outputs[torch.float64].double()
    for base, log, exp in (("e", torch.log, torch.exp), ("10", torch.log10, lambda v: 10.0**v)):
        if kind == "compress":
            clip = float(exp(out.min()))
            clip = nice_value(clip, rel=1e-6) or clip
            candidate = log(torch.clamp(data, min=clip))
            fields: dict[str, Any] = {"clip_val": clip, "log_base": base}
        else:
            candidate = exp(logs)
            fields = {"log_base": base}
        diff = _log_diff(out, candidate, linear=kind == "decompress")
        if diff <= TOLERANCE[torch.float64]:
            text = ", ".join(f"{k}={v!r}" for k, v in fields.items())
            return FunctionResult("match", fields, diff, f"reproduced with {text} (melvoc.compat: log_base e, "
                                  "clip_val 1e-5)", diffs={"float64": diff})
    return FunctionResult("differs", None, worst, "no log base / floor reproduces it", diffs=diffs)


def _speed_ratio(legacy_fn: Callable[[], Any], melvoc_fn: Callable[[], Any], repeat: int) -> Optional[float]:
    """Legacy time / melvoc time, best of ``repeat`` interleaved measurements."""
    if repeat <= 0:
        return None
    legacy_best = melvoc_best = math.inf
    for _ in range(repeat):
        for fn, slot in ((legacy_fn, 0), (melvoc_fn, 1)):
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if slot == 0:
                legacy_best = min(legacy_best, elapsed)
            else:
                melvoc_best = min(melvoc_best, elapsed)
    return legacy_best / melvoc_best if melvoc_best > 0 else None


def compare_function(reference: Path, name: str, kind: str, preset: str, config: MelConfig,
                     presets: dict[str, MelConfig], *, fit: bool = True, seed: int = 0,
                     device: torch.device = torch.device("cpu"),
                     repeat: int = 0, legacy: bool = False) -> FunctionResult:
    """The verdict on one function of the copy at ``reference`` with the numbers of ``config``.

    ``legacy``: the copy imports only on the torch<2 / librosa<0.10 layer; without it, a function
    whose first call raises is tried on the layer too. The reason says when it ran on the layer.
    """
    if kind in ("compress", "decompress"):
        layer = LegacyApi() if legacy else None
        return _with_layer(_compare_compression(reference, name, kind, seed, device, layer), layer)
    try:
        run = _run_function(reference, name, kind, config, seed, device, legacy)
    except CannotRun as error:
        return FunctionResult("cannot_run", reason=str(error))
    diffs = _check(kind, run, config)
    if _within(diffs):
        _, override = override_line(config, presets)
        result = FunctionResult("match", config.to_dict(), max(diffs.values()), f"matches preset {preset}",
                                override=override, diffs=diffs)
    else:
        result = FunctionResult("differs", None, max(diffs.values()),
                                f"differs from preset {preset} (float64 {diffs['float64']:.3g}, "
                                f"float32 {diffs['float32']:.3g})",
                                diffs=diffs)
        if fit:
            result = _fitted(kind, run, config, preset, presets, result)
    result.reason += "".join(f"; {note}" for note in run.notes)
    result = _with_layer(result, run.layer)
    if result.status == "match" and repeat > 0:
        fitted = MelConfig(**result.config)  # type: ignore[arg-type]
        function = getattr(load_legacy(reference, run.layer), name)
        data = run.inputs[torch.float32]
        calls = [bind(function, kind, item, config)[0] for item in data]
        result.speed_ratio = _speed_ratio(lambda: [call(function, kw) for kw in calls],
                                          lambda: _melvoc(kind, data, fitted), repeat)
    return result


def _with_layer(result: FunctionResult, layer: Optional[LegacyApi]) -> FunctionResult:
    """``result``, its reason saying what of the torch<2 / librosa<0.10 layer the function needed."""
    if layer is not None and layer.used:
        result.reason += f"; ran through the {LEGACY_LAYER} ({layer.describe()})"
        result.legacy_fixes = layer.fixes()
    return result


def _fitted(kind: str, run: _Run, config: MelConfig, preset: str, presets: dict[str, MelConfig],
            differs: FunctionResult) -> FunctionResult:
    best: Optional[tuple[float, MelConfig, dict[str, float]]] = None
    floors = _quiet_floors(run)
    # Each fitted config with the floor the quiet probes show first: the fit sees the usual inputs only,
    # where eps may keep every value above the floor.
    trials = []
    for fitted in _fit(kind, run, config)[:12]:
        if kind != "spec" and fitted.log_base in floors:
            trials.append(fitted.replace(clip_val=floors[fitted.log_base]))
        trials.append(fitted)
    for candidate in dict.fromkeys(trials):
        diffs = _check(kind, run, candidate)
        worst = max(diffs.values())
        if _within(diffs):
            _, override = override_line(candidate, presets)
            changed = [f"{k}={getattr(candidate, k)!r}" for k in candidate.to_dict()
                       if getattr(candidate, k) != getattr(config, k)
                       and not (k == "fmax" and candidate.f_max == config.f_max)]
            what = ("the spectrogram fixes only eps and padding; the mel fields are the preset's"
                    if kind == "spec" else "")
            reason = f"reproduced with {', '.join(changed)} (not preset {preset}'s values)"
            reason += f"; {what}" if what else ""
            return FunctionResult("match", candidate.to_dict(), worst, reason, override=override, diffs=diffs)
        if best is None or worst < best[0]:
            best = (worst, candidate, diffs)
    if best is not None:
        _, override = override_line(best[1], presets)
        differs.reason += f"; no MelConfig reproduces it, closest ({best[0]:.3g}): {override}"
    else:
        differs.reason += "; no MelConfig reproduces it"
    return differs


def run_comparison(reference: str | Path, presets: Sequence[tuple[str, MelConfig]], all_presets: dict[str, MelConfig],
                   *, fit: bool = True, seed: int = 0, device: str | torch.device = "cpu",
                   repeat: int = 0) -> tuple[dict[str, FunctionResult], list[str]]:
    """Compare every function of the copy at ``reference``; returns results by name and notes."""
    reference = Path(reference).expanduser().resolve()
    device = torch.device(device)
    module, layer = import_copy(reference)
    found, skipped = discover(module)
    notes = [f"skipped {entry}" for entry in skipped]
    notes += [f"the copy has no {name}" for name in KNOWN if name not in found]
    results: dict[str, FunctionResult] = {}
    for preset, config in presets:
        for name, kind in found.items():
            key = name if len(presets) == 1 else f"{name}[{preset}]"
            if kind in ("compress", "decompress") and preset != presets[0][0]:
                continue  # no preset numbers go into them
            results[key] = compare_function(reference, name, kind, preset, config, all_presets, fit=fit,
                                            seed=seed, device=device, repeat=repeat, legacy=layer is not None)
    legacy = [name for name, r in results.items() if r.legacy_fixes]
    if legacy:
        fixes = "; ".join(dict.fromkeys(fix for r in results.values() for fix in r.legacy_fixes))
        notes.append(f"{', '.join(legacy)} ran through the {LEGACY_LAYER}, which compare gives the copy's own "
                     f"module only; to run it without: {fixes}")
    return results, notes


