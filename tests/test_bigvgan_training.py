"""BigVGAN through the training pipeline: the recipes compose and run, bigvgan_tiny trains, official
HiFi-GAN and BigVGAN checkpoints initialise runs, synthesize and fail clearly when broken."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from melvoc.data import AudioDataset
from melvoc.data.synthetic import SyntheticSpec, make_synthetic_dataset
from melvoc.features import MelConfig, MelSpectrogram
from melvoc.training.finetune import InitFromCheckpoint
from melvoc.deploy.inference import CheckpointError, load_generator, read_checkpoint
from melvoc.models.bigvgan import BigVGANGenerator
from melvoc.peers import bigvgan
from melvoc.training.runs import run_id
from melvoc.training import train, validate_config
from tests._speech import filelists, speak
from tests._trained import one_thread
from tests.conftest import FIXTURES, REPO, compose_config, path_overrides

PEERS = FIXTURES / "peers"
BIGVGAN = PEERS / "bigvgan_v2_24khz_100band"
EXPERIMENTS = ["bigvgan_v1_24k_100band", "bigvgan_v2_24k_100band", "bigvgan_v2_44k_128band_512x"]
LAUNCHER_ENV = (
    "MELVOC_RUN_ID", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "SLURM_JOB_ID",
    "SLURM_NTASKS", "SLURM_PROCID", "TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED",
)
# A run with no logger, media or progress output: only what a test reads.
QUIET = [
    "trainer.enable_model_summary=false",
    "+trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "callbacks.lr_monitor=null",
    "callbacks.media.num_media=0",
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.persistent_workers=false",
]
# bigvgan_tiny over a recipe: the recipe's data, features and training settings, a model CPUs can run.
TINY = ["model=bigvgan_tiny"]


@pytest.fixture(autouse=True)
def plain_launch(monkeypatch):
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    run_id.cache_clear()
    with one_thread():
        yield
    run_id.cache_clear()


def synthetic_lists(tmp_path: Path, sampling_rate: int) -> list[str]:
    """Two short training and two validation clips of the built-in speech-like set, as filelists."""
    spec = SyntheticSpec(sampling_rate=sampling_rate, num_train=2, num_val=2, min_seconds=0.6, max_seconds=0.9, seed=3)
    folder = make_synthetic_dataset(tmp_path / "data", spec)
    return [f"data.train_filelist={folder / 'train.txt'}", f"data.val_filelist={folder / 'val.txt'}"]


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def values(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


# ------------------------------------------------------------------------------------------------
# Numbers: bigvgan_tiny on speech
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_24k(tmp_path_factory) -> list[str]:
    """espeak-ng speech at 24 kHz: 8 training and 2 validation utterances, as filelist overrides."""
    folder = tmp_path_factory.mktemp("speech24k")
    train_list, val_list = filelists(speak(folder, 24000, count=10), folder)
    return [f"data.train_filelist={train_list}", f"data.val_filelist={val_list}"]


def speech_run(tmp_path: Path, speech: list[str], *extra: str) -> list[str]:
    return [
        "experiment=bigvgan_v2_24k_100band", *TINY, *speech, *path_overrides(tmp_path), *QUIET,
        "logger=csv", "trainer.log_every_n_steps=1",
        "data.batch_size=2", "data.val_batch_size=2", "data.segment_size=8192",
        "trainer.max_steps=60", "trainer.val_check_interval=60",
        "callbacks.model_checkpoint.every_n_train_steps=60",
        *extra,
    ]


@pytest.mark.slow
def test_tiny_learns_speech_in_60_steps(tmp_path, speech_24k):
    result = train(compose_config(speech_run(tmp_path, speech_24k)))
    assert result.global_step == 60
    start, end = result.initial_val_mel_l1, result.final_val_mel_l1
    assert start is not None and end is not None
    print(f"bigvgan_tiny, 60 steps at batch 2: val/mel_l1 {start:.4f} -> {end:.4f} ({end / start - 1:+.1%})")
    assert end <= 0.85 * start


@pytest.mark.slow
def test_tiny_bf16_mixed_has_no_nan(tmp_path, speech_24k):
    result = train(compose_config(speech_run(tmp_path, speech_24k, "trainer.precision=bf16-mixed")))
    rows = metrics(result.run_dir)
    for key in ("train/loss_g", "train/loss_d", "train/mel_l1", "val/mel_l1"):
        seen = values(rows, key)
        assert seen and all(math.isfinite(v) for v in seen), key
    print(f"bigvgan_tiny bf16-mixed: val/mel_l1 {result.initial_val_mel_l1:.4f} -> {result.final_val_mel_l1:.4f}")


# ------------------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------------------


def narrow(cfg_model) -> list[str]:
    """Overrides that shrink an experiment's own model to bigvgan_tiny's widths, keeping its kind
    (discriminators, mel loss, output layer, scheduler) and its hop."""
    hop = math.prod(cfg_model.generator.upsample_rates)
    rates = {256: [8, 8, 4], 512: [8, 8, 8]}[hop]
    out = [
        f"model.generator.upsample_rates=[{','.join(map(str, rates))}]",
        f"model.generator.upsample_kernel_sizes=[{','.join(str(2 * r) for r in rates)}]",
        "model.generator.upsample_initial_channel=64",
        "model.generator.resblock_kernel_sizes=[3,7]",
        "model.generator.resblock_dilation_sizes=[[1,3,5],[1,3,5]]",
        "model.discriminators.mpd.channels=[4,16,32,64,64]",
    ]
    names = [n for n, node in cfg_model.discriminators.items() if node is not None]
    if "cqtd" in names:
        out += ["model.discriminators.cqtd.filters=8", "model.discriminators.cqtd.max_filters=64"]
    if "mrd" in names:
        out += ["model.discriminators.mrd.channels=8"]
    return out


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_recipe_values(name):
    cfg = compose_config([f"experiment={name}"])
    model, data, features = cfg.model, cfg.data, cfg.features
    v1 = name.startswith("bigvgan_v1")
    assert (features.sampling_rate, features.num_mels) == ((44100, 128) if "44k" in name else (24000, 100))
    assert features.fmax == (12000.0 if v1 else None)
    assert data.segment_size == (8192 if v1 else 65536)
    assert (data.batch_size, data.peak_normalize, data.peak_normalize_scope) == (32, 0.95, "crop")
    named = sorted(n for n, d in model.discriminators.items() if d is not None)
    assert named == (["mpd", "mrd"] if v1 else ["cqtd", "mpd"])
    assert model.mel_loss._target_ == ("melvoc.models.mel_loss.MelLoss" if v1 else "melvoc.models.mel_loss.MultiScaleMelLoss")
    assert (model.lambda_mel, model.lambda_fm, model.lambda_adv, model.adversarial_loss) == (
        45.0 if v1 else 15.0, 2.0, 1.0, "lsgan"
    )
    assert model.grad_clip_g == model.grad_clip_d == (1000.0 if v1 else 500.0)
    opt = model.optimizer_d
    assert (opt._target_, opt.lr, list(opt.betas)) == ("torch.optim.AdamW", 1e-4, [0.8, 0.99])
    assert (model.scheduler_d.gamma, model.scheduler_interval) == ((0.999, "epoch") if v1 else (0.9999996, "step"))
    generator = model.generator
    assert (generator.use_tanh_at_final, generator.use_bias_at_final) == (v1, v1)
    assert math.prod(generator.upsample_rates) == features.hop_size


def test_published_v2_generators_have_bigvgans_parameter_counts():
    with torch.device("meta"):
        g24 = instantiate(compose_config(["experiment=bigvgan_v2_24k_100band"]).model.generator)
        g44 = instantiate(compose_config(["experiment=bigvgan_v2_44k_128band_512x"]).model.generator)
    assert sum(p.numel() for p in g24.parameters()) == pytest.approx(112.4e6, abs=0.05e6)
    assert sum(p.numel() for p in g44.parameters()) == pytest.approx(122.2e6, abs=0.05e6)  # README: 122M


def test_v2_multiscale_mel_loss_has_bigvgans_settings():
    loss = instantiate(compose_config(["experiment=bigvgan_v2_24k_100band"]).model.mel_loss)
    # BigVGAN's MultiScaleMelSpectrogramLoss(sampling_rate) defaults (after DAC).
    assert [c.win_size for c in loss.configs] == [32, 64, 128, 256, 512, 1024, 2048]
    assert [c.n_fft for c in loss.configs] == [32, 64, 128, 256, 512, 1024, 2048]
    assert [c.hop_size for c in loss.configs] == [8, 16, 32, 64, 128, 256, 512]
    assert [c.num_mels for c in loss.configs] == [5, 10, 20, 40, 80, 160, 320]
    assert all(c.sampling_rate == 24000 and c.fmin == 0 and c.fmax is None and c.clip_val == 1e-5 for c in loss.configs)
    assert (loss.log_weight, loss.mag_weight, loss.pow, loss.weight) == (1.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_fast_dev_run_narrowed(tmp_path, name):
    probe = compose_config([f"experiment={name}"])
    overrides = [
        f"experiment={name}", "debug=fdr", *narrow(probe.model), *path_overrides(tmp_path), *QUIET, "~logger",
        *synthetic_lists(tmp_path, probe.features.sampling_rate),
        "data.batch_size=1", f"data.segment_size={8 * probe.features.hop_size * 4}", "data.max_val_seconds=0.5",
    ]
    cfg = compose_config(overrides)
    validate_config(cfg)
    result = train(cfg)
    assert result.global_step == 1
    assert result.final_val_mel_l1 is not None and math.isfinite(result.final_val_mel_l1)


def test_tiny_with_the_v2_recipe_composes_and_fast_dev_runs(tmp_path):
    cfg = compose_config([
        "experiment=bigvgan_v2_24k_100band", *TINY, "debug=fdr", *path_overrides(tmp_path), *QUIET, "~logger",
        *synthetic_lists(tmp_path, 24000), "data.batch_size=1", "data.segment_size=8192", "data.max_val_seconds=0.5",
    ])
    model = instantiate(cfg.model)
    assert sum(p.numel() for p in model.generator.parameters()) < 0.5e6
    assert sorted(model.discriminators) == ["cqtd", "mpd"]
    assert train(cfg).global_step == 1


def test_tiny_short_cpu_run(tmp_path):
    cfg = compose_config([
        "model=bigvgan_tiny", "features=bigvgan_24k", "data=filelist", *synthetic_lists(tmp_path, 24000),
        *path_overrides(tmp_path), *QUIET, "logger=csv", "trainer.log_every_n_steps=1",
        "data.batch_size=1", "data.segment_size=4096", "data.max_val_seconds=0.5",
        "trainer.max_steps=4", "trainer.val_check_interval=4", "callbacks.model_checkpoint.every_n_train_steps=4",
    ])
    result = train(cfg)
    assert result.global_step == 4 and result.last_checkpoint is not None
    rows = metrics(result.run_dir)
    for key in ("train/loss_g", "train/loss_d", "train/mel_l1"):
        seen = values(rows, key)
        assert len(seen) == 4 and all(math.isfinite(v) for v in seen), key
    # The step-wise decay: 4 updates of 1e-4 * 0.9999996 per step.
    saved = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    assert [s["last_epoch"] for s in saved["lr_schedulers"]] == [4, 4]
    generator = load_generator(result.last_checkpoint)
    mel = torch.randn(1, 100, 8)
    assert generator(mel).shape == (1, 1, 8 * 256)


def test_per_crop_peak_normalisation(tmp_path):
    """BigVGAN's librosa.util.normalize(crop) * 0.95: every crop (and whole clip) to peak 0.95, silence kept."""
    features = MelConfig.coerce(compose_config(["features=bigvgan_24k"]).features)
    loud, quiet = 0.8 * np.sin(np.arange(24000) * 0.05), 0.01 * np.sin(np.arange(24000) * 0.07)
    path = tmp_path / "clip.wav"
    sf.write(path, np.concatenate([loud, quiet, np.zeros(24000)]).astype(np.float32), 24000, subtype="FLOAT")
    crops = AudioDataset([path], features, segment_size=4096, peak_normalize=0.95, peak_normalize_scope="crop")
    assert crops.peaks is None, "no pass over the files to measure their peaks"
    torch.manual_seed(0)
    peaks = sorted(crops[0]["audio"].abs().max().item() for _ in range(40))
    assert peaks[0] == 0.0, "an all-zero crop stays zero"
    assert peaks[-1] == pytest.approx(0.95, abs=1e-6)
    assert all(p == 0.0 or p == pytest.approx(0.95, abs=1e-6) for p in peaks), "quiet crops are scaled up too"
    whole = AudioDataset([path], features, peak_normalize=0.95, peak_normalize_scope="crop")[0]["audio"]
    assert whole.abs().max().item() == pytest.approx(0.95, abs=1e-6)
    by_file = AudioDataset([path], features, segment_size=4096, peak_normalize=0.95)
    assert by_file.peaks is not None and max(by_file[0]["audio"].abs().max().item() for _ in range(10)) <= 0.95 + 1e-6
    with pytest.raises(ValueError, match="peak_normalize_scope='clip'"):
        AudioDataset([path], features, peak_normalize=0.95, peak_normalize_scope="clip")


# ------------------------------------------------------------------------------------------------
# Official checkpoints: YAML presets and peer configs describe the same generator
# ------------------------------------------------------------------------------------------------


def plain(node) -> dict:
    """A generator node as comparable values (lists, floats for numbers, str for the resblock type)."""
    node = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else node

    def norm(v):
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        if isinstance(v, bool) or v is None:
            return v
        return float(v) if isinstance(v, (int, float)) else str(v)

    return {k: norm(v) for k, v in node.items()}


def peer_config(tmp_path: Path, name: str, **changes) -> Path:
    """A copy of a fixture folder with its config.json changed (e.g. back to the published widths)."""
    folder = tmp_path / name
    shutil.copytree(PEERS / name, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


V1_CONFIG = {  # configs/bigvgan_24khz_100band.json next to the v2 one: no v2 fields, MRD resolutions
    "upsample_initial_channel": 1536, "use_tanh_at_final": None, "use_bias_at_final": None,
    "use_cqtd_instead_of_mrd": None, "use_multiscale_melloss": None, "lambda_melloss": None,
    "resolutions": [[1024, 120, 600], [2048, 240, 1200], [512, 50, 240]], "fmax": 12000,
}


@pytest.mark.parametrize("preset, published", [
    ("bigvgan_v2_24k_100band", {"upsample_initial_channel": 1536}),
    # v1's config.json has no use_tanh_at_final / use_bias_at_final: BigVGAN's code defaults them to true.
    ("bigvgan_v1_24k_100band", V1_CONFIG),
])
def test_bigvgan_presets_match_the_published_configs(tmp_path, preset, published):
    """The generator and discriminator nodes melvoc.peers.bigvgan makes of the published config.json are the
    preset's: init_from an official folder passes the compatibility check, its discriminators load by name."""
    folder = peer_config(tmp_path, "bigvgan_v2_24khz_100band", **published)
    config = json.loads((folder / "config.json").read_text())
    ours = compose_config([f"model={preset}", "features=bigvgan_24k"]).model
    # fast_activation is melvoc's switch of how the activations are computed, not a BigVGAN field.
    generator = {k: v for k, v in plain(ours.generator).items() if k not in BigVGANGenerator.execution_options}
    assert generator == plain(bigvgan._generator_node(config))
    theirs = bigvgan._discriminator_nodes(config, folder / "config.json")
    assert sorted(theirs) == sorted(n for n, d in ours.discriminators.items() if d is not None)
    for name, node in theirs.items():
        assert plain(ours.discriminators[name]) == plain(node), name


@pytest.mark.parametrize("name", ["hifigan_v2", "hifigan_v3"])
def test_hifigan_presets_match_the_published_configs(name):
    # The fixtures' config.json are jik876/hifi-gan's config_v2.json / config_v3.json.
    peer = read_checkpoint(PEERS / name / "g_00000000")
    ours = compose_config([f"model={name}", "features=hifigan_22k"])
    assert plain(ours.model.generator) == plain(peer.generator)
    assert MelConfig.coerce(ours.features) == peer.features


# ------------------------------------------------------------------------------------------------
# Official checkpoints: init_from, synthesize, bad files
# ------------------------------------------------------------------------------------------------

HIFIGAN_RUN = ["model=hifigan_v2", "features=hifigan_22k", "model.discriminators.mpd.channels=[4,16,32,64,64]",
               "model.discriminators.msd.channels=[8,8,16,32,64,64,64]"]
BIGVGAN_RUN = ["experiment=bigvgan_v2_24k_100band", "model.generator.upsample_initial_channel=64",
               "model.discriminators.mpd.channels=[4,16,32,64,64]", "model.discriminators.cqtd.filters=8",
               "model.discriminators.cqtd.max_filters=64"]
INIT_FROM = [
    (HIFIGAN_RUN, PEERS / "hifigan_v2" / "g_00000000", "hifigan_v2", 22050),
    (BIGVGAN_RUN, BIGVGAN, "bigvgan_v2_24khz_100band", 24000),
]


@pytest.mark.parametrize("run, path, fixture, rate", INIT_FROM, ids=["hifigan_g_file", "bigvgan_folder"])
def test_init_from_an_official_checkpoint(tmp_path, run, path, fixture, rate):
    io = np.load(PEERS / fixture / "io.npz")
    # After init, the run's generator is the peer's: it reproduces the peer's audio for the peer's mel.
    model = instantiate(compose_config(run).model)
    loaded = InitFromCheckpoint(path).apply(model)
    assert loaded["generator"] and loaded["discriminators"] == []
    model.generator.eval()
    with torch.inference_mode():
        audio = model.generator(torch.from_numpy(io["mel"]))
    np.testing.assert_allclose(audio.numpy(), io["audio_out"], atol=1e-4, rtol=0)

    # And a few steps train from there.
    cfg = compose_config([
        *run, *path_overrides(tmp_path), *QUIET, "~logger", "data=filelist", *synthetic_lists(tmp_path, rate),
        "data.batch_size=1", "data.segment_size=4096", "data.max_val_seconds=0.5",
        "trainer.max_steps=2", "trainer.val_check_interval=2",
        f"init_from={path}",
    ])
    result = train(cfg)
    assert result.global_step == 2 and result.last_checkpoint is not None
    start = read_checkpoint(path).generator_state
    tuned = load_generator(result.last_checkpoint, remove_weight_norm=False).state_dict()
    moved = max((tuned[k] - start[k]).abs().max().item() for k in start)
    assert 0 < moved < 1e-2, "two AdamW steps at lr <= 2e-4 from the peer's weights, not a fresh start"


def test_init_from_with_another_preset_lists_the_differences():
    model = instantiate(compose_config(["experiment=bigvgan_v2_24k_100band", *TINY]).model)
    with pytest.raises(CheckpointError) as excinfo:
        InitFromCheckpoint(BIGVGAN).apply(model)
    message = str(excinfo.value)
    assert "upsample_initial_channel" not in message, "only the fields that differ are listed"
    assert "model.generator.upsample_rates=[4,4,2,2,2,2] (this run: [8,8,4])" in message


@pytest.mark.parametrize(
    "path, fixture",
    [(PEERS / "hifigan_v3" / "g_00000000", "hifigan_v3"), (BIGVGAN, "bigvgan_v2_24khz_100band")],
    ids=["hifigan_g_file", "bigvgan_folder"],
)
def test_synthesize_cli_on_an_official_checkpoint(tmp_path, path, fixture):
    io = np.load(PEERS / fixture / "io.npz")
    config = read_checkpoint(path).features
    wav = tmp_path / "in.wav"
    sf.write(wav, io["audio_in"], config.sampling_rate, subtype="FLOAT")
    out = tmp_path / "out"
    env = {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "melvoc.synthesize", str(wav), "--checkpoint", str(path), "-o", str(out),
         "--subtype", "FLOAT", "--device", "cpu", "-q"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    written = sorted(out.glob("*.wav"))
    assert len(written) == 1
    audio, rate = sf.read(written[0], dtype="float32")
    assert rate == config.sampling_rate
    # The library's path: the audio trimmed to whole hops (as the data module does), its mel, the generator.
    generator = load_generator(path)
    samples = io["audio_in"].size // config.hop_size * config.hop_size
    with torch.inference_mode():
        mel = MelSpectrogram(generator.config)(torch.from_numpy(io["audio_in"][:samples]))
        expected = generator(mel.unsqueeze(0)).reshape(-1).numpy()
    np.testing.assert_allclose(audio, expected, atol=1e-5, rtol=0)
    # The peer's own output for its mel of the untrimmed audio: the same away from the last frames,
    # whose mels see the trimmed end (the generators' receptive field spans a few thousand samples).
    peer = io["audio_out"].reshape(-1)
    np.testing.assert_allclose(audio[:16384], peer[:16384], atol=1e-4, rtol=0)


def _broken(tmp_path: Path, name: str, how: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(PEERS / name, folder)
    weights = folder / ("g_00000000" if name.startswith("hifigan") else "bigvgan_generator.pt")
    if how == "missing config":
        (folder / "config.json").unlink()
    elif how == "wrong layout":
        torch.save({"model": torch.load(weights, weights_only=True)["generator"]}, weights)
    else:
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    return weights if name.startswith("hifigan") else folder


@pytest.mark.parametrize("how, message", [
    ("missing config", r"config\.json"),
    ("wrong layout", r"expected .*'generator'.*found \['model'\]"),
    ("truncated", r"cannot be read.*truncated"),
])
@pytest.mark.parametrize("name", ["hifigan_v2", "bigvgan_v2_24khz_100band"])
def test_bad_official_checkpoints_are_clear_errors(tmp_path, name, how, message):
    path = _broken(tmp_path, name, how)
    with pytest.raises(CheckpointError, match=message) as excinfo:
        load_generator(path)
    assert str(path.parent if path.is_file() else path) in str(excinfo.value)
    model = instantiate(compose_config(HIFIGAN_RUN if name.startswith("hifigan") else BIGVGAN_RUN).model)
    with pytest.raises(CheckpointError, match=message):
        InitFromCheckpoint(path).apply(model)
