"""python -m melvoc.identify on mels of every preset and of the peers' own feature code, with and
without audio; and the pipeline's mel-statistics check (fine-tuning on data.mel_dir, synthesis)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from melvoc import identify as identify_cli
from melvoc.data.dataset import AudioDataset
from melvoc.features import MelConfig, MelSpectrogram, mel_spectrogram
from melvoc.features.presets import load_presets, override_line
from melvoc.features.statistics import MelMismatchError, check_mel_statistics, mel_statistics
from melvoc.matching.identify import DEFAULT_TOLERANCE, identify
from tests.conftest import FIXTURES, compose_config

PRESETS = load_presets()
PEERS = {  # fixture folder -> (the preset its features are, the peer's audio rate)
    "hifigan_v2": ("hifigan_22k", 22050),
    "hifigan_v3": ("hifigan_22k", 22050),
    "bigvgan_v2_24khz_100band": ("bigvgan_24k", 24000),
    "vocos_mel_24khz": ("vocos_24k", 24000),
}


def speechlike(rate: int, seconds: float, seed: int) -> np.ndarray:
    """Tones with a slow envelope, noise, and a quarter second of digital silence; float32 in [-0.9, 0.9]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) * (1 + np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
            for f in rng.uniform(80, 4000, 5))
    x = x + 0.3 * rng.standard_normal(t.size)
    x[t.size // 3 : t.size // 3 + rate // 4] = 0.0
    return (0.9 * x / np.abs(x).max()).astype(np.float32)


def preset_mels(config: MelConfig, count: int = 2, seconds: float = 1.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    audio = [speechlike(config.sampling_rate, seconds, seed) for seed in range(count)]
    return [mel_spectrogram(torch.from_numpy(a), config).numpy() for a in audio], audio


def equivalent(a: MelConfig, b: MelConfig) -> bool:
    """Equal fields, fmax compared by its effective value (null = sampling_rate / 2)."""
    return a.replace(fmax=a.f_max) == b.replace(fmax=b.f_max)


# ------------------------------------------------------------------------------------------- with audio
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_identified_from_its_mels_and_audio(name):
    config = PRESETS[name]
    audio = [speechlike(config.sampling_rate, 1.0, seed) for seed in range(2)]
    features = MelSpectrogram(config)  # the feature path training runs
    mels = [features(torch.from_numpy(a)).numpy() for a in audio]
    result = identify(mels, [(a.astype(np.float64), config.sampling_rate) for a in audio], presets=PRESETS)
    # The verification is that feature path (in the mels' float32), not another computation: bit for bit.
    assert result.reproduces and result.max_error == 0.0
    assert equivalent(MelConfig(**result.config), config), result.config
    assert result.preset == name and result.override == f"features={name}"
    # every other candidate reproduces the mels too, and differs from the reported config
    for candidate in result.candidates:
        assert candidate.max_error <= DEFAULT_TOLERANCE
        assert not equivalent(candidate.config, config)


@pytest.mark.parametrize("folder", sorted(PEERS))
def test_peer_features_are_identified_with_their_audio(folder):
    preset, rate = PEERS[folder]
    data = np.load(FIXTURES / "peers" / folder / "io.npz")
    result = identify([data["mel"]], [(data["audio_in"].astype(np.float64), rate)], presets=PRESETS)
    assert result.reproduces, result.max_error
    assert result.preset == preset and result.override == f"features={preset}"
    assert equivalent(MelConfig(**result.config), PRESETS[preset])
    # The peers' test tone never reaches the log floor: clip_val is left open, and said so.
    assert any(note.startswith("clip_val:") for note in result.open)



# Vocos' own features (gemelo-ai/vocos MelSpectrogramFeatures, padding="center"): torchaudio's
# MelSpectrogram(sample_rate=24000, n_fft=1024, hop_length=256, n_mels=100, center=True, power=1), then
# ln(clamp(x, 1e-7)). torchaudio does not import on every host (its CUDA build here), so the reference
# is written with torch.stft as torchaudio computes it: periodic Hann window, reflect centring, |X|,
# its own htk filterbank (float32 frequency and mel grids, no norm), mel = spec^T @ fb.
def torchaudio_vocos_mel(audio: torch.Tensor, rate: int = 24000, n_fft: int = 1024, hop: int = 256,
                         n_mels: int = 100) -> torch.Tensor:
    """``(T,)`` float32 audio -> ``(n_mels, frames)`` log-mel, as Vocos' feature extractor makes it."""
    spec = torch.stft(audio, n_fft, hop_length=hop, win_length=n_fft, window=torch.hann_window(n_fft),
                      center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True).abs()
    bins = torch.linspace(0, rate // 2, n_fft // 2 + 1)
    top = 2595.0 * math.log10(1.0 + (rate / 2) / 700.0)
    edges = 700.0 * (10.0 ** (torch.linspace(0.0, top, n_mels + 2) / 2595.0) - 1.0)
    widths = edges[1:] - edges[:-1]
    ramps = edges.unsqueeze(0) - bins.unsqueeze(1)  # (n_freqs, n_mels + 2)
    rising, falling = -ramps[:, :-2] / widths[:-1], ramps[:, 2:] / widths[1:]
    filterbank = torch.clamp(torch.minimum(rising, falling), min=0.0)  # (n_freqs, n_mels)
    mel = torch.matmul(spec.transpose(-1, -2), filterbank).transpose(-1, -2)
    return torch.log(torch.clamp(mel, min=1e-7))


def tones(rate: int, seconds: float, seed: int) -> np.ndarray:
    """Five harmonic tones with slow envelopes and a quarter second of digital silence, no noise: most
    STFT bins hold only the window's side lobes, far below a float32 FFT's rounding. float32 in [-0.9, 0.9]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) * (1 + np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
            for f in rng.uniform(80, 2000, 5))
    x[t.size // 3 : t.size // 3 + rate // 4] = 0.0
    return (0.9 * x / np.abs(x).max()).astype(np.float32)


def test_reference_vocos_mel_is_torchaudios():
    try:
        import torchaudio
    except Exception as error:  # e.g. a CUDA build of torchaudio next to torch's CPU build
        pytest.skip(f"torchaudio does not import here ({type(error).__name__}: {str(error)[:80]}); "
                    "torchaudio_vocos_mel stays checked against melvoc's vocos_24k only")
    audio = torch.from_numpy(tones(24000, 0.5, 0))
    transform = torchaudio.transforms.MelSpectrogram(sample_rate=24000, n_fft=1024, hop_length=256, n_mels=100,
                                                     center=True, power=1)
    assert torch.equal(torchaudio_vocos_mel(audio), torch.log(torch.clamp(transform(audio), min=1e-7)))


def test_mels_of_vocos_feature_code_are_identified(tmp_path, capsys):
    # float32 audio of tones: the mels' quiet bins are the float32 FFT's rounding, which melvoc's
    # float32 features reproduce and a float64 computation does not (it gave max error 1.67 here).
    config = PRESETS["vocos_24k"]
    mel_paths, audio_paths = [], []
    for seed in range(2):
        audio_paths.append(tmp_path / f"clip{seed}.wav")
        audio = tones(24000, 1.5, seed)
        sf.write(audio_paths[-1], audio, 24000, subtype="FLOAT")
        mel = torchaudio_vocos_mel(torch.from_numpy(audio))
        assert (MelSpectrogram(config)(torch.from_numpy(audio)) - mel).abs().max() < 1e-4
        mel_paths.append(tmp_path / f"clip{seed}.{'pt' if seed else 'npy'}")
        if seed:
            torch.save(mel[None], mel_paths[-1])  # Vocos' (B, n_mels, frames)
        else:
            np.save(mel_paths[-1], mel.numpy())
    out = tmp_path / "found.json"
    code = identify_cli.main([*map(str, mel_paths), "--audio", *map(str, audio_paths), "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "reproduced: max error" in text and "override: features=vocos_24k\n" in text
    result = json.loads(out.read_text())
    assert result["override"] == "features=vocos_24k" and MelConfig(**result["config"]) == config
    # what is left is the filterbanks' float32 rounding (torchaudio's vs librosa's formulas)
    assert result["max_error"] < 1e-4


@pytest.mark.parametrize("config", [
    MelConfig(16000, 1024, 160, 640, 80, fmin=55.0, fmax=7600.0, eps=1e-10, clip_val=1e-10, log_base="10",
              mel_scale="htk", mel_norm=None),
    MelConfig(22050, 1024, 256, 1024, 80, fmax=7123.0, eps=1e-8),
    MelConfig(24000, 1024, 256, 1024, 100, fmax=12000.0, eps=1e-9, center=True, pad_mode="none"),
    MelConfig(22050, 1024, 256, 1024, 80, fmax=8000.0, eps=1e-9, pad_mode="zeros"),
], ids=["16k-win640-log10-htk", "fmax7123", "center", "zeros-pad"])
def test_configs_off_the_presets_are_found(config):
    mels, audio = preset_mels(config)
    result = identify(mels, [(a.astype(np.float64), config.sampling_rate) for a in audio], presets=PRESETS)
    assert result.reproduces
    found = MelConfig(**result.config)
    open_knobs = {note.split(":")[0] for note in result.open}
    for field in ("sampling_rate", "n_fft", "hop_size", "win_size", "num_mels", "fmin", "center", "pad_mode",
                  "log_base", "mel_scale", "mel_norm"):
        assert getattr(found, field) == getattr(config, field), field
    assert found.f_max == config.f_max
    for field in ("eps", "clip_val"):
        assert field in open_knobs or math.isclose(getattr(found, field), getattr(config, field)), field


def test_eps_and_floor_off_the_presets_are_fitted_exactly():
    # RVC-style: eps 2e-7; the floor 2e-6 binds once eps is small enough to let silence reach it.
    config = MelConfig(40000, 2048, 400, 2048, 125, eps=1e-12, clip_val=2e-6)
    mels, audio = preset_mels(config, count=1)
    result = identify(mels, [(audio[0].astype(np.float64), 40000)], presets=PRESETS)
    assert result.reproduces and result.config["clip_val"] == 2e-6
    config = MelConfig(22050, 1024, 256, 1024, 80, eps=2e-7)
    mels, audio = preset_mels(config, count=1)
    result = identify(mels, [(audio[0].astype(np.float64), 22050)], presets=PRESETS)
    assert result.reproduces and result.config["eps"] == 2e-7
    assert result.override == "features=vits_22k features.eps=2e-07"


def test_override_line_composes_to_the_config():
    config = PRESETS["hifigan_22k"].replace(fmax=7600.0, eps=1e-8, mel_scale="htk", mel_norm=None)
    preset, override = override_line(config, PRESETS)
    assert preset == "hifigan_22k"
    assert override == ("features=hifigan_22k features.fmax=7600.0 features.eps=1e-08 features.mel_scale=htk "
                        "features.mel_norm=null")
    composed = compose_config(override.split())
    assert MelConfig.coerce(composed.features) == config
    # the null of fmax survives Hydra's parser too
    null_fmax = PRESETS["vocos_24k"].replace(fmax=None, num_mels=80)
    assert MelConfig.coerce(compose_config(override_line(null_fmax, PRESETS)[1].split()).features) == null_fmax


# ---------------------------------------------------------------------------------------- without audio
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_without_audio_gives_num_mels_floor_and_open_knobs(name):
    config = PRESETS[name]
    mels, _ = preset_mels(config)
    result = identify(mels, None, presets=PRESETS)
    assert result.max_error is None and not result.reproduces
    assert result.config["num_mels"] == config.num_mels
    floor_binds = config.eps == 0 or math.sqrt(config.eps) * 0.02 < config.clip_val
    if floor_binds:  # silence sits on the log floor: its value gives the base and clip_val
        assert result.config["log_base"] == config.log_base and result.config["clip_val"] == config.clip_val
    else:  # VITS' eps 1e-6 keeps silence above the floor, per band: sqrt(eps) times the filter sums
        assert set(result.config) == {"num_mels"}
        assert result.statistics.floor_per_band is not None
    # the presets whose silence gives that floor are the candidates
    assert name in {c.preset for c in result.candidates}
    assert ("hifigan_22k" in {c.preset for c in result.candidates}) == (name == "hifigan_22k")
    assert "sampling_rate" in result.open and "hop_size" in result.open
    assert result.statistics.normalisation is None


@pytest.mark.parametrize("folder", sorted(PEERS))
def test_peer_mels_without_audio(folder):
    data = np.load(FIXTURES / "peers" / folder / "io.npz")
    result = identify([data["mel"]], None, presets=PRESETS)
    assert result.config == {"num_mels": data["mel"].shape[1]}
    assert result.statistics.floor is None and result.statistics.normalisation is None
    assert {"log_base", "clip_val", "eps", "fmax"} <= set(result.open)
    assert PEERS[folder][0] in {c.preset for c in result.candidates}


def test_normalised_mels_are_recognised():
    mels, _ = preset_mels(PRESETS["hifigan_22k"])
    stacked = np.concatenate(mels, axis=1)
    mean, std = stacked.mean(axis=1, keepdims=True), stacked.std(axis=1, keepdims=True)
    espnet = [(m - mean) / std for m in mels]
    assert "ESPnet" in mel_statistics(espnet).normalisation
    # Coqui TTS: 20*log10(clamp(mel, 1e-5)) - 20 dB, scaled from [-100, 0] dB to [-4, 4] and clipped.
    decibels = [20 * np.log10(np.maximum(np.exp(m), 1e-5)) - 20 for m in mels]
    coqui = [np.clip(8 * (d + 100) / 100 - 4, -4, 4) for d in decibels]
    assert "Coqui" in mel_statistics(coqui).normalisation
    assert "dB" in mel_statistics(decibels).normalisation


# ------------------------------------------------------------------------------------------ command line
def _write_set(folder: Path, config: MelConfig, count: int = 2) -> tuple[list[Path], list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    mel_paths, audio_paths = [], []
    for seed in range(count):
        audio_path = folder / f"utt{seed}.wav"
        sf.write(audio_path, speechlike(config.sampling_rate, 1.0, seed), config.sampling_rate, subtype="PCM_16")
        audio, _ = sf.read(audio_path, dtype="float32")  # the mels of the audio as stored
        mel = mel_spectrogram(torch.from_numpy(audio), config)
        if seed % 2:
            mel_path = folder / f"utt{seed}.pt"
            torch.save(mel[None], mel_path)  # HiFi-GAN's (1, num_mels, frames)
        else:
            mel_path = folder / f"utt{seed}.npy"
            np.save(mel_path, mel.numpy())
        mel_paths.append(mel_path)
        audio_paths.append(audio_path)
    return mel_paths, audio_paths


def test_cli_with_audio_writes_the_json_layout(tmp_path, capsys):
    mel_paths, audio_paths = _write_set(tmp_path, PRESETS["bigvgan_24k"])
    out = tmp_path / "found.json"
    # audio given in the other order: paired by stem
    code = identify_cli.main([*map(str, mel_paths), "--audio", *map(str, reversed(audio_paths)), "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "reproduced: max error" in text and "override: features=bigvgan_24k" in text
    result = json.loads(out.read_text())
    assert set(result) == {"config", "max_error", "preset", "override", "candidates"}
    assert equivalent(MelConfig(**result["config"]), PRESETS["bigvgan_24k"])
    assert result["preset"] == "bigvgan_24k" and result["override"] == "features=bigvgan_24k"
    assert result["max_error"] <= DEFAULT_TOLERANCE
    assert all(set(c) == {"config", "max_error", "preset", "override"} for c in result["candidates"])


@pytest.mark.slow  # the search that finds nothing goes through every structure: ~40 s here
def test_cli_without_audio_and_when_nothing_reproduces(tmp_path, capsys):
    mel_paths, audio_paths = _write_set(tmp_path, PRESETS["vocos_24k"])
    out = tmp_path / "stats.json"
    assert identify_cli.main([*map(str, mel_paths), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "log floor reached at -16.12 = ln(1e-7), Vocos-style" in text
    assert json.loads(out.read_text()) == {
        "config": {"num_mels": 100, "log_base": "e", "clip_val": 1e-7}, "max_error": None,
        "preset": "vocos_24k", "override": "features=vocos_24k",
        "candidates": [{"config": PRESETS["vocos_24k"].to_dict(), "max_error": None, "preset": "vocos_24k",
                        "override": "features=vocos_24k"}],
    }
    # Power (not magnitude) mels: no MelConfig makes them; the best candidates are listed with errors.
    for path in mel_paths:
        mel = identify_cli._read_mel(path)
        np.save(path.with_suffix(".npy"), np.log(np.maximum(np.exp(mel) ** 2, 1e-7)))
    npys = [p.with_suffix(".npy") for p in mel_paths]
    code = identify_cli.main([*map(str, npys), "--audio", *map(str, audio_paths), "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 1
    assert "NOT reproduced by any config searched" in text and "next best candidates:" in text
    result = json.loads(out.read_text())
    assert result["max_error"] > DEFAULT_TOLERANCE and result["candidates"]


def test_cli_usage_errors(tmp_path, capsys):
    mel_paths, audio_paths = _write_set(tmp_path, PRESETS["vits_22k"])
    assert identify_cli.main([str(tmp_path / "absent.npy")]) == 2
    assert "absent.npy: file not found" in capsys.readouterr().err
    assert identify_cli.main([*map(str, mel_paths), "--audio", str(audio_paths[0])]) == 2
    assert "2 mel file(s) and 1 audio file(s)" in capsys.readouterr().err
    np.save(tmp_path / "flat.npy", np.zeros(10))
    assert identify_cli.main([str(tmp_path / "flat.npy")]) == 2
    assert "expected (num_mels, frames)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- the pipeline's check
def test_check_names_the_floor_of_both_sides():
    mels, _ = preset_mels(PRESETS["vocos_24k"].replace(num_mels=80, sampling_rate=22050), count=1)
    with pytest.raises(MelMismatchError) as error:
        check_mel_statistics(mels[0], PRESETS["hifigan_22k"], fix="pass --skip-mel-check")
    assert str(error.value) == ("these mels floor at -16.12 = ln(1e-7), Vocos-style; the checkpoint's features "
                                "floor at ln(1e-5) = -11.51 (pass --skip-mel-check)")
    hifigan, _ = preset_mels(PRESETS["hifigan_22k"], count=1)
    check_mel_statistics(hifigan[0], PRESETS["hifigan_22k"])
    with pytest.raises(MelMismatchError, match=r"floor at -5.00 = log10\(1e-5\)"):
        check_mel_statistics(hifigan[0] / math.log(10), PRESETS["hifigan_22k"])
    with pytest.raises(MelMismatchError, match="integer-scale audio"):
        check_mel_statistics(hifigan[0] + math.log(32768), PRESETS["hifigan_22k"].replace(clip_val=1e-5 * 32768))
    with pytest.raises(MelMismatchError, match="100 mel bands, the checkpoint's features have num_mels=80"):
        check_mel_statistics(np.zeros((100, 5)), PRESETS["hifigan_22k"])
    # Teacher-forced predictions scatter around the floor without sitting on it: no error.
    rng = np.random.default_rng(0)
    predicted = np.maximum(hifigan[0], -11.0) + 0.3 * rng.standard_normal(hifigan[0].shape)
    check_mel_statistics(predicted, PRESETS["hifigan_22k"])


def _finetune_set(tmp_path: Path, made_with: MelConfig) -> Path:
    rate, hop = PRESETS["hifigan_22k"].sampling_rate, PRESETS["hifigan_22k"].hop_size
    audio = speechlike(rate, hop * 64 / rate, 3)
    sf.write(tmp_path / "utt.wav", audio, rate, subtype="FLOAT")
    mel_dir = tmp_path / "mels"
    mel_dir.mkdir()
    np.save(mel_dir / "utt.npy", mel_spectrogram(torch.from_numpy(audio), made_with).numpy())
    return mel_dir


def test_finetuning_stops_on_mels_of_other_features_unless_told(tmp_path):
    features = PRESETS["hifigan_22k"]
    mel_dir = _finetune_set(tmp_path, features.replace(eps=0.0, clip_val=1e-7))
    with pytest.raises(MelMismatchError, match=r"utt.npy: these mels floor at -16.12 = ln\(1e-7\).*"
                                               r"set data.check_mel_stats=false"):
        AudioDataset([tmp_path / "utt.wav"], features, segment_size=8192, mel_dir=mel_dir)
    dataset = AudioDataset([tmp_path / "utt.wav"], features, segment_size=8192, mel_dir=mel_dir, check_mel_stats=False)
    assert dataset[0]["mel_target"].min() == pytest.approx(math.log(1e-7))


def test_finetuning_config_passes_the_switch_to_the_datasets(tmp_path):
    features = PRESETS["hifigan_22k"]
    mel_dir = _finetune_set(tmp_path, features.replace(eps=0.0, clip_val=1e-7))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'utt.wav'}\n")
    from hydra.utils import instantiate

    for value in ("true", "false"):
        cfg = compose_config(["data=filelist", "features=hifigan_22k", f"data.train_filelist={tmp_path / 'list.txt'}",
                              f"data.val_filelist={tmp_path / 'list.txt'}", f"data.mel_dir={mel_dir}",
                              "data.segment_size=8192", "data.num_workers=0", f"data.check_mel_stats={value}"])
        datamodule = instantiate(cfg.data)
        if value == "true":
            with pytest.raises(MelMismatchError, match="Vocos-style"):
                datamodule.setup("fit")
        else:
            datamodule.setup("fit")
            assert datamodule.train_dataset is not None


# ------------------------------------------------------------------------------------------- synthesis
from tests._trained import _one_thread, exported, run  # noqa: E402,F401 (fixtures)


def test_synthesis_stops_on_mels_of_other_features_unless_told(run, exported, tmp_path, capsys):
    from melvoc.synthesize import main as synthesize_main

    name = "tts_output"
    audio = speechlike(run.features.sampling_rate, 1.0, 5)  # with silence, where the floors show
    vocos_style = run.features.replace(eps=0.0, clip_val=1e-7)
    mels = tmp_path / "mels"
    mels.mkdir()
    np.save(mels / f"{name}.npy", mel_spectrogram(torch.from_numpy(audio), vocos_style).numpy())
    np.save(mels / "own.npy", run.val_mel[sorted(run.val_mel)[0]].numpy())  # the checkpoint's own mels pass
    out = tmp_path / "out"
    code = synthesize_main(["--checkpoint", str(exported), "--output-dir", str(out), "-q", str(mels)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert f"{mels / name}.npy: these mels floor at -16.12 = ln(1e-7), Vocos-style" in err
    assert "pass --skip-mel-check" in err
    code = synthesize_main(["--checkpoint", str(exported), "--output-dir", str(out), "-q", "--skip-mel-check",
                            str(mels)])
    assert code == 0 and (out / f"{name}.wav").is_file() and (out / "own.wav").is_file()
