"""Official HiFi-GAN (jik876) and BigVGAN (NVIDIA) checkpoints read by melvoc.peers.hifigan / melvoc.peers.bigvgan.

The generator fixtures were made by the peers' own code (tests/fixtures/peers/README: shared/fixtures/peers).
There is no official discriminator fixture, so the discriminator tests build the peers' exact module
layout (names, old-style ``weight_norm`` / ``spectral_norm``, saved buffers) from their code's structure.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

import melvoc
from melvoc.models.cqt_discriminator import ConstantQTransform, SincResample
from melvoc.peers import PeerCheckpointError, bigvgan, hifigan
from melvoc.peers.hifigan import build_on_meta, to_melvoc_state

PEERS = Path(__file__).parent / "fixtures" / "peers"
FIXTURES = {"hifigan_v2": hifigan, "hifigan_v3": hifigan, "bigvgan_v2_24khz_100band": bigvgan}
WEIGHT_FILES = [("hifigan_v2", "g_00000000"), ("bigvgan_v2_24khz_100band", "bigvgan_generator.pt")]


def _old_weight_norm(module: nn.Module) -> nn.Module:
    # The peers use the deprecated torch.nn.utils.weight_norm; its keys (weight_g, weight_v) are the point here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(module)


def _generate(checkpoint) -> nn.Module:
    g = instantiate(checkpoint.generator)
    g.load_state_dict(checkpoint.generator_state, strict=True)
    return g.eval()


# --- generators from the official fixtures ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_reproduces_the_peers_audio_and_mel(name):
    family = FIXTURES[name]
    io = np.load(PEERS / name / "io.npz")
    checkpoint = family.read(PEERS / name)
    assert checkpoint.family == family.__name__.rsplit(".", 1)[1]
    g = _generate(checkpoint)
    assert g.num_mels == checkpoint.features.num_mels == io["mel"].shape[1]
    with torch.no_grad():
        audio = g(torch.from_numpy(io["mel"]))
        mel = melvoc.MelSpectrogram(checkpoint.features)(torch.from_numpy(io["audio_in"]).unsqueeze(0))
    assert audio.shape == io["audio_out"].shape
    assert np.abs(audio.numpy() - io["audio_out"]).max() < 1e-4
    assert mel.shape == io["mel"].shape
    assert np.abs(mel.numpy() - io["mel"]).max() < 1e-4
    g.remove_weight_norm()
    with torch.no_grad():
        assert np.abs(g(torch.from_numpy(io["mel"])).numpy() - io["audio_out"]).max() < 1e-4


def test_lineage_features_follow_the_config():
    config = json.loads((PEERS / "hifigan_v2" / "config.json").read_text())
    features = hifigan.read(PEERS / "hifigan_v2").features
    assert (features.sampling_rate, features.n_fft, features.hop_size, features.win_size) == (
        config["sampling_rate"], config["n_fft"], config["hop_size"], config["win_size"])
    assert (features.fmin, features.fmax, features.eps, features.clip_val) == (0.0, 8000.0, 1e-9, 1e-5)
    assert (features.center, features.pad_mode, features.log_base, features.mel_scale) == (False, "reflect", "e", "slaney")
    assert bigvgan.read(PEERS / "bigvgan_v2_24khz_100band").features.fmax is None  # fmax: null -> sr / 2


def test_paths_each_family_accepts():
    hv2, bv = PEERS / "hifigan_v2", PEERS / "bigvgan_v2_24khz_100band"
    assert hifigan.matches(hv2) and hifigan.matches(hv2 / "g_00000000")
    assert not hifigan.matches(bv) and not bigvgan.matches(hv2) and not bigvgan.matches(hv2 / "g_00000000")
    assert bigvgan.matches(bv) and bigvgan.matches(bv / "bigvgan_generator.pt")
    assert not hifigan.matches(PEERS / "vocos_mel_24khz") and not bigvgan.matches(PEERS)
    assert hifigan.read(hv2 / "g_00000000").generator == hifigan.read(hv2).generator


def test_bigvgan_training_folder_with_step_files(tmp_path):
    src = PEERS / "bigvgan_v2_24khz_100band"
    shutil.copy(src / "config.json", tmp_path / "config.json")
    shutil.copy(src / "bigvgan_generator.pt", tmp_path / "g_00000100")
    shutil.copy(src / "bigvgan_generator.pt", tmp_path / "g_00002000")
    assert bigvgan.matches(tmp_path) and not hifigan.matches(tmp_path)
    checkpoint = bigvgan.read(tmp_path)
    assert checkpoint.metadata["generator_file"].endswith("g_00002000")
    assert checkpoint.discriminators is None


def test_generator_saved_without_weight_norm(tmp_path):
    """A checkpoint saved after the peer's remove_weight_norm has plain ``weight`` keys."""
    src = PEERS / "hifigan_v3"
    state = torch.load(src / "g_00000000", weights_only=True)["generator"]
    folded = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            v = state[key[:-1] + "v"]
            folded[key[: -len("_g")]] = value * v / v.flatten(1).norm(dim=1).view(-1, 1, 1)
        elif not key.endswith(".weight_v"):
            folded[key] = value
    shutil.copy(src / "config.json", tmp_path / "config.json")
    torch.save({"generator": folded}, tmp_path / "g_00000001")
    io = np.load(src / "io.npz")
    with torch.no_grad():
        audio = _generate(hifigan.read(tmp_path / "g_00000001"))(torch.from_numpy(io["mel"]))
    assert np.abs(audio.numpy() - io["audio_out"]).max() < 1e-4


# --- bad checkpoints ---------------------------------------------------------------------------


def _copy(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(PEERS / name, folder)
    return folder


@pytest.mark.parametrize("name, weights", WEIGHT_FILES)
def test_missing_config_is_named(tmp_path, name, weights):
    folder = _copy(name, tmp_path)
    (folder / "config.json").unlink()
    family = FIXTURES[name]
    with pytest.raises(PeerCheckpointError, match=r"config\.json: not found.*copy it there"):
        family.read(folder / weights)


@pytest.mark.parametrize("name, weights", WEIGHT_FILES)
def test_truncated_file_is_named(tmp_path, name, weights):
    folder = _copy(name, tmp_path)
    data = (folder / weights).read_bytes()
    (folder / weights).write_bytes(data[: len(data) // 2])
    with pytest.raises(PeerCheckpointError, match=rf"{weights}: cannot be read.*truncated"):
        FIXTURES[name].read(folder)


@pytest.mark.parametrize("name, weights", WEIGHT_FILES)
def test_wrong_layout_is_named(tmp_path, name, weights):
    folder = _copy(name, tmp_path)
    state = torch.load(folder / weights, weights_only=True)["generator"]
    torch.save({"model": state}, folder / weights)
    with pytest.raises(PeerCheckpointError, match=rf"{weights}: expected .*'generator'.*found \['model'\]"):
        FIXTURES[name].read(folder)


def test_config_that_does_not_describe_the_weights(tmp_path):
    folder = _copy("bigvgan_v2_24khz_100band", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["upsample_initial_channel"] = 128
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PeerCheckpointError, match=r"bigvgan_generator\.pt: the generator weights do not fit.*other shapes"):
        bigvgan.read(folder)


def test_config_missing_a_field(tmp_path):
    folder = _copy("hifigan_v3", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["upsample_rates"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PeerCheckpointError, match=r"config\.json: missing field\(s\) \['upsample_rates'\]"):
        hifigan.read(folder)


def test_discriminator_file_without_its_generator(tmp_path):
    shutil.copy(PEERS / "hifigan_v2" / "config.json", tmp_path / "config.json")
    torch.save({}, tmp_path / "do_00000005")
    with pytest.raises(PeerCheckpointError, match="g_00000005 is missing"):
        hifigan.read(tmp_path / "do_00000005")


def test_saved_constants_that_melvoc_would_not_reproduce(tmp_path):
    folder = _copy("bigvgan_v2_24khz_100band", tmp_path)
    checkpoint = torch.load(folder / "bigvgan_generator.pt", weights_only=True)
    key = next(k for k in checkpoint["generator"] if k.endswith("upsample.filter"))
    checkpoint["generator"][key] = checkpoint["generator"][key].flip(-1) * 0.5
    torch.save(checkpoint, folder / "bigvgan_generator.pt")
    with pytest.raises(PeerCheckpointError, match="saved constant .*upsample.filter"):
        bigvgan.read(folder)


# --- norm mapping semantics --------------------------------------------------------------------


def test_old_weight_and_spectral_norm_map_to_the_same_effective_weights():
    torch.manual_seed(0)
    peer = nn.Module()
    peer.a = _old_weight_norm(nn.Conv1d(4, 6, 5))
    peer.b = torch.nn.utils.spectral_norm(nn.Conv1d(4, 6, 5))
    peer.c = _old_weight_norm(nn.ConvTranspose1d(6, 3, 8, 4))
    x = torch.randn(2, 4, 16)
    for _ in range(3):  # power iterations move spectral norm's u and v away from their init
        peer.b(x)
    peer.eval()
    ours = nn.Module()
    ours.a = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 6, 5))
    ours.b = nn.utils.parametrizations.spectral_norm(nn.Conv1d(4, 6, 5))
    ours.c = nn.utils.parametrizations.weight_norm(nn.ConvTranspose1d(6, 3, 8, 4))
    ours.load_state_dict(to_melvoc_state(peer.state_dict(), ours, Path("peer.pt"), "test"), strict=True)
    ours.eval()
    with torch.no_grad():
        for name in ("a", "b", "c"):
            getattr(peer, name)(x if name != "c" else torch.randn(1, 6, 5))
            torch.testing.assert_close(getattr(ours, name).weight, getattr(peer, name).weight, atol=1e-6, rtol=1e-5)


# --- discriminators in the peers' layouts -------------------------------------------------------


def _peer_conv_stack(specs, norm) -> nn.ModuleList:
    return nn.ModuleList(norm(nn.Conv2d(*args, **kw)) for args, kw in specs)


def _peer_mpd(channels, norm=_old_weight_norm, periods=(2, 3, 5, 7, 11)) -> nn.Module:
    """jik876 / BigVGAN MultiPeriodDiscriminator: discriminators.{i}.convs.{0..4}, conv_post."""
    root = nn.Module()
    root.discriminators = nn.ModuleList()
    ins = [1, *channels[:-1]]
    for _ in periods:
        d = nn.Module()
        d.convs = _peer_conv_stack(
            [((i, o, (5, 1), (3 if j < 4 else 1, 1)), {"padding": (2, 0)}) for j, (i, o) in enumerate(zip(ins, channels))],
            norm,
        )
        d.conv_post = norm(nn.Conv2d(channels[-1], 1, (3, 1), 1, padding=(1, 0)))
        root.discriminators.append(d)
    return root


def _peer_msd() -> nn.Module:
    """jik876 MultiScaleDiscriminator: discriminators.0 spectral norm, 1-2 weight norm; meanpools have no state."""
    layers = [(1, 128, 15, 1, 1, 7), (128, 128, 41, 2, 4, 20), (128, 256, 41, 2, 16, 20), (256, 512, 41, 4, 16, 20),
              (512, 1024, 41, 4, 16, 20), (1024, 1024, 41, 1, 16, 20), (1024, 1024, 5, 1, 1, 2)]
    root = nn.Module()
    root.discriminators = nn.ModuleList()
    for i in range(3):
        norm = torch.nn.utils.spectral_norm if i == 0 else _old_weight_norm
        d = nn.Module()
        d.convs = nn.ModuleList(norm(nn.Conv1d(a, b, k, s, groups=g, padding=p)) for a, b, k, s, g, p in layers)
        d.conv_post = norm(nn.Conv1d(1024, 1, 3, 1, padding=1))
        root.discriminators.append(d)
    root.meanpools = nn.ModuleList([nn.AvgPool1d(4, 2, padding=2), nn.AvgPool1d(4, 2, padding=2)])
    return root


def _stride0_state(module: nn.Module) -> dict[str, torch.Tensor]:
    # Full-size layouts without the memory: one stored value per tensor (torch.save keeps the tiny storage).
    return {k: torch.full((1,), 0.5).expand(v.shape) for k, v in module.state_dict().items()}


def test_hifigan_do_file_maps_every_key(tmp_path):
    with torch.device("meta"):
        mpd, msd = _peer_mpd([32, 128, 512, 1024, 1024]), _peer_msd()
    shutil.copy(PEERS / "hifigan_v2" / "config.json", tmp_path / "config.json")
    shutil.copy(PEERS / "hifigan_v2" / "g_00000000", tmp_path / "g_00000010")
    torch.save({"mpd": _stride0_state(mpd), "msd": _stride0_state(msd), "optim_g": {}, "optim_d": {}, "steps": 10,
                "epoch": 3}, tmp_path / "do_00000010")
    for path in (tmp_path, tmp_path / "do_00000010"):
        checkpoint = hifigan.read(path)
        assert set(checkpoint.discriminators) == {"mpd", "msd"}
        assert checkpoint.metadata["steps"] == 10 and checkpoint.metadata["epoch"] == 3
    for name, peer in (("mpd", mpd), ("msd", msd)):
        ours = build_on_meta(checkpoint.discriminators[name]).state_dict()
        state = checkpoint.discriminator_states[name]
        assert set(state) == set(ours) and len(state) == len(peer.state_dict())
        assert all(tuple(state[k].shape) == tuple(ours[k].shape) for k in ours)
    msd_state = checkpoint.discriminator_states["msd"]
    assert "discriminators.0.convs.0.parametrizations.weight.0._u" in msd_state
    assert "discriminators.1.convs.0.parametrizations.weight.original0" in msd_state


def _peer_mrd(resolutions, channels) -> nn.Module:
    root = nn.Module()
    root.discriminators = nn.ModuleList()
    c = channels
    for _ in resolutions:
        d = nn.Module()
        d.convs = _peer_conv_stack(
            [((1, c, (3, 9)), {"padding": (1, 4)})]
            + [((c, c, (3, 9)), {"stride": (1, 2), "padding": (1, 4)})] * 3
            + [((c, c, (3, 3)), {"padding": (1, 1)})],
            _old_weight_norm,
        )
        d.conv_post = _old_weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))
        root.discriminators.append(d)
    return root


def _peer_mbd(fft_sizes, channels=32) -> nn.Module:
    root = nn.Module()
    root.discriminators = nn.ModuleList()
    c = channels
    for w in fft_sizes:
        d = nn.Module()
        d.spec_fn = nn.Module()
        d.spec_fn.register_buffer("window", torch.hann_window(w))  # torchaudio's Spectrogram saves its window
        d.band_convs = nn.ModuleList(
            _peer_conv_stack(
                [((2, c, (3, 9)), {"padding": (1, 4)})]
                + [((c, c, (3, 9)), {"stride": (1, 2), "padding": (1, 4)})] * 3
                + [((c, c, (3, 3)), {"padding": (1, 1)})],
                _old_weight_norm,
            )
            for _ in range(5)
        )
        d.conv_post = _old_weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))
        root.discriminators.append(d)
    return root


def _peer_cqtd(config) -> nn.Module:
    """BigVGAN DiscriminatorCQT: plain conv_pres and convs.0, weight norm after; nnAudio's CQT buffers saved."""
    root = nn.Module()
    root.discriminators = nn.ModuleList()
    f, dil = config["cqtd_filters"], config["cqtd_dilations"]
    for hop, octaves, bins in zip(config["cqtd_hop_lengths"], config["cqtd_n_octaves"], config["cqtd_bins_per_octaves"]):
        d = nn.Module()
        d.conv_pres = nn.ModuleList(nn.Conv2d(2, 2, (3, 9), padding=(1, 4)) for _ in range(octaves))
        d.convs = nn.ModuleList([nn.Conv2d(2, f, (3, 9), padding=(1, 4))])
        for k in dil:
            d.convs.append(_old_weight_norm(nn.Conv2d(f, f, (3, 9), stride=(1, 2), dilation=(k, 1), padding=(k, 4))))
        d.convs.append(_old_weight_norm(nn.Conv2d(f, f, (3, 3), padding=(1, 1))))
        d.conv_post = _old_weight_norm(nn.Conv2d(f, 1, (3, 3), padding=(1, 1)))
        cqt = ConstantQTransform(2 * config["sampling_rate"], hop, octaves * bins, bins)
        d.cqt_transform = nn.Module()
        d.cqt_transform.register_buffer("lowpass_filter", cqt.lowpass.clone())
        d.cqt_transform.register_buffer("lenghts", cqt.scale.flatten() ** 2)
        d.cqt_transform.register_buffer("cqt_kernels_real", cqt.kernel_real.clone())
        d.cqt_transform.register_buffer("cqt_kernels_imag", cqt.kernel_imag.clone())
        d.resample = nn.Module()  # torchaudio's Resample saves its kernel too
        d.resample.register_buffer("kernel", SincResample(config["sampling_rate"], 2 * config["sampling_rate"]).kernel)
        root.discriminators.append(d)
    return root


def _effective_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Weight of every conv as it enters the convolution (norms applied), by module path."""
    out = {}
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Conv1d, nn.Conv2d)):
            if hasattr(sub, "weight_g"):
                g, v = sub.weight_g, sub.weight_v
                out[name] = g * v / v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
            else:
                out[name] = sub.weight
    return out


@pytest.mark.parametrize("second", ["mrd", "mbd", "cqtd"])
def test_bigvgan_discriminator_file_maps_every_key_and_weight(tmp_path, second):
    torch.manual_seed(0)
    folder = _copy("bigvgan_v2_24khz_100band", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.update(discriminator_channel_mult=0.125, use_cqtd_instead_of_mrd=second == "cqtd",
                  use_mbd_instead_of_mrd=second == "mbd", cqtd_filters=8, mbd_fft_sizes=[512, 256],
                  resolutions=[[512, 50, 240], [256, 64, 256]])
    (folder / "config.json").write_text(json.dumps(config))
    mpd = _peer_mpd([4, 16, 64, 128, 128])
    peer = {"mrd": lambda: _peer_mrd(config["resolutions"], 4), "mbd": lambda: _peer_mbd([512, 256]),
            "cqtd": lambda: _peer_cqtd(config)}[second]()
    torch.save({"mpd": mpd.state_dict(), "mrd": peer.state_dict(), "optim_g": {}, "optim_d": {}, "steps": 7, "epoch": 1},
               folder / "bigvgan_discriminator_optimizer.pt")

    checkpoint = bigvgan.read(folder)
    assert set(checkpoint.discriminators) == {"mpd", second}
    assert checkpoint.metadata["steps"] == 7
    for name, peer_module in (("mpd", mpd), (second, peer)):
        ours = instantiate(checkpoint.discriminators[name])
        ours.load_state_dict(checkpoint.discriminator_states[name], strict=True)
        expected = _effective_weights(peer_module)
        got = {k: m.weight for k, m in ours.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))}
        assert set(got) == set(expected), name
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], atol=1e-6, rtol=1e-5, msg=f"{name}.{k}")
        logits, _ = ours(0.1 * torch.randn(1, 1, 4096))
        assert len(logits) == len(peer_module.discriminators)


def test_bigvgan_spectral_norm_mpd_is_refused(tmp_path):
    folder = _copy("bigvgan_v2_24khz_100band", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["use_spectral_norm"] = True
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({"mpd": {}, "mrd": {}}, folder / "bigvgan_discriminator_optimizer.pt")
    with pytest.raises(PeerCheckpointError, match="use_spectral_norm: true"):
        bigvgan.read(folder)
