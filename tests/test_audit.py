"""audit: out-of-fold label checks find planted flips, copies and leaks are grouped, bad photos
are named, the page escapes what the data names, and the command's files and exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from conftest import HOSTILE_CLASS, run_cli

from waste_cli.review.labels import check_labels, class_outliers


def _blobs(classes: int = 6, per_class: int = 40, dims: int = 48, seed: int = 0):
    """Unit feature rows around one centre per class (noisy enough that heads can err)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dims))
    labels = np.repeat(np.arange(classes), per_class)
    features = centres[labels] + 0.9 * rng.normal(size=(len(labels), dims))
    return features / np.linalg.norm(features, axis=1, keepdims=True), labels


def test_check_labels_finds_planted_flips():
    features, truth = _blobs()
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(truth), size=12, replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + rng.integers(1, 6, size=12)) % 6
    check = check_labels(features, given, 6, folds=5, seed=0)
    found = set(check.issues) & set(flipped.tolist())
    assert len(found) >= 9, (sorted(found), sorted(flipped.tolist()))
    assert len(found) / len(check.issues) >= 0.7, len(check.issues)
    # the suggestion is the true class, with a calibrated probability that means it
    suggested = check.probs[flipped].argmax(axis=1)
    assert (suggested == truth[flipped]).mean() >= 0.9
    assert np.allclose(check.probs.sum(axis=1), 1.0)
    assert 0.85 < check.agreement < 0.97  # the flips disagree, the rest mostly agree


def test_check_labels_ranks_the_worst_first_and_copes_with_small_classes():
    features, labels = _blobs(classes=3, per_class=3, dims=16)
    check = check_labels(features, labels, 4, folds=5, seed=0)  # class 3 has no photo
    assert check.folds == 3 and check.probs.shape == (9, 4)
    quality = check.probs[np.arange(9), labels]
    assert list(quality[check.issues]) == sorted(quality[check.issues])


def test_class_outliers_flags_the_photo_unlike_its_class():
    features, labels = _blobs(classes=2, per_class=30)
    odd = np.zeros(features.shape[1])
    odd[0] = 1.0
    features = np.vstack([features, -features[0:1] + 0.01 * odd])
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = np.append(labels, 0)
    distance, outlier = class_outliers(features, labels)
    assert outlier[-1] and outlier.sum() <= 2
    assert distance[-1] == distance.max()


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "issues.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_audit_finds_every_planted_problem(audited):
    root, _, out = audited
    rows = _rows(out)
    assert list(rows[0]) == ["path", "split", "label", "issue", "suggested", "score", "detail"]
    issues = {(Path(r["path"]).name, r["issue"]) for r in rows}
    copy_of_leak = sorted((root / "train" / "glass").glob("*.jpg"))[0].name
    assert ("leak.jpg", "leak") in issues and (copy_of_leak, "leak") in issues
    assert ("conflict.jpg", "conflict") in issues
    assert ("broken.jpg", "unreadable") in issues
    assert ("tiny.jpg", "tiny") in issues
    assert ("blank.jpg", "blank") in issues
    leak = next(r for r in rows if Path(r["path"]).name == "leak.jpg")
    assert leak["split"] == "test" and copy_of_leak in leak["detail"]
    # nothing else was grouped as a copy
    copies = {Path(r["path"]).name for r in rows if r["issue"] in ("leak", "conflict",
                                                                    "duplicate")}
    assert len(copies) == 4, copies
    report = json.loads((out / "report.json").read_text())
    assert report["issues"]["unreadable"] == 1 and report["copy_groups"] == 2
    assert report["balance"]["per_class"][HOSTILE_CLASS] == 6
    labelled = [r for r in report["rows"] if r["issue"] == "label"]
    assert all(r["suggested"] in report["classes"] and len(r["top"]) == 3 for r in labelled)
    assert all(0 <= float(r["score"]) <= 1 for r in labelled)


def test_audit_page_shows_names_as_text(audited):
    _, _, out = audited
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<img src=x" not in page
    assert page.count("data:image/jpeg;base64,") >= 5  # thumbnails inlined: works offline


def test_audit_refuses_a_foreign_out_folder_and_bad_inputs(tmp_path, audited):
    root, _, _ = audited
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    result = run_cli("audit", root, "--out", busy)
    assert result.exit_code == 2 and "did not write" in result.output
    assert (busy / "notes.txt").read_text() == "mine"
    result = run_cli("audit", tmp_path / "missing")
    assert result.exit_code == 1 and "is not a folder" in result.output
    result = run_cli("audit", root, "--weights", tmp_path / "w.safetensors")
    assert result.exit_code == 2 and "--arch" in result.output
    result = run_cli("audit", root, "--out", root / "inside")
    assert result.exit_code == 2 and "overlaps" in result.output
