"""Synthesis with a trained generator: :func:`synthesize` (the command: ``python -m melvoc.synthesize``).

Inputs are audio files (copy-synthesis: audio -> log-mel with the checkpoint's own features -> audio)
or mel files (``.npy`` / ``.pt`` of shape ``(num_mels, frames)``, e.g. from an acoustic model), or
folders of them. Each becomes ``<output-dir>/<stem>.wav`` at the features' sample rate.

    python -m melvoc.synthesize --checkpoint generator.pt clips/*.wav --output-dir out/
    python -m melvoc.synthesize --checkpoint logs/train/runs/<run>/checkpoints/last.ckpt mels/ --device cuda

The feature config travels in the checkpoint, so the mels are always computed (and mel files always
checked) with the parameters the generator was trained on. Audio is read as the training data
module reads validation clips (mono, resampled to the features' rate with soxr, trimmed to a whole
number of hops), and its mel is computed clip by clip, so copy-synthesis of a validation clip gives
exactly the validation audio of training.

Batching (``--batch-size N``, default 1): files are sorted by length and taken N at a time; the mels
of a batch are padded to the longest with the log-mel of silence and each output is trimmed to its
own ``frames * hop_size`` samples. The generator sees the padding within its receptive field, so the
last few frames of the shorter files of a batch differ slightly from their unbatched synthesis;
batches pay off on a GPU with many short files. With the default of 1 every output depends on its
input alone.

Streaming (``--chunk-frames N``): each mel is vocoded N frames at a time by
:class:`melvoc.deploy.streaming.StreamingVocoder`, which gives each chunk the context the generator's
receptive field needs; the audio equals the default synthesis to float rounding, and the look-ahead
and time per chunk are logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from tqdm.auto import tqdm

from melvoc.data.dataset import read_mel_tensor, silence_log_mel
from melvoc.data.io import (
    AUDIO_EXTENSIONS,
    AudioDataError,
    AudioInfo,
    audio_info,
    problem_listing,
    read_audio,
    resampled_length,
)
from melvoc.features import MelConfig, MelSpectrogram, min_audio_length
from melvoc.features.mel_files import MEL_FILE_SUFFIXES
from melvoc.features.statistics import check_mel_statistics
from melvoc.deploy.inference import load_generator, parse_device
from melvoc.deploy.streaming import StreamingVocoder

__all__ = [
    "MEL_EXTENSIONS",
    "SUBTYPES",
    "SynthesisError",
    "SynthesisInput",
    "collect_inputs",
    "load_mel_file",
    "resolve_device",
    "synthesize",
]

log = logging.getLogger(__name__)

#: Suffixes read as precomputed log-mels rather than audio.
MEL_EXTENSIONS = MEL_FILE_SUFFIXES
#: WAV sample encodings ``--subtype`` accepts.
SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
_MAX_LISTED = 10


class SynthesisError(ValueError):
    """Inputs that cannot be synthesized; the message names every such file and the fix."""


@dataclass
class SynthesisInput:
    """One input file, checked and measured before any synthesis.

    Attributes:
        path: the file.
        kind: ``"audio"`` or ``"mel"``.
        frames: mel frames it gives (audio: ``samples // hop_size`` at the features' rate).
        output: the WAV it becomes.
        info: the audio header (audio inputs only).
        mel: the mel file's ``(num_mels, frames)`` float32 values (mel inputs only): each mel file is
            read once, checked on this array and vocoded from it.
    """

    path: Path
    kind: str
    frames: int
    output: Path
    info: Optional[AudioInfo] = None
    mel: Optional[Tensor] = None


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def _is_input(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in MEL_EXTENSIONS or suffix in AUDIO_EXTENSIONS


def _expand(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Files of ``paths`` (folders searched recursively) and the problems met: missing paths, empty folders."""
    files: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_input(p))
            if not found:
                problems.append(
                    f"{path}: folder without audio ({' '.join(AUDIO_EXTENSIONS)}) or mel "
                    f"({' '.join(MEL_EXTENSIONS)}) files"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{path}: file not found")
    return files, problems


def _check_mel_shape(path: Path, shape: tuple[int, ...], num_mels: int) -> int:
    """Frames of a ``(num_mels, frames)`` or ``(1, num_mels, frames)`` mel; errors name file and both numbers."""
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise AudioDataError(
            f"{path}: mel of shape {shape}, expected (num_mels, frames) = ({num_mels}, frames)", path
        )
    bins, frames = shape
    if bins != num_mels:
        if frames == num_mels:
            fix = f"it looks transposed: save it as (num_mels, frames) = ({num_mels}, {bins})"
        else:
            fix = "the mel was made with other features than this vocoder was trained on"
        raise AudioDataError(
            f"{path}: {bins} mel bins, but the checkpoint's features have num_mels={num_mels}; {fix}", path
        )
    if frames < 1:
        raise AudioDataError(f"{path}: empty mel (0 frames)", path)
    return int(frames)


def load_mel_file(path: str | os.PathLike, config: MelConfig) -> Tensor:
    """A log-mel file (``.npy`` / ``.pt``) as float32 ``(num_mels, frames)``, checked against ``config``.

    Raises:
        AudioDataError: unreadable, wrong shape or number of bins (naming both numbers), or NaN/inf.
    """
    path = Path(path)
    mel = read_mel_tensor(path)
    _check_mel_shape(path, tuple(mel.shape), config.num_mels)
    mel = mel.reshape(mel.shape[-2], mel.shape[-1])
    if not torch.isfinite(mel).all():
        raise AudioDataError(f"{path}: NaN/inf values in the mel; regenerate it", path)
    return mel


def collect_inputs(
    paths: Sequence[str | os.PathLike],
    config: MelConfig,
    output_dir: str | os.PathLike,
    *,
    resample: bool = True,
) -> list[SynthesisInput]:
    """Expand folders, check every input against ``config`` and plan its output file.

    Every problem is collected first and raised together, before any synthesis starts. Mel files are
    read here, once: the inputs hold their arrays (about 37 KB per second of audio at 24 kHz and
    100 bands) until they are vocoded.

    Raises:
        SynthesisError: missing, unreadable, too short or wrong-rate (with ``resample=False``) audio,
            mel files with the wrong number of bins, or two inputs that would write the same WAV.
    """
    output_dir = Path(output_dir).expanduser()
    hop = config.hop_size
    shortest = max(hop, min_audio_length(config))
    if not paths:
        raise SynthesisError("no inputs: give audio files, mel files (.npy/.pt) or folders of them")
    files, problems = _expand(paths)
    items: list[SynthesisInput] = []
    for path in files:
        output = output_dir / f"{path.stem}.wav"
        try:
            if path.suffix.lower() in MEL_EXTENSIONS:
                mel = load_mel_file(path, config)
                items.append(SynthesisInput(path, "mel", mel.shape[-1], output, mel=mel))
                continue
            info = audio_info(path)
            if info.sampling_rate != config.sampling_rate and not resample:
                raise AudioDataError(
                    f"{path}: {info.sampling_rate} Hz, the checkpoint's features are at "
                    f"{config.sampling_rate} Hz (drop --no-resample to resample it)",
                    path,
                )
            samples = resampled_length(info.frames, info.sampling_rate, config.sampling_rate)
            if samples < shortest:
                raise AudioDataError(
                    f"{path}: {samples} samples at {config.sampling_rate} Hz, shorter than the "
                    f"{shortest} one mel frame needs",
                    path,
                )
            items.append(SynthesisInput(path, "audio", samples // hop, output, info))
        except AudioDataError as exc:
            problems.append(str(exc))
    if problems:
        raise SynthesisError(
            problem_listing(f"{len(problems)} input(s) cannot be synthesized", problems,
                    "fix them or leave them out; nothing was written", _MAX_LISTED)
        )

    by_output: dict[Path, list[Path]] = {}
    for item in items:
        by_output.setdefault(item.output.resolve(), []).append(item.path)
        if item.output.resolve() == item.path.resolve():
            raise SynthesisError(f"{item.path}: the output would overwrite this input; choose another --output-dir")
    clashes = [f"{out}: {', '.join(map(str, srcs))}" for out, srcs in by_output.items() if len(srcs) > 1]
    if clashes:
        raise SynthesisError(
            problem_listing(f"{len(clashes)} output file(s) would be written by several inputs", clashes,
                    "inputs with the same stem need separate runs (or --output-dir per folder)", _MAX_LISTED)
        )
    return items


# --------------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(device)`` (checked)."""
    try:
        return parse_device(device)
    except ValueError as exc:
        raise SynthesisError(str(exc)) from exc


def _batches(items: list[SynthesisInput], batch_size: int) -> Iterator[list[SynthesisInput]]:
    # Longest first and similar lengths together: little padding, and memory peaks at the first batch.
    ordered = sorted(items, key=lambda item: (-item.frames, str(item.path)))
    for start in range(0, len(ordered), batch_size):
        yield ordered[start : start + batch_size]


def _input_mel(item: SynthesisInput, config: MelConfig, mel_fn: MelSpectrogram, device: torch.device,
               resample: bool, peak_normalize: Optional[float]) -> Tensor:
    """``(num_mels, frames)`` float32 on ``device``."""
    if item.mel is not None:
        return item.mel.to(device)
    assert item.info is not None
    audio = read_audio(item.info, config.sampling_rate, resample=resample)
    if peak_normalize is not None:
        # The data module's data.peak_normalize: the whole file's peak, then clipped to [-1, 1].
        peak = float(np.abs(audio).max()) if audio.size else 0.0
        audio = np.clip(audio * np.float32(peak_normalize / max(peak, 1e-8)), -1.0, 1.0)
    samples = min(audio.shape[0], item.frames * config.hop_size) // config.hop_size * config.hop_size
    # As the data module: a (1, T) batch of a whole number of hops, mel trimmed to T // hop frames.
    batch = torch.from_numpy(np.ascontiguousarray(audio[:samples])).to(device).unsqueeze(0)
    return mel_fn(batch)[0, :, : samples // config.hop_size]


def synthesize(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike = "synthesized",
    *,
    batch_size: int = 1,
    device: str = "auto",
    subtype: str = "PCM_16",
    resample: bool = True,
    peak_normalize: Optional[float] = None,
    progress: Optional[bool] = None,
    chunk_frames: Optional[int] = None,
    check_mels: bool = True,
) -> list[Path]:
    """Vocode ``inputs`` (audio or mel files, or folders) with the generator in ``checkpoint``.

    Args:
        checkpoint: exported generator or full training checkpoint.
        inputs: audio files (copy-synthesis), ``.npy`` / ``.pt`` mels ``(num_mels, frames)``, folders.
        output_dir: where ``<stem>.wav`` files go (created).
        batch_size: mels per generator call, similar lengths together; mels of a batch are padded to
            the longest with the log-mel of silence and each output is trimmed to its
            ``frames * hop_size`` samples (see the module docstring for what padding changes).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        subtype: WAV encoding, one of :data:`SUBTYPES`.
        resample: resample audio inputs at another rate to the features' rate (else an error).
        peak_normalize: scale each audio input to this peak first, as ``data.peak_normalize`` did
            in training (HiFi-GAN recipes: 0.95), or ``None``.
        progress: show a tqdm bar (``None``: only on a terminal).
        chunk_frames: stream each mel through :class:`~melvoc.deploy.streaming.StreamingVocoder` this many
            frames at a time (same audio to float rounding), or ``None`` for one call per batch.
        check_mels: stop on mel files whose floor, range or log base contradict the checkpoint's
            features (:func:`melvoc.features.statistics.check_mel_statistics`); ``False`` goes on anyway.

    Returns:
        The written WAV files, in the order of ``inputs``.

    Raises:
        FileNotFoundError, CheckpointError: the checkpoint is missing or not a melvoc checkpoint.
        SynthesisError: bad inputs (all listed at once, before anything is written) or arguments.
        MelMismatchError: mel files made with other features (see ``check_mels``).
    """
    if batch_size < 1:
        raise SynthesisError(f"--batch-size {batch_size}: must be >= 1")
    if peak_normalize is not None and not 0 < peak_normalize <= 1:
        raise SynthesisError(f"--peak-normalize {peak_normalize}: must be in (0, 1]")
    if chunk_frames is not None and chunk_frames < 1:
        raise SynthesisError(f"--chunk-frames {chunk_frames}: the chunk size must be >= 1 mel frame")
    if subtype not in SUBTYPES:
        raise SynthesisError(f"--subtype {subtype!r}: must be one of {', '.join(SUBTYPES)}")
    torch_device = resolve_device(device)
    generator = load_generator(checkpoint, map_location=torch_device)
    config: MelConfig = generator.config
    items = collect_inputs(inputs, config, output_dir, resample=resample)
    if check_mels:
        for item in items:
            if item.mel is not None:
                check_mel_statistics(item.mel, config, name=f"{item.path}: these mels",
                                     fix="pass --skip-mel-check to synthesize them anyway")
    Path(output_dir).expanduser().mkdir(parents=True, exist_ok=True)
    mel_fn = MelSpectrogram(config).to(torch_device)
    pad_value = silence_log_mel(config)
    hop = config.hop_size
    log.info("synthesizing %d file(s) on %s into %s", len(items), torch_device, output_dir)
    stream = None if chunk_frames is None else StreamingVocoder(generator)

    # disable=None: tqdm shows the bar only on a terminal.
    disable = None if progress is None else not progress
    bar = tqdm(total=len(items), unit="file", desc="synthesize", disable=disable)
    try:
        with torch.inference_mode():
            for batch in _batches(items, batch_size):
                mels = [_input_mel(item, config, mel_fn, torch_device, resample, peak_normalize) for item in batch]
                longest = max(m.shape[-1] for m in mels)
                stacked = torch.full((len(mels), config.num_mels, longest), pad_value, device=torch_device)
                for row, mel in zip(stacked, mels):
                    row[:, : mel.shape[-1]] = mel
                if stream is None:
                    audio = generator(stacked).squeeze(1).float().cpu().numpy()
                else:
                    audio = stream.vocode(stacked, chunk_frames).float().cpu().numpy()
                for item, mel, row in zip(batch, mels, audio):
                    sf.write(item.output, row[: mel.shape[-1] * hop], config.sampling_rate, subtype=subtype)
                    bar.update(1)
    finally:
        bar.close()
    if stream is not None:
        stats = stream.stats
        log.info(
            "streaming: chunks of %d frames, look-ahead %d frames (%.1f ms), %d chunks, %.1f ms per chunk "
            "(max %.1f ms)", chunk_frames, stats.lookahead_frames, 1e3 * (stats.lookahead_seconds or 0.0),
            stats.chunks, 1e3 * stats.mean_chunk_seconds, 1e3 * stats.max_chunk_seconds,
        )
    return [item.output for item in items]
