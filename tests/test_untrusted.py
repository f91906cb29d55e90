"""Names and numbers from data are never trusted: crafted annotation files, models, manifests,
configs and outputs, each built here. Nothing outside the test's tmp folder may change."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import unicodedata
from pathlib import Path

import onnx
import pytest
import torch
from conftest import SAMPLE, TINY, build_coco, run_cli, tiny_train


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- 1. names from data never become paths unchecked ----------------------------------------

@pytest.mark.parametrize("name", ["/tmp/wastecls-victim", "../../escaped", "a\x00b", "..",
                                  "x" * 300, ".hidden"])
def test_a_category_that_cannot_be_a_folder_name_is_refused(tmp_path, name):
    annotations, images = build_coco(tmp_path / "coco", scenes=2)
    coco = json.loads(annotations.read_text())
    coco["categories"][0]["name"] = name
    annotations.write_text(json.dumps(coco))
    before = _files(tmp_path)
    result = run_cli("prepare", annotations, "--images", images, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "cannot be a folder or file name" in result.output and "category" in result.output
    assert _files(tmp_path) == before  # nothing written, here or elsewhere
    assert not Path("/tmp/wastecls-victim").exists()


def test_a_map_target_that_escapes_is_refused(tmp_path):
    (tmp_path / "map.yaml").write_text("../x: [glass, metal]\n")
    result = run_cli("prepare", SAMPLE, "--out", tmp_path / "out", "--map", tmp_path / "map.yaml")
    assert result.exit_code == 2 and "target class of" in result.output, result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_an_annotation_id_that_escapes_is_skipped_with_its_reason(tmp_path):
    annotations, images = build_coco(tmp_path / "coco", scenes=4)
    coco = json.loads(annotations.read_text())
    coco["annotations"][0]["id"] = "../../../../escaped"
    annotations.write_text(json.dumps(coco))
    result = run_cli("prepare", annotations, "--images", images, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert any("cannot be a file name" in s["reason"] for s in report["skipped"])
    assert not list(tmp_path.parent.glob("escaped*"))


def test_the_same_class_name_in_nfc_and_nfd_is_one_class(tmp_path):
    raw = tmp_path / "raw"
    photos = sorted((SAMPLE / "glass").glob("*.jpg"))
    for form, chosen in (("NFC", photos[:6]), ("NFD", photos[6:])):
        folder = raw / unicodedata.normalize(form, "café")
        folder.mkdir(parents=True)
        for photo in chosen:
            shutil.copy(photo, folder / photo.name)
    shutil.copytree(SAMPLE / "metal", raw / "metal")
    result = run_cli("prepare", raw, "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    classes = json.loads((tmp_path / "out" / "dataset.json").read_text())["classes"]
    assert classes == [unicodedata.normalize("NFC", "café"), "metal"]


def _checkpoint_with(trained, tmp_path: Path, **changes) -> Path:
    checkpoint = torch.load(trained.run_dir / "best.pt", weights_only=True)
    for key, value in changes.items():
        if value is None:
            checkpoint.pop(key)
        else:
            checkpoint[key] = value
    path = tmp_path / "crafted" / "best.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def test_pseudolabel_copies_only_into_safe_class_folders_and_never_over_a_file(
        trained, prepared, tmp_path):
    classes = list(torch.load(trained.run_dir / "best.pt", weights_only=True)["classes"])
    hostile = _checkpoint_with(trained, tmp_path, classes=["../../../somewhere", *classes[1:]])
    pool = tmp_path / "pool"
    shutil.copytree(prepared / "test" / "glass", pool)
    result = run_cli("pseudolabel", "-m", hostile, "--data", pool, "--threshold", "0.01",
                     "--out", tmp_path / "m.csv", "--copy-to", tmp_path / "sorted",
                     "--backend", "torch")
    assert result.exit_code == 2 and "a class of" in result.output, result.output
    assert not (tmp_path / "sorted").exists() and not (tmp_path.parent / "somewhere").exists()

    sorted_dir = tmp_path / "sorted2"
    result = run_cli("pseudolabel", "-m", trained.run_dir / "best.pt", "--data", pool,
                     "--threshold", "0.01", "--out", tmp_path / "m2.csv", "--copy-to",
                     sorted_dir, "--backend", "torch")
    assert result.exit_code == 0, result.output
    copies = sorted(sorted_dir.rglob("*.jpg"))
    mine = copies[0].with_name(copies[0].name)  # a user's own file of the next run's name
    mine.write_bytes(b"the user's own")
    result = run_cli("pseudolabel", "-m", trained.run_dir / "best.pt", "--data", pool,
                     "--threshold", "0.01", "--out", tmp_path / "m3.csv", "--copy-to",
                     sorted_dir, "--backend", "torch")
    assert result.exit_code == 0, result.output
    assert mine.read_bytes() == b"the user's own"
    assert len(list(sorted_dir.rglob("*.jpg"))) == 2 * len(copies)


# --- 2. names from data never reach a terminal or a spreadsheet raw ---------------------------

def test_class_names_with_escapes_and_markup_are_shown_literally(trained, prepared, tmp_path):
    classes = list(torch.load(trained.run_dir / "best.pt", weights_only=True)["classes"])
    odd = ["\x1b[31mred", "[/]", "[bold]b", *classes[3:]]
    model = _checkpoint_with(trained, tmp_path, classes=odd)
    data = tmp_path / "data"
    for old, new in zip(classes, odd, strict=True):
        folder = data / "test" / new.replace("\x1b", "e").replace("/", "s")
        shutil.copytree(prepared / "test" / old, folder)
    result = run_cli("evaluate", model, "--data", data, "--allow-subset", "--backend", "torch")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    result = run_cli("predict", "-m", model, prepared / "test" / "cardboard", "--top-k", "6",
                     "--backend", "torch")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\\x1b[31mred" in result.output
    assert "[/]" in result.output and "[bold]b" in result.output


def test_formulas_and_newlines_in_file_names_are_neutralised(trained, prepared, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photo = next((prepared / "test" / "glass").glob("*.jpg"))
    formula, newline = "=cmd|' -C calc'!A0.jpg", "fake\nline.jpg"
    shutil.copy(photo, folder / formula)
    shutil.copy(photo, folder / newline)
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", folder, "--format", "csv",
                     "--backend", "torch")
    rows = list(csv.reader(io.StringIO(result.stdout)))
    cells = [r[0] for r in rows[1:]]
    assert any(c.endswith(formula) for c in cells)
    assert not any(c.startswith(("=", "+", "-", "@")) for row in rows for c in row
                   if not c.lstrip("-").replace(".", "").isdigit())
    table = run_cli("predict", "-m", trained.run_dir / "best.pt", folder, "--backend", "torch")
    lines = [line for line in table.stdout.splitlines() if line.strip()]
    assert len(lines) == 2 and any("fake\\nline.jpg" in line for line in lines)


def test_spreadsheet_cells_round_trip():
    from waste_cli.core.formats import plain_cell, spreadsheet_cell

    for text in ("=1+1", "+x", "-cmd", "@SUM(A1)", "\tx", "glass", "-0.5", "3"):
        assert plain_cell(spreadsheet_cell(text)) == text
    assert spreadsheet_cell("=1+1") == "'=1+1" and spreadsheet_cell("-0.5") == "-0.5"


# --- 3. outputs only replace what they may replace --------------------------------------------

def test_a_fifo_output_is_streamed_into_never_replaced(trained, prepared, tmp_path):
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", prepared / "test" / "glass",
                     "--output", fifo, "--format", "csv", "--backend", "torch")
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert received and received[0].startswith("path,label,confidence,flag,unfamiliarity,label1")


def test_a_device_output_is_written_through_never_unlinked(trained, prepared, tmp_path):
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", prepared / "test" / "glass",
                     "--output", device, "--backend", "torch")
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(device.stat().st_mode)
    result = run_cli("pseudolabel", "-m", trained.run_dir / "best.pt", "--data",
                     prepared / "test" / "glass", "--out", device, "--backend", "torch")
    assert result.exit_code == 0 and stat.S_ISCHR(device.stat().st_mode), result.output


def test_output_dash_is_standard_output(trained, prepared):
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", prepared / "test" / "glass",
                     "--output", "-", "--format", "json", "--backend", "torch")
    assert result.exit_code == 0 and json.loads(result.stdout.splitlines()[0])["labels"]


def test_prepare_writes_through_a_symlinked_out_and_keeps_what_it_did_not_make(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    assert run_cli("prepare", SAMPLE, "--out", link, "-q").exit_code == 0
    (real / "notes.txt").write_text("my notes")
    result = run_cli("prepare", SAMPLE, "--out", link, "--overwrite", "--size", "48", "-q")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and (real / "dataset.json").is_file()
    assert (real / "notes.txt").read_text() == "my notes"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_evaluate_out_refuses_a_folder_of_other_files(trained, prepared, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained.run_dir, run_dir)
    model = tmp_path / "model" / "best.pt"
    model.parent.mkdir()
    shutil.move(run_dir / "best.pt", model)
    before = (run_dir / "confusion_matrix.png").read_bytes()
    args = ("evaluate", model, "--data", prepared, "--backend", "torch")
    result = run_cli(*args, "--out", run_dir)
    assert result.exit_code == 2 and "--overwrite" in result.output, result.output
    assert (run_dir / "confusion_matrix.png").read_bytes() == before
    out = tmp_path / "eval"
    assert run_cli(*args, "--out", out).exit_code == 0
    assert run_cli(*args, "--out", out).exit_code == 0  # its own files: written again
    assert run_cli(*args, "--out", run_dir, "--overwrite").exit_code == 0


@pytest.mark.subprocess
def test_a_temporary_whose_writer_lives_elsewhere_is_kept(tmp_path):
    """Liveness is the writer's lock, not a PID: a temporary named by a PID that does not run
    here (another PID namespace) survives while its lock is held, and goes once released."""
    from waste_cli.core import files

    foreign = tmp_path / ".out.csv.wastecls-999999-abc123"
    foreign.write_text("another container's half-written output")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(foreign)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    files.atomic_write_text(tmp_path / "mine.csv", "x")
    assert foreign.exists()
    holder.communicate("")
    files._CLEANED.discard(tmp_path.resolve())
    files.atomic_write_text(tmp_path / "mine.csv", "y")
    assert not foreign.exists()


def test_long_output_names_fit_their_temporaries(trained, prepared, tmp_path):
    long_name = tmp_path / ("p" * 240 + ".csv")  # 244 bytes: a valid name
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", prepared / "test" / "glass",
                     "--output", long_name, "--backend", "torch")
    assert result.exit_code == 0 and long_name.is_file(), result.output
    model = tmp_path / ("m" * 246 + ".pt")  # its twin's name cannot be longer: PyTorch runs it
    shutil.copy(trained.run_dir / "best.pt", model)
    result = run_cli("predict", "-m", model, prepared / "test" / "glass")
    assert result.exit_code == 0 and "Running PyTorch instead" in result.output, result.output


# --- 4. runs that change under you ------------------------------------------------------------

@pytest.fixture
def resumable(prepared, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    run = tiny_train(data, tmp_path / "runs", epochs=1).run_dir
    return data, run


def test_resume_refuses_data_whose_classes_changed(resumable):
    data, run = resumable
    meta = json.loads((data / "dataset.json").read_text())
    meta["classes"] = list(reversed(meta["classes"]))
    (data / "dataset.json").write_text(json.dumps(meta))
    result = run_cli("train", "--resume", run, "--epochs", "2")
    assert result.exit_code == 1 and "order changed" in result.output, result.output
    meta["classes"] = [*sorted(meta["classes"]), "rubber"]
    (data / "dataset.json").write_text(json.dumps(meta))
    shutil.copytree(data / "train" / "glass", data / "train" / "rubber")
    result = run_cli("train", "--resume", run, "--epochs", "2")
    assert result.exit_code == 1 and "classes added: rubber" in result.output, result.output


def test_resume_refuses_settings_it_would_ignore_and_works_from_elsewhere(
        resumable, tmp_path, monkeypatch):
    data, run = resumable
    result = run_cli("train", "--resume", run, "--lr", "0.5", "--img-size", "64")
    assert result.exit_code == 2 and "--lr" in result.output and "--img-size" in result.output
    monkeypatch.chdir(tmp_path.parent)  # another working folder: the stored data path holds
    result = run_cli("train", "--resume", run, "--epochs", "2", "-q")
    assert result.exit_code == 0, result.output
    moved = tmp_path / "moved"
    data.rename(moved)
    result = run_cli("train", "--resume", run, "--epochs", "3", "--data", moved, "-q")
    assert result.exit_code == 0, result.output


def test_resume_migrates_a_renamed_option_and_names_an_unknown_one(resumable, monkeypatch):
    """last.pt carries a versioned options record: a field renamed by a later release is
    migrated by the table, one this release does not know is one line with exit 2."""
    import torch

    from waste_cli import options

    _, run = resumable
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["options"]["version"] == options.OPTIONS_VERSION
    # A record written before the next release renamed `lr_old_name` to `lr`, read after it.
    monkeypatch.setitem(options.OPTION_MIGRATIONS, options.OPTIONS_VERSION + 1,
                        {"lr_old_name": "lr"})
    last["options"]["values"]["lr_old_name"] = last["options"]["values"].pop("lr")
    last["options"]["version"] = options.OPTIONS_VERSION  # written before the rename ...
    monkeypatch.setattr(options, "OPTIONS_VERSION", options.OPTIONS_VERSION + 1)  # ... read after
    torch.save(last, run / "last.pt")
    result = run_cli("train", "--resume", run, "--epochs", "2", "-q")
    assert result.exit_code == 0, result.output
    monkeypatch.undo()

    last = torch.load(run / "last.pt", weights_only=True)
    last["options"]["values"]["mixup_alpha"] = 0.2  # a field from some other release
    torch.save(last, run / "last.pt")
    result = run_cli("train", "--resume", run, "--epochs", "3")
    assert result.exit_code == 2, result.output
    assert "mixup_alpha" in result.output and "Unexpected" not in result.output, result.output
    assert len(result.output.strip().splitlines()) <= 4, result.output


def test_extra_labels_from_the_test_split_and_duplicate_classes_are_refused(prepared, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    manifest = tmp_path / "leak.csv"
    rows = [[str(p), p.parent.name] for p in (data / "test").rglob("*.jpg")]
    manifest.write_text("path,label\n" + "\n".join(",".join(r) for r in rows) + "\n")
    tiny = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
            for k, v in TINY.items() if k not in ("pretrained", "quiet")]
    result = run_cli("train", "--data", data, "--extra-labels", manifest, "--no-pretrained",
                     "--project", tmp_path / "runs", *tiny)
    assert result.exit_code == 1 and "val or test" in result.output, result.output
    meta = json.loads((data / "dataset.json").read_text())
    meta["classes"].append(meta["classes"][0])
    (data / "dataset.json").write_text(json.dumps(meta))
    result = run_cli("train", "--data", data, "--no-pretrained", "--project", tmp_path / "runs",
                     *tiny)
    assert result.exit_code == 1 and "more than once" in result.output, result.output


# --- 5. numbers and settings ------------------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_settings_are_refused(tmp_path, value):
    result = run_cli("train", "--data", tmp_path, "--lr", value)
    assert result.exit_code == 2 and "finite" in result.output


def test_a_diverging_loss_stops_training_and_a_broken_model_is_refused(
        prepared, trained, tmp_path):
    from waste_cli.core.errors import WasteclsError

    with pytest.raises(WasteclsError, match="training loss became"):
        tiny_train(prepared, tmp_path / "runs", lr=1e30, epochs=2, warmup_epochs=0)
    checkpoint = torch.load(trained.run_dir / "best.pt", weights_only=True)
    checkpoint["model"] = {k: v.float() * float("nan") if v.is_floating_point() else v
                           for k, v in checkpoint["model"].items()}
    broken = tmp_path / "broken.pt"
    torch.save(checkpoint, broken)
    result = run_cli("export", "-m", broken)
    assert result.exit_code == 1 and "not finite" in result.output
    result = run_cli("predict", "-m", broken, prepared / "test" / "glass", "--format", "json",
                     "--backend", "torch")
    assert result.exit_code == 1
    for line in result.stdout.splitlines():
        assert "not a finite number" in json.loads(line)["error"]  # valid JSON, no NaN
    result = run_cli("evaluate", broken, "--data", prepared, "--backend", "torch")
    assert result.exit_code == 1 and "not a finite number" in result.output


def test_excluding_every_class_and_comma_lists_from_the_environment(trained, prepared):
    classes = torch.load(trained.run_dir / "best.pt", weights_only=True)["classes"]
    args = ("predict", "-m", trained.run_dir / "best.pt", prepared / "test" / "glass",
            "--backend", "torch")
    everything = [a for c in classes for a in ("--exclude-class", c)]
    assert run_cli(*args, *everything).exit_code == 2
    result = run_cli(*args, "--format", "csv", env={"WASTECLS_EXCLUDE_CLASS": "glass, metal"})
    assert result.exit_code == 0, result.output
    assert not {r["label1"] for r in csv.DictReader(io.StringIO(result.stdout))} & {
        "glass", "metal"}


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    bomb = "a: &a ['x','x','x','x','x','x','x','x','x']\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}" + f",*{chr(97 + i)}" * 8 + "]\n"
        for i in range(8))
    (tmp_path / "c.yaml").write_text(bomb)
    result = run_cli("prepare", SAMPLE, "--out", tmp_path / "o", "--config", tmp_path / "c.yaml")
    assert result.exit_code == 2 and "aliases" in result.output
    (tmp_path / "map.yaml").write_text(bomb)
    result = run_cli("prepare", SAMPLE, "--out", tmp_path / "o", "--map", tmp_path / "map.yaml")
    assert result.exit_code == 1 and "aliases" in result.output


# --- 6. models and manifests from elsewhere ---------------------------------------------------

@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("exported")
    assert run_cli("export", "-m", trained.run_dir / "best.pt", "--out", folder / "m.onnx",
                   "-q").exit_code == 0
    return folder / "m.onnx"


def _onnx_with(exported: Path, tmp_path: Path, meta: object) -> Path:
    proto = onnx.load(str(exported))
    for prop in proto.metadata_props:
        if prop.key == "wastecls":
            prop.value = json.dumps(meta)
    path = tmp_path / "crafted.onnx"
    onnx.save(proto, str(path))
    return path


def test_onnx_metadata_from_elsewhere_is_checked(exported, prepared, tmp_path):
    proto = onnx.load(str(exported))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["wastecls"])
    cases = {
        "a list": ["not", "an", "object"],
        "no classes": {k: v for k, v in meta.items() if k != "classes"},
        "no data_config": {k: v for k, v in meta.items() if k != "data_config"},
        "fewer classes": {**meta, "classes": meta["classes"][:3]},
        "a huge input": {**meta, "data_config": {**meta["data_config"],
                                                 "input_size": [3, 100000, 100000]}},
    }
    for case, crafted in cases.items():
        path = _onnx_with(exported, tmp_path, crafted)
        result = run_cli("predict", "-m", path, prepared / "test" / "glass", "--top-k", "6")
        assert result.exit_code == 1, (case, result.output)
        assert "Cannot use the model" in result.output or "no wastecls metadata" in \
            result.output, (case, result.output)
        assert "Unexpected error" not in result.output


@pytest.mark.parametrize("change", [{"classes": None}, {"arch": None}, {"model": None},
                                    {"arch": "resnet10t"}, {"classes": ["a", "b"]}])
def test_checkpoints_that_do_not_describe_their_weights_are_refused(trained, prepared, tmp_path,
                                                                    change):
    path = _checkpoint_with(trained, tmp_path, **change)
    result = run_cli("predict", "-m", path, prepared / "test" / "glass", "--backend", "torch")
    assert result.exit_code == 1 and "Cannot use" in result.output, result.output
    assert "Unexpected error" not in result.output and "size mismatch" not in result.output


def test_manifest_rows_without_a_label_are_skipped_with_their_line(prepared, tmp_path):
    from waste_cli.core.console import Reporter
    from waste_cli.train.self_training import read_manifests

    photo = next((prepared / "train" / "glass").glob("*.jpg"))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{photo},glass\n{photo}\n,metal\n")
    reporter = Reporter(quiet=True)
    rows = read_manifests([manifest], ["glass", "metal"], reporter)
    assert rows == [(photo, 0)]
    assert [w.split(":")[0] for w in reporter.warnings] == [
        f"skipped line 3 of {manifest}", f"skipped line 4 of {manifest}"]


def test_inputs_that_are_pipes_or_bracketed_names(trained, prepared, tmp_path):
    photo = next((prepared / "test" / "glass").glob("*.jpg"))
    bracketed = tmp_path / "a[1].jpg"
    shutil.copy(photo, bracketed)
    shutil.copy(next((prepared / "test" / "metal").glob("*.jpg")), tmp_path / "a1.jpg")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", bracketed, fifo,
                     "--format", "csv", "--backend", "torch")
    assert result.exit_code == 1
    rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert set(rows) == {"a[1].jpg", "pipe.jpg"}
    assert "not a regular file" in rows["pipe.jpg"]["error"] and not rows["a[1].jpg"]["error"]


# --- 7. left from the first round -------------------------------------------------------------

@pytest.mark.subprocess
def test_a_file_size_limit_fails_prepare_instead_of_keeping_truncated_images(tmp_path):
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))\n"
              "from waste_cli.cli import main\n"
              "sys.argv = ['wastecls', 'prepare', sys.argv[1], '--out', sys.argv[2], '-q',"
              " '--workers', '1']\nmain()\n")
    done = subprocess.run([sys.executable, "-c", script, str(SAMPLE), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "dataset.json").exists()
    message = " ".join(done.stderr.split())
    # The message names the file that could not be written and says what was kept: nothing.
    assert ".jpg" in message and "File too large" in message, message
    assert "Nothing was written" in message and "kept" not in message, message
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_empty_class_folders_and_unusable_file_names_are_reported(tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(SAMPLE, raw, ignore=shutil.ignore_patterns("*.md"))
    (raw / "rubber").mkdir()
    assert run_cli("prepare", raw, "--out", tmp_path / "out", "-q").exit_code == 0
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert {"class_folder": "rubber", "reason": "holds no images: not a class of the dataset"} \
        in report["skipped"]
    annotations, images = build_coco(tmp_path / "coco", scenes=3)
    coco = json.loads(annotations.read_text())
    coco["images"][0]["file_name"] = None
    annotations.write_text(json.dumps(coco))
    assert run_cli("prepare", annotations, "--images", images, "--out", tmp_path / "c",
                   "-q").exit_code == 0
    report = json.loads((tmp_path / "c" / "prepare_report.json").read_text())
    dropped = [s for s in report["skipped"] if "file_name" in s["reason"]]
    assert dropped and dropped[0]["annotations"] == [1, 2, 3]
