"""The search behind ``identify`` and ``compare``: from audio and the mels made of it, the MelConfig that
reproduces them. With the audio the mels were made from, the search goes from the cheap, structural knobs to the
fine ones, never over every combination:

1. ``num_mels`` from the shape, the rate from the audio file;
2. ``hop_size`` and the padding family (``center``/``pad_mode``) from frames against samples: every
   integer hop and padding whose frame count fits all files;
3. ``n_fft``/``win_size`` over common values, scored with a few common filterbanks on the loud
   entries of a subset of frames (where ``eps`` and the log floor play no part);
4. for the best structures, ``fmin``/``fmax`` over common values and mel scale/norm, refined by a
   bounded 1-D search where no common value fits;
5. log base, floor and ``eps`` in closed form or by 1-D fits on the relation between the mels and the
   linear-magnitude mel of the audio: the floor from where the mels pile up, ``eps`` by a search in
   log space, both snapped to round values;
6. the winners verified with :func:`melvoc.features.mel_spectrogram` itself, in the mels' precision
   (float64 mels in float64, the others in float32, as the features that made them were computed:
   a float32 FFT's rounding is what fills the bins the audio leaves empty, e.g. between the partials
   of clean tones, and only a float32 computation reproduces it).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from melvoc.features import MelConfig, mel_spectrogram, num_frames, spec_to_mel, spectrogram
from melvoc.features.statistics import mel_array, mel_statistics, nice_value

__all__ = ["CLIP_VALUES", "Candidate", "DEFAULT_TOLERANCE", "EPS_GRID", "PADDINGS", "fit_config"]

#: Log-domain (natural-log units) max error under which a config counts as reproducing float32 mels.
DEFAULT_TOLERANCE = 1e-3

HOPS = (64, 80, 100, 110, 120, 128, 150, 160, 200, 220, 240, 256, 275, 300, 320, 360, 400, 441, 480, 512, 600,
        640, 882, 960, 1024)
N_FFTS = (256, 320, 400, 480, 512, 640, 800, 960, 1024, 1200, 1280, 1536, 1920, 2048, 2400, 2560, 3072, 4096)
FMINS = (0.0, 20.0, 30.0, 40.0, 50.0, 55.0, 60.0, 65.0, 70.0, 75.0, 80.0, 90.0, 95.0, 100.0, 125.0, 150.0)
FMAXS = (None, 6000.0, 7000.0, 7600.0, 7800.0, 8000.0, 9500.0, 10000.0, 11000.0, 11025.0, 12000.0,
         14000.0, 15000.0, 16000.0, 18000.0, 20000.0, 22050.0, 24000.0)
EPS_GRID = (0.0, 1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4)
CLIP_VALUES = (1e-5, 1e-7, 1e-10, 1e-6, 1e-8, 1e-9, 1e-4)
PADDINGS = (("reflect", False), ("zeros", False), ("none", True), ("none", False), ("reflect", True))
SCALES = (("slaney", "slaney"), ("htk", None), ("slaney", None), ("htk", "slaney"))
_LN10 = math.log(10.0)


@dataclass(frozen=True)
class _Structure:
    n_fft: int
    hop_size: int
    win_size: int
    pad_mode: str
    center: bool


@dataclass(frozen=True)
class _Bank:
    fmin: float
    fmax: Optional[float]
    mel_scale: str
    mel_norm: Optional[str]




@dataclass
class Candidate:
    """A config and how far its mels are from the given ones (max abs difference in the mels' units)."""

    config: MelConfig
    max_error: Optional[float]  # None: not measured (no audio)
    preset: Optional[str] = None
    override: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "max_error": self.max_error, "preset": self.preset,
                "override": self.override}




def _hz_to_mel(freq: np.ndarray, htk: bool) -> np.ndarray:
    if htk:
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    linear = freq / (200.0 / 3)
    logstep = math.log(6.4) / 27.0
    return np.where(freq >= 1000.0, 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) / logstep, linear)


def _mel_to_hz(mels: np.ndarray, htk: bool) -> np.ndarray:
    if htk:
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    logstep = math.log(6.4) / 27.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(logstep * (mels - 15.0)), mels * (200.0 / 3))


def _quick_filterbank(sr: int, n_fft: int, num_mels: int, bank: _Bank) -> np.ndarray:
    """librosa's mel filterbank (same formulas, float32-rounded) without its overhead: the search
    builds hundreds; the verified winners use :func:`melvoc.features.mel_filterbank` itself."""
    htk = bank.mel_scale == "htk"
    fmax = sr / 2 if bank.fmax is None else bank.fmax
    fft_freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    low, high = _hz_to_mel(np.array(bank.fmin), htk), _hz_to_mel(np.array(fmax), htk)
    edges = _mel_to_hz(np.linspace(low, high, num_mels + 2), htk)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    weights = np.maximum(0.0, np.minimum(-ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]))
    if bank.mel_norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32).astype(np.float64)


@dataclass
class _Pair:
    """One mel file with its audio: the mel in natural-log units per log base, and the audio."""

    name: str
    mel: np.ndarray  # (num_mels, F), as stored
    audio: np.ndarray  # (T,) float64
    columns: np.ndarray  # frames used by the coarse scores (edges included: pad modes differ there)


def _columns(frames: int, count: int = 48) -> np.ndarray:
    inner = np.linspace(0, frames - 1, num=min(frames, count)).round().astype(int)
    return np.unique(np.concatenate([inner, [0, 1, frames - 2, frames - 1]]).clip(0, frames - 1))


def _structures(pairs: Sequence[_Pair], fixed: Mapping[str, Any]) -> list[_Structure]:
    """Every (n_fft, hop, win, padding) whose frame counts fit all files, most common first."""
    first = pairs[0]
    samples, frames = first.audio.shape[0], first.mel.shape[1]
    if "hop_size" in fixed:
        hops = [int(fixed["hop_size"])]
    else:
        lo = max(1, math.floor(samples / (frames + 1)) - 1)
        hi = math.ceil(samples / max(frames - 2, 1)) + 1
        hops = list(range(lo, hi + 1))
    found = []
    for hop in hops:
        n_ffts = [int(fixed["n_fft"])] if "n_fft" in fixed else sorted(
            {n for n in N_FFTS if n >= hop} | {m * hop for m in (2, 4, 8) if m * hop <= 8192}
        )
        for n_fft in n_ffts:
            wins = [int(fixed["win_size"])] if "win_size" in fixed else sorted(
                {n_fft} | {w for w in (*N_FFTS, 4 * hop, 2 * hop) if hop <= w < n_fft}, key=lambda w: (w != n_fft, w)
            )
            for pad_mode, center in PADDINGS:
                if "center" in fixed and bool(fixed["center"]) != center:
                    continue
                if "pad_mode" in fixed and fixed["pad_mode"] != pad_mode:
                    continue
                for win in wins:
                    if win > n_fft:
                        continue
                    try:
                        config = MelConfig(int(fixed.get("sampling_rate", 16000)), n_fft, hop, win, 1,
                                           pad_mode=pad_mode, center=center)
                    except ValueError:
                        continue
                    fits = all(
                        p.audio.shape[0] >= max(n_fft // 2 + 1, 2)
                        and num_frames(p.audio.shape[0], config) == p.mel.shape[1]
                        for p in pairs
                    )
                    if fits:
                        found.append(_Structure(n_fft, hop, win, pad_mode, center))
    return sorted(found, key=_prior)


def _common(s: _Structure, sr: int) -> bool:
    round_hop = s.hop_size in HOPS or (1000 * s.hop_size) % sr == 0
    return round_hop and s.win_size in (s.n_fft, 4 * s.hop_size) and (
        s.n_fft & (s.n_fft - 1) == 0 or s.n_fft == 4 * s.hop_size)


def _prior(s: _Structure) -> tuple:
    """Common structures first: window = n_fft, n_fft = 4 hops, power-of-two sizes, reflect pad."""
    return (s.win_size != s.n_fft, s.n_fft != 4 * s.hop_size, s.n_fft & (s.n_fft - 1) != 0,
            PADDINGS.index((s.pad_mode, s.center)), s.n_fft)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` through torch, whose thread count the command line sets (NumPy's BLAS would start
    its own threads, which on a busy machine contend for the cores)."""
    return (torch.from_numpy(np.ascontiguousarray(a)) @ torch.from_numpy(np.ascontiguousarray(b))).numpy()


def _precision(mels: Sequence[np.ndarray | torch.Tensor]) -> torch.dtype:
    """The dtype mels like these are computed in: float64 for float64 mels, float32 for the others."""
    doubles = [m.dtype == (torch.float64 if isinstance(m, torch.Tensor) else np.float64) for m in mels]
    return torch.float64 if all(doubles) else torch.float32


def _power(audio: np.ndarray, sr: int, s: _Structure, dtype: torch.dtype) -> np.ndarray:
    """``re^2 + im^2`` of the STFT as melvoc computes it in ``dtype``, as float64 ``(n_freqs, F)``."""
    config = MelConfig(sr, s.n_fft, s.hop_size, s.win_size, 1, pad_mode=s.pad_mode, center=s.center, eps=0.0)
    return spectrogram(torch.from_numpy(audio).to(dtype), config).double().numpy() ** 2


class _Fitter:
    """The search over one set of (mel, audio) pairs at one rate."""

    def __init__(self, pairs: Sequence[_Pair], sr: int, fixed: Mapping[str, Any], tolerance: float,
                 spectra: Optional[Sequence[np.ndarray]] = None, dtype: torch.dtype = torch.float64) -> None:
        self.spectra = spectra
        self.dtype = dtype
        self.pairs = list(pairs)
        self.sr = sr
        self.num_mels = pairs[0].mel.shape[0]
        self.fixed = dict(fixed)
        self.tolerance = tolerance
        self.stats = mel_statistics([p.mel for p in pairs])
        self._magnitudes: OrderedDict[_Structure, np.ndarray] = OrderedDict()
        self._powers = OrderedDict()
        mel = np.concatenate([p.mel for p in pairs], axis=1)
        coarse = np.concatenate([p.mel[:, p.columns] for p in pairs], axis=1)
        # Within a factor e^3.5 (or 10^3.5) of the peak: there eps and the log floor play no part.
        self._loud = coarse >= max(np.quantile(mel, 0.6), mel.max() - 3.5)
        bases = ["e", "10"]
        if "log_base" in fixed:
            bases = [str(fixed["log_base"])]
        elif self.stats.log_base in bases:
            bases = [self.stats.log_base]
        self.bases = bases
        self._targets = {base: coarse[self._loud] * (1.0 if base == "e" else _LN10) for base in bases}

    def powers(self, s: _Structure) -> list[np.ndarray]:
        """``re^2 + im^2`` per file, ``(n_freqs, F)``; the last few structures are kept."""
        if self.spectra is not None:
            return self._cached(self._powers, s, lambda: [sp**2 for sp in self.spectra])
        return self._cached(self._powers, s, lambda: [_power(p.audio, self.sr, s, self.dtype) for p in self.pairs])

    def _coarse(self, s: _Structure) -> np.ndarray:
        """Magnitudes of the coarse frames of all files side by side, ``(n_freqs, C)``."""
        def build() -> np.ndarray:
            powers = self._powers[s] if s in self._powers else self.powers(s)
            return np.sqrt(np.concatenate([power[:, p.columns] for power, p in zip(powers, self.pairs)], axis=1))

        return self._cached(self._magnitudes, s, build)

    @staticmethod
    def _cached(cache: "OrderedDict[_Structure, Any]", key: _Structure, build: Any, size: int = 4) -> Any:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = cache[key] = build()
        while len(cache) > size:
            cache.popitem(last=False)
        return value

    # -------------------------------------------------------------- coarse scores (loud entries)
    def loud_error(self, s: _Structure, bank: _Bank) -> tuple[float, float, str]:
        """Max and mean error on the loud entries of the coarse frames, and the log base with the
        smaller mean (natural-log units)."""
        try:
            weights = _quick_filterbank(self.sr, s.n_fft, self.num_mels, bank)
        except (ValueError, FloatingPointError):
            return math.inf, math.inf, "e"
        with np.errstate(divide="ignore", invalid="ignore"):
            predicted = np.log(np.maximum(_matmul(weights, self._coarse(s)), 1e-30))[self._loud]
        best = (math.inf, math.inf, "e")
        for base, target in self._targets.items():
            diff = np.abs(predicted - target)
            mean = float(diff.mean())
            if mean < best[1]:
                best = (float(diff.max()), mean, base)
        return best if math.isfinite(best[1]) else (math.inf, math.inf, "e")

    def quick_score(self, s: _Structure) -> float:
        """Mean loud-entry error of structure ``s`` with the best of a few common filterbanks."""
        fmins = [self.fixed["fmin"]] if "fmin" in self.fixed else [0.0, 55.0]
        fmaxs = [self.fixed["fmax"]] if "fmax" in self.fixed else [None, 8000.0, 7600.0]
        banks = [self._with(_Bank(float(fmin), None, scale, norm), "fmax", fmax)
                 for scale, norm in self._values("scale") for fmin in fmins for fmax in fmaxs]
        return min((self.loud_error(s, bank)[1] for bank in banks if bank is not None), default=math.inf)

    def _values(self, name: str) -> list[Any]:
        """The grid of one filterbank knob (the fixed value alone when it is known)."""
        nyquist = self.sr / 2
        if name in self.fixed:
            return [self.fixed[name]]
        if name == "fmin":
            return list(FMINS)
        if name == "fmax":
            return [f for f in FMAXS if f is None or f < nyquist]
        return [pair for pair in SCALES
                if self.fixed.get("mel_scale", pair[0]) == pair[0] and self.fixed.get("mel_norm", pair[1]) == pair[1]]

    def _with(self, bank: _Bank, name: str, value: Any) -> Optional[_Bank]:
        if name == "scale":
            bank = dataclasses.replace(bank, mel_scale=value[0], mel_norm=value[1])
        else:
            bank = dataclasses.replace(bank, **{name: None if value is None else float(value)})
        top = self.sr / 2 if bank.fmax is None else bank.fmax
        return bank if bank.fmin < top else None

    def descend(self, s: _Structure, thorough: bool = True) -> tuple[float, _Bank, str, float]:
        """The filterbank of structure ``s`` by coordinate descent over fmax, fmin and scale/norm,
        from the two best scale/norm starts; fmin/fmax are refined between grid values where no
        grid value fits. The objective is the mean error over the loud entries: nearly separable
        (fmin moves the low bands, fmax the high ones), where the max is set by the worst band alone.

        ``thorough=False``: one round from the best start, no joint refinement (a first look).

        Returns (loud-entry max error, filterbank, log base, loud-entry mean error).
        """
        fmin0 = float(self.fixed.get("fmin", 0.0))
        fmax0 = self.fixed.get("fmax")
        starts = []
        for pair in self._values("scale"):
            bank = _Bank(fmin0, fmax0, pair[0], pair[1])
            starts.append((self.loud_error(s, bank)[1], bank))
        starts.sort(key=lambda item: item[0])
        best: Optional[tuple[float, _Bank, str, float]] = None
        for mean, bank in starts[: 2 if thorough else 1]:
            for _ in range(3 if thorough else 1):
                before = mean
                for name in ("fmax", "fmin", "scale"):
                    for value in self._values(name):
                        trial = self._with(bank, name, value)
                        if trial is None or trial == bank:
                            continue
                        trial_mean = self.loud_error(s, trial)[1]
                        if trial_mean < mean:
                            mean, bank = trial_mean, trial
                    needs_refining = name != "scale" and name not in self.fixed
                    if needs_refining and self.loud_error(s, bank)[0] > self.tolerance * 0.1:
                        mean, bank = self._refine(s, bank, name, mean)
                if mean >= before * 0.999:
                    break
            worst, _, base = self.loud_error(s, bank)
            if thorough and worst > self.tolerance * 0.1 and "fmin" not in self.fixed and "fmax" not in self.fixed:
                bank = self._refine_jointly(s, bank, mean)
                worst, _, base = self.loud_error(s, bank)
            if best is None or worst < best[0]:
                best = (worst, bank, base, mean)
            if worst <= self.tolerance * 0.1:
                break
        assert best is not None
        return best

    def _refine_jointly(self, s: _Structure, bank: _Bank, mean: float) -> _Bank:
        """Nelder-Mead on (fmin, fmax) together (the mel points interpolate between both), then the
        nearest grid, whole-Hz or half-Hz values where they fit as well."""
        from scipy.optimize import minimize

        nyquist = self.sr / 2

        def make(fmin: float, fmax: float) -> Optional[_Bank]:
            if not 0 <= fmin < fmax <= nyquist:
                return None
            return dataclasses.replace(bank, fmin=float(fmin), fmax=None if fmax == nyquist else float(fmax))

        def cost(x: np.ndarray) -> float:
            trial = make(float(x[0]), min(float(x[1]), nyquist))
            return math.inf if trial is None else self.loud_error(s, trial)[1]

        start = np.array([bank.fmin, nyquist if bank.fmax is None else bank.fmax])
        result = minimize(cost, start, method="Nelder-Mead",
                          options={"xatol": 1e-3, "fatol": 1e-12,
                                   "initial_simplex": [start, start + [5, 0], start + [0, 50]]})
        if not result.fun < mean:
            return bank
        fmin, fmax = float(result.x[0]), min(float(result.x[1]), nyquist)

        def options(value: float, grid: Sequence[float]) -> list[float]:
            near = sorted(grid, key=lambda g: abs(g - value))[:1]
            close = [v for v in near if abs(v - value) <= max(1.0, 0.01 * value)]
            return close + [round(value), round(value * 2) / 2, value]

        fmin_grid = list(FMINS)
        fmax_grid = [nyquist if f is None else f for f in FMAXS if f is None or f <= nyquist]
        for low in options(fmin, fmin_grid):
            for high in options(fmax, fmax_grid):
                trial = make(low, min(high, nyquist))
                if trial is not None and self.loud_error(s, trial)[1] <= result.fun * 1.5 + 1e-9:
                    return trial
        return bank

    def _refine(self, s: _Structure, bank: _Bank, name: str, mean: float) -> tuple[float, _Bank]:
        """A bounded 1-D search of fmin or fmax between the grid neighbours of its value, snapped
        to whole or half Hz when that fits as well."""
        from scipy.optimize import minimize_scalar

        nyquist = self.sr / 2
        grid = sorted({nyquist if v is None else float(v) for v in self._values(name)} | {0.0, nyquist})
        current = nyquist if (name == "fmax" and bank.fmax is None) else float(getattr(bank, name))
        lower = max([v for v in grid if v < current] or [current * 0.9])
        upper = min([v for v in grid if v > current] or [min(nyquist, current * 1.1 + 1.0)])
        if upper - lower < 1e-6:
            return mean, bank

        def cost(value: float) -> float:
            trial = self._with(bank, name, value)
            return math.inf if trial is None else self.loud_error(s, trial)[1]

        result = minimize_scalar(cost, bounds=(lower, upper), method="bounded", options={"xatol": 1e-3})
        if not result.fun < mean:
            return mean, bank
        for value in (round(result.x), round(result.x * 2) / 2, round(result.x, 2)):
            value_mean = cost(value)
            if value_mean <= result.fun * 1.5 + 1e-9:
                trial = self._with(bank, name, value)
                assert trial is not None
                return value_mean, trial
        return mean, bank

    # -------------------------------------------------------------- fine fit (all entries)
    def fine(self, s: _Structure, bank: _Bank, base: str) -> list[Candidate]:
        """Configs with the floor and eps fitted for one structure and filterbank, best first."""
        weights = _quick_filterbank(self.sr, s.n_fft, self.num_mels, bank)
        scale = 1.0 if base == "e" else _LN10
        targets = [p.mel * scale for p in self.pairs]
        powers = self.powers(s)
        linear = [_matmul(weights, np.sqrt(power)) for power in powers]

        cache: dict[float, list[np.ndarray]] = {0.0: linear}

        def mel_linear(eps: float) -> list[np.ndarray]:
            if eps not in cache:
                if len(cache) > 64:
                    cache.pop(next(key for key in cache if key != 0.0))
                cache[eps] = [_matmul(weights, np.sqrt(power + eps)) for power in powers]
            return cache[eps]

        def error(eps: float, clip: float) -> float:
            worst = 0.0
            for mel, target in zip(mel_linear(eps), targets):
                worst = max(worst, float(np.abs(np.log(np.maximum(mel, clip)) - target).max()))
            return worst / scale

        clips = self._clips(base)
        if "eps" in self.fixed:
            eps_grid = [float(self.fixed["eps"])]
        else:
            eps_grid = list(EPS_GRID)
        results: list[tuple[float, float, float]] = []
        for clip in clips:
            grid = [(error(eps, clip), eps) for eps in eps_grid]
            best_error, best_eps = min(grid)
            if "eps" not in self.fixed and best_error > self.tolerance * 1e-3:
                best_error, best_eps = self._refine_eps(lambda e: error(e, clip), best_eps, best_error)
            results.append((best_error, best_eps, clip))
            results.extend((err, eps, clip) for err, eps in grid if eps != best_eps)
        results.sort(key=lambda r: r[0])
        out = []
        seen = set()
        for err, eps, clip in results:
            key = (eps, clip)
            if key in seen:
                continue
            seen.add(key)
            try:
                config = MelConfig(self.sr, s.n_fft, s.hop_size, s.win_size, self.num_mels, fmin=bank.fmin,
                                   fmax=bank.fmax, center=s.center, eps=eps, clip_val=clip, pad_mode=s.pad_mode,
                                   log_base=base, mel_scale=bank.mel_scale, mel_norm=bank.mel_norm)
            except ValueError:
                continue
            out.append(Candidate(config, err))
        return out

    def _clips(self, base: str) -> list[float]:
        if "clip_val" in self.fixed:
            return [float(self.fixed["clip_val"])]
        clips = []
        if self.stats.floor is not None:
            raw = math.exp(self.stats.floor) if base == "e" else 10.0**self.stats.floor
            clips.append(nice_value(raw, rel=1e-5) or raw)
        return clips + [c for c in CLIP_VALUES if c not in clips]

    @staticmethod
    def _refine_eps(cost: Any, eps: float, err: float) -> tuple[float, float]:
        """Golden-section search on log10(eps) around the grid's best, then snapped to a round value."""
        from scipy.optimize import minimize_scalar

        center = -13.0 if eps == 0 else math.log10(eps)
        result = minimize_scalar(lambda x: cost(10.0**x), bounds=(center - 1.0, center + 1.0), method="bounded",
                                 options={"xatol": 1e-7})
        raw = 10.0**result.x
        for value in (nice_value(raw, rel=2e-2), nice_value(raw, rel=2e-3), raw):
            if value is None:
                continue
            value_error = cost(value)
            if value_error <= min(err, result.fun) * 1.5 + 1e-12:
                return (value_error, value) if value_error < err else (err, eps)
        return err, eps


def _verify(candidate: Candidate, pairs: Sequence[_Pair], spectra: Optional[Sequence[np.ndarray]] = None,
            dtype: torch.dtype = torch.float64) -> float:
    """Max abs difference of melvoc.features' mels with ``candidate.config`` (in the mels' units):
    :func:`~melvoc.features.mel_spectrogram` of the audio, or :func:`~melvoc.features.spec_to_mel` of
    ``spectra``, computed in ``dtype`` as the feature path computes audio of that dtype."""
    worst = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, pair in enumerate(pairs):
            if spectra is not None:
                mel = spec_to_mel(torch.from_numpy(spectra[index]).to(dtype), candidate.config).double().numpy()
            else:
                mel = mel_spectrogram(torch.from_numpy(pair.audio).to(dtype), candidate.config).double().numpy()
            if mel.shape != pair.mel.shape:
                return math.inf
            diff = np.abs(mel - pair.mel)
            both_inf = np.isinf(mel) & (mel == pair.mel)
            worst = max(worst, float(np.where(both_inf, 0.0, diff).max()))
    return worst


def fit_config(
    mels: Sequence[np.ndarray | torch.Tensor],
    audios: Sequence[np.ndarray | torch.Tensor],
    sampling_rate: int,
    *,
    fixed: Optional[Mapping[str, Any]] = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_candidates: int = 6,
    spectra: Optional[Sequence[np.ndarray]] = None,
    prefer: Sequence[MelConfig] = (),
) -> list[Candidate]:
    """MelConfigs that best reproduce ``mels`` from ``audios``, best first, errors verified by melvoc.features.

    Args:
        mels: ``(num_mels, frames)`` log-mels, one per audio; float64 mels are computed and verified in
            float64, the others in float32 (see :func:`_precision`).
        audios: ``(T,)`` float audio in [-1, 1] the mels were made from.
        sampling_rate: the audio's rate.
        fixed: MelConfig fields known beforehand (e.g. the arguments a function was called with);
            the search keeps them.
        tolerance: max abs error (mels' units) under which a config reproduces the mels.
        spectra: instead of computing them from the audio, the linear magnitudes ``(n_fft // 2 + 1,
            frames)`` the mels were made of (``spec_to_mel``: then ``fixed`` must hold ``n_fft``,
            and only the filterbank and the log are fitted).
        prefer: configs (the presets) whose ``eps`` and ``clip_val`` are verified on the best
            candidate's other fields as well, when it reproduces the mels: the mels may leave them open
            (float32 mels hide an eps below float32's resolution), and then the preset's value is the
            one to report.

    Returns:
        The verified candidates, sorted by max error: the best ``max_candidates`` and every other
        one the fit puts within twice the tolerance (empty when no structure fits the frame counts).
    """
    fixed = dict(fixed or {})
    fixed["sampling_rate"] = sampling_rate
    dtype = _precision(mels)
    pairs = []
    for index, (mel, audio) in enumerate(zip(mels, audios)):
        array = mel_array(mel, f"mel {index}")
        wave = (audio.detach().cpu().double().numpy() if isinstance(audio, torch.Tensor)
                else np.asarray(audio, np.float64)).reshape(-1)
        pairs.append(_Pair(str(index), array, wave, _columns(array.shape[1])))
    if not pairs:
        return []
    if spectra is not None:
        spectra = [np.asarray(sp, np.float64) for sp in spectra]
        fixed["eps"] = 0.0
        n_fft = int(fixed["n_fft"])
        structures = [_Structure(n_fft, int(fixed.get("hop_size", n_fft // 4)), int(fixed.get("win_size", n_fft)),
                                 "reflect", False)]
        fitter = _Fitter(pairs, sampling_rate, fixed, tolerance, spectra, dtype)
    else:
        fitter = _Fitter(pairs, sampling_rate, fixed, tolerance, dtype=dtype)
        structures = _structures(pairs, fixed)
    if not structures:
        return []
    # Common structures (window = n_fft or 4 hops, power-of-two n_fft or 4 hops) first; the rest
    # only when none of them reproduces the mels, and then the most plausible few.
    common = [s for s in structures if _common(s, sampling_rate)]
    rest = [s for s in structures if not _common(s, sampling_rate)][:24]
    scored: list[tuple[float, _Structure, _Bank, str]] = []
    for group in (common, rest):
        # Most promising first (a few common filterbanks rank the structures cheaply), each given a
        # first look; then a thorough search on the best few when no first look reproduced the mels.
        looks = []
        for s in sorted(group, key=fitter.quick_score):
            err, bank, base, mean = fitter.descend(s, thorough=False)
            looks.append((mean, err, s, bank, base))
            scored.append((err, s, bank, base))
            if err <= tolerance * 0.1:
                break
        if looks and min(item[1] for item in looks) > tolerance * 0.1:
            for _, _, s, _, _ in sorted(looks, key=lambda item: item[0])[:5]:
                err, bank, base, _ = fitter.descend(s, thorough=True)
                scored.append((err, s, bank, base))
                if err <= tolerance * 0.1:
                    break
        if scored and min(item[0] for item in scored) <= tolerance:
            break
    fine_inputs = sorted(scored, key=lambda item: item[0])
    candidates: list[Candidate] = []
    for _, s, bank, base in fine_inputs[:3]:
        candidates.extend(fitter.fine(s, bank, base))
    candidates.sort(key=lambda c: c.max_error)
    # Verify the best few and every other config the fit puts near the tolerance.
    chosen = candidates[:max_candidates] + [c for c in candidates[max_candidates:] if c.max_error <= 2 * tolerance]
    verified = [Candidate(c.config, _verify(c, pairs, spectra, dtype)) for c in chosen[: 4 * max_candidates]]
    verified.sort(key=lambda c: c.max_error)
    if verified and verified[0].max_error <= tolerance:
        best = verified[0].config
        known = {c.config for c in verified}
        variants = dict.fromkeys(best.replace(**values) for p in prefer for values in (
            {"eps": p.eps}, {"clip_val": p.clip_val}, {"eps": p.eps, "clip_val": p.clip_val}))
        verified += [Candidate(v, _verify(Candidate(v, None), pairs, spectra, dtype))
                     for v in variants if v not in known]
        verified.sort(key=lambda c: c.max_error)
    unique: list[Candidate] = []
    for candidate in verified:
        if all(candidate.config != other.config for other in unique):
            unique.append(candidate)
    return unique


