"""Vocos: the generator against the peer's own output, its ISTFT against torch, the checkpoint reader."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate
from torch.nn import functional as F

from melvoc.features import MelConfig, MelSpectrogram, mel_filterbank
from melvoc.models.schedulers import cosine_schedule_with_warmup
from melvoc.models.vocos import ISTFT, VocosGenerator
from melvoc.peers import PeerCheckpointError
from melvoc.peers import vocos as peer

from .conftest import FIXTURES

PEER = FIXTURES / "peers" / "vocos_mel_24khz"
TINY = dict(num_mels=20, dim=16, intermediate_dim=24, num_layers=2, n_fft=64, hop_length=16)


@pytest.fixture(scope="module")
def io() -> dict[str, np.ndarray]:
    with np.load(PEER / "io.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def checkpoint():
    return peer.read(PEER)


def _generator(checkpoint) -> VocosGenerator:
    generator = instantiate(checkpoint.generator)
    generator.load_state_dict(checkpoint.generator_state)
    return generator.eval()


# --- the peer fixture ----------------------------------------------------------------------------


def test_peer_weights_reproduce_peer_audio(checkpoint, io):
    generator = _generator(checkpoint)
    with torch.no_grad():
        audio = generator(torch.from_numpy(io["mel"]))
    # Vocos returns (B, T); melvoc's contract is (B, 1, T) with T = frames * hop.
    assert audio.shape == (1, 1, io["mel"].shape[-1] * generator.hop_size) == (1, 1, io["audio_out"].shape[-1])
    assert isinstance(generator, VocosGenerator) and generator.hop_size == 256
    np.testing.assert_allclose(audio[:, 0].numpy(), io["audio_out"], rtol=0, atol=1e-4)


def test_mapped_features_reproduce_peer_mel(checkpoint, io):
    mel = MelSpectrogram(checkpoint.features)(torch.from_numpy(io["audio_in"])[None])
    assert mel.shape == io["mel"].shape
    np.testing.assert_allclose(mel.numpy(), io["mel"], rtol=0, atol=1e-4)


def test_mapped_features_are_the_vocos_24k_preset(checkpoint, compose_cfg):
    preset = MelConfig.coerce(compose_cfg(["features=vocos_24k"]).features)
    assert checkpoint.features == preset


def test_mapped_filterbank_is_the_peers_torchaudio_filterbank(checkpoint):
    state = torch.load(PEER / "pytorch_model.bin", map_location="cpu", weights_only=True)
    stored = state["feature_extractor.mel_spec.mel_scale.fb"]  # (n_freqs, n_mels)
    # torchaudio builds the HTK filterbank in float32, melvoc (librosa) in float64: up to 7e-6 apart.
    np.testing.assert_allclose(mel_filterbank(checkpoint.features).T.numpy(), stored.numpy(), rtol=0, atol=1e-5)


def _write_folder(tmp_path: Path, config: dict) -> Path:
    folder = tmp_path / "vocos"
    folder.mkdir()
    shutil.copy(PEER / peer.WEIGHTS_FILE, folder / peer.WEIGHTS_FILE)
    (folder / peer.CONFIG_FILE).write_text(yaml.safe_dump(config))
    return folder


def _peer_config() -> dict:
    return yaml.safe_load((PEER / peer.CONFIG_FILE).read_text())


@pytest.mark.parametrize("padding", ["center", "same"])
def test_feature_padding_maps_to_vocos_stft(tmp_path, padding, io):
    """Both feature paddings against Vocos' recipe spelled out with torch.stft (the filterbank is tested above)."""
    config = _peer_config()
    config["feature_extractor"]["init_args"]["padding"] = padding
    features = peer.read(_write_folder(tmp_path, config)).features
    assert (features.center, features.pad_mode) == ((True, "none") if padding == "center" else (False, "reflect"))

    audio = torch.from_numpy(io["audio_in"]).double()[None]
    if padding == "same":
        audio = F.pad(audio[:, None], (384, 384), mode="reflect")[:, 0]
    spec = torch.stft(audio, 1024, 256, window=torch.hann_window(1024).double(),
                      center=padding == "center", return_complex=True).abs()
    expected = torch.log(torch.clamp(mel_filterbank(features).double() @ spec, min=1e-7))
    mel = MelSpectrogram(features)(torch.from_numpy(io["audio_in"]).double()[None])
    assert mel.shape == expected.shape
    torch.testing.assert_close(mel, expected, rtol=0, atol=1e-9)


def test_matches_the_folder_and_its_files(tmp_path):
    assert peer.matches(PEER) and peer.matches(PEER / peer.WEIGHTS_FILE) and peer.matches(PEER / peer.CONFIG_FILE)
    hifigan = tmp_path / "hifigan"
    hifigan.mkdir()
    (hifigan / "config.json").write_text("{}")
    (hifigan / "g_00000000").write_bytes(b"")
    assert not peer.matches(hifigan)
    assert not peer.matches(tmp_path / "absent")
    hydra_like = tmp_path / "run"
    hydra_like.mkdir()
    (hydra_like / "config.yaml").write_text("model: {}\nfeatures: {}\n")
    assert not peer.matches(hydra_like)


# --- bad checkpoints -----------------------------------------------------------------------------


def test_missing_config_is_named(tmp_path):
    folder = _write_folder(tmp_path, _peer_config())
    (folder / peer.CONFIG_FILE).unlink()
    assert peer.matches(folder)
    with pytest.raises(PeerCheckpointError, match=r"config\.yaml: missing"):
        peer.read(folder)


def test_missing_weights_are_named(tmp_path):
    folder = _write_folder(tmp_path, _peer_config())
    (folder / peer.WEIGHTS_FILE).unlink()
    with pytest.raises(PeerCheckpointError, match=r"pytorch_model\.bin: missing"):
        peer.read(folder)


def test_truncated_weights_are_named(tmp_path):
    folder = _write_folder(tmp_path, _peer_config())
    weights = folder / peer.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(PeerCheckpointError, match=r"pytorch_model\.bin: cannot be read .*truncated"):
        peer.read(folder)


def test_encodec_features_are_not_supported(tmp_path):
    config = _peer_config()
    config["feature_extractor"] = {
        "class_path": "vocos.feature_extractors.EncodecFeatures",
        "init_args": {"encodec_model": "encodec_24khz", "bandwidths": [1.5, 3.0, 6.0, 12.0]},
    }
    folder = _write_folder(tmp_path, config)
    with pytest.raises(PeerCheckpointError, match=r"config\.yaml: feature_extractor .*EncodecFeatures is not supported"):
        peer.read(folder)


@pytest.mark.parametrize(
    "section, change, message",
    [
        ("backbone", {"class_path": "vocos.models.VocosResNetBackbone"}, "VocosResNetBackbone is not supported"),
        ("head", {"class_path": "vocos.heads.IMDCTCosHead"}, "IMDCTCosHead is not supported"),
        ("backbone", {"init_args": {"input_channels": 80, "dim": 64, "intermediate_dim": 192, "num_layers": 2}},
         r"backbone.input_channels=80 but feature_extractor.n_mels=100"),
        ("backbone", {"init_args": {"input_channels": 100, "dim": 64, "intermediate_dim": 192, "num_layers": 3}},
         r"pytorch_model\.bin: does not fit .*missing \['backbone.convnext.2"),
        ("head", {"init_args": {"dim": 64, "n_fft": 1024, "hop_length": 256, "padding": "valid"}},
         "padding='valid'"),
        ("backbone", {"init_args": {"input_channels": 100, "dim": 64, "intermediate_dim": 192, "num_layers": 2,
                                    "adanorm_num_embeddings": 4}}, "adanorm_num_embeddings=4"),
    ],
)
def test_unsupported_or_inconsistent_configs_are_named(tmp_path, section, change, message):
    config = _peer_config()
    config[section] = {**config[section], **change}
    with pytest.raises((PeerCheckpointError, ValueError), match=message):
        peer.read(_write_folder(tmp_path, config))


def test_not_a_vocos_config_is_named(tmp_path):
    folder = _write_folder(tmp_path, {"generator": {}})
    with pytest.raises(PeerCheckpointError, match=r"config\.yaml: no 'feature_extractor' entry"):
        peer.read(folder)


def test_a_pickled_non_state_dict_is_named(tmp_path):
    folder = _write_folder(tmp_path, _peer_config())
    torch.save([torch.zeros(3)], folder / peer.WEIGHTS_FILE)
    with pytest.raises(PeerCheckpointError, match=r"holds list, expected the state dict"):
        peer.read(folder)


# --- the ISTFT -----------------------------------------------------------------------------------


def _random_spectrum(frames: int, n_fft: int, dtype: torch.dtype, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(frames)
    return torch.randn(batch, n_fft // 2 + 1, frames, dtype=dtype, generator=generator) + 1j * torch.randn(
        batch, n_fft // 2 + 1, frames, dtype=dtype, generator=generator
    )


def _istft(istft: ISTFT, spectrum: torch.Tensor) -> torch.Tensor:
    return istft(spectrum.real.transpose(1, 2), spectrum.imag.transpose(1, 2))


def _window(n_fft: int, dtype: torch.dtype) -> torch.Tensor:
    """The ISTFT's window: Vocos' float32 Hann window, cast to ``dtype``."""
    return torch.hann_window(n_fft).to(dtype)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("n_fft, hop", [(1024, 256), (64, 16), (60, 25)])
@pytest.mark.parametrize("frames", [1, 3, 40])
def test_center_istft_equals_torch_istft(n_fft, hop, frames, dtype, tol):
    spectrum = _random_spectrum(frames, n_fft, dtype)
    ours = _istft(ISTFT(n_fft, hop, "center"), spectrum)
    window = _window(n_fft, dtype)
    theirs = torch.istft(spectrum, n_fft, hop, window=window, center=True, length=frames * hop)
    assert ours.shape == (2, frames * hop)
    scale = theirs.abs().max()
    torch.testing.assert_close(ours / scale, theirs / scale, rtol=0, atol=tol)


def _fold_overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """Overlap-add of ``(B, n, F)`` frames with ``F.fold``, an independent reference."""
    n, count = frames.shape[1], frames.shape[2]
    return F.fold(frames, output_size=(1, (count - 1) * hop + n), kernel_size=(1, n), stride=(1, hop))[:, 0, 0]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("n_fft, hop", [(1024, 256), (64, 16)])
@pytest.mark.parametrize("frames", [1, 2, 50])
def test_same_istft_equals_a_fold_overlap_add(n_fft, hop, frames, dtype, tol):
    spectrum = _random_spectrum(frames, n_fft, dtype)
    window = _window(n_fft, dtype)
    pad = (n_fft - hop) // 2
    signal = _fold_overlap_add(torch.fft.irfft(spectrum, n_fft, dim=1) * window[:, None], hop)
    envelope = _fold_overlap_add(window.square()[None, :, None].expand(1, n_fft, frames), hop)
    expected = (signal / envelope)[:, pad : pad + frames * hop]
    ours = _istft(ISTFT(n_fft, hop, "same"), spectrum)
    scale = expected.abs().max()
    torch.testing.assert_close(ours / scale, expected / scale, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("padding", ["same", "center"])
def test_stft_then_istft_reconstructs_the_signal(padding, dtype, tol):
    n_fft, hop, frames = 1024, 256, 30
    audio = torch.randn(3, frames * hop, dtype=dtype, generator=torch.Generator().manual_seed(0))
    window = _window(n_fft, dtype)
    if padding == "same":
        pad = (n_fft - hop) // 2
        padded = F.pad(audio[:, None], (pad, pad), mode="reflect")[:, 0]
        spectrum = torch.stft(padded, n_fft, hop, window=window, center=False, return_complex=True)
        expected = audio
    else:
        spectrum = torch.stft(audio, n_fft, hop, window=window, center=True, return_complex=True)
        # F + 1 frames give F + 1 hops: the last one is the STFT's own reflect padding.
        expected = F.pad(audio[:, None], (0, hop), mode="reflect")[:, 0]
    ours = _istft(ISTFT(n_fft, hop, padding), spectrum)
    torch.testing.assert_close(ours, expected, rtol=0, atol=tol)


@pytest.mark.parametrize("n_fft, hop", [(1024, 256), (60, 25), (63, 16)])
@pytest.mark.parametrize("padding", ["same", "center"])
def test_dft_matmul_equals_irfft(n_fft, hop, padding):
    spectrum = _random_spectrum(9, n_fft, torch.float64)
    # In float64 throughout, so that the comparison sees the method, not the basis' rounding.
    istft = ISTFT(n_fft, hop, padding).double()
    plain = _istft(istft, spectrum)
    assert istft.use_dft_matmul() is istft and istft.dft_matmul
    matmul = _istft(istft, spectrum)
    torch.testing.assert_close(matmul, plain, rtol=0, atol=1e-12)
    assert not istft.use_dft_matmul(False).dft_matmul
    torch.testing.assert_close(_istft(istft, spectrum), plain, rtol=0, atol=0)


def test_dft_matmul_reproduces_peer_audio_and_exports_to_onnx(checkpoint, io, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    generator = _generator(checkpoint)
    generator.head.istft.use_dft_matmul()
    mel = torch.from_numpy(io["mel"])
    with torch.no_grad():
        audio = generator(mel)
    np.testing.assert_allclose(audio[:, 0].numpy(), io["audio_out"], rtol=0, atol=1e-4)

    path = tmp_path / "vocos.onnx"
    axes = {"mel": {0: "batch", 2: "frames"}, "audio": {0: "batch", 2: "samples"}}
    torch.onnx.export(generator, (mel,), str(path), input_names=["mel"], output_names=["audio"],
                      opset_version=17, dynamo=False, dynamic_axes=axes)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    longer = torch.cat([mel, mel.flip(-1)], dim=0)[..., :57]
    with torch.no_grad():
        expected = generator(longer)
    (result,) = session.run(None, {"mel": longer.numpy()})
    assert result.shape == (2, 1, 57 * 256)
    np.testing.assert_allclose(result, expected.numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("hop, padding", [(1024, "same"), (1024, "center"), (0, "same")])
def test_istft_rejects_windows_that_cannot_invert(hop, padding):
    with pytest.raises(ValueError, match="hop_length"):
        ISTFT(1024, hop, padding)


def test_istft_rejects_unknown_padding():
    with pytest.raises(ValueError, match="padding='valid'"):
        ISTFT(1024, 256, "valid")


# --- the generator -------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["same", "center"])
def test_generator_shapes_and_batch_independence(padding):
    torch.manual_seed(0)
    generator = VocosGenerator(**TINY, padding=padding).eval()
    mel = torch.randn(3, 20, 11)
    with torch.no_grad():
        batch = generator(mel)
        alone = torch.cat([generator(mel[i : i + 1]) for i in range(3)])
    assert batch.shape == (3, 1, 11 * 16) and generator.hop_size == 16
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-6)


def test_published_size_and_layer_scale():
    with torch.device("meta"):
        generator = VocosGenerator()
    params = sum(p.numel() for p in generator.parameters())
    # Vocos' paper: 13.5 M parameters for the mel model.
    assert 13.4e6 < params < 13.6e6
    torch.manual_seed(0)
    small = VocosGenerator(**TINY)
    assert all(torch.equal(b.gamma, torch.full((16,), 0.5)) for b in small.backbone.convnext)
    assert abs(small.backbone.convnext[0].pwconv1.weight.std().item() - 0.02) < 0.004


def test_remove_weight_norm_is_a_no_op():
    torch.manual_seed(0)
    generator = VocosGenerator(**TINY).eval()
    mel = torch.randn(1, 20, 7)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    parameters = list(generator.parameters())
    with torch.no_grad():
        audio = generator(mel)
        assert generator.remove_weight_norm() is generator
        assert torch.equal(generator(mel), audio)
    assert list(generator.parameters()) == parameters
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    generator = VocosGenerator(**TINY)
    audio = generator(torch.randn(2, 20, 9))
    audio.square().mean().backward()
    for name, parameter in generator.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_float64_matches_float32():
    torch.manual_seed(0)
    generator = VocosGenerator(**TINY).eval()
    mel = torch.randn(1, 20, 9)
    with torch.no_grad():
        single = generator(mel)
        double = generator.double()(mel.double())
    torch.testing.assert_close(double.float(), single, rtol=0, atol=1e-5)


def test_autocast_runs_the_head_in_float32():
    torch.manual_seed(0)
    generator = VocosGenerator(**TINY)
    mel = torch.randn(2, 20, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        audio = generator(mel)
    assert audio.dtype == torch.float32 and torch.isfinite(audio).all()
    audio.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in generator.parameters())
    with torch.no_grad():
        reference = generator(mel)
    # bfloat16 keeps 8 bits of mantissa in the backbone: agreement to a few percent of the signal.
    assert (audio.detach() - reference).abs().max() < 0.05 * reference.abs().max()


def test_bad_generator_arguments_are_named():
    with pytest.raises(ValueError, match="adanorm_num_embeddings=4"):
        VocosGenerator(adanorm_num_embeddings=4)
    with pytest.raises(ValueError, match="layer_scale_init_value=-1"):
        VocosGenerator(**TINY, layer_scale_init_value=-1)
    with pytest.raises(ValueError, match=r"expected \(B, num_mels=20, frames\)"):
        VocosGenerator(**TINY)(torch.zeros(1, 80, 5))


# --- Vocos' scheduler ----------------------------------------------------------------------------


def _learning_rates(scheduler, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def test_cosine_schedule_without_warmup_is_cosine_annealing():
    ours = cosine_schedule_with_warmup(torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=5e-4), 0, 50)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=5e-4), T_max=50
    )
    np.testing.assert_allclose(_learning_rates(ours, 51), _learning_rates(reference, 51), rtol=1e-9, atol=1e-15)


def test_cosine_schedule_warms_up_linearly_and_resumes():
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = cosine_schedule_with_warmup(optimizer, 4, 14)
    rates = _learning_rates(scheduler, 6)
    assert rates[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rates[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    resumed = cosine_schedule_with_warmup(torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0), 4, 14)
    resumed.load_state_dict(scheduler.state_dict())
    assert _learning_rates(resumed, 3) == _learning_rates(scheduler, 3)


# --- the proposed configs ------------------------------------------------------------------------


def test_vocos_tiny_generator_composes_and_vocodes_its_features(compose_cfg):
    cfg = compose_cfg(["model=vocos_tiny", "features=vocos_24k"])
    generator = instantiate(cfg.model.generator)
    features = MelConfig.coerce(cfg.features)
    assert isinstance(generator, VocosGenerator) and generator.hop_size == features.hop_size
    assert sum(p.numel() for p in generator.parameters()) < 0.2e6
    mel = MelSpectrogram(features)(torch.randn(2, 4096))
    assert generator(mel).shape == (2, 1, mel.shape[-1] * features.hop_size)


def test_vocos_experiment_has_the_published_recipe(compose_cfg):
    cfg = compose_cfg(["experiment=vocos_mel_24k", "data.train_filelist=a.txt", "data.val_filelist=b.txt"])
    assert MelConfig.coerce(cfg.features) == peer.read(PEER).features
    assert (cfg.data.segment_size, cfg.data.batch_size) == (16384, 16)
    assert cfg.model.adversarial_loss == "hinge" and cfg.model.lambda_mel == 45.0
    generator = instantiate(cfg.model.generator)
    assert sum(p.numel() for p in generator.parameters()) == pytest.approx(13.5e6, rel=0.01)
    optimizer = instantiate(cfg.model.optimizer_g)(params=generator.parameters())
    assert optimizer.defaults["lr"] == 5e-4 and tuple(optimizer.defaults["betas"]) == (0.8, 0.9)
    scheduler = instantiate(cfg.model.scheduler_g)(optimizer)
    assert scheduler.lr_lambdas[0].num_training_steps == cfg.trainer.max_steps == 1_000_000
