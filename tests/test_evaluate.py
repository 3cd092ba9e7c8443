"""python -m melvoc.evaluate on real files in tmp_path."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from melvoc.evaluate import main
from melvoc.evaluation.scoring import EvaluationError, evaluate
from melvoc.metrics import score
from tests.test_metrics import low_pass, speech, white_noise

SR = 22050
STEMS = ("utt0", "utt1", "utt2")
CHEAP = "pesq,mstft,mcd"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """refs/ (WAV), same/ (copies), noisy/ (10 dB SNR, float WAV), lowpass/ (3 kHz, FLAC)."""
    root = tmp_path_factory.mktemp("evaluate")
    for folder in ("refs", "same", "noisy", "lowpass"):
        (root / folder).mkdir()
    for seed, stem in enumerate(STEMS):
        ref = speech(seed, seconds=1.5)
        sf.write(root / "refs" / f"{stem}.wav", ref, SR, subtype="FLOAT")
        sf.write(root / "same" / f"{stem}.wav", ref, SR, subtype="FLOAT")
        sf.write(root / "noisy" / f"{stem}.wav", white_noise(ref, 10.0, seed), SR, subtype="FLOAT")
        sf.write(root / "lowpass" / f"{stem}.flac", low_pass(ref, 3000.0, SR), SR)
    return root


def _read(path: Path) -> np.ndarray:
    return sf.read(path, dtype="float32")[0]


def test_json_of_one_set_has_the_documented_layout_and_values(data, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert main([str(data / "refs"), "--predicted", str(data / "noisy"), "--metrics", CHEAP,
                 "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"metrics", "files"}
    assert list(result["metrics"]) == ["pesq", "mstft", "mcd"]
    assert [f["name"] for f in result["files"]] == list(STEMS)
    for row in result["files"]:
        expected = score(_read(data / "refs" / f"{row['name']}.wav"), _read(data / "noisy" / f"{row['name']}.wav"),
                         SR, ("pesq", "mstft", "mcd"))
        # pytest >= 9.2's approx refuses a dict holding a string: the name is compared on its own.
        assert set(row) == {"name", *expected}
        assert {k: v for k, v in row.items() if k != "name"} == pytest.approx(expected, rel=1e-12)
    for name, stats in result["metrics"].items():
        values = [row[name] for row in result["files"]]
        assert set(stats) == {"mean", "ci95", "n"}
        assert stats["n"] == 3
        assert stats["mean"] == pytest.approx(np.mean(values))
        assert stats["ci95"] == pytest.approx(4.302652729911275 * np.std(values, ddof=1) / np.sqrt(3))
    table = capsys.readouterr().out
    assert re.search(r"pesq ↑\s+\d\.\d{3} ± \d\.\d{3} \(n=3\)", table)


def test_sets_side_by_side_in_json_and_report(data, tmp_path):
    out, report = tmp_path / "ab.json", tmp_path / "ab.html"
    assert main([str(data / "refs"), "-p", str(data / "same"), "-p", str(data / "noisy"), "-p", str(data / "lowpass"),
                 "--metrics", CHEAP, "--json", str(out), "--report", str(report), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert list(result) == ["same", "noisy", "lowpass"]
    same, noisy, lowpass = (result[k]["metrics"] for k in result)
    assert same["pesq"]["mean"] >= 4.4 and same["mstft"]["mean"] <= 1e-3 and same["mcd"]["mean"] <= 0.05
    for bad in (noisy, lowpass):
        assert bad["pesq"]["mean"] <= same["pesq"]["mean"] - 0.5
        assert bad["mstft"]["mean"] > same["mstft"]["mean"] + 0.3
        assert bad["mcd"]["mean"] > same["mcd"]["mean"] + 1.0
    page = report.read_text()
    assert page.count("<audio controls") == 3 * 4  # reference + 3 sets per file
    assert page.count("src='data:image/png;base64,") == 3 * 4
    assert page.count("data:audio/wav;base64,") == 3 * 4
    assert all(f"<th>{name}</th>" in page for name in ("same", "noisy", "lowpass"))
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)  # self-contained
    assert "class='best'" in page


def test_pitch_metrics_through_the_cli(data, tmp_path):
    out = tmp_path / "pitch.json"
    assert main([str(data / "refs"), "-p", str(data / "same"), "--metrics", "periodicity,vuv_f1,f0_rmse",
                 "--pitch-model", "tiny", "--json", str(out), "-q"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["periodicity"]["mean"] <= 0.02 and metrics["vuv_f1"]["mean"] >= 0.99
    assert metrics["f0_rmse"]["mean"] == 0.0


def test_filelist_reference_and_resampled_predictions(data, tmp_path):
    filelist = tmp_path / "val.txt"
    filelist.write_text("".join(f"{data / 'refs' / stem}.wav|speaker|text\n" for stem in STEMS))
    at16k = tmp_path / "at16k"
    at16k.mkdir()
    for stem in STEMS:
        sf.write(at16k / f"{stem}.wav", soxr.resample(_read(data / "refs" / f"{stem}.wav"), SR, 16000), 16000,
                 subtype="FLOAT")
    (result,) = evaluate(filelist, [at16k], metrics=("pesq", "mcd"), progress=False)
    noisy = {row["name"]: row for row in evaluate(data / "refs", [data / "noisy"], metrics=("pesq", "mcd"),
                                                   progress=False)[0].files}
    assert [row["name"] for row in result.files] == list(STEMS)
    for row in result.files:
        # 22.05 -> 16 -> 22.05 kHz keeps everything below 8 kHz: near the identity, far from the noise.
        assert row["pesq"] > 4.3 > noisy[row["name"]]["pesq"]
        assert row["mcd"] < noisy[row["name"]]["mcd"] / 3
    with pytest.raises(EvaluationError, match=r"16000 Hz, its reference .* 22050 Hz \(drop --no-resample"):
        evaluate(filelist, [at16k], metrics=("mcd",), resample=False, progress=False)


def test_all_bad_inputs_are_named_in_one_error_before_scoring(data, tmp_path, capsys):
    refs, pred = tmp_path / "refs", tmp_path / "pred"
    shutil.copytree(data / "refs", refs)
    shutil.copytree(data / "noisy", pred)
    sf.write(refs / "silent.wav", np.zeros(SR, dtype=np.float32), SR)
    shutil.copy(pred / "utt0.wav", pred / "silent.wav")
    (pred / "utt1.wav").unlink()  # missing pair
    (pred / "utt2.wav").write_bytes(b"")  # empty file
    (refs / "utt3.wav").write_text("not audio")  # unreadable reference
    (pred / "extra.wav").write_bytes((pred / "utt0.wav").read_bytes())  # prediction without reference
    assert main([str(refs), "-p", str(pred), "--metrics", "mcd", "-q"]) == 2
    message = capsys.readouterr().err
    assert "5 problem(s)" in message
    assert f"{refs / 'silent.wav'}: silent reference" in message
    assert f"{refs / 'utt1.wav'}: no prediction with the stem 'utt1'" in message
    assert f"{pred / 'utt2.wav'}: empty file" in message
    assert f"{refs / 'utt3.wav'}: unreadable audio" in message
    assert f"{pred / 'extra.wav'}: no reference with the stem 'extra'" in message
    assert "nothing was scored" in message


def test_length_difference_past_one_hop_warns(data, tmp_path):
    pred = tmp_path / "long"
    pred.mkdir()
    for stem in STEMS:
        audio = _read(data / "refs" / f"{stem}.wav")
        extra = 300 if stem == "utt1" else 100
        sf.write(pred / f"{stem}.wav", np.concatenate([audio, np.zeros(extra, np.float32)]), SR, subtype="FLOAT")
    with pytest.warns(UserWarning, match=r"1 prediction\(s\) differ .* more than one hop \(256 samples\)") as record:
        (result,) = evaluate(data / "refs", [pred], metrics=("mstft",), progress=False)
    assert "utt1.wav" in str(record[0].message) and "utt0.wav" not in str(record[0].message)
    assert all(row["mstft"] == 0.0 for row in result.files)


def test_argument_errors(data, capsys):
    assert main([str(data / "refs"), "--metrics", "mcd"]) == 2
    assert "nothing to score" in capsys.readouterr().err
    assert main([str(data / "refs"), "-p", str(data / "same"), "--metrics", "pesq,mos"]) == 2
    assert "choose from" in capsys.readouterr().err
    assert main([str(data / "missing"), "-p", str(data / "same"), "--metrics", "mcd"]) == 2
    assert "data source not found" in capsys.readouterr().err


@pytest.mark.slow
def test_checkpoint_copy_synthesis_scores_the_validation_audio(tmp_path_factory, tmp_path):
    from tests._trained import one_thread, trained_run

    run = trained_run(tmp_path_factory)
    with one_thread():
        (result,) = evaluate(run.val_list, checkpoints=[run.checkpoint], metrics=("mstft", "mcd"),
                             synthesized_dir=tmp_path / "synth", progress=False)
    assert result.name == run.checkpoint.stem
    for row in result.files:
        reference = sf.read(next(p for p in run.val_files if p.stem == row["name"]), dtype="float32")[0]
        predicted = run.val_audio[row["name"]].reshape(-1)
        n = min(reference.shape[0], predicted.shape[0])
        expected = score(reference[:n], predicted[:n], 22050, ("mstft", "mcd"))
        assert set(row) == {"name", *expected}
        assert {k: v for k, v in row.items() if k != "name"} == pytest.approx(expected, rel=1e-6)


def test_checkpoint_report_without_synthesized_dir_plays_the_synthesized_audio(tmp_path_factory, tmp_path, capsys):
    """``--checkpoint`` with ``--report`` and no ``--synthesized-dir``: the temporary copy-synthesis folder
    outlives the report, which embeds its audio (it used to fail with ``<tmp>/last/<clip>.wav: file not found``)."""
    from tests._trained import one_thread, trained_run

    run = trained_run(tmp_path_factory)
    report, out = tmp_path / "ab.html", tmp_path / "ab.json"
    with one_thread():
        code = main([str(run.val_list), "--checkpoint", str(run.checkpoint), "--metrics", "mcd",
                     "--report", str(report), "--json", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    clips = len(json.loads(out.read_text())["files"])
    page = report.read_text()
    assert clips >= 1 and page.count("data:audio/wav;base64,") == 2 * clips  # reference + the checkpoint
    assert f"<th>{run.checkpoint.stem}</th>" in page
