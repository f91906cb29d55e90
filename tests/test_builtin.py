"""The waste classifier that ships inside the package: found without any setup, named, and
right on the bundled sample photos, which it never saw in training."""

from __future__ import annotations

import json

import pytest
from conftest import SAMPLE, run_cli

from waste_cli.backends import BUILTIN_MODEL, OnnxRunner, builtin_model

pytestmark = pytest.mark.skipif(builtin_model() is None, reason="no built-in model packaged")


def test_predict_works_offline_with_no_model_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    photo = next((SAMPLE / "glass").glob("*.jpg"))
    result = run_cli("predict", photo, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert f"built-in {BUILTIN_MODEL} (6 classes" in " ".join(result.output.split())
    assert result.stdout.splitlines()[1].startswith(str(photo))


def test_it_is_right_on_the_sample_it_never_saw(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("evaluate", "--data", SAMPLE, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 72 and report["accuracy"] >= 0.8


def test_the_model_card_matches_the_file():
    path = builtin_model()
    card = json.loads(path.with_suffix(".json").read_text())
    runner = OnnxRunner(path)
    assert runner.classes == card["classes"]
    assert runner.metadata["precision"] == card["chosen"]
    assert path.stat().st_size / 2**20 == pytest.approx(
        card["formats"][card["chosen"]]["megabytes"], abs=0.1)
