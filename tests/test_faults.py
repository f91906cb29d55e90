"""Fault injection: hostile inputs, full and read-only disks, kill -9 and Ctrl-C, for the real
commands. Nothing the user owns is lost, nothing half-written carries a final name, no process
survives its parent, and every failure is one paragraph with the documented exit code."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import SAMPLE, TINY, build_coco, run_cli
from PIL import Image

from waste_cli.core.files import OUTPUT_MARKER
from waste_cli.data.sources import open_image

CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


def _wastecls(*args: object, limit_bytes: int | None = None, **popen) -> subprocess.Popen:
    """`wastecls ARGS` in a child process; `limit_bytes` caps the size of any file it writes
    (RLIMIT_FSIZE: a write past it fails with EFBIG, as a full disk fails with ENOSPC)."""

    def limit() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as from a shell, whatever pytest holds
        if limit_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen([sys.executable, "-m", "waste_cli", *map(str, args)],
                            preexec_fn=limit, text=True, **popen)


def _run(*args: object, **kwargs) -> subprocess.CompletedProcess:
    proc = _wastecls(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _one_paragraph(result) -> str:
    """The error message, checked to be a message and not a traceback."""
    text = result.stderr if hasattr(result, "stderr") and result.stderr else result.output
    assert "Traceback" not in text and "error:" in text, text
    return " ".join(text.split())


def _mount(tmp_path: Path, name: str, options: str) -> Path:
    mount = tmp_path / name
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode:
        pytest.skip("mounting a tmpfs needs root")
    return mount


@pytest.fixture
def full_disk(tmp_path):
    """A real file system of 16 KiB: writes past it fail with ENOSPC."""
    mount = _mount(tmp_path, "full", "size=16k")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def read_only(tmp_path):
    mount = _mount(tmp_path, "ro", "size=1m")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def onnx_model(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert run_cli("export", "-m", trained.run_dir / "best.pt", "--onnx", "--out", out,
                   "-q").exit_code == 0
    return out


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """600 sample photos (hard links) under class folders: enough work to be killed in."""
    root = tmp_path_factory.mktemp("many") / "raw"
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        photos = sorted((SAMPLE / name).glob("*.jpg"))
        for i in range(100):
            os.link(photos[i % len(photos)], root / name / f"{i:03}.jpg")
    return root


# --- nothing the user owns is lost ----------------------------------------------------------

def test_prepare_overwrite_never_deletes_what_it_did_not_create(sample_copy, tmp_path):
    inside = tmp_path / "out"
    shutil.copytree(sample_copy, inside / "raw")
    before = sorted(p.name for p in (inside / "raw").rglob("*"))
    result = run_cli("prepare", inside / "raw", "--out", inside, "--overwrite")
    assert result.exit_code == 2 and "overlaps" in _one_paragraph(result)
    assert sorted(p.name for p in (inside / "raw").rglob("*")) == before  # the source is intact

    someones = tmp_path / "documents"
    someones.mkdir()
    (someones / "thesis.txt").write_text("years of work")
    result = run_cli("prepare", sample_copy, "--out", someones, "--overwrite")
    assert result.exit_code == 1 and "has no such dataset.json" in _one_paragraph(result)
    assert (someones / "thesis.txt").read_text() == "years of work"

    result = run_cli("prepare", sample_copy, "--out", sample_copy / "data")
    assert result.exit_code == 2 and not (sample_copy / "data").exists()
    ours = tmp_path / "data"
    for _ in range(2):  # its own dataset may be replaced
        assert run_cli("prepare", sample_copy, "--out", ours, "--overwrite", "--size", "40",
                       "-q").exit_code == 0


def test_outputs_never_overwrite_inputs(trained, prepared, tmp_path):
    model = tmp_path / "best.pt"
    shutil.copy(trained.run_dir / "best.pt", model)
    photo = tmp_path / "photo.jpg"
    shutil.copy(next((prepared / "test" / "glass").glob("*.jpg")), photo)
    originals = {p: p.read_bytes() for p in (model, photo)}
    for target in (model, photo):
        result = run_cli("predict", "-m", model, photo, "--output", target, "--backend", "torch")
        assert result.exit_code == 2 and "overlaps" in _one_paragraph(result)
    result = run_cli("evaluate", model, "--data", prepared, "--out", prepared / "test",
                     "--backend", "torch")
    assert result.exit_code == 2 and "overlaps" in _one_paragraph(result)
    result = run_cli("pseudolabel", "-m", model, "--data", tmp_path, "--out",
                     tmp_path / "labels.csv", "--backend", "torch")
    assert result.exit_code == 2  # the manifest would land in the folder being labelled
    assert {p: p.read_bytes() for p in originals} == originals


# --- one decode function, for every image mode ----------------------------------------------

def _encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _odd_modes(photo: Image.Image) -> dict[str, bytes]:
    """The photo in the modes people's files come in, each encoded as such a file would be."""
    grey = np.asarray(photo.convert("L"), dtype=np.uint16)
    rgba = photo.convert("RGBA")
    rgba.putalpha(255)
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)  # index 255 unused
    return {
        "grey16.png": _encode(Image.fromarray(grey * 257)),  # I;16: 0-65535
        "rgba.png": _encode(rgba),
        "palette_transparent.png": _encode(palette, transparency=255),
        "cmyk.jpg": _encode(photo.convert("CMYK"), "JPEG", quality=95),
        "la.png": _encode(photo.convert("LA")),
        "bilevel.png": _encode(photo.convert("1")),
        "grey16.tif": _encode(Image.fromarray(grey * 257), "TIFF"),
    }


def test_odd_image_modes_decode_as_the_picture_they_are():
    photo = Image.open(next((SAMPLE / "glass").glob("*.jpg"))).convert("RGB")
    grey = np.asarray(photo.convert("L"), dtype=np.float32)
    for name, data in _odd_modes(photo).items():
        image = open_image(data)
        assert image.mode == "RGB" and image.size == photo.size, name
        pixels = np.asarray(image, dtype=np.float32)
        reference = np.asarray(photo, dtype=np.float32)
        if name.startswith(("grey16", "la", "bilevel")):
            reference = np.repeat(grey[..., None], 3, axis=2)
        tolerance = 130 if name == "bilevel.png" else 12  # dithered black and white
        assert np.abs(pixels - reference).mean() < tolerance, name
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert np.asarray(open_image(_encode(transparent)))[0, 0].tolist() == [255, 255, 255]


def test_every_command_reads_odd_modes(trained, tmp_path):
    raw = tmp_path / "raw"
    for name in CLASSES:
        shutil.copytree(SAMPLE / name, raw / name)
    photo = Image.open(next((SAMPLE / "glass").glob("*.jpg"))).convert("RGB")
    for file_name, data in _odd_modes(photo).items():
        (raw / "glass" / f"odd_{file_name}").write_bytes(data)
    result = run_cli("prepare", raw, "--out", tmp_path / "data", "--size", "40", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "data" / "prepare_report.json").read_text())
    assert report["skipped"] == []  # every mode decoded
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", raw / "glass",
                     "--backend", "torch", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("/odd_") == len(_odd_modes(photo))


# --- kill -9: no survivors, no final-named partial files, the next run works ----------------

def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> list[psutil.Process]:
    """SIGKILL `proc` once `ready()` holds; returns the descendants it had then."""
    deadline = time.time() + timeout
    parent = psutil.Process(proc.pid)
    while time.time() < deadline and proc.poll() is None and not ready(parent):
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be killed"
    children = parent.children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return children


def _no_survivors(children: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, [p.cmdline() for p in alive]


def _has_workers(count: int):
    return lambda parent: len(parent.children(recursive=True)) >= count


@pytest.mark.subprocess
def test_kill_9_prepare(many_images, tmp_path):
    out = tmp_path / "data"
    proc = _wastecls("prepare", many_images, "--out", out, "--workers", "2", "--size", "200",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = _kill_when(proc, _has_workers(2))
    assert children and not out.exists()  # nothing that looks complete
    _no_survivors(children)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".data.")]  # its staging
    result = _run("prepare", many_images, "--out", out, "--workers", "2", "--size", "40", "-q")
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # the stale staging was removed


@pytest.mark.subprocess
def test_kill_9_predict_leaves_no_workers_and_no_partial_output(onnx_model, many_images,
                                                               tmp_path):
    output = tmp_path / "predictions.csv"
    args = ("predict", "-m", onnx_model, many_images, "--workers", "2", "--batch-size", "1",
            "--output", output)
    proc = _wastecls(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = _kill_when(proc, _has_workers(2))
    _no_survivors(children)
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir()]  # the partial file, under a temporary name
    result = _run(*args, "-q")
    assert result.returncode == 0, result.stderr
    # The output, and the marker that says predict wrote it (so a new run may replace it).
    assert sorted(p.name for p in tmp_path.iterdir()) == [OUTPUT_MARKER, "predictions.csv"]
    assert len(output.read_text().splitlines()) == 601


@pytest.mark.subprocess
def test_kill_9_train_stops_its_loader_workers(prepared, tmp_path):
    args = ["train", "--data", prepared, "--project", tmp_path, "--arch", TINY["arch"],
            "--no-pretrained", "--img-size", "32", "--batch-size", "2", "--epochs", "50",
            "--workers", "2"]
    proc = _wastecls(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = _kill_when(proc, _has_workers(2))
    _no_survivors(children)
    from waste_cli.model.checkpoint import load_checkpoint

    for checkpoint in (tmp_path / "exp").glob("*.pt"):  # whatever carries a final name loads
        load_checkpoint(checkpoint)


@pytest.mark.subprocess
def test_kill_9_export_writes_no_final_file(trained, tmp_path):
    model = tmp_path / "best.pt"
    shutil.copy(trained.run_dir / "best.pt", model)
    proc = _wastecls("export", "-m", model, "--onnx", "--torchscript",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda parent: any(p.name.startswith(".best.")
                                        for p in tmp_path.iterdir()))
    assert not (tmp_path / "best.onnx").exists() and not (tmp_path / "best.torchscript").exists()
    result = _run("export", "-m", model, "--onnx", "--torchscript", "-q")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        OUTPUT_MARKER, "best.onnx", "best.onnx.json", "best.pt", "best.torchscript",
        "best.torchscript.json"]


@pytest.mark.subprocess
def test_ctrl_c_predict_exits_130(onnx_model, many_images, tmp_path):
    output = tmp_path / "out.csv"
    # The folder five times over: seconds of work, so that the signal lands in it on a busy
    # machine too (a tiny model labels the 600 images in about one).
    proc = _wastecls("predict", "-m", onnx_model, *[many_images] * 5, "--workers", "2",
                     "--batch-size", "1", "--output", output, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(psutil.Process(proc.pid).children()) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Interrupted" in err and "Traceback" not in err, err
    assert not output.exists() and not list(tmp_path.iterdir())


@pytest.mark.subprocess
@pytest.mark.parametrize("gap", [0.05, 0.2])
def test_repeated_ctrl_c_ends_predict_within_a_second(onnx_model, many_images, tmp_path, gap):
    """A second and a third Ctrl-C while the first is being handled: exit 130 within a second
    of the first, no traceback, no "Exception ignored", no worker left behind."""
    proc = _wastecls("predict", "-m", onnx_model, *[many_images] * 5, "--workers", "2",
                     "--batch-size", "1", "--output", tmp_path / "out.csv",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(psutil.Process(proc.pid).children()) < 2:
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    first = time.time()
    for _ in range(2):
        time.sleep(gap)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    took = time.time() - first
    assert proc.returncode == 130 and took < 1.5, (took, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    psutil.wait_procs(workers, timeout=5)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.subprocess
def test_a_reader_that_leaves_early_stops_predict_quietly(onnx_model, many_images):
    reader = subprocess.Popen(["head", "-n", "2"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    proc = _wastecls("predict", "-m", onnx_model, many_images, "--format", "csv",
                     stdout=reader.stdin, stderr=subprocess.PIPE)
    reader.stdin.close()  # only the two processes hold the pipe now
    _, err = proc.communicate(timeout=300)
    assert len(reader.stdout.read().splitlines()) == 2 and reader.wait(timeout=60) == 0
    assert proc.returncode == 141 and "error" not in err and "Traceback" not in err, err


def test_a_strip_too_elongated_to_resize_is_refused_with_its_reason(onnx_model, tmp_path):
    strip, photo = tmp_path / "strip.png", next((SAMPLE / "glass").glob("*.jpg"))
    Image.new("RGB", (2, 4000), (90, 120, 60)).save(strip)  # its resize: 620 MiB at 329 px
    result = _run("predict", "-m", onnx_model, strip, photo, "--format", "csv")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert "too elongated" in rows[1][-1] and rows[2][1] and not rows[2][-1]  # photo: labelled


def test_file_names_that_are_not_utf8_are_written_as_they_are(onnx_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes from another system
    shutil.copy(next((SAMPLE / "glass").glob("*.jpg")), folder / name)
    output, manifest = tmp_path / "out.csv", tmp_path / "manifest.csv"
    assert run_cli("predict", "-m", onnx_model, folder, "--output", output).exit_code == 0
    assert b"caf\xe9.jpg" in output.read_bytes()
    result = run_cli("pseudolabel", "-m", onnx_model, "--data", folder, "--out", manifest,
                     "--threshold", "0.01")
    assert result.exit_code == 0, result.output
    assert b"caf\xe9.jpg" in manifest.read_bytes()


# --- full, read-only and odd destinations ---------------------------------------------------

@pytest.mark.subprocess
def test_full_disk_is_a_message_and_leaves_nothing(onnx_model, many_images, prepared,
                                                   full_disk):
    output = full_disk / "predictions.csv"
    result = _run("predict", "-m", onnx_model, many_images, "--top-k", "6", "--output", output,
                  "--workers", "0")
    text = _one_paragraph(result)
    assert result.returncode == 1 and "No space left on device" in text and str(output) in text
    assert not output.exists() and not list(full_disk.iterdir())

    project = full_disk / "runs"
    result = _run("train", "--data", prepared, "--project", project, "--arch", TINY["arch"],
                  "--no-pretrained", "--img-size", "32", "--epochs", "1", "--workers", "0")
    text = _one_paragraph(result)
    assert result.returncode == 1 and ("full" in text or "No space" in text)
    assert not [p for p in project.rglob("*") if p.name.startswith(".")]  # no temporaries


@pytest.mark.subprocess
def test_writes_failing_mid_run_keep_what_was_complete(prepared, tmp_path):
    """Writes that start failing in the middle of a run (EFBIG here, as ENOSPC would): the
    checkpoints of the epochs before stay as they were, and the run resumes once there is
    room."""
    from waste_cli.core.files import file_sha256

    args = ["train", "--data", prepared, "--project", tmp_path, "--arch", TINY["arch"],
            "--no-pretrained", "--img-size", "32", "--epochs", "1", "--workers", "0"]
    assert _run(*args).returncode == 0
    run = tmp_path / "exp"
    kept = file_sha256(run / "last.pt")
    size = (run / "last.pt").stat().st_size
    result = _run("train", "--resume", run, "--epochs", "2", limit_bytes=size // 2)
    message = _one_paragraph(result)
    assert result.returncode == 1 and "Cannot write" in message and "last.pt" in message
    assert file_sha256(run / "last.pt") == kept  # epoch 1, as it was
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    resumed = _run("train", "--resume", run, "--epochs", "2", "-q")
    assert resumed.returncode == 0, resumed.stderr


def test_read_only_and_odd_destinations(trained, prepared, read_only, tmp_path):
    model = trained.run_dir / "best.pt"
    result = run_cli("evaluate", model, "--data", prepared, "--out", read_only / "eval",
                     "--backend", "torch")
    assert result.exit_code == 1 and "Read-only file system" in _one_paragraph(result)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        ("predict", "-m", model, prepared / "test", "--output", read_only / "p.csv"),
        ("predict", "-m", model, prepared / "test", "--output", a_file / "p.csv"),
        ("predict", "-m", model, prepared / "test", "--output", tmp_path / ("x" * 300 + ".csv")),
        ("prepare", SAMPLE, "--out", a_file),
        ("train", "--data", prepared, "--project", a_file, "--arch", TINY["arch"],
         "--no-pretrained"),
        ("export", "-m", model, "--onnx", "--out", read_only / "m.onnx"),
        ("predict", "-m", model, prepared / "test", "--output", tmp_path),  # a folder: refused
        ("pseudolabel", "-m", model, "--data", prepared / "test", "--out", tmp_path),  # first
    ]
    for case in cases:
        result = run_cli(*case, "--backend", "torch") if case[0] == "predict" else run_cli(*case)
        assert result.exit_code == 1, (case, result.output)
        assert "predict (" not in _one_paragraph(result)  # before the work: no progress line
    assert a_file.read_text() == "x"


# --- malformed annotations and inputs -------------------------------------------------------

def test_malformed_coco_boxes_are_skipped_and_listed(tmp_path):
    annotations, images = build_coco(tmp_path / "coco", scenes=2)
    coco = json.loads(annotations.read_text())
    bad = [
        ([300, 300, 20, 20], "outside the image"),
        (["a", 1, 2, 3], "non-numeric"),
        ([1, 2, float("nan"), 3], "non-finite"),
        ([1, 2, 3], "not [x, y, width, height]"),
        (None, "not [x, y, width, height]"),
        ([0, 0, 0, 10], "without area"),
        ([10**400, 1, 2, 3], "non-numeric"),  # an integer no float holds
        ([1e308, 1e308, 1e308, 1e308], "beyond any image's size"),
    ]
    next_id = 100
    for bbox, _ in bad:
        coco["annotations"].append({"id": next_id, "image_id": 1, "category_id": 1,
                                    "bbox": bbox})
        next_id += 1
    coco["annotations"].append({"id": next_id, "image_id": 1, "category_id": 99,
                                "bbox": [10, 10, 50, 50]})
    coco["annotations"].append({"id": next_id, "image_id": 1, "category_id": 1,
                                "bbox": [10, 10, 50, 50]})  # a duplicate id
    coco["annotations"].append({"id": next_id + 1, "image_id": 77, "category_id": 1,
                                "bbox": [10, 10, 50, 50]})
    coco["annotations"].append("not an object")
    coco["images"].append({"id": 3, "file_name": None})
    coco["annotations"].append({"id": next_id + 2, "image_id": 3, "category_id": 1,
                                "bbox": [1, 1, 40, 40]})
    coco["images"].append({"id": 1, "file_name": "again.jpg"})  # a duplicate image id
    partly = {"id": next_id + 3, "image_id": 2, "category_id": 1, "bbox": [200, 200, 100, 100]}
    coco["annotations"].append(partly)  # partly outside: cut to the image, kept
    annotations.write_text(json.dumps(coco))
    result = run_cli("prepare", annotations, "--images", images, "--out", tmp_path / "data")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "data" / "prepare_report.json").read_text())
    reasons = " | ".join(str(s["reason"]) for s in report["skipped"])
    for _, why in bad:
        assert why in reasons, why
    for why in ("unknown category id 99", "duplicate annotation id", "unknown image id 77",
                "not a JSON object", "missing or invalid file_name", "duplicate image id"):
        assert why in reasons, why
    assert len(report["skipped"]) == len(bad) + 6
    assert f"{len(report['skipped'])} skipped" in " ".join(result.output.split())
    kept = sum(1 for _ in (tmp_path / "data").rglob("*.jpg"))
    assert kept == 6 + 1  # the six good boxes and the one cut to the image


@pytest.mark.parametrize("content", ["[]", "{\"images\": 3}", "not json", "",
                                     "[" * 100_000 + "]" * 100_000, "\udcff"])
def test_unusable_annotation_files(tmp_path, content):
    annotations = tmp_path / "ann.json"
    annotations.write_text(content, errors="surrogateescape")  # "\udcff": a byte not UTF-8
    (tmp_path / "images").mkdir()
    result = run_cli("prepare", annotations, "--images", tmp_path / "images", "--out",
                     tmp_path / "data")
    assert result.exit_code == 1 and str(annotations) in _one_paragraph(result)


@pytest.mark.parametrize("content", ['["a list"]', '{"classes": 3}', "{", "[" * 100_000])
def test_a_damaged_dataset_json_is_one_message(prepared, tmp_path, content):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    (data / "dataset.json").write_text(content)
    result = run_cli("train", "--data", data, "--arch", "test_efficientnet", "--epochs", "1")
    message = _one_paragraph(result)
    assert result.exit_code == 1 and "dataset.json" in message and "prepare" in message


class _RunsCode:
    """Unpickled, it runs a command that leaves a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_inputs_that_are_not_what_they_seem(trained, prepared, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("just text")
    unknown = tmp_path / "model.h5"
    unknown.write_bytes(os.urandom(256))
    code = tmp_path / "code.pt"  # a pickle that would run a command: refused, and quietly
    code.write_bytes(pickle.dumps(_RunsCode(tmp_path / "ran"), protocol=4))
    photo = next((prepared / "test" / "glass").glob("*.jpg"))
    for model in (text, unknown, tmp_path, code):
        result = run_cli("predict", "-m", model, photo)
        message = _one_paragraph(result)
        assert result.exit_code == 1 and str(model) in message, message
        assert "weights_only" not in message and "Warning" not in message
    assert not (tmp_path / "ran").exists()
    fake = tmp_path / "fake.jpg"
    fake.write_text("<html>not a photo</html>")
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", "--backend", "torch",
                     fake, "-", "https://example.com/a.jpg", photo, "--format", "csv")
    assert result.exit_code == 1
    assert "BytesIO" not in result.output and "not an image file" in result.output
    assert result.stdout.count("URLs and standard input are not supported") == 2


def test_option_values_are_checked_before_the_work(trained, prepared, tmp_path):
    model = trained.run_dir / "best.pt"
    result = run_cli("export", "-m", model, "--onnx", "--opset", "99", "--out",
                     tmp_path / "m.onnx")
    assert result.exit_code == 2 and "--opset 99" in _one_paragraph(result)
    assert not list(tmp_path.iterdir())
    result = run_cli("train", "--data", prepared, "--arch", "efficientnet-b9",
                     "--project", tmp_path)
    assert result.exit_code == 2 and "Unknown architecture" in _one_paragraph(result)
    result = run_cli("predict", "-m", model, prepared, "--backend", "tensorrt")
    assert result.exit_code == 2


def test_pseudolabel_with_failed_inputs_exits_1(trained, tmp_path):
    pool = tmp_path / "pool"
    shutil.copytree(SAMPLE / "glass", pool)
    (pool / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    result = run_cli("pseudolabel", "-m", trained.run_dir / "best.pt", "--data", pool,
                     "--out", tmp_path / "labels.csv", "--backend", "torch")
    assert result.exit_code == 1 and "broken.jpg" in result.output
    assert (tmp_path / "labels.csv").is_file()


def test_degenerate_datasets_are_said(sample_copy, tmp_path):
    for photo in (sample_copy / "trash").glob("*.jpg"):
        photo.write_bytes(b"corrupt")  # a class with no usable image
    result = run_cli("prepare", sample_copy, "--out", tmp_path / "data", "--size", "40")
    output = " ".join(result.output.split())
    assert result.exit_code == 0 and "class 'trash' has no usable images" in output
    assert "warnings (above)" in output
    report = json.loads((tmp_path / "data" / "prepare_report.json").read_text())
    assert any("trash" in w for w in report["warnings"])

    single = tmp_path / "single"
    shutil.copytree(SAMPLE / "glass", single / "glass")
    result = run_cli("prepare", single, "--out", tmp_path / "one", "--size", "40")
    assert result.exit_code == 0 and "only 1 class" in " ".join(result.output.split())
    result = run_cli("train", "--data", tmp_path / "one", "--arch", TINY["arch"],
                     "--no-pretrained", "--project", tmp_path / "runs")
    assert result.exit_code == 1 and "at least two" in _one_paragraph(result)


def test_atomic_writes_get_the_permissions_of_a_plain_file(trained, tmp_path):
    """Staged through mkstemp (owner-only), outputs still end readable as the umask allows."""
    result = run_cli("export", "--model", trained.run_dir / "best.pt", "--onnx", "--no-verify",
                     "--out", tmp_path / "m.onnx", "-q")
    assert result.exit_code == 0, result.output
    (tmp_path / "plain").touch()
    plain = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert plain & 0o044  # the usual umask: others may read
    for name in ("m.onnx", "m.onnx.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == plain, name
