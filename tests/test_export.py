"""python -m melvoc.export and melvoc.load_generator on a really trained checkpoint."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate

import melvoc
from melvoc.deploy.export import export_generator
from melvoc.export import main
from melvoc.features import MelConfig
from melvoc.deploy.inference import EXPORT_FORMAT, EXPORT_FORMAT_VERSION, CheckpointError, load_generator, read_checkpoint
from melvoc.models import GANVocoder, HiFiGANGenerator
from tests._trained import TrainedRun, _one_thread, exported, legacy_checkpoint, legacy_export, run  # noqa: F401


def _mels(run: TrainedRun) -> torch.Tensor:
    mel = run.val_mel[sorted(run.val_mel)[0]]
    torch.manual_seed(0)
    # The validation clip's mel and a perturbed copy: a batch of two.
    return torch.stack([mel, mel + 0.3 * torch.randn_like(mel)])


def test_export_then_load_generator_is_identical_to_the_checkpoints_generator(run, exported):
    module = GANVocoder.load_from_checkpoint(run.checkpoint, map_location="cpu").eval()
    with_weight_norm = module.generator
    # A second load, not a deepcopy: copies of a parametrised module share its class, and removing the
    # parametrisation from one breaks the other.
    without = GANVocoder.load_from_checkpoint(run.checkpoint, map_location="cpu").eval().generator.remove_weight_norm()
    loaded = melvoc.load_generator(exported)
    mel = _mels(run)
    with torch.inference_mode():
        expected = without(mel)
        reference = with_weight_norm(mel)
        got = loaded(mel)
        from_ckpt = load_generator(run.checkpoint)(mel)
    assert got.shape == (2, 1, mel.shape[-1] * run.features.hop_size)
    assert torch.equal(got, expected)
    assert torch.equal(from_ckpt, expected)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)
    # Not vacuous: the trained generator is far from silence and from a fresh one.
    assert got.abs().max() > 1e-3
    fresh = instantiate(module.hparams.generator).remove_weight_norm()
    with torch.inference_mode():
        assert not torch.allclose(fresh(mel), got)


def test_exported_file_is_generator_only_with_features_and_hyper_parameters(run, exported):
    data = torch.load(exported, map_location="cpu", weights_only=True)
    ckpt = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
    assert data["format"] == EXPORT_FORMAT and data["format_version"] == EXPORT_FORMAT_VERSION
    assert data["features"] == ckpt["hyper_parameters"]["features"]
    assert data["generator"] == ckpt["hyper_parameters"]["generator"]
    assert data["generator"]["_target_"] == "melvoc.models.hifigan.HiFiGANGenerator"
    assert data["generator"]["num_mels"] == 80
    assert data["weight_norm"] is False
    assert data["source"]["global_step"] == ckpt["global_step"] == 2
    assert not {"optimizer_states", "lr_schedulers", "loops", "callbacks", "discriminator"} & set(data)
    keys = set(data["state_dict"])
    assert not any("parametrizations" in k or k.startswith(("discriminator", "generator.")) for k in keys)
    generator_keys = {k for k in ckpt["state_dict"] if k.startswith("generator.")}
    assert len(keys) == len(generator_keys) - sum(k.endswith("original1") for k in generator_keys)
    assert exported.stat().st_size < run.checkpoint.stat().st_size / 4


def test_load_generator_returns_an_eval_generator_with_its_mel_config(run, exported):
    generator = load_generator(exported, map_location="cpu")
    assert isinstance(generator, HiFiGANGenerator) and not generator.training
    assert generator.config == run.features and isinstance(generator.config, MelConfig)
    assert all(p.device.type == "cpu" for p in generator.parameters())
    assert not any("parametrizations" in k for k in generator.state_dict())
    kept = load_generator(exported, remove_weight_norm=False)
    assert any("parametrizations" in k for k in kept.state_dict())
    mel = _mels(run)
    with torch.inference_mode():
        torch.testing.assert_close(kept(mel), generator(mel), rtol=1e-5, atol=1e-6)


def test_import_melvoc_does_not_import_lightning():
    code = (
        "import sys, melvoc\n"
        "assert 'lightning' not in sys.modules and 'melvoc.deploy.inference' not in sys.modules\n"
        "from melvoc import load_generator\n"
        "assert load_generator.__module__ == 'melvoc.deploy.inference'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_export_cli(run, exported, tmp_path, capsys):
    out = tmp_path / "gen.pt"
    assert main([str(run.checkpoint), str(out)]) == 0
    assert "HiFiGANGenerator, 0.12 M parameters" in capsys.readouterr().out
    torch.testing.assert_close(
        torch.load(out, weights_only=True)["state_dict"], torch.load(exported, weights_only=True)["state_dict"],
        rtol=0, atol=0,
    )
    assert main([str(run.checkpoint), str(out)]) == 2
    assert f"{out}: exists" in capsys.readouterr().err
    assert main([str(run.checkpoint), str(out), "--force"]) == 0
    # An export exports to itself again.
    again = export_generator(out, tmp_path / "again.pt")
    assert torch.equal(
        torch.load(again, weights_only=True)["state_dict"]["conv_pre.weight"],
        torch.load(out, weights_only=True)["state_dict"]["conv_pre.weight"],
    )
    missing = tmp_path / "missing.ckpt"
    assert main([str(missing), str(tmp_path / "x.pt")]) == 2
    assert f"{missing}: no such checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as excinfo:
        main(["--help"])
    assert excinfo.value.code == 0 and "generator-only" in capsys.readouterr().out


def test_unusable_files_are_clear_errors(run, exported, tmp_path):
    newer = tmp_path / "newer.pt"
    data = torch.load(exported, weights_only=True)
    torch.save({**data, "format_version": EXPORT_FORMAT_VERSION + 1}, newer)
    with pytest.raises(CheckpointError, match=r"newer\.pt: export format version 3.*upgrade melvoc"):
        load_generator(newer)

    lightning_like = tmp_path / "other_module.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1.0}}, lightning_like)
    with pytest.raises(CheckpointError, match="not written by melvoc's GANVocoder module"):
        read_checkpoint(lightning_like)

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(run.checkpoint.read_bytes()[:4000])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt"):
        load_generator(truncated)

    damaged = tmp_path / "damaged.pt"
    state = dict(data["state_dict"])
    state.pop("conv_post.bias")
    torch.save({**data, "state_dict": state}, damaged)
    with pytest.raises(CheckpointError, match=r"damaged\.pt: the weights do not fit"):
        load_generator(damaged)

    with pytest.raises(CheckpointError, match="a folder of no known layout; expected a BigVGAN folder"):
        load_generator(tmp_path)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("os.system", "not a melvoc VocoderGenerator subclass"),
        ("torch.nn.Identity", "not a melvoc VocoderGenerator subclass"),
        ("melvoc.models.GANVocoder", "not a melvoc VocoderGenerator subclass"),
        ("no_such_package.Generator", "cannot be imported"),
    ],
)
def test_only_generator_classes_are_built_from_a_file(exported, tmp_path, target, why):
    data = torch.load(exported, weights_only=True)
    bad = tmp_path / "bad.pt"
    torch.save({**data, "generator": {**data["generator"], "_target_": target}}, bad)
    with pytest.raises(CheckpointError, match=rf"bad\.pt: its generator _target_ '{target}' .*{why}"):
        load_generator(bad)
    hydra_keys = tmp_path / "hydra_keys.pt"
    torch.save({**data, "generator": {**data["generator"], "_partial_": True}}, hydra_keys)
    with pytest.raises(CheckpointError, match=r"hydra_keys\.pt: the generator node has Hydra keys \['_partial_'\]"):
        load_generator(hydra_keys)


def test_files_of_the_hifigan_module_still_load(run, exported, tmp_path):
    """A format 1 export and a checkpoint of main at f0f84fd: same generator, same output."""
    old_export = legacy_export(exported, tmp_path / "v1.pt")
    old_checkpoint = legacy_checkpoint(run.checkpoint, tmp_path / "old.ckpt")
    assert "_target_" not in torch.load(old_export, weights_only=True)["generator"]
    assert "num_mels" not in torch.load(old_checkpoint, weights_only=True)["hyper_parameters"]["generator"]
    mel = _mels(run)
    with torch.inference_mode():
        expected = load_generator(exported)(mel)
        for path in (old_export, old_checkpoint):
            generator = load_generator(path)
            assert isinstance(generator, HiFiGANGenerator) and generator.config == run.features
            assert torch.equal(generator(mel), expected), path.name
    old_keys = read_checkpoint(old_checkpoint).discriminator_state.keys()
    assert old_keys == read_checkpoint(run.checkpoint).discriminator_state.keys()
    # re-exporting an old file writes the current format, with the generator's _target_
    again = torch.load(export_generator(old_checkpoint, tmp_path / "again.pt"), weights_only=True)
    assert again["format_version"] == EXPORT_FORMAT_VERSION == 2
    assert again["generator"] == torch.load(exported, weights_only=True)["generator"]
