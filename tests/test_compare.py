"""python -m melvoc.compare on hand-written mel_processing.py copies (tests/copies/), one per failure
class met on real copies, and on the original (extracted from ../shared/seed/mel_processing.md when
it is there)."""

from __future__ import annotations

import json
from pathlib import Path

import librosa
import pytest
import torch

from melvoc import compare
from melvoc.features import MelConfig
from melvoc.features.presets import load_presets
from melvoc.matching.copies import KNOWN

from ._golden import seed_source

COPIES = Path(__file__).resolve().parent / "copies"
PRESETS = load_presets()


def run(tmp_path: Path, copy: str | Path, *args: str) -> tuple[int, dict]:
    """compare.main on a copy: the exit code and the --json content."""
    out = tmp_path / "verdicts.json"
    reference = copy if isinstance(copy, Path) else COPIES / f"{copy}.py"
    code = compare.main(["--reference", str(reference), "--json", str(out), *args])
    return code, json.loads(out.read_text())


def verdicts(data: dict) -> dict[str, str]:
    return {name: entry["status"] for name, entry in data["functions"].items()}


def config_of(data: dict, name: str) -> MelConfig:
    return MelConfig(**data["functions"][name]["config"])


def test_json_layout_and_reordered_arguments(tmp_path, capsys):
    code, data = run(tmp_path, "reordered")
    text = capsys.readouterr().out
    assert code == 0, text
    assert set(data) == {"functions"}
    entry = data["functions"]["mel_spectrogram_torch"]
    assert set(entry) == {"status", "config", "max_diff", "reason"}
    assert entry["status"] == "match" and config_of(data, "mel_spectrogram_torch") == PRESETS["vits_22k"]
    assert entry["max_diff"] <= 1e-5
    # the hyper-parameter wrapper cannot be bound: listed as skipped, with the signature difference
    assert "mel_spectrogram_data" not in data["functions"]
    assert "skipped mel_spectrogram_data: signature mel_spectrogram_data(audio, hps): no counterpart for 'hps'" in text


def test_missing_sampling_rate_is_bound_by_name(tmp_path):
    code, data = run(tmp_path, "no_sampling_rate")
    assert code == 0 and verdicts(data) == {"spectrogram_torch": "match"}


def test_old_stft_api_runs_on_the_compatibility_layer_of_its_own_module(tmp_path, capsys):
    stft, mel = torch.stft, librosa.filters.mel
    code, data = run(tmp_path, "old_stft")
    text = capsys.readouterr().out
    assert code == 0, text
    functions = data["functions"]
    assert verdicts(data) == dict.fromkeys(["spectrogram_torch", "spec_to_mel_torch", "mel_spectrogram_torch"], "match")
    assert all(config_of(data, name) == PRESETS["vits_22k"] for name in functions)
    layer = "ran through the torch<2 / librosa<0.10 compatibility layer"
    stft_old = "torch.stft without return_complex returns torch.view_as_real of the complex result"
    mel_old = "librosa.filters.mel takes positional arguments"
    assert functions["spectrogram_torch"]["reason"] == f"matches preset vits_22k; {layer} ({stft_old})"
    assert functions["spec_to_mel_torch"]["reason"] == f"matches preset vits_22k; {layer} ({mel_old})"
    assert functions["mel_spectrogram_torch"]["reason"] == f"matches preset vits_22k; {layer} ({stft_old}; {mel_old})"
    assert ("note: spectrogram_torch, spec_to_mel_torch, mel_spectrogram_torch ran through the torch<2 / "
            "librosa<0.10 compatibility layer, which compare gives the copy's own module only; to run it without: "
            "pass return_complex=True to torch.stft") in text
    assert "OK: all 3 functions match" in text
    # torch and librosa themselves were never changed
    assert torch.stft is stft and librosa.filters.mel is mel
    with pytest.raises(RuntimeError, match="return_complex"):
        torch.stft(torch.zeros(2048), 1024, window=torch.hann_window(1024))
    with pytest.raises(TypeError):
        librosa.filters.mel(22050, 1024)


def test_what_the_compatibility_layer_does_not_cover_is_named_with_the_fix(tmp_path, capsys):
    code, data = run(tmp_path, "rfft_1_7")
    text = capsys.readouterr().out
    assert code == 3 and verdicts(data) == {"mel_spectrogram_torch": "cannot_run"}
    reason = data["functions"]["mel_spectrogram_torch"]["reason"]
    assert reason.startswith("AttributeError: module 'torch' has no attribute 'rfft'; fix: torch.rfft/irfft were "
                             "removed in torch 1.8: use torch.fft.rfft/irfft")
    assert reason.endswith("(on the torch<2 / librosa<0.10 compatibility layer, which it needed: "
                           "librosa.filters.mel takes positional arguments)")
    assert "\n" not in reason and "Traceback" not in text and "CANNOT RUN: 1 of 1" in text


def test_copy_that_calls_the_old_api_at_import_runs_on_the_layer(tmp_path, capsys):
    code, data = run(tmp_path, "module_filterbank")
    text = capsys.readouterr().out
    assert code == 0 and verdicts(data) == {"spec_to_mel_torch": "match"}
    assert config_of(data, "spec_to_mel_torch") == PRESETS["vits_22k"]
    assert data["functions"]["spec_to_mel_torch"]["reason"] == (
        "matches preset vits_22k; called with num_mels=513 it gave 80 bands, so the log floor was probed with "
        "num_mels=80 only; ran through the torch<2 / librosa<0.10 compatibility layer (librosa.filters.mel takes "
        "positional arguments)")
    assert "to run it without: call librosa.filters.mel with keywords" in text


def test_eps_1e8_is_fitted(tmp_path):
    code, data = run(tmp_path, "eps_1e8")
    assert code == 0 and set(verdicts(data).values()) == {"match"}
    assert config_of(data, "mel_spectrogram_torch") == PRESETS["vits_22k"].replace(eps=1e-8)
    assert config_of(data, "spectrogram_torch").eps == 1e-8
    assert "eps=1e-08" in data["functions"]["mel_spectrogram_torch"]["reason"]


def test_floor_2e6_is_fitted(tmp_path):
    code, data = run(tmp_path, "floor_2e6")
    assert code == 0, data
    # With vits_22k's numbers eps 2e-7 keeps silence at >= 2.0e-5, above both floors (1e-5 and the
    # copy's 2e-6): the quiet probes (silence and near-silence, also with as many mel bands as STFT
    # bins, where empty filters sit on the floor) show the copy's floor.
    vits = PRESETS["vits_22k"]
    assert config_of(data, "mel_spectrogram_torch") == vits.replace(eps=2e-7, clip_val=2e-6)
    assert config_of(data, "spec_to_mel_torch") == vits.replace(clip_val=2e-6)
    assert config_of(data, "spectrogram_torch").eps == 2e-7
    assert "clip_val=2e-06" in data["functions"]["mel_spectrogram_torch"]["reason"]
    assert data["functions"]["dynamic_range_compression_torch"]["config"] == {"clip_val": 2e-6, "log_base": "e"}


def test_log10_mel_spectrogram_is_fitted(tmp_path):
    code, data = run(tmp_path, "log10")
    assert code == 0 and verdicts(data) == {"mel_spectrogram": "match"}
    assert config_of(data, "mel_spectrogram") == PRESETS["vits_22k"].replace(eps=1e-9, log_base="10")


def test_tuple_return_is_compared_by_its_mel(tmp_path):
    code, data = run(tmp_path, "tuple_return")
    assert code == 0 and verdicts(data) == {"mel_spectrogram_torch": "match"}


def test_shared_cache_gives_no_false_verdict(tmp_path):
    # In one module, float64 after float32 would reuse a float32 filterbank, and the 64-band
    # function would get the 80-band one: each function and dtype gets a fresh copy instead.
    code, data = run(tmp_path, "shared_cache")
    assert code == 0, data
    assert set(verdicts(data).values()) == {"match"}
    assert config_of(data, "mel_spectrogram_64") == PRESETS["vits_22k"].replace(num_mels=64)


def test_function_that_needs_another_ones_cache_cannot_run(tmp_path):
    code, data = run(tmp_path, "cache_dependent")
    assert code == 3
    assert verdicts(data) == {"spec_to_mel_torch": "cannot_run", "mel_spectrogram_torch": "match"}
    assert "KeyError" in data["functions"]["spec_to_mel_torch"]["reason"]


def test_mel_no_config_reproduces_differs(tmp_path):
    code, data = run(tmp_path, "htk_power")
    entry = data["functions"]["mel_spectrogram_torch"]
    assert code == 1 and entry["status"] == "differs" and entry["config"] is None
    assert entry["max_diff"] > 1 and "no MelConfig reproduces it" in entry["reason"]
    code, data = run(tmp_path, "eps_1e8", "--no-fit")
    assert code == 1 and data["functions"]["mel_spectrogram_torch"]["status"] == "differs"


# ------------------------------------------------------------------------------------------ the original
@pytest.fixture(scope="module")
def original_copy(tmp_path_factory) -> Path:
    """The original ``mel_processing.py`` as a file (skips, saying why, in a clone without ``../shared``)."""
    path = tmp_path_factory.mktemp("original") / "mel_processing.py"
    path.write_text(seed_source())
    return path


def test_original_matches_vits_and_under_hifigan_shows_its_eps(original_copy, tmp_path, capsys):
    code, data = run(tmp_path, original_copy)
    assert code == 0
    assert verdicts(data) == dict.fromkeys(KNOWN, "match")
    assert config_of(data, "mel_spectrogram_torch") == PRESETS["vits_22k"]
    assert "min value" not in capsys.readouterr().out  # its prints on out-of-range audio never fire
    # The README's example: hifigan_22k really has eps 1e-9, which the original does not.
    code, data = run(tmp_path, original_copy, "--preset", "hifigan_22k")
    assert code == 0
    assert config_of(data, "mel_spectrogram_torch") == PRESETS["hifigan_22k"].replace(eps=1e-6)
    assert "not preset hifigan_22k's values" in data["functions"]["mel_spectrogram_torch"]["reason"]
    assert config_of(data, "spec_to_mel_torch") == PRESETS["hifigan_22k"]


def test_several_presets_key_functions_by_preset(original_copy, tmp_path):
    code, data = run(tmp_path, original_copy, "--preset", "vits_22k", "--preset", "vocos_24k", "--no-fit")
    assert data["functions"]["mel_spectrogram_torch[vits_22k]"]["status"] == "match"
    # Vocos' features (no pre-pad, htk, ln(1e-7)) are not the original's
    assert data["functions"]["mel_spectrogram_torch[vocos_24k]"]["status"] == "differs"
    assert code == 1


def test_usage_errors_exit_with_2(tmp_path, capsys):
    assert compare.main(["--reference", str(tmp_path / "nowhere.py")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    assert compare.main(["--reference", str(tmp_path / "broken.py")]) == 2
    assert "ModuleNotFoundError" in capsys.readouterr().err
    reference = str(COPIES / "tuple_return.py")
    assert compare.main(["--reference", reference, "--preset", "no_such_preset"]) == 2
    err = capsys.readouterr().err
    assert "no_such_preset" in err and "vits_22k" in err
    assert compare.main(["--reference", reference, "--conf-dir", str(tmp_path / "absent")]) == 2
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        compare.main([])
    assert exit_info.value.code == 2
