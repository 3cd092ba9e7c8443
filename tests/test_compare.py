"""python -m melvoc.compare against the original mel_processing.py and deliberately wrong copies.

The repository holds no copy of the original: it is extracted at test time from the seed page that
sits beside the checkout (``../shared/seed/mel_processing.md``); without it these tests skip.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from melvoc import compare
from melvoc.features import MelConfig

REPO = Path(__file__).resolve().parents[1]
SEED_PAGE = Path(__file__).resolve().parents[2] / "shared" / "seed" / "mel_processing.md"
ROW = re.compile(r"^(\S+)\s+(\w+)\s+(float32|float64)\s.*?\s(pass|FAIL)\b", re.M)


@pytest.fixture(scope="module")
def original_source() -> str:
    if not SEED_PAGE.is_file():
        pytest.skip(f"original mel_processing.py not available: {SEED_PAGE} is absent")
    blocks = re.findall(r"```py(?:thon)?\n(.*?)```", SEED_PAGE.read_text(), re.S)
    source = next((block for block in blocks if "def mel_spectrogram_torch" in block), None)
    if source is None:
        pytest.skip(f"{SEED_PAGE} holds no code block defining mel_spectrogram_torch")
    return source


def write_module(folder: Path, source: str, name: str = "mel_processing.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(source)
    return path


def altered(source: str, old: str, new: str, count: int) -> str:
    assert source.count(old) == count, f"the original no longer contains {old!r} {count} time(s)"
    return source.replace(old, new)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "melvoc.compare", *args],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )


def results(stdout: str) -> dict[tuple[str, str, str], str]:
    """(preset, function, dtype) -> "pass" / "FAIL" from the printed table."""
    return {(m[0], m[1], m[2]): m[3] for m in ROW.findall(stdout)}


def test_original_module_passes_on_every_function(original_source, tmp_path):
    reference = write_module(tmp_path / "legacy", original_source)
    odd_center = tmp_path / "odd_16k_center.yaml"
    odd_center.write_text(yaml.safe_dump(dict(
        sampling_rate=16000, n_fft=1000, hop_size=200, win_size=800, num_mels=64,
        fmin=55.0, fmax=7600.0, center=True,
    )))
    proc = run_cli(
        "--reference", str(reference), "--preset", "vits_22k", "--preset", str(odd_center),
        "--preset", "vocos_24k", "--repeat", "1",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = results(proc.stdout)
    for preset in ("vits_22k", "odd_16k_center"):
        for function in ("mel_spectrogram_torch", "spectrogram_torch", "spec_to_mel_torch"):
            for dtype in ("float32", "float64"):
                assert table[(preset, function, dtype)] == "pass"
    for function in compare.FUNCTIONS[3:]:
        assert table[("-", function, "float64")] == "pass"
    assert len(table) == 2 * 2 * 3 + 2 * 4
    assert "preset vocos_24k skipped" in proc.stdout and "pad_mode='none'" in proc.stdout
    assert re.search(r"\d+\.\d\dx$", proc.stdout, re.M), "the speed ratio column is missing"
    assert "min value" not in proc.stdout and "max value" not in proc.stdout
    assert proc.stdout.rstrip().endswith(f"OK: all {len(table)} comparisons within tolerance")


def test_wrong_magnitude_epsilon_fails(original_source, tmp_path):
    source = altered(original_source, "+ 1e-6)", "+ 1e-9)", count=2)
    proc = run_cli("--reference", str(write_module(tmp_path, source)), "--preset", "hifigan_22k", "--repeat", "0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    table = results(proc.stdout)
    for dtype in ("float32", "float64"):
        assert table[("hifigan_22k", "mel_spectrogram_torch", dtype)] == "FAIL"
        assert table[("hifigan_22k", "spec_to_mel_torch", dtype)] == "pass"
    assert table[("hifigan_22k", "spectrogram_torch", "float64")] == "FAIL"
    assert "FAILED:" in proc.stdout


def test_wrong_filterbank_fails_only_the_mel_functions(original_source, tmp_path, capsys):
    source = altered(original_source, "fmin=fmin, fmax=fmax", "fmin=fmin, fmax=fmax, htk=True", count=2)
    code = compare.main(["--reference", str(write_module(tmp_path, source)), "--preset", "vits_22k", "--repeat", "0"])
    out = capsys.readouterr().out
    assert code == 1
    table = results(out)
    for dtype in ("float32", "float64"):
        assert table[("vits_22k", "mel_spectrogram_torch", dtype)] == "FAIL"
        assert table[("vits_22k", "spec_to_mel_torch", dtype)] == "FAIL"
        assert table[("vits_22k", "spectrogram_torch", dtype)] == "pass"


def test_wrong_log_floor_fails_the_compression_rows(original_source, tmp_path, capsys):
    source = altered(original_source, "torch.log(torch.clamp(x, min=clip_val) * C)",
                     "torch.log(torch.clamp(x, min=clip_val)) * C", count=1)
    code = compare.main(["--reference", str(write_module(tmp_path, source)), "--preset", "vits_22k", "--repeat", "0"])
    table = results(capsys.readouterr().out)
    assert code == 1
    assert table[("-", "dynamic_range_compression_torch", "float64")] == "FAIL"
    assert table[("vits_22k", "mel_spectrogram_torch", "float64")] == "pass"


def test_presets_sharing_fmax_are_compared_with_their_own_legacy_filterbank(original_source, tmp_path, capsys):
    # vits_22k and bigvgan_44k both have fmax null: the original's cache would hand the second one
    # the first one's filterbank unless the tool resets it between presets.
    reference = write_module(tmp_path, original_source)
    code = compare.main(["--reference", str(reference), "--preset", "vits_22k", "--preset", "bigvgan_44k", "--repeat", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert results(out)[("bigvgan_44k", "mel_spectrogram_torch", "float32")] == "pass"


def test_missing_functions_are_skipped_with_a_note(original_source, tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "mel_processing", raising=False)
    folder = tmp_path / "project"
    write_module(folder, original_source, "mel_processing.py")
    # A module importing from its own folder, as VITS forks do, with only one of the functions.
    partial = write_module(folder, "from mel_processing import mel_spectrogram_torch\n", "partial.py")
    code = compare.main(["--reference", str(partial), "--preset", "vits_22k", "--repeat", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert {key[1] for key in results(out)} == {"mel_spectrogram_torch"}
    assert "legacy module has no spectrogram_torch: skipped" in out
    assert "legacy module has no dynamic_range_compression_torch: skipped" in out


def test_legacy_errors_fail_the_row(tmp_path, capsys):
    source = (
        "def mel_spectrogram_torch(y, n_fft, num_mels, sampling_rate, hop_size, win_size, fmin, fmax, center=False):\n"
        "    raise RuntimeError('boom')\n"
    )
    code = compare.main(["--reference", str(write_module(tmp_path, source)), "--preset", "vits_22k", "--repeat", "0"])
    out = capsys.readouterr().out
    assert code == 1
    assert "legacy raised RuntimeError: boom" in out


def test_usage_errors_exit_with_2(original_source, tmp_path, capsys):
    missing = tmp_path / "nowhere.py"
    assert compare.main(["--reference", str(missing)]) == 2
    assert "no such file" in capsys.readouterr().err

    broken = write_module(tmp_path, "import not_a_module_anywhere\n", "broken.py")
    assert compare.main(["--reference", str(broken)]) == 2
    assert "ModuleNotFoundError" in capsys.readouterr().err

    reference = write_module(tmp_path, original_source)
    assert compare.main(["--reference", str(reference), "--preset", "no_such_preset"]) == 2
    err = capsys.readouterr().err
    assert "no_such_preset" in err and "vits_22k" in err

    assert compare.main(["--reference", str(reference), "--preset", "vocos_24k"]) == 2
    assert "no preset left" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        compare.main([])
    assert exit_info.value.code == 2


def test_fallback_table_mirrors_conf_features():
    conf_dir = REPO / "conf" / "features"
    from_yaml = {
        path.stem: MelConfig.coerce(yaml.safe_load(path.read_text())) for path in conf_dir.glob("*.yaml")
    }
    built_in = {name: MelConfig(**fields) for name, fields in compare.FALLBACK_PRESETS.items()}
    assert from_yaml == built_in


def test_presets_come_from_conf_or_the_built_in_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert compare.find_conf_dir() == REPO / "conf" / "features"
    from_conf, conf_notes = compare.load_presets(None, compare.find_conf_dir())
    from_table, table_notes = compare.load_presets(None, None)
    assert from_conf == from_table
    assert [name for name, _ in from_table] == ["bigvgan_24k", "bigvgan_44k", "hifigan_22k", "sovits_44k", "vits_22k"]
    assert conf_notes == table_notes
    assert any("vocos_24k skipped" in note for note in table_notes)
    assert any("hifigan_22k has eps=1e-09" in note for note in table_notes)
    with pytest.raises(compare.UsageError, match="not a directory"):
        compare.find_conf_dir(tmp_path / "absent")
