"""Calibrated confidence and the unfamiliar flag: the fit, what the model files carry, and every
command that shows or uses them."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import run_cli
from PIL import Image

from waste_cli.confidence.fit import (
    BANK_BYTES,
    choose_bank,
    familiar_threshold,
    fit_calibration,
    fit_temperature,
    flag_of,
    knn_distance,
)
from waste_cli.confidence.measures import scaled_softmax
from waste_cli.infer.core import top_k
from waste_cli.model.backends import OnnxRunner, TorchRunner
from waste_cli.model.checkpoint import load_checkpoint, save_checkpoint
from waste_cli.model.heads import FeatureClassifier, ScoredClassifier
from waste_cli.model.metadata import Calibration


def _synthetic(temperature: float, count: int = 6000, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / temperature): that T is the truth."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(count, 5)) * 4
    probs = scaled_softmax(logits, temperature)
    labels = (probs.cumsum(axis=1) > rng.random((count, 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize("truth", [0.5, 1.0, 2.5])
def test_the_temperature_fit_recovers_a_known_temperature(truth):
    logits, labels = _synthetic(truth)
    assert fit_temperature(logits, labels) == pytest.approx(truth, rel=0.08)


def test_calibrated_probabilities_sum_to_one_and_keep_the_argmax():
    logits, _ = _synthetic(1.0, 200)
    for temperature in (0.3, 1.0, 4.0):
        probs, best = top_k(logits / temperature, [], 5)
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
        assert (best[:, 0] == logits.argmax(axis=1)).all()


def test_the_threshold_lets_the_asked_share_pass_both_checks():
    rng = np.random.default_rng(1)
    scores = rng.random(400)
    confident = rng.random(400) > 0.02
    threshold = familiar_threshold(scores, confident, 0.9)
    passed = (scores <= threshold) & confident
    assert 0.9 <= passed.mean() <= 0.905
    # when the confidence check alone flags more than the budget, nothing in-domain is unfamiliar
    assert familiar_threshold(scores, rng.random(400) > 0.5, 0.9) == scores.max()


def test_the_bank_fits_the_size_budget_and_scores_alike_in_numpy_and_torch():
    import timm

    features = np.random.default_rng(2).normal(size=(3000, 1400)).astype(np.float32)
    bank = choose_bank(features)
    assert bank.dtype == np.float16 and bank.nbytes <= BANK_BYTES and len(bank) < 3000
    assert np.allclose(np.linalg.norm(bank.astype(np.float32), axis=1), 1, atol=1e-3)
    for arch in ("test_efficientnet", "resnet10t"):  # the mid-level stage of two families
        model = timm.create_model(arch, num_classes=3).eval()
        images = torch.randn(4, 3, 64, 64)
        with torch.no_grad():
            logits, pooled = FeatureClassifier(model)(images)
            assert torch.allclose(logits, model(images), atol=1e-5)  # the model's own answer
            assert torch.allclose(pooled.norm(dim=1), torch.ones(4), atol=1e-5)
            small = choose_bank(np.random.default_rng(3).normal(size=(50, pooled.shape[1])))
            _, score = ScoredClassifier(model, torch.from_numpy(small), 10)(images)
        assert np.allclose(score.numpy(), knn_distance(pooled.numpy(), small, 10), atol=1e-5)


def test_flags_put_unfamiliar_first_then_low_confidence():
    calibration = Calibration(temperature=1.0, method="knn-cosine", neighbours=10,
                              unfamiliar_threshold=0.3, familiar_share=0.95, min_confidence=0.5)
    assert flag_of(0.99, 0.5, calibration) == "unfamiliar"
    assert flag_of(0.4, 0.1, calibration) == "low-confidence"
    assert flag_of(0.4, 0.1, calibration, min_confidence=0.3) == ""
    assert flag_of(0.9, float("nan"), None) == ""  # an uncalibrated model cannot say unfamiliar


def test_training_ends_with_a_calibrated_best_pt(trained):
    checkpoint = load_checkpoint(trained.run_dir / "best.pt")
    calibration = Calibration.model_validate(checkpoint["calibration"])
    bank = checkpoint["familiar_features"]
    assert bank.dtype == torch.float16 and bank.numel() * 2 <= BANK_BYTES
    assert calibration.familiar_share == 0.95 and calibration.temperature > 0
    summary = json.loads((trained.run_dir / "summary.json").read_text())
    assert summary["calibration"]["temperature"] == calibration.temperature
    assert "calibration" not in load_checkpoint(trained.run_dir / "last.pt")


def _uncalibrated(model, tmp_path):
    """A copy of the checkpoint as older wastecls versions wrote it."""
    checkpoint = load_checkpoint(model)
    del checkpoint["calibration"], checkpoint["familiar_features"]
    old = tmp_path / "old" / "best.pt"
    old.parent.mkdir()
    save_checkpoint(old, dict(checkpoint))
    return old


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_predict_shows_confidence_and_flags_and_abstains(model, prepared):
    images = prepared / "test"
    plain = run_cli("predict", "-m", model, images, "--format", "csv", "--backend", "torch")
    assert plain.exit_code == 0, plain.output
    rows = _rows(plain.stdout)
    assert list(rows[0])[:5] == ["path", "label", "confidence", "flag", "unfamiliarity"]
    assert all(r["confidence"] == r["prob1"] and r["label"] == r["label1"] for r in rows
               if not r["flag"])
    forced = ["-m", model, images, "--min-confidence", "1", "--abstain", "--backend", "torch"]
    result = run_cli("predict", *forced, "--format", "csv")
    rows = _rows(result.stdout)
    assert rows and all(r["flag"] and r["label"] == "unknown" and r["label1"] != "unknown"
                        for r in rows)
    assert f"{len(rows)} flagged" in result.stderr
    lines = [json.loads(line) for line in run_cli("predict", *forced, "--format",
                                                  "json").stdout.splitlines()]
    assert all(r["label"] == "unknown" and r["labels"][0] != "unknown" and r["flag"]
               and 0 <= r["confidence"] <= 1 and r["unfamiliarity"] is not None for r in lines)
    table = run_cli("predict", *forced).stdout
    assert "unknown (guess: " in table
    assert "[low-confidence]" in table or "[unfamiliar]" in table


def test_boxes_abstain_with_the_unknown_category(model, coco_dataset):
    annotations, images = coco_dataset
    result = run_cli("predict", "-m", model, "--boxes", annotations, "--images", images,
                     "--min-confidence", "1", "--abstain", "--format", "json",
                     "--backend", "torch")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    classes = load_checkpoint(model)["classes"]
    assert records and all(r["category_name"] == "unknown" and r["flag"]
                           and r["category_id"] == len(classes) + 1
                           and r["top_k"][0]["category_name"] in classes for r in records)


def test_old_checkpoints_and_foreign_onnx_files_keep_temperature_one(model, prepared,
                                                                    tmp_path):
    old = _uncalibrated(model, tmp_path)
    result = run_cli("predict", "-m", old, prepared / "test", "--format", "csv",
                     "--backend", "torch")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("is not calibrated") == 1  # said once, not per image
    rows = _rows(result.stdout)
    assert all(r["unfamiliarity"] == "" and r["flag"] in ("", "low-confidence") for r in rows)
    exported = run_cli("export", "-m", old, "-q")
    assert exported.exit_code == 0, exported.output
    foreign = old.with_suffix(".onnx")
    assert [o.name for o in onnxruntime.InferenceSession(str(foreign)).get_outputs()] == [
        "logits"]
    onnx_rows = _rows(run_cli("predict", "-m", foreign, prepared / "test", "--format",
                              "csv").stdout)
    assert [r["label1"] for r in onnx_rows] == [r["label1"] for r in rows]
    for a, b in zip(onnx_rows, rows, strict=True):  # raw softmax on both backends
        assert float(a["prob1"]) == pytest.approx(float(b["prob1"]), abs=1e-4)


def test_calibrate_a_checkpoint_and_an_onnx_file_alike(model, prepared, tmp_path):
    old = _uncalibrated(model, tmp_path)
    result = run_cli("calibrate", old, "--data", prepared)
    assert result.exit_code == 0, result.output
    calibrated = old.with_name("best.calibrated.pt")
    assert "temperature" in result.stdout and calibrated.is_file()
    again = run_cli("calibrate", old, "--data", prepared)  # its own file: replaced
    assert again.exit_code == 0, again.output
    mine = old.with_name("mine.pt")
    mine.write_bytes(b"a file the user wrote")
    refused = run_cli("calibrate", old, "--data", prepared, "--out", mine)
    assert refused.exit_code == 2 and "--overwrite" in refused.output, refused.output
    assert mine.read_bytes() == b"a file the user wrote"
    assert run_cli("calibrate", old, "--data", prepared, "--out", old).exit_code == 2
    assert run_cli("export", "-m", old, "-q").exit_code == 0
    onnx_file = old.with_suffix(".onnx")
    result = run_cli("calibrate", onnx_file, "--data", prepared)
    assert result.exit_code == 0, result.output
    written = OnnxRunner(onnx_file.with_name("best.calibrated.onnx"))
    reference = TorchRunner.from_checkpoint(load_checkpoint(calibrated), torch.device("cpu"))
    assert written.calibration.temperature == pytest.approx(reference.calibration.temperature,
                                                            rel=1e-4)
    images = np.random.default_rng(0).normal(size=(3, *written.data_config["input_size"]))
    mine, theirs = written(images.astype(np.float32)), reference(images.astype(np.float32))
    assert np.allclose(mine["unfamiliarity"], theirs["unfamiliarity"], atol=1e-4)
    assert load_checkpoint(old).get("calibration") is None  # the model itself is untouched


def test_evaluate_reports_calibration_flags_and_unfamiliar_photos(model, prepared, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):  # photos of nothing like waste: noise and stripes
        pixels = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
        pixels[:, ::4] = 0 if i % 2 else pixels[:, ::4]
        Image.fromarray(pixels).save(other / f"noise{i}.png")
    result = run_cli("evaluate", model, "--data", prepared, "--unfamiliar", other, "--json",
                     "--backend", "torch")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["temperature"] == load_checkpoint(model)["calibration"]["temperature"]
    assert {"ece", "nll", "brier"} <= set(report["uncalibrated"])
    flags = report["flags"]
    assert flags["unfamiliar"] + flags["low_confidence"] == round(flags["flagged"] *
                                                                  report["images"])
    unfamiliar = report["unfamiliar"]
    assert unfamiliar["images"] == 6 and 0 <= unfamiliar["flagged"] <= 1
    assert 0 <= unfamiliar["auroc"] <= 1
    config = fit_calibration(np.zeros((2, 2)), np.array([0, 1]), np.ones((4, 8)),
                             np.ones((2, 8)))
    assert config.calibration.neighbours == 4  # never more neighbours than carried photos
