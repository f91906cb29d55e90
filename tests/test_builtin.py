"""The waste classifier that ships inside the package: found without any setup, named, and
right on the bundled sample photos, which it never saw in training."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SAMPLE, run_cli

from waste_cli.model.backends import OnnxRunner
from waste_cli.model.builtin import BUILTIN_MODEL, builtin_file

pytestmark = pytest.mark.skipif(builtin_file(".onnx") is None, reason="no built-in model packaged")


def test_predict_works_offline_with_no_model_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    photo = next((SAMPLE / "glass").glob("*.jpg"))
    result = run_cli("predict", photo, "--format", "csv")
    assert result.exit_code == 0, result.output
    classes = OnnxRunner(builtin_file(".onnx")).classes
    assert f"built-in {BUILTIN_MODEL} ({len(classes)} classes" in " ".join(result.output.split())
    assert result.stdout.splitlines()[1].startswith(str(photo))


def test_its_earlier_name_still_works(tmp_path):
    """`trashnet-lite0`, the six-class model it replaced, names it too (commands and configs
    written for it keep working)."""
    photo = next((SAMPLE / "glass").glob("*.jpg"))
    for args in (["predict", "-m", "trashnet-lite0", photo], ["export", "-m", "trashnet-lite0",
                                                              "--onnx", "--out",
                                                              tmp_path / "old.onnx", "-q"]):
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
    assert OnnxRunner(tmp_path / "old.onnx").classes == OnnxRunner(builtin_file(".onnx")).classes


def test_it_is_right_on_the_sample_it_never_saw(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The sample holds 6 of its 10 classes: an answer in one of the other 4 counts as wrong.
    result = run_cli("evaluate", "--data", SAMPLE, "--json", "--allow-subset")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    card = json.loads(builtin_file(".onnx").with_suffix(".json").read_text())
    assert report["images"] == 72 and report["accuracy"] >= 0.6
    assert report["accuracy"] == pytest.approx(
        card["formats"][card["chosen"]]["samples_accuracy"], abs=0.02)


def test_the_model_card_matches_the_file():
    path = builtin_file(".onnx")
    card = json.loads(path.with_suffix(".json").read_text())
    runner = OnnxRunner(path)
    assert runner.classes == card["classes"]
    assert runner.metadata["precision"] == card["chosen"]
    assert path.stat().st_size / 2**20 == pytest.approx(
        card["formats"][card["chosen"]]["megabytes"], abs=0.1)


needs_checkpoint = pytest.mark.skipif(builtin_file(".pt") is None,
                                      reason="no built-in checkpoint packaged")


@needs_checkpoint
def test_training_can_start_from_it(prepared, tmp_path):
    """Waste features are a better start than ImageNet's: `--weights waste-lite0`."""
    from waste_cli.options import TrainOptions
    from waste_cli.train.recipe import resolve_auto

    options = TrainOptions(data=prepared, weights=BUILTIN_MODEL)
    assert options.weights == builtin_file(".pt")
    assert resolve_auto(options, torch.device("cpu"), [])[0].img_size == 288  # its own size
    result = run_cli("train", "--data", prepared, "--weights", BUILTIN_MODEL, "--img-size", "64",
                     "--epochs", "1", "--workers", "0", "--project", tmp_path, "-q")
    assert result.exit_code == 0, result.output
    checkpoint = torch.load(tmp_path / "exp" / "best.pt", weights_only=True)
    assert checkpoint["arch"] == "tf_efficientnet_lite0"


@needs_checkpoint
def test_export_writes_it_here_not_into_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no trained run here: export takes the built-in checkpoint
    result = run_cli("export", "--onnx", "-q")
    assert result.exit_code == 0, result.output
    exported = OnnxRunner(tmp_path / f"{BUILTIN_MODEL}.onnx")
    assert exported.classes == OnnxRunner(builtin_file(".onnx")).classes
    package = builtin_file(".pt").parent
    assert sorted(p.name for p in package.iterdir()) == sorted(
        f"{BUILTIN_MODEL}{suffix}" for suffix in (".json", ".onnx", ".pt"))
