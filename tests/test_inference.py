"""The inference core: finding and opening a model, the ONNX twin, worker processes, batching
and backend policy."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from conftest import run_cli

from waste_cli.core.console import Reporter
from waste_cli.core.errors import ModelError


def _open(model: Path, backend: str, reporter: Reporter):
    from waste_cli.infer.core import open_model

    return open_model(model, "cpu", backend, reporter)


def test_onnx_twin_hit_miss_and_unwritable(model):
    """The ONNX twin is exported once per checkpoint content, leaves the user's own exports
    alone, and a twin that cannot be written falls back to PyTorch under auto only."""
    users_export = model.with_name("best.int8.onnx")
    users_export.write_bytes(b"the user's own file")
    reporter = Reporter(quiet=True)

    def twins() -> list[Path]:
        return sorted(set(model.parent.glob("best.*.onnx")) - {users_export})

    assert _open(model, "auto", reporter).name == "onnxruntime"
    (twin,) = twins()
    written = twin.stat().st_mtime_ns, twin.stat().st_ino
    assert _open(model, "auto", reporter).name == "onnxruntime"
    assert (twin.stat().st_mtime_ns, twin.stat().st_ino) == written  # hit: not exported again
    checkpoint = torch.load(model, weights_only=True)
    checkpoint["model"]["classifier.bias"] += 1.0
    torch.save(checkpoint, model)
    _open(model, "auto", reporter)
    (new_twin,) = twins()  # miss: a new twin for the changed checkpoint, the old one removed
    assert new_twin != twin
    assert users_export.read_bytes() == b"the user's own file"

    new_twin.unlink()
    new_twin.mkdir()  # the twin's name is taken by a folder: it cannot be written
    loud = Reporter(quiet=True)
    assert _open(model, "auto", loud).name == "torch"
    assert "Running PyTorch instead" in loud.warnings[0]
    with pytest.raises(ModelError, match="Cannot export"):
        _open(model, "onnxruntime", loud)
    new_twin.rmdir()


def test_worker_processes_predict_as_this_process_does(model, prepared, tmp_path):
    """On a CPU, batches decoded and inferred in worker processes (torch and onnxruntime,
    with --tta) give this process's predictions, in input order, unreadable files included."""
    folder = tmp_path / "in"
    shutil.copytree(prepared / "test", folder)
    (folder / "glass" / "broken.jpg").write_text("not a photo")
    assert run_cli("export", "-m", model, "--onnx").exit_code == 0
    for path, backend in ((model, "torch"), (model.with_suffix(".onnx"), "onnxruntime")):
        runs = []
        for workers in ("0", "2"):
            result = run_cli("predict", "-m", path, folder, "--backend", backend, "--tta",
                             "--batch-size", "2", "--workers", workers, "--format", "csv")
            assert result.exit_code == 1, result.output  # the broken file
            runs.append(list(csv.DictReader(io.StringIO(result.stdout))))
        here, spread = runs
        assert [r["path"] for r in here] == [r["path"] for r in spread]
        assert [r["label1"] for r in here] == [r["label1"] for r in spread]
        assert [float(r["prob1"] or 0) for r in here] == pytest.approx(
            [float(r["prob1"] or 0) for r in spread], abs=1e-5)
        assert sum(bool(r["error"]) for r in spread) == 1


def test_tasks_cover_every_image_in_order_and_share_small_inputs():
    from waste_cli.core.policy import TASK_IMAGES
    from waste_cli.data.batching import batch_tasks

    for images, batch_size, workers in ((2527, 2, 2), (13, 2, 2), (5, 32, 2), (40, 3, 8)):
        tasks = list(batch_tasks(images, batch_size, workers))
        batches = [batch for task in tasks for batch in task]
        assert [i for batch in batches for i in batch] == list(range(images))
        assert all(0 < len(batch) <= batch_size for batch in batches)
        assert all(sum(map(len, task)) <= max(TASK_IMAGES, batch_size) for task in tasks)
        assert len(tasks) >= min(workers, len(batches))  # no worker left idle


def test_worker_plan():
    from waste_cli.core.policy import MAX_PROCESSES, plan_workers

    cores = min(os.cpu_count() or 1, MAX_PROCESSES)
    assert plan_workers(True, None, 4, 4) == (0, False)  # one batch: the loaded model here
    assert plan_workers(True, None, 400, 4) == (cores, True)
    assert plan_workers(True, 3, 8, 4) == (2, True)  # never more processes than batches
    assert plan_workers(True, 0, 400, 4) == (0, False)
    assert plan_workers(False, 2, 400, 32) == (2, False)
    assert plan_workers(True, None, 400, 4, spread_model=False)[1] is False  # training


def test_backend_policy():
    from waste_cli.core.errors import ConfigError
    from waste_cli.core.policy import default_batch_size
    from waste_cli.infer.core import choose_backend

    assert choose_backend(Path("best.pt"), "cpu", "auto") == "onnxruntime"
    assert choose_backend(Path("best.pt"), "cuda", "auto") == "torch"
    assert choose_backend(Path("best.pt"), "cpu", "torch") == "torch"
    assert choose_backend(Path("m.ONNX"), "cpu", "auto") == "onnxruntime"
    with pytest.raises(ConfigError, match="ONNX file"):
        choose_backend(Path("m.onnx"), "cpu", "torch")
    assert default_batch_size("onnxruntime", True) < default_batch_size("torch", False)


def _twin_facts(twin: Path) -> tuple[str, bool]:
    """(precision, whether the batch axis is dynamic) of an exported file."""
    proto = onnx.load(str(twin))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["wastecls"])
    return meta["precision"], bool(proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param)


def test_a_cached_twin_that_is_not_a_twin_is_written_again(model):
    """A file under the twin's name that is int8, has a fixed batch, or comes from another
    checkpoint is replaced by a real twin before it is used."""
    from waste_cli.core.files import file_sha256
    from waste_cli.export.formats import _twin_name

    twin = model.with_name(_twin_name(model, file_sha256(model)))
    result = run_cli("export", "-m", model, "--int8", "--batch", "4", "--max-drop", "100",
                     "--out", twin, "-q")
    assert result.exit_code == 0, result.output
    assert _twin_facts(twin) == ("int8", False)
    assert _open(model, "auto", Reporter(quiet=True)).name == "onnxruntime"
    assert _twin_facts(twin) == ("fp32", True)


def _environment_of_other_commands(command: str) -> dict[str, str]:
    """A non-default value for every WASTECLS_* setting that `command` lacks."""
    from typing import Literal, get_args, get_origin

    from waste_cli.options import COMMAND_OPTIONS

    own = set(COMMAND_OPTIONS[command].model_fields)
    values: dict[str, str] = {}
    for options in COMMAND_OPTIONS.values():
        for name, info in options.model_fields.items():
            if name in own:
                continue
            kinds = [a for a in get_args(info.annotation) or (info.annotation,)
                     if a is not type(None)]
            kind = kinds[0]
            if get_origin(kind) is Literal:
                value = str(get_args(kind)[-1])
            elif kind is bool:
                value = "1"
            elif kind in (int, float):
                value = "4"
            elif get_origin(kind) is list:
                value = "x"
            else:
                value = "elsewhere"
            values[f"WASTECLS_{name.upper()}"] = value
    return values


def test_settings_of_other_commands_never_reach_predict_pseudolabel_or_the_twin(
        model, prepared, tmp_path):
    """WASTECLS_INT8, WASTECLS_BATCH, WASTECLS_BOXES ... are export's and train's: set for them,
    they change nothing in predict, pseudolabel or the ONNX twin these two write."""
    predict_env = _environment_of_other_commands("predict")
    pseudolabel_env = _environment_of_other_commands("pseudolabel")
    assert {"WASTECLS_INT8", "WASTECLS_BATCH", "WASTECLS_LR"} <= set(predict_env)
    assert {"WASTECLS_BOXES", "WASTECLS_INT8", "WASTECLS_TOP_K"} <= set(pseudolabel_env)
    images = prepared / "test" / "glass"
    runs = []
    for poisoned in (True, False):
        for twin in model.parent.glob("best.*.onnx"):
            twin.unlink()
        predicted = run_cli("predict", "-m", model, images, "--format", "csv",
                            env=predict_env if poisoned else {})
        assert predicted.exit_code == 0, predicted.output
        manifest = tmp_path / f"manifest{len(runs)}.csv"
        labelled = run_cli("pseudolabel", "-m", model, "--data", images, "--out", manifest,
                           "-q", env=pseudolabel_env if poisoned else {})
        assert labelled.exit_code == 0, labelled.output
        (twin,) = model.parent.glob("best.*.onnx")
        runs.append((predicted.stdout, manifest.read_text(), _twin_facts(twin)))
    assert runs[0] == runs[1]
    assert runs[0][2] == ("fp32", True)
