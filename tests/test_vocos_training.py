"""Training Vocos with the generic GANVocoder: the recipe's config, its loss, short runs through the real
``train()``, fine-tuning and synthesis from an official Vocos folder, and bad folders at the user level."""

from __future__ import annotations

import copy
import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from hydra.utils import instantiate

from melvoc.features import MelConfig
from melvoc.training.finetune import InitFromCheckpoint
from melvoc.deploy.inference import CheckpointError, load_generator
from melvoc.models import GANVocoder, MultiPeriodDiscriminator
from melvoc.models.stft_discriminators import MultiBandDiscriminator
from melvoc.models.vocos import VocosGenerator
from melvoc.training import train
from tests._speech import filelists, speak
from tests._trained import one_thread
from tests.conftest import FIXTURES, REPO, compose_config

PEER = FIXTURES / "peers" / "vocos_mel_24khz"
SR = 24000
# The recipe's data module on small files: short crops, batch 2, no workers.
DATA = ["data.batch_size=2", "data.segment_size=8192", "data.num_workers=0", "data.pin_memory=false",
        "data.persistent_workers=false"]
QUIET = ["callbacks.progress_bar=null", "callbacks.lr_monitor=null", "callbacks.media.num_media=0", "+trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false"]
# The fixture's generator is vocos_tiny with the published head padding.
FIXTURE_MODEL = ["model=vocos_tiny", "model.generator.padding=same"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, Path]:
    """Six 0.6-1.1 s harmonic clips at 24 kHz as WAV files: (train filelist, val filelist)."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        t = np.arange(int(SR * (0.6 + 0.1 * i))) / SR
        f0 = 110 + 20 * i
        audio = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6)) * 0.2 + 0.01 * rng.standard_normal(t.size)
        paths.append(root / f"clip{i}.wav")
        sf.write(paths[-1], audio.astype(np.float32), SR, subtype="PCM_16")
    return filelists(paths, root)


def _experiment(tmp_path: Path, lists: tuple[Path, Path], *overrides: str, logger: str = "~logger") -> list[str]:
    train_list, val_list = lists
    return [
        "experiment=vocos_mel_24k", f"data.train_filelist={train_list}", f"data.val_filelist={val_list}",
        f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}", logger, *DATA, *QUIET, *overrides,
    ]


# --- the recipe ------------------------------------------------------------------------------------


def test_experiment_has_vocos_losses_discriminators_and_schedule():
    cfg = compose_config(["experiment=vocos_mel_24k", "data.train_filelist=a.txt", "data.val_filelist=b.txt"])
    model = instantiate(cfg.model)
    assert isinstance(model.generator, VocosGenerator) and model.generator.config == MelConfig.coerce(cfg.features)
    assert model.loss_features == model.features, "Vocos' mel loss runs on the features themselves"
    assert isinstance(model.discriminators["mpd"], MultiPeriodDiscriminator)
    assert isinstance(model.discriminators["mrd"], MultiBandDiscriminator)
    assert model.discriminators["mpd"].discriminators[0].first_feature_map == 1
    hp = model.hparams
    assert (hp.adversarial_loss, hp.sub_discriminator_reduction, hp.discriminator_weights) == ("hinge", "mean", {"mrd": 0.1})
    assert (hp.lambda_adv, hp.lambda_fm, hp.lambda_mel) == (1.0, 1.0, 45.0)
    assert hp.optimizer_d == hp.optimizer_g and hp.scheduler_d == hp.scheduler_g
    assert hp.scheduler_g["num_warmup_steps"] == 0 and hp.scheduler_interval == "step"
    assert (hp.grad_clip_g, hp.grad_clip_d) == (None, None)
    # The published sizes: 13.5 M generator, HiFi-GAN's 41.1 M MPD, DAC's MRD at 32 channels.
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in
             [("g", model.generator), *model.discriminators.items()]}
    assert sizes["g"] == pytest.approx(13.53e6, rel=1e-3) and sizes["mpd"] == pytest.approx(41.1e6, rel=1e-2)
    # Per FFT size: 5 bands of (2->32 (3x9), 3 x 32->32 (3x9), 32->32 (3x3)) + a 32->1 (3x3) output conv,
    # each conv with bias and a weight-norm magnitude per output channel.
    band = (2 * 27 + 2) * 32 + 3 * (32 * 27 + 2) * 32 + (32 * 9 + 2) * 32
    assert sizes["mrd"] == 3 * (5 * band + 32 * 9 + 2)


def _hinge_d(real, fake):
    return sum(torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for r, f in zip(real, fake))


def test_vocos_tiny_losses_are_vocos_formula():
    """GANVocoder's losses with the recipe's YAML = VocosExp.training_step's, spelled out by hand."""
    torch.manual_seed(0)
    model = instantiate(compose_config(["features=vocos_24k", "model=vocos_tiny"]).model)
    mpd, mrd = model.discriminators["mpd"], model.discriminators["mrd"]
    all_maps = MultiPeriodDiscriminator([2, 3, 5, 7, 11], [4, 16, 32, 64, 64])  # HiFi-GAN's: every layer
    all_maps.load_state_dict(mpd.state_dict())
    audio, audio_hat = 0.3 * torch.randn(2, 1, 8192), 0.3 * torch.randn(2, 1, 8192)

    (real_mp, fmap_r_mp), (fake_mp, fmap_g_mp) = all_maps(audio), all_maps(audio_hat)
    (real_mr, fmap_r_mr), (fake_mr, fmap_g_mr) = mrd(audio), mrd(audio_hat)
    # Vocos' DiscriminatorP keeps the activations of layers 1.. and the output (`if i > 0`).
    fmap_r_mp, fmap_g_mp = [f[1:] for f in fmap_r_mp], [f[1:] for f in fmap_g_mp]

    def fm(real, fake):
        return sum((r - g).abs().mean() for rs, gs in zip(real, fake) for r, g in zip(rs, gs))

    def hinge_g(fake):
        return sum(torch.relu(1 - f).mean() for f in fake)

    expected_d = _hinge_d(real_mp, fake_mp) / 5 + 0.1 * _hinge_d(real_mr, fake_mr) / 3
    expected_adv = hinge_g(fake_mp) / 5 + 0.1 * hinge_g(fake_mr) / 3
    expected_fm = fm(fmap_r_mp, fmap_g_mp) / 5 + 0.1 * fm(fmap_r_mr, fmap_g_mr) / 3
    # The module's discriminator pass sees real and fake in one batch; MRD peak-normalises per clip.
    torch.testing.assert_close(model.discriminator_loss(torch.cat([audio, audio_hat])), expected_d, rtol=1e-5, atol=0)
    adv, fm_loss = model.adversarial_losses(audio, audio_hat)
    torch.testing.assert_close(adv, expected_adv, rtol=1e-5, atol=0)
    torch.testing.assert_close(fm_loss, expected_fm, rtol=1e-5, atol=0)


# --- runs through train() --------------------------------------------------------------------------


def test_experiment_runs_debug_fdr_with_vocos_tiny(tmp_path, clips):
    cfg = compose_config(_experiment(tmp_path, clips, "model=vocos_tiny", "debug=fdr"))
    assert cfg.model.generator.dim == 64, "model=vocos_tiny on the command line replaces the experiment's model"
    with one_thread():
        result = train(cfg)
    assert result.global_step == 1


def test_short_cpu_training_run(tmp_path, clips):
    overrides = ["model=vocos_tiny", "trainer.max_steps=4", "trainer.val_check_interval=2",
                 "model.scheduler_g.num_training_steps=10", "validate_before_fit=false"]
    cfg = compose_config(_experiment(tmp_path, clips, *overrides))
    with one_thread():
        result = train(cfg)
    assert result.global_step == 4 and math.isfinite(result.final_val_mel_l1)
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    # Both networks' rates follow the cosine, stepped once per generator update: 5e-4 * cos-factor(4 / 10).
    lrs = [s["param_groups"][0]["lr"] for s in state["optimizer_states"]]
    assert lrs == [pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * 0.4)))] * 2
    assert state["hyper_parameters"]["discriminator_weights"] == {"mrd": 0.1}
    generator = load_generator(result.last_checkpoint)
    assert isinstance(generator, VocosGenerator) and generator.config == MelConfig.coerce(cfg.features)
    with torch.no_grad():
        assert generator(torch.zeros(1, 100, 5)).shape == (1, 1, 5 * 256)


@pytest.fixture(scope="module")
def peer_io() -> dict[str, np.ndarray]:
    with np.load(PEER / "io.npz") as data:
        return {k: data[k] for k in data.files}


def _init_from(path: Path) -> list[str]:
    return [f"init_from={path}"]


def test_init_from_the_vocos_folder_reproduces_the_peer_then_trains(tmp_path, clips, peer_io):
    cfg = compose_config(_experiment(tmp_path, clips, *FIXTURE_MODEL, *_init_from(PEER), "trainer.max_steps=2",
                                     "trainer.val_check_interval=2"))
    model: GANVocoder = instantiate(cfg.model)
    loaded = instantiate(cfg.callbacks.init_from_checkpoint).apply(model)
    assert loaded["discriminators"] == [], "an official Vocos folder has no discriminators"
    with torch.no_grad():
        audio = model.eval().generator(torch.from_numpy(peer_io["mel"]))
    np.testing.assert_allclose(audio[:, 0].numpy(), peer_io["audio_out"], rtol=0, atol=1e-4)

    with one_thread():
        result = train(cfg)
    # validate_before_fit measured the peer's weights; two steps at lr 5e-4 move them.
    assert result.global_step == 2 and math.isfinite(result.final_val_mel_l1)
    assert result.initial_val_mel_l1 is not None
    trained = load_generator(result.last_checkpoint)
    with torch.no_grad():
        after = trained(torch.from_numpy(peer_io["mel"]))[:, 0].numpy()
    assert np.abs(after - peer_io["audio_out"]).max() > 1e-4
    # ... from where the peer stood (a freshly initialised generator is uncorrelated with it).
    assert np.corrcoef(after[0], peer_io["audio_out"][0])[0, 1] > 0.5


def test_synthesize_cli_runs_the_vocos_folder(tmp_path, peer_io):
    mel_file, wav_in = tmp_path / "peer_mel.npy", tmp_path / "peer_audio.wav"
    np.save(mel_file, peer_io["mel"][0])
    sf.write(wav_in, peer_io["audio_in"], SR, subtype="FLOAT")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "melvoc.synthesize", "--checkpoint", str(PEER), "-o", str(out), "--subtype", "FLOAT",
         "--quiet", str(mel_file), str(wav_in)],
        check=True, env=env, capture_output=True, text=True, timeout=120,
    )
    from_mel, rate = sf.read(out / "peer_mel.wav", dtype="float32")
    assert rate == SR
    np.testing.assert_allclose(from_mel, peer_io["audio_out"][0], rtol=0, atol=1e-4)
    from_wav, _ = sf.read(out / "peer_audio.wav", dtype="float32")
    # Copy-synthesis vocodes whole hops (93 of the 93.75), so the last frames see another edge; before
    # them the mapped features (Vocos' within 1e-4) give the peer's audio.
    assert from_wav.shape == ((peer_io["audio_in"].size // 256) * 256,)
    np.testing.assert_allclose(from_wav[:-2048], from_mel[: from_wav.size - 2048], rtol=0, atol=1e-3)


# --- bad folders, where a user meets them ------------------------------------------------------------


def _bad_folder(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / f"vocos_{kind}"
    shutil.copytree(PEER, folder)
    if kind == "encodec":
        config = yaml.safe_load((folder / "config.yaml").read_text())
        config["feature_extractor"] = {"class_path": "vocos.feature_extractors.EncodecFeatures",
                                       "init_args": {"encodec_model": "encodec_24khz"}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    elif kind == "no_config":
        (folder / "config.yaml").unlink()
    else:
        weights = folder / "pytorch_model.bin"
        weights.write_bytes(weights.read_bytes()[:5000])
    return folder


BAD = [
    pytest.param("encodec", r"config\.yaml: feature_extractor .*EncodecFeatures is not supported", id="encodec"),
    pytest.param("no_config", r"config\.yaml: missing", id="missing-config"),
    pytest.param("truncated", r"pytorch_model\.bin: cannot be read .*truncated", id="truncated-weights"),
]


@pytest.mark.parametrize(("kind", "message"), BAD)
def test_bad_folder_for_load_generator(tmp_path, kind, message):
    with pytest.raises(CheckpointError, match=message):
        load_generator(_bad_folder(tmp_path, kind))


@pytest.mark.parametrize(("kind", "message"), BAD)
def test_bad_folder_for_init_from(tmp_path, clips, kind, message):
    folder = _bad_folder(tmp_path, kind)
    cfg = compose_config(_experiment(tmp_path, clips, *FIXTURE_MODEL, *_init_from(folder)))
    callback: InitFromCheckpoint = instantiate(cfg.callbacks.init_from_checkpoint)
    model = instantiate(cfg.model)
    before = copy.deepcopy(model.generator.state_dict())
    with pytest.raises(CheckpointError, match=message):
        callback.apply(model)
    assert all(torch.equal(v, model.generator.state_dict()[k]) for k, v in before.items()), "nothing half-loaded"


# --- the number --------------------------------------------------------------------------------


@pytest.mark.slow
def test_vocos_tiny_learns_real_speech_on_cpu(tmp_path):
    """model=vocos_tiny on espeak-ng speech at batch 2: val/mel_l1 falls >= 15% from step 1 to step 60."""
    lists = filelists(speak(tmp_path / "speech", SR, count=10), tmp_path / "speech")
    overrides = ["model=vocos_tiny", "trainer.max_steps=60", "trainer.val_check_interval=1",
                 "validate_before_fit=false", "trainer.log_every_n_steps=1"]
    cfg = compose_config(_experiment(tmp_path, lists, *overrides, logger="logger=csv"))
    with one_thread():
        result = train(cfg)
    with open(result.run_dir / "csv" / "metrics.csv", newline="") as f:
        curve = [float(r["val/mel_l1"]) for r in csv.DictReader(f) if r.get("val/mel_l1")]
    # One validation after each of the 60 updates, in order.
    assert len(curve) == 60 and curve[-1] == pytest.approx(result.final_val_mel_l1)
    first, last = curve[0], curve[-1]
    print(f"val/mel_l1 after step 1: {first:.4f}, after step 60: {last:.4f} ({100 * (1 - last / first):.1f}% lower)")
    assert last <= 0.85 * first
