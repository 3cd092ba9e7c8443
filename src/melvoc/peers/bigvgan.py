"""NVIDIA/BigVGAN checkpoints: a folder of ``config.json`` and ``bigvgan_generator.pt`` (``{"generator": state}``).

Accepted paths: such a folder (the Hugging Face layout), its ``bigvgan_generator.pt``, or a training
folder / ``g_XXXXXXXX`` file whose ``config.json`` names an ``activation``. Discriminators come from
``bigvgan_discriminator_optimizer.pt`` (or the ``do_`` file of the step) when it is beside:
``{"mpd", "mrd", "optim_g", "optim_d", "steps", "epoch"}``, where ``"mrd"`` holds whichever second
discriminator the config chose (``use_cqtd_instead_of_mrd`` -> CQT-D, ``use_mbd_instead_of_mrd`` ->
MBD, else MRD). The optimiser states are not mapped (they index parameters in the peer's order).

Key mapping besides the weight/spectral norm of :mod:`melvoc.peers.hifigan`: ``ups.{i}.0.*`` ->
``ups.{i}.*``; an AMP block's interleaved ``activations.{n}`` -> ``acts1.{n // 2}`` / ``acts2.{n // 2}``
(type 1) or ``acts.{n}`` (type 2). Constant buffers the peer saves (anti-aliasing filters, nnAudio's
CQT kernels and low-pass, torchaudio's resampling kernel and windows) are recomputed by melvoc; the
filters and kernels are compared with the saved ones first, so a checkpoint made with other settings
fails loudly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from melvoc.models.activations import AntiAliasedActivation
from melvoc.models.cqt_discriminator import ConstantQTransform, SincResample
from melvoc.peers import PeerCheckpoint, PeerCheckpointError
from melvoc.peers.hifigan import (
    GENERATOR_FIELDS,
    MPD_CHANNELS,
    MPD_TARGET,
    build_on_meta,
    config_beside,
    is_bigvgan_config,
    lineage_mel_config,
    load_torch_file,
    read_json_config,
    require_fields,
    state_dict_entry,
    step_checkpoint,
    step_files,
    to_melvoc_state,
)

__all__ = ["CQTD_TARGET", "GENERATOR_TARGET", "MBD_TARGET", "MRD_TARGET", "matches", "read"]

GENERATOR_TARGET = "melvoc.models.bigvgan.BigVGANGenerator"
MRD_TARGET = "melvoc.models.stft_discriminators.MultiResolutionDiscriminator"
MBD_TARGET = "melvoc.models.stft_discriminators.MultiBandDiscriminator"
CQTD_TARGET = "melvoc.models.cqt_discriminator.MultiScaleSubbandCQTDiscriminator"

GENERATOR_FILE = "bigvgan_generator.pt"
DISCRIMINATOR_FILE = "bigvgan_discriminator_optimizer.pt"

_GENERATOR_FIELDS = (*GENERATOR_FIELDS, "activation", "snake_logscale")
# BigVGAN's code defaults for configs that predate the fields (v1: tanh and a bias at the end).
_GENERATOR_DEFAULTS = {"use_tanh_at_final": True, "use_bias_at_final": True}
_CONFIG = "a BigVGAN config.json (NVIDIA/BigVGAN configs/ layout)"
_AMP_ACTIVATION = re.compile(r"^(resblocks\.\d+)\.activations\.(\d+)\.(.*)$")
_UPSAMPLE = re.compile(r"^ups\.(\d+)\.0\.(.*)$")
# Constant buffers the peer saves; melvoc recomputes them (non-persistent buffers).
_CONSTANT_BUFFER = re.compile(
    r"\.(upsample\.filter|downsample\.lowpass\.filter|resample\.kernel|spec_fn\.window"
    r"|cqt_transform\.(cqt_kernels_real|cqt_kernels_imag|lowpass_filter|lenghts|early_downsample_filter))$"
)
_CQT_SCALE = re.compile(r"^discriminators\.(\d+)\.cqt_transform\.")
_CQT_BUFFERS = {"cqt_kernels_real": "kernel_real", "cqt_kernels_imag": "kernel_imag", "lowpass_filter": "lowpass"}


def matches(path: Path) -> bool:
    """A BigVGAN folder or ``bigvgan_generator.pt``, or ``g_`` files with a BigVGAN ``config.json`` beside."""
    path = Path(path)
    if path.is_dir() and (path / GENERATOR_FILE).is_file():
        return True
    if path.is_file() and path.name in (GENERATOR_FILE, DISCRIMINATOR_FILE):
        return True
    config = config_beside(path)
    return config.is_file() and is_bigvgan_config(config) and (path.is_dir() or path.name.startswith(("g_", "do_")))


def _files(path: Path) -> tuple[Path, Optional[Path]]:
    folder = path if path.is_dir() else path.parent
    if (path.is_dir() and (path / GENERATOR_FILE).is_file()) or path.name in (GENERATOR_FILE, DISCRIMINATOR_FILE):
        discriminator = folder / DISCRIMINATOR_FILE
        return folder / GENERATOR_FILE, discriminator if discriminator.is_file() else None
    return step_files(path, "BigVGAN")


def _generator_node(config: Mapping[str, Any]) -> dict[str, Any]:
    node = {"_target_": GENERATOR_TARGET, **{k: config[k] for k in _GENERATOR_FIELDS}}
    for key, default in _GENERATOR_DEFAULTS.items():
        node[key] = bool(config.get(key, default))
    node["resblock"] = str(node["resblock"])
    return node


class _Constants:
    """melvoc's value of each constant buffer the peer saved, to compare before dropping it."""

    def __init__(self, node: Mapping[str, Any]) -> None:
        self.node = node
        self._cqts: dict[int, ConstantQTransform] = {}
        self._filter = AntiAliasedActivation(nn.Identity()).filter

    def reference(self, key: str, match: re.Match) -> Optional[Tensor]:
        what = match.group(1)
        if what.endswith("filter") and what.startswith(("upsample", "downsample")):
            return self._filter
        if what == "resample.kernel" and "sample_rate" in self.node:
            rate = int(self.node["sample_rate"])
            return SincResample(rate, 2 * rate).kernel
        if match.group(2) in _CQT_BUFFERS and (scale := _CQT_SCALE.match(key)) is not None:
            i = int(scale.group(1))
            if i not in self._cqts:
                n = self.node
                bins = n["bins_per_octaves"][i]
                self._cqts[i] = ConstantQTransform(
                    2 * n["sample_rate"], n["hop_lengths"][i], n["n_octaves"][i] * bins, bins
                )
            return getattr(self._cqts[i], _CQT_BUFFERS[match.group(2)])
        return None


def _rename(source: Mapping[str, Tensor], node: Mapping[str, Any], path: Path) -> dict[str, Tensor]:
    """BigVGAN's module names to melvoc's; constant buffers compared with melvoc's and dropped."""
    constants = _Constants(node)
    resblock = str(node.get("resblock", "1"))
    out: dict[str, Tensor] = {}
    for key, value in source.items():
        if (constant := _CONSTANT_BUFFER.search(key)) is not None:
            ours = constants.reference(key, constant)
            if ours is not None and (
                value.shape != ours.shape or not torch.allclose(value.float(), ours.float(), atol=1e-6, rtol=0)
            ):
                raise PeerCheckpointError(
                    f"{path}: the saved constant {key!r} differs from the one melvoc computes from the config "
                    "(the checkpoint was made with other anti-aliasing or CQT settings than BigVGAN's code uses), "
                    "so its outputs cannot be reproduced"
                )
            continue
        if m := _UPSAMPLE.match(key):
            key = f"ups.{m.group(1)}.{m.group(2)}"
        elif m := _AMP_ACTIVATION.match(key):
            n = int(m.group(2))
            acts = f"acts{1 + n % 2}.{n // 2}" if resblock == "1" else f"acts.{n}"
            key = f"{m.group(1)}.{acts}.{m.group(3)}"
        out[key] = value
    return out


def _discriminator_nodes(config: Mapping[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    require_fields(config, ("mpd_reshapes", "discriminator_channel_mult", "use_spectral_norm"), path, _CONFIG)
    mult = config["discriminator_channel_mult"]
    if config["use_spectral_norm"]:
        raise PeerCheckpointError(
            f"{path}: use_spectral_norm: true makes a spectrally normalised MPD, which melvoc's "
            "MultiPeriodDiscriminator does not have; load the generator alone (drop the discriminator file)"
        )
    nodes: dict[str, dict[str, Any]] = {
        "mpd": {
            "_target_": MPD_TARGET,
            "periods": [int(p) for p in config["mpd_reshapes"]],
            "channels": [int(c * mult) for c in MPD_CHANNELS],
        }
    }
    if config.get("use_mbd_instead_of_mrd", False):
        nodes["mbd"] = {"_target_": MBD_TARGET, "fft_sizes": list(config.get("mbd_fft_sizes", [2048, 1024, 512]))}
    elif config.get("use_cqtd_instead_of_mrd", False):
        for key in ("cqtd_in_channels", "cqtd_out_channels"):
            if config.get(key, 1) != 1:
                raise PeerCheckpointError(
                    f"{path}: {key}={config[key]}; melvoc's CQT-D reads mono audio and has one output (set it to 1)"
                )
        nodes["cqtd"] = {
            "_target_": CQTD_TARGET,
            "sample_rate": int(config["sampling_rate"]),
            "hop_lengths": list(config.get("cqtd_hop_lengths", [512, 256, 256])),
            "n_octaves": list(config.get("cqtd_n_octaves", [9, 9, 9])),
            "bins_per_octaves": list(config.get("cqtd_bins_per_octaves", [24, 36, 48])),
            "filters": int(config.get("cqtd_filters", 32)),
            "max_filters": int(config.get("cqtd_max_filters", 1024)),
            "filters_scale": int(config.get("cqtd_filters_scale", 1)),
            "dilations": list(config.get("cqtd_dilations", [1, 2, 4])),
            "normalize_volume": bool(config.get("cqtd_normalize_volume", False)),
        }
    else:
        require_fields(config, ("resolutions",), path, _CONFIG)
        nodes["mrd"] = {
            "_target_": MRD_TARGET,
            "resolutions": [list(r) for r in config["resolutions"]],
            "channels": int(32 * config.get("mrd_channel_mult", mult)),
            "use_spectral_norm": bool(config.get("mrd_use_spectral_norm", config["use_spectral_norm"])),
        }
    return nodes


def _bigvgan_discriminators(
    do_file: Path, config: Mapping[str, Any], config_path: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Tensor]], dict[str, Any]]:
    expected = (
        f"a BigVGAN {DISCRIMINATOR_FILE} / do_XXXXXXXX file ({{'mpd', 'mrd', 'optim_g', 'optim_d', 'steps', 'epoch'}})"
    )
    nodes = _discriminator_nodes(config, config_path)
    checkpoint = load_torch_file(do_file, expected)
    states = {}
    for name, node in nodes.items():
        # The peer saves its second discriminator as "mrd" whatever it is.
        source = state_dict_entry(checkpoint, "mpd" if name == "mpd" else "mrd", do_file, expected)
        model = build_on_meta(node)
        states[name] = to_melvoc_state(_rename(source, node, do_file), model, do_file, name)
    meta = {k: checkpoint[k] for k in ("steps", "epoch") if k in checkpoint}
    return nodes, states, meta


def read(path: Path) -> PeerCheckpoint:
    """Read a BigVGAN checkpoint (see the module docstring for the accepted paths)."""
    path = Path(path)
    config_path = config_beside(path)
    config = read_json_config(config_path, "a BigVGAN checkpoint")
    require_fields(config, _GENERATOR_FIELDS, config_path, _CONFIG)
    features = lineage_mel_config(config, config_path)
    generator_file, do_file = _files(path)
    node = _generator_node(config)
    g_expected = f"a BigVGAN {GENERATOR_FILE} / g_XXXXXXXX file ({{'generator': state_dict}})"
    return step_checkpoint(
        path,
        "bigvgan",
        config,
        features,
        node,
        generator_file,
        do_file,
        g_expected,
        lambda do: _bigvgan_discriminators(do, config, config_path),
        rename=lambda source: _rename(source, node, generator_file),
    )
