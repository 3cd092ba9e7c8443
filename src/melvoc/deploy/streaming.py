"""Streaming synthesis: vocode mel chunks as they arrive, the same audio as one whole-utterance call.

The audio of mel frame ``t`` (samples ``t * hop ... (t + 1) * hop - 1``) depends on mel frames
``t - left ... t + right``: the generator's receptive field. :class:`StreamingVocoder` emits frame ``t``
once frame ``t + right`` has arrived (``right`` is its look-ahead), and runs the generator on the new
frames plus ``left`` frames of past context and the ``right`` frames of look-ahead; layers pad
(zeros, or replicate) at the edges of that window, and the field is exactly the set of inputs whose values reach
the emitted samples, so the emitted samples never see those edges. At the true start and end of the
utterance the window edge IS the utterance edge, padded as in a whole-utterance call.

The field is computed from the architecture, not measured: :func:`receptive_field` describes the
generator as a chain of spans (:class:`Conv`, :class:`ConvTranspose`, :class:`Series`,
:class:`Parallel`), reading kernel, stride, dilation and padding from its layers, and walks the
audio of one frame back through it to the mel frames it reads. HiFi-GAN, BigVGAN (its anti-aliased
activations: 2x zero-stuffing transposed conv and 2x strided low-pass, 12 taps each) and Vocos
(embedding and depthwise ConvNeXt convs; the ISTFT's overlap-add as a transposed conv of ``n_fft``
taps and stride ``hop``) are described here. Another family supplies its description in one of two
ways:

* a method on the generator class, ``receptive_field_layers(self) -> Span``, or
* ``@register_family("ClassName")`` on a function ``(generator) -> Span``.

The window edges stay harmless only if a position outside the window also reads some input outside
it, which holds for layers centred on their own position: "same"-padded convolutions, transposed
convolutions with padding ``(kernel - stride) / 2``, centred resamplers and ISTFTs; the tests check
chunked == whole for every family.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn

__all__ = [
    "Conv",
    "ConvTranspose",
    "MelInputError",
    "Parallel",
    "ReceptiveField",
    "ReceptiveFieldError",
    "Series",
    "Span",
    "StreamingStats",
    "StreamingVocoder",
    "check_mel",
    "conv_span",
    "receptive_field",
    "register_family",
]


class MelInputError(ValueError):
    """A mel a vocoder cannot take (wrong bins, no frames, NaN/inf, bad chunk size); the message says the fix."""


class ReceptiveFieldError(TypeError):
    """A generator whose receptive field melvoc cannot compute; the message says how to provide it."""


def check_mel(mel: Tensor, num_mels: int, *, name: str = "mel", dims: tuple[int, ...] = (2, 3)) -> None:
    """Raise :class:`MelInputError` unless ``mel`` is a finite ``(num_mels, F)``/``(B, num_mels, F)`` with F >= 1.

    Reads a value back to the host (the NaN check); meant for inference entry points, not training.
    """
    shapes = " or ".join(("(num_mels, frames)", "(batch, num_mels, frames)")[d - 2] for d in dims)
    if mel.ndim not in dims:
        raise MelInputError(f"{name}: shape {tuple(mel.shape)}, expected {shapes} with num_mels={num_mels}")
    bins, frames = mel.shape[-2], mel.shape[-1]
    if bins != num_mels:
        fix = (
            f"it looks transposed: pass (..., {num_mels}, {bins})" if frames == num_mels
            else "the mel was made with other features than this vocoder was trained on"
        )
        raise MelInputError(f"{name}: {bins} mel bins, the vocoder takes num_mels={num_mels}; {fix}")
    if frames < 1:
        raise MelInputError(f"{name}: zero frames (shape {tuple(mel.shape)}); give at least one mel frame")
    if mel.is_floating_point() and not bool(torch.isfinite(mel).all()):
        bad = int((~torch.isfinite(mel)).sum())
        raise MelInputError(f"{name}: {bad} NaN/inf value(s) in the mel; fix the acoustic model or the mel file")


# --------------------------------------------------------------------------------------------------
# Receptive field, from the architecture
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    """``nn.Conv1d``: output ``j`` reads inputs ``j * stride - padding + dilation * m``, ``m < kernel``.

    ``padding`` is the LEFT padding only (the right one changes the length, not what an output reads);
    a negative value is a crop of the input's start.
    """

    kernel: int
    stride: int = 1
    dilation: int = 1
    padding: int = 0

    def inputs(self, first: int, last: int) -> tuple[int, int]:
        """Input positions ``[first', last']`` outputs ``[first, last]`` read."""
        return (first * self.stride - self.padding,
                last * self.stride - self.padding + self.dilation * (self.kernel - 1))


@dataclass(frozen=True)
class ConvTranspose:
    """``nn.ConvTranspose1d`` (dilation 1): input ``i`` writes outputs ``i * stride - padding + m``, ``m < kernel``."""

    kernel: int
    stride: int
    padding: int = 0

    def inputs(self, first: int, last: int) -> tuple[int, int]:
        """Input positions ``[first', last']`` outputs ``[first, last]`` read."""
        return (-((self.kernel - 1 - first - self.padding) // self.stride),  # ceil division
                (last + self.padding) // self.stride)


@dataclass(frozen=True)
class Series:
    """Spans applied one after the other (``layers[0]`` first); ``Series(())`` is the identity."""

    layers: tuple["Span", ...] = ()

    def inputs(self, first: int, last: int) -> tuple[int, int]:
        """Input positions ``[first', last']`` outputs ``[first, last]`` read."""
        for layer in reversed(self.layers):
            first, last = layer.inputs(first, last)
        return first, last


@dataclass(frozen=True)
class Parallel:
    """Branches on the same input whose outputs are combined (sum, mean); a residual is ``Parallel((Series(), f))``."""

    branches: tuple["Span", ...]

    def inputs(self, first: int, last: int) -> tuple[int, int]:
        """Input positions ``[first', last']`` outputs ``[first, last]`` read."""
        spans = [branch.inputs(first, last) for branch in self.branches]
        return min(s[0] for s in spans), max(s[1] for s in spans)


Span = Union[Conv, ConvTranspose, Series, Parallel]


def conv_span(module: nn.Module) -> Span:
    """The span of an ``nn.Conv1d`` or ``nn.ConvTranspose1d`` (weight-normalised or not), read from its settings."""
    if isinstance(module, nn.ConvTranspose1d):
        if module.dilation[0] != 1:
            raise ReceptiveFieldError(f"{module}: transposed convolutions with dilation are not described")
        return ConvTranspose(module.kernel_size[0], module.stride[0], module.padding[0])
    if isinstance(module, nn.Conv1d):
        kernel, dilation = module.kernel_size[0], module.dilation[0]
        if isinstance(module.padding, str):  # "same" pads the odd sample on the right, "valid" not at all
            padding = dilation * (kernel - 1) // 2 if module.padding == "same" else 0
        else:
            padding = module.padding[0]
        return Conv(kernel, module.stride[0], dilation, padding)
    raise ReceptiveFieldError(f"{type(module).__name__}: not a Conv1d or ConvTranspose1d")


@dataclass(frozen=True)
class ReceptiveField:
    """Mel frames the audio of one frame depends on: frames ``t - left ... t + right`` for frame ``t``.

    Attributes:
        left: past frames of context.
        right: future frames (the look-ahead a stream waits for before emitting a frame).
        hop_size: output samples per frame.
    """

    left: int
    right: int
    hop_size: int

    @property
    def frames(self) -> int:
        """Frames in the field, the frame itself included."""
        return self.left + 1 + self.right


_FAMILIES: dict[str, Callable[[nn.Module], Span]] = {}


def register_family(class_name: str) -> Callable[[Callable[[nn.Module], Span]], Callable[[nn.Module], Span]]:
    """Register a function ``(generator) -> Span`` describing the generators of class ``class_name``."""

    def register(describe: Callable[[nn.Module], Span]) -> Callable[[nn.Module], Span]:
        _FAMILIES[class_name] = describe
        return describe

    return register


def _anti_aliased(activation: nn.Module) -> Span:
    """BigVGAN's AntiAliasedActivation: replicate pad, zero-stuffing transposed conv, crop; pad, strided low-pass.

    The pads and crops are those of ``AntiAliasedActivation.upsample``/``downsample`` (melvoc.models.activations).
    """
    k, r = activation.kernel_size, activation.ratio
    pad = k // r - 1
    up = Series((Conv(1, padding=pad), ConvTranspose(k, r), Conv(1, padding=-(pad * r + (k - r) // 2))))
    return Series((up, Conv(k, stride=r, padding=k // 2 - 1)))


def _activation_span(activations: Optional[nn.ModuleList], index: int) -> Span:
    # HiFi-GAN's leaky ReLUs are pointwise (the identity span); BigVGAN's resample around the activation.
    return Series() if activations is None else _anti_aliased(activations[index])


@register_family("BigVGANGenerator")
@register_family("HiFiGANGenerator")
@register_family("Generator")
def _hifigan_layout(generator: nn.Module) -> Span:
    """HiFi-GAN and BigVGAN: conv_pre; per stage, a transposed conv then the mean of parallel residual blocks;
    (BigVGAN: an activation) conv_post.

    A type-1 block step is ``x + conv2(act(conv_d(act(x))))``, a type-2 step ``x + conv_d(act(x))``.
    """

    def block(module: nn.Module) -> Span:
        if hasattr(module, "convs1"):
            acts1, acts2 = getattr(module, "acts1", None), getattr(module, "acts2", None)
            steps = [
                Series((_activation_span(acts1, i), conv_span(c1), _activation_span(acts2, i), conv_span(c2)))
                for i, (c1, c2) in enumerate(zip(module.convs1, module.convs2))
            ]
        else:
            acts = getattr(module, "acts", None)
            steps = [Series((_activation_span(acts, i), conv_span(c))) for i, c in enumerate(module.convs)]
        return Series(tuple(Parallel((Series(), step)) for step in steps))

    per_stage = generator.num_kernels
    layers: list[Span] = [conv_span(generator.conv_pre)]
    for i, up in enumerate(generator.ups):
        layers.append(conv_span(up))
        blocks = generator.resblocks[i * per_stage : (i + 1) * per_stage]
        layers.append(Parallel(tuple(block(b) for b in blocks)))
    if hasattr(generator, "activation_post"):
        layers.append(_anti_aliased(generator.activation_post))
    layers.append(conv_span(generator.conv_post))
    return Series(tuple(layers))


@register_family("VocosGenerator")
def _vocos(generator: nn.Module) -> Span:
    """Vocos: the embedding conv and one depthwise conv per ConvNeXt block (the rest is per frame), then the
    ISTFT, whose overlap-add is a transposed conv of ``n_fft`` taps, stride ``hop`` and the head's padding."""
    istft = generator.head.istft
    backbone = generator.backbone
    convs = [conv_span(backbone.embed), *(conv_span(block.dwconv) for block in backbone.convnext)]
    return Series((*convs, ConvTranspose(istft.n_fft, istft.hop_length, istft.pad)))


def receptive_field(generator: nn.Module) -> ReceptiveField:
    """The mel frames the audio of one frame depends on, computed from ``generator``'s layers.

    The span description comes from ``generator.receptive_field_layers()`` if the class defines it, else
    from the function registered for its class name (:func:`register_family`).

    Raises:
        ReceptiveFieldError: the generator's family describes no receptive field.
    """
    describe = getattr(generator, "receptive_field_layers", None)
    if describe is None:
        family = _FAMILIES.get(type(generator).__name__)
        if family is None:
            raise ReceptiveFieldError(
                f"{type(generator).__name__}: no receptive field description for streaming; give the class a "
                "method receptive_field_layers() returning a melvoc.deploy.streaming span (Conv, ConvTranspose, "
                f"Series, Parallel) or register one with @melvoc.deploy.streaming.register_family (known: {sorted(_FAMILIES)})"
            )
        span = family(generator)
    else:
        span = describe()
    hop = int(generator.hop_size)
    # The audio of frame 0 is samples 0 .. hop - 1; by shift-equivariance every frame has the same field.
    first, last = span.inputs(0, hop - 1)
    return ReceptiveField(left=max(0, -first), right=max(0, last), hop_size=hop)


# --------------------------------------------------------------------------------------------------
# The stream
# --------------------------------------------------------------------------------------------------


@dataclass
class StreamingStats:
    """Latency of a stream: frames in and out, and the wall time of its generator calls.

    Attributes:
        lookahead_frames: frames a stream waits for before it can emit a frame (the field's ``right``).
        lookahead_seconds: the same in seconds (``None`` without a feature config).
        chunks: calls of ``push``/``flush`` that ran the generator.
        frames_in: mel frames pushed.
        frames_out: frames whose audio was emitted.
        seconds: total wall time of those calls.
        max_chunk_seconds: the slowest call.
    """

    lookahead_frames: int
    lookahead_seconds: Optional[float]
    chunks: int = 0
    frames_in: int = 0
    frames_out: int = 0
    seconds: float = 0.0
    max_chunk_seconds: float = 0.0

    @property
    def mean_chunk_seconds(self) -> float:
        """Mean wall time per chunk (0 before the first)."""
        return self.seconds / self.chunks if self.chunks else 0.0


class StreamingVocoder:
    """Vocode an utterance chunk by chunk, equal to one whole-utterance ``generator(mel)`` call (to float rounding).

    Args:
        generator: any :class:`~melvoc.models.base.VocoderGenerator` whose receptive field is known
            (see :func:`receptive_field`); used as is (eval mode and weight norm are the caller's).
        check_input: check every chunk's bins, frame count and values (a host read per chunk).

    ``push((num_mels, F) or (B, num_mels, F))`` returns the audio that became final, ``(n * hop,)`` or
    ``(B, n * hop)``, possibly empty; ``flush()`` returns the rest and ends the utterance (the next
    ``push`` starts a new one). :attr:`stats` reports look-ahead and time per chunk.

    Example::

        stream = StreamingVocoder(melvoc.load_generator("generator.pt"))
        for chunk in acoustic_model_chunks:          # (num_mels, F)
            play(stream.push(chunk))
        play(stream.flush())
    """

    def __init__(self, generator: nn.Module, *, check_input: bool = True) -> None:
        self.generator = generator
        self.field = receptive_field(generator)
        self.num_mels = int(generator.num_mels)
        self.hop_size = self.field.hop_size
        self.check_input = check_input
        config = getattr(generator, "config", None)
        seconds = None if config is None else self.field.right * self.hop_size / config.sampling_rate
        self.stats = StreamingStats(lookahead_frames=self.field.right, lookahead_seconds=seconds)
        self._start()

    @property
    def lookahead_frames(self) -> int:
        """Frames after frame ``t`` that must have arrived before the audio of ``t`` is emitted."""
        return self.field.right

    def _start(self) -> None:
        self._buffer: Optional[Tensor] = None  # (B, num_mels, frames) from frame self._buffer_start on
        self._buffer_start = 0
        self._frames_in = 0
        self._frames_out = 0
        self._batched: Optional[bool] = None

    def reset(self) -> None:
        """Drop the current utterance and the statistics."""
        self._start()
        self.stats = StreamingStats(self.stats.lookahead_frames, self.stats.lookahead_seconds)

    def push(self, mel_chunk: Tensor) -> Tensor:
        """Add ``(num_mels, F)`` or ``(B, num_mels, F)`` frames; return the audio of the frames now final."""
        if self.check_input:
            check_mel(mel_chunk, self.num_mels, name="mel chunk")
        batched = mel_chunk.ndim == 3
        chunk = mel_chunk if batched else mel_chunk.unsqueeze(0)
        if self._buffer is None:
            self._batched = batched
            self._buffer = chunk
        else:
            if batched != self._batched or chunk.shape[0] != self._buffer.shape[0]:
                raise MelInputError(
                    f"mel chunk: shape {tuple(mel_chunk.shape)}, but this utterance's chunks had batch shape "
                    f"{tuple(self._buffer.shape[:1]) if self._batched else '()'}; flush() before a new shape"
                )
            self._buffer = torch.cat((self._buffer, chunk.to(self._buffer)), dim=-1)
        self._frames_in += chunk.shape[-1]
        self.stats.frames_in += chunk.shape[-1]
        return self._emit(self._frames_in - self.field.right)

    def flush(self) -> Tensor:
        """Return the audio of the frames not emitted yet (the utterance end pads as a whole call does) and end it.

        Raises:
            MelInputError: no frame was pushed (zero frames).
        """
        if self._buffer is None:
            raise MelInputError("flush(): zero frames were pushed; push at least one mel frame first")
        audio = self._emit(self._frames_in)
        self._start()
        return audio

    def vocode(self, mel: Tensor, chunk_frames: int) -> Tensor:
        """Stream a whole ``(num_mels, F)``/``(B, num_mels, F)`` mel in chunks of ``chunk_frames``; ``(..., F * hop)``.

        Raises:
            MelInputError: ``chunk_frames`` below 1, or a bad mel.
        """
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise MelInputError(f"chunk size {chunk_frames!r}: must be an integer >= 1 mel frame")
        if self.check_input:
            check_mel(mel, self.num_mels)
        self._start()
        pieces = [self.push(mel[..., start : start + chunk_frames]) for start in range(0, mel.shape[-1], chunk_frames)]
        pieces.append(self.flush())
        return torch.cat(pieces, dim=-1)

    def _emit(self, end: int) -> Tensor:
        """Audio of frames ``[frames_out, end)``; the window runs to the last frame in (``end + right`` at most)."""
        assert self._buffer is not None
        begin = self._frames_out
        if end <= begin:
            empty = self._buffer.new_zeros(self._buffer.shape[0], 0)
            return empty if self._batched else empty[0]
        left = max(0, begin - self.field.left)
        right = min(self._frames_in, end + self.field.right)
        window = self._buffer[..., left - self._buffer_start : right - self._buffer_start]
        started = time.perf_counter()
        with torch.inference_mode():
            audio = self.generator(window)[:, 0, (begin - left) * self.hop_size : (end - left) * self.hop_size]
        if audio.device.type == "cuda":
            # The call returns before the GPU finishes; the per-chunk time should be the compute time.
            torch.cuda.synchronize(audio.device)
        elapsed = time.perf_counter() - started
        self.stats.chunks += 1
        self.stats.seconds += elapsed
        self.stats.max_chunk_seconds = max(self.stats.max_chunk_seconds, elapsed)
        self.stats.frames_out += end - begin
        self._frames_out = end
        # Keep only the past context the next window needs.
        keep = max(0, end - self.field.left)
        self._buffer = self._buffer[..., keep - self._buffer_start :]
        self._buffer_start = keep
        return audio if self._batched else audio[0]

