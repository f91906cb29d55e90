"""`wastecls evaluate` and `wastecls predict`: metrics, reports, inputs, formats, errors."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE, run_cli

from waste_cli.infer.evaluate import build_report

CLASSES = sorted(p.name for p in SAMPLE.iterdir() if p.is_dir())


def test_metrics_match_hand_computed_values():
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.tensor([[3.0, 1, 0], [1, 3, 0], [0, 3, 1], [0, 3, 1], [0, 1, 3], [3, 0, 2]])
    report = build_report(logits, targets, ["a", "b", "c"], top_k=2, unreadable=[])
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    f1 = [0.5, 0.8, 2 / 3]
    assert report["macro_f1"] == pytest.approx(sum(f1) / 3)
    per_class = {r["class"]: r for r in report["per_class"]}
    assert per_class["b"]["precision"] == pytest.approx(2 / 3)
    assert per_class["c"]["recall"] == pytest.approx(0.5) and per_class["c"]["support"] == 2
    assert report["top2_accuracy"] == pytest.approx(6 / 6)
    assert report["confusion_matrix_normalized"][0] == [0.5, 0.5, 0.0]
    assert report["most_confused"][0]["count"] == 1


def test_evaluate_writes_reports_and_pictures(trained, prepared, tmp_path):
    out = tmp_path / "eval"
    result = run_cli("evaluate", trained.run_dir / "best.pt", "--data", prepared, "--out", out,
                     "--backend", "torch")
    assert result.exit_code == 0, result.output
    assert "Per class" in result.output and "Confusion matrix" in result.output
    report = json.loads((out / "report.json").read_text())
    matrix = report["confusion_matrix"]
    assert report["images"] == 12 == sum(map(sum, matrix))
    assert report["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(6)) / 12)
    assert report["speed_ms_per_image"]["inference"] > 0 and "ms inference per image" in (
        result.output)
    rows = list(csv.DictReader(io.StringIO((out / "predictions.csv").read_text())))
    assert len(rows) == 12 and {"path", "true", "predicted", "confidence", "loss"} <= set(rows[0])
    correct = sum(r["true"] == r["predicted"] for r in rows)
    assert correct / 12 == pytest.approx(report["accuracy"])
    assert len((out / "per_class.csv").read_text().splitlines()[1:]) == 6
    for png in ("confusion_matrix.png", "top_losses.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_json_and_plain_class_folder(trained, prepared):
    result = run_cli("evaluate", trained.run_dir / "best.pt", "--data", prepared / "val",
                     "--json", "--backend", "torch")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["images"] == 6 and report["data"].endswith("val")


def test_evaluate_class_mismatch_and_allow_subset(trained, prepared, tmp_path):
    data = tmp_path / "other"
    shutil.copytree(prepared / "test", data)
    shutil.rmtree(data / "trash")
    (data / "glass").rename(data / "bottles")
    result = run_cli("evaluate", trained.run_dir / "best.pt", "--data", data, "--backend",
                     "torch")
    assert result.exit_code == 1
    assert "Only in the data: bottles; only in the model: glass, trash" in result.output
    result = run_cli("evaluate", trained.run_dir / "best.pt", "--data", data, "--json",
                     "--allow-subset", "--backend", "torch")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["images"] == 8


@pytest.fixture
def inputs(prepared, tmp_path) -> Path:
    folder = tmp_path / "inputs"
    shutil.copytree(prepared / "test" / "glass", folder / "nested" / "glass")
    shutil.copy(next((prepared / "test" / "metal").glob("*.jpg")), folder / "UPPER.JPG")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    return folder


def test_predict_every_input_kind_and_formats(trained, inputs, tmp_path):
    model = trained.run_dir / "best.pt"
    single = next((inputs / "nested" / "glass").glob("*.jpg"))
    glob = str(inputs / "nested" / "**" / "*.jpg")
    result = run_cli("predict", "-m", model, single, inputs, glob, "--format", "json",
                     "--top-k", "3", "--backend", "torch")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 1 + 3 + 2  # file, folder (recursive, .JPG too), glob
    for r in records:
        assert len(r["labels"]) == 3 and r["probs"] == sorted(r["probs"], reverse=True)
        assert 0 < sum(r["probs"]) <= 1 + 1e-6
    assert any(r["path"].endswith("UPPER.JPG") for r in records)
    out = tmp_path / "preds.csv"
    result = run_cli("predict", "-m", model, inputs, "--output", out, "--top-k", "2",
                     "--backend", "torch")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 3 and {"label1", "prob1", "label2", "prob2"} <= set(rows[0])
    table = run_cli("predict", "-m", model, single, "--backend", "torch")
    assert str(single) in table.stdout and "%" in table.stdout


def test_predict_exclude_class_and_tta(trained, inputs):
    model = trained.run_dir / "best.pt"
    result = run_cli("predict", "-m", model, inputs, "--format", "csv", "--top-k", "6",
                     "--exclude-class", "glass", "--exclude-class", "paper", "--tta",
                     "--backend", "torch")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    labels = {r[f"label{k}"] for r in rows for k in range(1, 7)}
    assert "glass" not in labels and "paper" not in labels and "" in labels  # 4 classes left
    result = run_cli("predict", "-m", model, inputs, "--exclude-class", "nope")
    assert result.exit_code == 2 and "no such class" in result.output


def test_predict_reports_where_the_time_went(trained, inputs):
    from waste_cli.infer.predict import predict
    from waste_cli.options import PredictOptions

    for workers, processes in ((0, 1), (2, 2)):
        options = PredictOptions(model=trained.run_dir / "best.pt", inputs=[str(inputs)],
                                   backend="torch", workers=workers, batch_size=1, quiet=True)
        result = predict(options, io.StringIO())
        speed = result.speed
        assert speed.images == result.predicted == 3 and speed.processes == processes
        assert speed.decode > 0 and speed.resize > 0 and speed.inference > 0
    assert "ms inference per image, in 2 processes" in speed.summary()


def test_predict_bad_inputs_are_reported_and_skipped(trained, inputs, tmp_path):
    good = next((inputs / "nested" / "glass").glob("*.jpg"))
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:300])
    (tmp_path / "empty_dir").mkdir()
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", good, tmp_path / "text.jpg",
                     tmp_path / "cut.jpg", tmp_path / "missing.jpg", tmp_path / "empty_dir",
                     "--format", "json", "--backend", "torch")
    assert result.exit_code == 1
    records = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert records[good.name]["labels"] and "error" not in records[good.name]
    assert "unreadable" in records["text.jpg"]["error"]
    assert "unreadable" in records["cut.jpg"]["error"]
    assert "no such file" in records["missing.jpg"]["error"]
    assert "no images" in records["empty_dir"]["error"]


def test_default_model_discovery(trained, inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    single = str(next((inputs / "nested" / "glass").glob("*.jpg")))
    from waste_cli.model.builtin import builtin_file

    result = run_cli("predict", single)
    if builtin_file(".onnx") is None:
        assert result.exit_code == 1 and "No model given" in result.output
    else:  # nothing trained here: the model that ships with wastecls, said by name
        assert result.exit_code == 0 and "built-in waste-lite0" in result.output
    for name in ("old", "new"):
        (tmp_path / "runs" / "train" / name).mkdir(parents=True)
        shutil.copy(trained.run_dir / "best.pt", tmp_path / "runs" / "train" / name / "best.pt")
    result = run_cli("predict", single, "--backend", "torch")
    assert result.exit_code == 0 and "runs/train/new/best.pt" in result.output
    result = run_cli("predict", single, "--backend", "torch",
                     env={"WASTECLS_MODEL": str(trained.run_dir / "best.pt")})
    assert result.exit_code == 0 and str(trained.run_dir / "best.pt") in result.output


def test_predict_answers_in_a_taxonomy_by_summing_probabilities(tmp_path):
    """--taxonomy and --map answer in coarser classes: each target's probability is the sum of
    its model classes', the model's own label and confidence stay beside, and the flag is the
    model's own."""
    from waste_cli.data.taxonomy import builtin_taxonomy
    from waste_cli.model.backends import OnnxRunner
    from waste_cli.model.builtin import builtin_file

    photos = [SAMPLE / c / sorted(os.listdir(SAMPLE / c))[0] for c in CLASSES]
    every = len(OnnxRunner(builtin_file(".onnx")).classes)  # all of the model's probabilities
    fine = run_cli("predict", *photos, "--format", "csv", "--top-k", str(every))
    coarse = run_cli("predict", *photos, "--format", "csv", "--taxonomy", "detect-waste",
                     "--top-k", "3")
    assert fine.exit_code == 0 and coarse.exit_code == 0, coarse.output
    taxonomy = builtin_taxonomy("detect-waste")
    for a, b in zip(csv.DictReader(io.StringIO(fine.stdout)),
                    csv.DictReader(io.StringIO(coarse.stdout)), strict=True):
        probs = {a[f"label{k}"]: float(a[f"prob{k}"]) for k in range(1, every + 1)}
        summed: dict[str, float] = {}
        for name, p in probs.items():
            summed[taxonomy(name)] = summed.get(taxonomy(name), 0.0) + p
        assert b["label"] == max(summed, key=summed.get)
        assert float(b["confidence"]) == pytest.approx(summed[b["label"]], abs=2e-6)
        assert (b["fine_label"], b["fine_confidence"]) == (a["label"], a["confidence"])
        assert b["flag"] == a["flag"]
    bins = tmp_path / "bins.yaml"
    bins.write_text("recyclable: [cardboard, paper, glass, metal, plastic]\n"
                    "ignore: [trash, battery, biological, clothes, shoes]\n")
    result = run_cli("predict", *photos, "--format", "json", "--map", bins, "--top-k", "2")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["label"] for r in records} == {"recyclable"}  # an ignored class never answers
    assert all(r["confidence"] == pytest.approx(1.0, abs=1e-5) for r in records)
    assert {r["fine_label"] for r in records} <= set(CLASSES) - {"trash"}


def test_evaluate_with_a_map_scores_renamed_classes_and_reports_unseen_ones(tmp_path):
    """`evaluate --map`: data whose class names differ from the model's is scored once both
    are mapped into one space (here as if the names were the model's own); a data class the
    model cannot know is reported as unseen, with the share of it flagged."""
    plain, renamed = tmp_path / "plain", tmp_path / "renamed"
    for model_name, data_name in (("glass", "bottle"), ("metal", "can")):
        shutil.copytree(SAMPLE / model_name, plain / model_name)
        shutil.copytree(SAMPLE / model_name, renamed / data_name)
    shutil.copytree(SAMPLE / "trash", renamed / "e-waste")  # no class of the model's maps here
    space = tmp_path / "space.yaml"
    space.write_text("glass: [glass, bottle]\nmetal: [metal, can]\n")
    reference = json.loads(run_cli("evaluate", "waste-lite0", "--data", plain, "--json",
                                   "--allow-subset").stdout)
    result = run_cli("evaluate", "waste-lite0", "--data", renamed, "--map", space, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == reference["images"]
    assert report["accuracy"] == pytest.approx(reference["accuracy"])
    assert report["unseen"]["classes"] == ["e-waste"]
    assert report["unseen"]["images"] == len(list((SAMPLE / "trash").glob("*.jpg")))
    assert 0.0 <= report["unseen"]["flagged"] <= 1.0
