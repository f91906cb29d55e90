"""`wastecls export` and the onnxruntime backend: parity, metadata, verification, cache."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import run_cli

import waste_cli.export.formats as exporter
from waste_cli.core.errors import ModelError
from waste_cli.core.files import file_sha256
from waste_cli.model.backends import OnnxRunner, TorchRunner
from waste_cli.model.checkpoint import load_checkpoint


def _images(prepared: Path, runner) -> np.ndarray:
    from waste_cli.data.sources import load_rgb
    from waste_cli.data.transforms import eval_transform

    transform = eval_transform(runner.data_config)
    paths = sorted((prepared / "test").rglob("*.jpg"))[:5]
    return np.stack([transform(load_rgb(p)) for p in paths])


def test_onnx_and_torchscript_export_with_metadata_and_parity(model, prepared):
    result = run_cli("export", "-m", model, "--onnx", "--torchscript")
    assert result.exit_code == 0, result.output
    onnx_path, ts_path = model.with_suffix(".onnx"), model.with_suffix(".torchscript")
    assert onnx_path.is_file() and ts_path.is_file()
    checkpoint = load_checkpoint(model)
    proto = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == checkpoint["classes"]
    assert json.loads(props["mean"]) == checkpoint["data_config"]["mean"]
    assert props["interpolation"] == checkpoint["data_config"]["interpolation"]
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["logits", "unfamiliarity"]
    sidecar = json.loads(Path(str(onnx_path) + ".json").read_text())
    assert sidecar["source_checkpoint_sha256"] == file_sha256(model)
    assert sidecar["calibration"] == checkpoint["calibration"]
    runner = OnnxRunner(onnx_path)
    reference = TorchRunner.from_checkpoint(checkpoint, torch.device("cpu"))
    assert runner.classes == checkpoint["classes"]
    assert runner.data_config == checkpoint["data_config"]
    images = _images(prepared, runner)
    for batch in (images[:1], images):  # batch 1 and batch 5
        mine, theirs = runner(batch), reference(batch)
        assert set(mine) == set(theirs) == {"logits", "unfamiliarity"}
        for name in mine:  # the score computed inside the file equals the checkpoint's
            assert np.allclose(mine[name], theirs[name], atol=1e-4), name
    bare = onnxruntime.InferenceSession(str(onnx_path))  # no wastecls, no torch needed
    logits, score = bare.run(None, {"image": images})
    assert np.allclose(score, reference(images)["unfamiliarity"], atol=1e-4)
    assert logits.shape == (len(images), len(checkpoint["classes"]))
    module = torch.jit.load(str(ts_path))
    traced = module(torch.from_numpy(images))
    for name, out in zip(("logits", "unfamiliarity"), traced, strict=True):
        assert np.allclose(out.detach().numpy(), reference(images)[name], atol=1e-4)


def test_half_and_int8_report_accuracy(model, prepared, tmp_path):
    result = run_cli("export", "-m", model, "--onnx", "--half", "--out", tmp_path / "h.onnx",
                     "-q")
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(tmp_path / "h.onnx")]  # -q: only what was written
    assert json.loads((tmp_path / "h.onnx.json").read_text())["precision"] == "fp16"
    result = run_cli("export", "-m", model, "--onnx", "--int8", "--out", tmp_path / "q.onnx",
                     "--calib-data", prepared / "train", "--max-drop", "100")
    assert result.exit_code == 0, result.output
    # accuracy before -> after, on the labelled verification images
    assert re.search(r"\d+\.\d% -> \d+\.\d%", result.output), result.output
    assert OnnxRunner(tmp_path / "q.onnx").metadata["precision"] == "int8"
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert "QuantizeLinear" in ops  # static int8 ...
    readers = [n.op_type for n in graph.node if "image" in n.input]
    writers = [n.op_type for n in graph.node if "logits" in n.output]
    assert "QuantizeLinear" not in readers and "DequantizeLinear" not in writers  # ends in float


def test_out_may_be_a_folder_to_write_into(model, tmp_path):
    result = run_cli("export", "-m", model, "--onnx", "--out", tmp_path, "-q")
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(tmp_path / f"{Path(model).stem}.onnx")]


def test_failed_verification_leaves_no_file(model, monkeypatch):
    monkeypatch.setattr(exporter, "FP32_TOLERANCE", 0.0)
    result = run_cli("export", "-m", model, "--onnx")
    assert result.exit_code == 1 and "disagrees" in result.output
    assert not model.with_suffix(".onnx").exists()
    assert [p.name for p in model.parent.iterdir()] == ["best.pt"]


def test_export_defaults_to_onnx_and_refuses_conflicts(model):
    result = run_cli("export", "-m", model, "-q")
    assert result.exit_code == 0 and result.output.split() == [str(model.with_suffix(".onnx"))]
    assert "choose a format" in run_cli("export", "-m", model, "--no-onnx").output
    result = run_cli("export", "-m", model, "--onnx", "--half", "--int8")
    assert result.exit_code == 2 and "exclude each other" in result.output
    assert run_cli("export", "-m", model, "--onnx", "--batch", "x").exit_code == 2


def test_corrupted_onnx_is_refused(prepared, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(ModelError, match="Cannot load"):
        OnnxRunner(bad)
    result = run_cli("predict", "-m", bad, prepared / "test" / "glass")
    assert result.exit_code == 1 and "Export it again" in result.output


def _predictions(*args) -> list[dict[str, str]]:
    result = run_cli("predict", *args, "--format", "csv", "--top-k", "2")
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


def test_predict_and_evaluate_on_onnx_match_the_checkpoint(model, prepared):
    assert run_cli("export", "-m", model, "--onnx").exit_code == 0
    onnx_path = model.with_suffix(".onnx")
    torch_rows = _predictions("-m", model, prepared / "test", "--backend", "torch")
    onnx_rows = _predictions("-m", onnx_path, prepared / "test")
    assert [r["label1"] for r in torch_rows] == [r["label1"] for r in onnx_rows]
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        assert float(a["prob1"]) == pytest.approx(float(b["prob1"]), abs=1e-4)
    reports = [json.loads(run_cli("evaluate", m, "--data", prepared, "--json", *extra).stdout)
               for m, extra in ((model, ["--backend", "torch"]), (onnx_path, []))]
    assert reports[0]["confusion_matrix"] == reports[1]["confusion_matrix"]
    assert reports[1]["backend"] == "onnxruntime"


@pytest.mark.subprocess
def test_predict_on_onnx_never_imports_torch(model, prepared):
    """Importing torch is most of a predict run's start-up; an ONNX model does not need it."""
    assert run_cli("export", "-m", model, "--onnx").exit_code == 0
    script = ("import sys\nfrom waste_cli.cli import main\n"
              "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
              "print('torch' in sys.modules, 'timm' in sys.modules, code)")
    for workers in ("0", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script, "predict", "-m", str(model.with_suffix(".onnx")),
             str(prepared / "test"), "--workers", workers, "--batch-size", "2", "-q",
             "--format", "csv"], capture_output=True, text=True, check=True).stdout
        assert out.splitlines()[-1] == "False False 0", out




def test_openvino_export_runs_like_the_checkpoint_and_is_never_half_written(model, prepared,
                                                                              monkeypatch):
    pytest.importorskip("openvino", reason="openvino is not installed")
    from waste_cli.model.backends import OpenVinoRunner

    result = run_cli("export", "-m", model, "--openvino")
    assert result.exit_code == 0, result.output
    folder = model.with_suffix(".openvino")
    assert sorted(p.name for p in folder.iterdir()) == ["model.bin", "model.xml"]
    checkpoint = load_checkpoint(model)
    runner = OpenVinoRunner(folder)
    assert runner.classes == checkpoint["classes"] and runner.calibration is not None
    reference = TorchRunner.from_checkpoint(checkpoint, torch.device("cpu"))
    images = _images(prepared, runner)
    for batch in (images[:1], images):
        mine, theirs = runner(batch), reference(batch)
        for name in ("logits", "unfamiliarity"):  # the score travels inside the file
            assert np.allclose(mine[name], theirs[name], atol=1e-4), name
    report = json.loads(run_cli("evaluate", folder, "--data", prepared, "--json").stdout)
    reference_report = json.loads(run_cli("evaluate", model, "--data", prepared, "--json",
                                          "--backend", "torch").stdout)
    assert report["backend"] == "openvino"
    assert report["confusion_matrix"] == reference_report["confusion_matrix"]
    # a second export replaces its own folder; a failed one leaves the first as it was
    before = (folder / "model.xml").read_bytes()
    monkeypatch.setattr(exporter, "FP32_TOLERANCE", 0.0)
    result = run_cli("export", "-m", model, "--openvino")
    assert result.exit_code == 1 and "disagrees" in result.output
    assert (folder / "model.xml").read_bytes() == before
    assert sorted(p.name for p in model.parent.iterdir() if p.name.startswith(".")) in (
        [], [".wastecls-output.json"])
    assert run_cli("export", "-m", model, "--openvino", "--int8").exit_code == 2


def test_tflite_fp32_and_int8_carry_the_score_and_run_in_predict(model, prepared, tmp_path):
    pytest.importorskip("litert_torch", reason="litert-torch (the TFLite converter) is not "
                        "installed: pip install 'wastecls[tflite]'")
    from waste_cli.model.backends import TfliteRunner

    result = run_cli("export", "-m", model, "--tflite")
    assert result.exit_code == 0, result.output
    path = model.with_suffix(".tflite")
    assert path.is_file() and Path(str(path) + ".json").is_file()
    checkpoint = load_checkpoint(model)
    runner = TfliteRunner(path)
    reference = TorchRunner.from_checkpoint(checkpoint, torch.device("cpu"))
    images = _images(prepared, runner)
    mine, theirs = runner(images), reference(images)  # batch 1 inside, 5 images here
    for name in ("logits", "unfamiliarity"):
        assert np.allclose(mine[name], theirs[name], atol=1e-4), name
    rows = _predictions("-m", path, prepared / "test")
    assert rows and all(r["label1"] in checkpoint["classes"] for r in rows)
    int8 = tmp_path / "small.tflite"
    result = run_cli("export", "-m", model, "--tflite", "--int8", "--out", int8,
                     "--verify-data", prepared / "test", "--max-drop", "100")
    assert result.exit_code == 0, result.output
    assert int8.stat().st_size < path.stat().st_size
    assert run_cli("export", "-m", model, "--tflite", "--half").exit_code == 2
    moved = tmp_path / "alone.tflite"
    moved.write_bytes(path.read_bytes())  # without its metadata file
    result = run_cli("predict", "-m", moved, prepared / "test")
    assert result.exit_code == 1 and "alone.tflite.json" in result.output
