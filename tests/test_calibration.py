"""How far confidence can be trusted: ECE, NLL, Brier, reliability bins and risk-coverage, on
probabilities whose answers are known, and in evaluate's report and pictures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import run_cli

from waste_cli.confidence.measures import calibration_report, risk_coverage


def _two_class(confidence: float, correct: int, total: int) -> tuple[np.ndarray, np.ndarray]:
    """`total` rows predicting class 0 with `confidence`; the first `correct` are right."""
    probs = np.tile([confidence, 1 - confidence], (total, 1))
    targets = np.array([0] * correct + [1] * (total - correct))
    return probs, targets


def test_a_calibrated_model_has_no_calibration_error():
    probs, targets = _two_class(0.8, 80, 100)  # says 80%, right 80% of the time
    report = calibration_report(probs, targets)
    assert report["ece"] == pytest.approx(0.0, abs=1e-12)
    assert report["nll"] == pytest.approx(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)))
    assert report["brier"] == pytest.approx(0.8 * 2 * 0.2**2 + 0.2 * 2 * 0.8**2)
    (full,) = [b for b in report["bins"] if b["count"]]
    assert (full["count"], full["accuracy"]) == (100, 0.8)
    assert full["confidence"] == pytest.approx(0.8)
    assert len(report["bins"]) == 15 and full["lower"] < 0.8 <= full["upper"]


def test_an_overconfident_model_shows_the_gap():
    probs, targets = _two_class(0.99, 50, 100)
    assert calibration_report(probs, targets)["ece"] == pytest.approx(0.49)


def test_risk_coverage_keeps_the_most_confident_first():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.6, 0.4]])
    targets = np.array([0, 0, 0, 1])  # only the least confident is wrong
    curve = risk_coverage(probs, targets)
    assert curve["risk"] == [0.0, 0.0, 0.0, 0.25]
    assert curve["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert curve["aurc"] == pytest.approx(0.0625)
    assert curve["accuracy_at_90_coverage"] == 0.75  # 90% of 4 rounds up to all 4


def test_evaluate_reports_confidence_and_draws_it(trained, prepared, tmp_path):
    result = run_cli("evaluate", trained.run_dir / "best.pt", "--data", prepared, "--out",
                     tmp_path / "eval", "--backend", "torch")
    assert result.exit_code == 0, result.output
    assert "Confidence: ECE" in result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert 0 <= report["calibration"]["ece"] <= 1 and report["calibration"]["nll"] > 0
    assert sum(b["count"] for b in report["calibration"]["bins"]) == report["images"]
    assert 0 <= report["selective"]["aurc"] <= 1
    for picture in ("reliability.png", "risk_coverage.png"):
        assert (tmp_path / "eval" / picture).read_bytes()[:4] == b"\x89PNG"
