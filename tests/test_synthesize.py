"""python -m melvoc.synthesize: copy-synthesis and mel files from a really trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from melvoc.data.io import AudioDataError
from melvoc.deploy.inference import CheckpointError
from melvoc.deploy.synthesize import SynthesisError, collect_inputs, load_mel_file, synthesize
from melvoc.synthesize import main
from tests._trained import _one_thread, exported, run  # noqa: F401 (fixtures)


def _cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


@pytest.mark.parametrize("which", ["checkpoint", "export"])
def test_copy_synthesis_reproduces_validation_audio_bit_for_bit(run, exported, tmp_path, which):
    checkpoint = run.checkpoint if which == "checkpoint" else exported
    out = tmp_path / "out"
    rc = _cli("--checkpoint", checkpoint, "--output-dir", out, "--subtype", "FLOAT", "--device", "cpu", "-q",
              *run.val_files)
    assert rc == 0
    for path in run.val_files:
        audio, rate = sf.read(out / f"{path.stem}.wav", dtype="float32")
        expected = run.val_audio[path.stem]
        assert rate == run.features.sampling_rate
        assert audio.shape == expected.shape
        # Not a trivial pass: the generator's output is neither silence nor the input clip.
        assert np.abs(expected).max() > 1e-4
        assert np.array_equal(audio, expected), f"{path.name}: max |diff| {np.abs(audio - expected).max()}"


def test_mel_files_give_the_validation_audio(run, tmp_path):
    names = sorted(run.val_mel)
    inputs = tmp_path / "mels"
    inputs.mkdir()
    np.save(inputs / f"{names[0]}.npy", run.val_mel[names[0]].numpy())
    # .pt with the (1, num_mels, frames) layout acoustic models often save.
    torch.save(run.val_mel[names[1]].unsqueeze(0).clone(), inputs / f"{names[1]}.pt")
    written = synthesize(run.checkpoint, [inputs], tmp_path / "out", subtype="FLOAT", device="cpu", progress=False)
    assert sorted(p.name for p in written) == sorted(f"{n}.wav" for n in names)
    for name in names:
        audio, rate = sf.read(tmp_path / "out" / f"{name}.wav", dtype="float32")
        assert rate == run.features.sampling_rate
        np.testing.assert_array_equal(audio, run.val_audio[name])


def test_batches_keep_each_file_and_its_length(run, tmp_path):
    """Batched synthesis pads and trims: every file keeps its length, the longest of a batch (no
    padding) matches its unbatched synthesis, PCM_16 is the default encoding."""
    mels = tmp_path / "mels"
    mels.mkdir()
    full = run.val_mel[sorted(run.val_mel)[0]]
    lengths = {"a": full.shape[-1], "b": full.shape[-1] - 7, "c": 12}
    for name, frames in lengths.items():
        np.save(mels / f"{name}.npy", full[:, :frames].numpy())
    batched = synthesize(run.checkpoint, [mels], tmp_path / "batched", batch_size=3, device="cpu", progress=False)
    single = synthesize(run.checkpoint, [mels], tmp_path / "single", batch_size=1, device="cpu", progress=False)
    assert [p.name for p in batched] == [p.name for p in single] == ["a.wav", "b.wav", "c.wav"]
    hop = run.features.hop_size
    for name, frames in lengths.items():
        info = sf.info(str(tmp_path / "batched" / f"{name}.wav"))
        assert info.frames == frames * hop and info.subtype == "PCM_16"
        assert info.samplerate == run.features.sampling_rate
    a_batched, _ = sf.read(tmp_path / "batched" / "a.wav", dtype="float32")
    a_single, _ = sf.read(tmp_path / "single" / "a.wav", dtype="float32")
    np.testing.assert_allclose(a_batched, a_single, atol=2 / 32768)
    # The unpadded part of a shorter file is its own synthesis, away from the padded end.
    b_batched, _ = sf.read(tmp_path / "batched" / "b.wav", dtype="float32")
    b_single, _ = sf.read(tmp_path / "single" / "b.wav", dtype="float32")
    keep = (lengths["b"] - 16) * hop
    np.testing.assert_allclose(b_batched[:keep], b_single[:keep], atol=2 / 32768)


def test_each_mel_file_is_read_once_checked_and_vocoded(run, tmp_path, monkeypatch):
    """One read per mel file: its shape, values and statistics are checked on the array that is vocoded."""
    import melvoc.data.dataset
    import melvoc.features.mel_files
    import melvoc.features.statistics

    reads: list[str] = []
    real = melvoc.features.mel_files.read_mel_file

    def counting(path, **kwargs):
        reads.append(Path(path).name)
        return real(path, **kwargs)

    for module in (melvoc.data.dataset, melvoc.features.mel_files, melvoc.features.statistics):
        monkeypatch.setattr(module, "read_mel_file", counting)
    mels = tmp_path / "mels"
    mels.mkdir()
    for index, name in enumerate(sorted(run.val_mel)):
        np.save(mels / f"m{index}.npy", run.val_mel[name].numpy())
    written = synthesize(run.checkpoint, [mels], tmp_path / "out", batch_size=2, device="cpu", progress=False)
    assert sorted(reads) == sorted(p.name for p in mels.iterdir()) and len(written) == len(reads)


def test_audio_at_another_rate_is_resampled_to_the_features_rate(run, tmp_path):
    source = run.val_files[0]
    audio, rate = sf.read(source, dtype="float32")
    other = tmp_path / "clip16k.flac"
    sf.write(other, soxr.resample(audio, rate, 16000), 16000)
    [written] = synthesize(run.checkpoint, [other], tmp_path / "out", device="cpu", progress=False)
    info = sf.info(str(written))
    samples = round(len(audio) * 16000 / rate) * rate // 16000  # back at the features' rate
    assert info.samplerate == run.features.sampling_rate
    assert abs(info.frames - samples // 256 * 256) <= 256
    with pytest.raises(SynthesisError, match=r"clip16k\.flac: 16000 Hz.*22050 Hz"):
        synthesize(run.checkpoint, [other], tmp_path / "out2", device="cpu", resample=False, progress=False)


# ------------------------------------------------------------------ bad inputs


def test_wrong_number_of_mel_bins_names_the_file_and_both_numbers(run, exported, tmp_path, capsys):
    bad = tmp_path / "tts_mel.npy"
    np.save(bad, np.zeros((100, 40), dtype=np.float32))
    out = tmp_path / "out"
    with pytest.raises(SynthesisError) as excinfo:
        synthesize(exported, [bad], out, device="cpu", progress=False)
    message = str(excinfo.value)
    assert str(bad) in message and "100 mel bins" in message and "num_mels=80" in message
    assert not out.exists(), "nothing is written when an input is bad"

    assert _cli("--checkpoint", exported, "-o", out, bad) == 2
    assert "tts_mel.npy: 100 mel bins" in capsys.readouterr().err

    transposed = tmp_path / "transposed.pt"
    torch.save(torch.zeros(40, 80), transposed)
    with pytest.raises(AudioDataError, match=r"transposed\.pt: 40 mel bins.*transposed"):
        load_mel_file(transposed, run.features)


def test_unreadable_and_missing_inputs_are_listed_together(run, exported, tmp_path):
    junk = tmp_path / "broken.wav"
    junk.write_bytes(b"RIFF but not really a wave file" * 8)
    not_a_mel = tmp_path / "notes.npy"
    not_a_mel.write_text("hello")
    with pytest.raises(SynthesisError) as excinfo:
        collect_inputs([junk, not_a_mel, tmp_path / "gone.wav", run.val_files[0]], run.features, tmp_path / "out")
    message = str(excinfo.value)
    assert "3 input(s) cannot be synthesized" in message
    assert f"{junk}: unreadable audio" in message
    assert f"{not_a_mel}: cannot read the mel" in message
    assert f"{tmp_path / 'gone.wav'}: file not found" in message
    assert str(run.val_files[0]) not in message


def test_missing_or_invalid_checkpoint_is_a_clear_error(run, tmp_path, capsys):
    missing = tmp_path / "nope" / "last.ckpt"
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        synthesize(missing, run.val_files, tmp_path / "out", device="cpu")
    assert _cli("--checkpoint", missing, run.val_files[0]) == 2
    assert f"{missing}: no such checkpoint" in capsys.readouterr().err

    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        synthesize(run.val_files[0], run.val_files, tmp_path / "out", device="cpu")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt: not a melvoc checkpoint"):
        synthesize(foreign, run.val_files, tmp_path / "out", device="cpu")


def test_outputs_never_overwrite_inputs_or_each_other(run, exported, tmp_path):
    mel = tmp_path / "a" / "clip.npy"
    other = tmp_path / "b" / "clip.npy"
    for path in (mel, other):
        path.parent.mkdir()
        np.save(path, run.val_mel[sorted(run.val_mel)[0]].numpy())
    with pytest.raises(SynthesisError, match="would be written by several inputs"):
        collect_inputs([mel, other], run.features, tmp_path / "out")
    wav = tmp_path / "a" / "clip2.wav"
    sf.write(wav, np.zeros(4096, dtype=np.float32), run.features.sampling_rate)
    with pytest.raises(SynthesisError, match="would overwrite this input"):
        collect_inputs([wav], run.features, tmp_path / "a")


def test_argument_errors(run, exported, tmp_path, capsys):
    if not torch.cuda.is_available():
        assert _cli("--checkpoint", exported, "--device", "cuda", run.val_files[0]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert _cli("--checkpoint", exported, "--batch-size", "0", run.val_files[0]) == 2
    assert "--batch-size 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as excinfo:
        _cli("--help")
    assert excinfo.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--checkpoint", "--output-dir", "--batch-size", "--device", "--subtype"):
        assert option in help_text
