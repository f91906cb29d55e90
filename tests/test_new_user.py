"""The defects a new user hit by following the docs (issue 32), one test each, through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
from conftest import SAMPLE, run_cli

from waste_cli.model.backends import OnnxRunner
from waste_cli.model.builtin import BUILTIN_MODEL, builtin_file

PHOTOS = [SAMPLE / "glass" / "glass1.jpg", SAMPLE / "metal" / "metal1.jpg"]


def _wastecls(*args: object, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "waste_cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.subprocess
def test_output_through_a_link_to_a_descriptor_fifo_or_device_is_written_into(tmp_path):
    """Item 1: a link to /proc/self/fd/1 (what /dev/stdout is), to a FIFO or to a character
    device stays a link, and what it leads to receives the output."""
    stdout_link = tmp_path / "stdout"
    stdout_link.symlink_to("/proc/self/fd/1")
    log = tmp_path / "log.txt"
    with open(log, "w") as handle:  # `> log.txt`
        done = subprocess.run([sys.executable, "-m", "waste_cli", "predict", "-q", "--format",
                               "csv", "--output", str(stdout_link), *map(str, PHOTOS)],
                              stdout=handle, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert stdout_link.is_symlink() and os.readlink(stdout_link) == "/proc/self/fd/1"
    assert log.read_text().startswith("path,label,confidence")

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fifo_link = tmp_path / "to-fifo"
    fifo_link.symlink_to(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    done = _wastecls("predict", "-q", "--format", "csv", "--output", fifo_link, *PHOTOS)
    reader.join(timeout=60)
    assert done.returncode == 0, done.stderr
    assert fifo_link.is_symlink() and received and received[0].count("\n") == 3

    null_link = tmp_path / "to-null"
    null_link.symlink_to(os.devnull)
    done = _wastecls("predict", "-q", "--output", null_link, *PHOTOS)
    assert done.returncode == 0, done.stderr
    assert null_link.is_symlink() and Path(os.devnull).is_char_device()


def test_outputs_replace_only_what_their_command_wrote(tmp_path, monkeypatch):
    """Item 2: one rule for every file output: a file the command did not write is refused
    without --overwrite; its own file from an earlier run is replaced."""
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine.csv"
    mine.write_text("my own notes\n")
    for command in (["predict", *PHOTOS, "--output"], ["pseudolabel", "--data", SAMPLE / "glass",
                                                        "--out"]):
        refused = run_cli(*command, mine)
        assert refused.exit_code == 2 and "--overwrite" in refused.output, refused.output
        assert mine.read_text() == "my own notes\n"
        own = tmp_path / f"{command[0]}.csv"
        for _ in range(2):  # the second run replaces the first run's file
            result = run_cli(*command, own, "-q")
            assert result.exit_code == 0, result.output
    result = run_cli("predict", *PHOTOS, "--output", mine, "--overwrite", "-q")
    assert result.exit_code == 0 and mine.read_text().startswith("path,label")


def test_a_fixed_batch_export_runs_on_any_number_of_images(model, prepared, tmp_path):
    """Item 5: `export --batch 4` writes a file that predict and evaluate run on 2 images."""
    fixed = tmp_path / "b4.onnx"
    assert run_cli("export", "-m", model, "--batch", "4", "--out", fixed, "-q").exit_code == 0
    assert OnnxRunner(fixed).fixed_batch == 4
    out = {}
    for name, path in (("fixed", fixed), ("dynamic", model)):
        csv = tmp_path / f"{name}.csv"
        result = run_cli("predict", "-m", path, *PHOTOS, "--format", "csv", "--output", csv,
                         "-q")
        assert result.exit_code == 0, result.output
        out[name] = [line.split(",")[1] for line in csv.read_text().splitlines()[1:]]
    assert out["fixed"] == out["dynamic"] and len(out["fixed"]) == 2
    result = run_cli("evaluate", fixed, "--data", prepared)
    assert result.exit_code == 0, result.output


def test_torch_without_a_model_uses_the_builtin_checkpoint(tmp_path, monkeypatch):
    """Item 6: no trained run here: `predict --backend torch` takes the built-in model's
    checkpoint instead of failing on its ONNX file (export without --model: test_builtin)."""
    monkeypatch.chdir(tmp_path)
    result = run_cli("predict", "--backend", "torch", *PHOTOS, "--format", "json")
    assert result.exit_code == 0, result.output
    assert len([json.loads(line) for line in result.stdout.splitlines()]) == 2  # JSON lines


def test_export_out_must_be_a_file_with_the_formats_suffix(model, tmp_path):
    """Item 7: --out to a FIFO or a device is refused (no `fifo.onnx` beside it), and an --out
    without the format's suffix is refused with the name to use, not silently changed."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (fifo, Path(os.devnull)):
        result = run_cli("export", "-m", model, "--out", target)
        assert result.exit_code == 2 and "pipe or a device" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "run"]
    result = run_cli("export", "-m", model, "--out", tmp_path / "plain")
    assert result.exit_code == 2 and "plain.onnx" in result.output, result.output


def test_evaluate_lists_only_the_pictures_it_wrote(model, prepared, tmp_path):
    """Item 8: without a top-losses picture, evaluate neither claims nor announces one, and an
    earlier run's picture in its own folder goes."""
    out = tmp_path / "eval"
    first = run_cli("evaluate", model, "--data", prepared, "--out", out)
    assert first.exit_code == 0, first.output
    had = (out / "top_losses.png").exists()
    assert ("top_losses.png" in first.output) == had
    result = run_cli("evaluate", model, "--data", prepared, "--out", out, "--top-losses", "0")
    assert result.exit_code == 0, result.output
    assert "top_losses.png" not in result.output and not (out / "top_losses.png").exists()
    assert "reliability.png" in result.output


def test_prepare_config_repeats_the_run(tmp_path, monkeypatch):
    """Item 9: the config.yaml prepare writes repeats the run, its SOURCE included."""
    monkeypatch.chdir(tmp_path)
    assert run_cli("prepare", SAMPLE, "--out", "first", "-q").exit_code == 0
    result = run_cli("prepare", "--config", tmp_path / "first" / "config.yaml", "--out",
                     "again", "-q")
    assert result.exit_code == 0, result.output
    listing = {p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*.jpg")}
    assert listing == {p.relative_to(tmp_path / "first")
                       for p in (tmp_path / "first").rglob("*.jpg")}
    result = run_cli("prepare", "--out", "none")  # no config: SOURCE is still required
    assert result.exit_code == 2 and "SOURCE" in result.output


def test_every_folder_a_command_writes_has_its_config(model, prepared, tmp_path):
    """Item 10: evaluate --out, predict --save-images and pseudolabel --copy-to folders hold
    the resolved settings as config.yaml; and a second pseudolabel run into the same sorted
    folder adds no second copies (item 16)."""
    out = tmp_path / "eval"
    assert run_cli("evaluate", model, "--data", prepared, "--out", out).exit_code == 0
    assert "evaluate:" in (out / "config.yaml").read_text()
    from conftest import build_coco

    ann, images = build_coco(tmp_path / "coco", scenes=2)
    pictures = tmp_path / "pictures"
    boxes = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 0.9, "category_id": 1}
             for a in json.loads(ann.read_text())["annotations"]]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    result = run_cli("predict", "--boxes", tmp_path / "boxes.json", "--coco-images", ann,
                     "--images", images, "--save-images", pictures, "-q")
    assert result.exit_code == 0, result.output
    assert "predict:" in (pictures / "config.yaml").read_text()
    sorted_dir = tmp_path / "sorted"
    args = ["pseudolabel", "--data", SAMPLE / "glass", "--threshold", "0.5", "--copy-to",
            sorted_dir, "--out", tmp_path / "manifest.csv", "-q"]
    assert run_cli(*args).exit_code == 0
    first = sorted(p.relative_to(sorted_dir) for p in sorted_dir.rglob("*.jpg"))
    assert first and "pseudolabel:" in (sorted_dir / "config.yaml").read_text()
    assert run_cli(*args).exit_code == 0
    assert sorted(p.relative_to(sorted_dir) for p in sorted_dir.rglob("*.jpg")) == first


@pytest.mark.subprocess
def test_a_reader_that_left_ends_every_command_with_141(prepared, tmp_path):
    """Item 11: evaluate, prepare and --help, like predict, end with 141 (SIGPIPE's status)
    when their reader is gone, and prepare prints only its results on stdout."""
    commands = [["train", "--help"], ["prepare", SAMPLE, "--out", tmp_path / "a"],
                ["evaluate", BUILTIN_MODEL, "--data", prepared, "--allow-subset"]]
    for command in commands:
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first line
        try:
            done = subprocess.run([sys.executable, "-m", "waste_cli", *map(str, command)],
                                  stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
        finally:
            os.close(write)
        assert done.returncode == 141, (command, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr and "error" not in done.stderr, done.stderr
    done = _wastecls("prepare", SAMPLE, "--out", tmp_path / "b")
    assert done.returncode == 0, done.stderr
    assert "warning:" not in done.stdout and "decode" not in done.stdout, done.stdout
    assert "Prepared" in done.stdout and "warning:" in done.stderr


def test_predict_quiet_still_prints_the_final_summary():
    """Item 13: -q is "only warnings, errors and the final summary": the summary stays."""
    result = run_cli("predict", *PHOTOS, "-q")
    assert result.exit_code == 0, result.output
    assert "2 images predicted" in result.stderr and "Speed" not in result.stderr


def test_prepare_explains_loose_images_and_reads_every_format_pillow_does(tmp_path):
    """Item 14: a folder of images without class folders gets the layout it needs; .jfif and
    .ppm photos are read like the others."""
    loose = tmp_path / "loose"
    loose.mkdir()
    for photo in PHOTOS:
        (loose / photo.name).write_bytes(photo.read_bytes())
    result = run_cli("prepare", loose, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "no class folders" in result.output, result.output
    assert f"{loose}/glass/1.jpg" in " ".join(result.output.split())
    from PIL import Image

    raw = tmp_path / "raw"
    for name in ("glass", "metal"):
        (raw / name).mkdir(parents=True)
        for i, photo in enumerate(sorted((SAMPLE / name).glob("*.jpg"))[:4]):
            (raw / name / photo.name).write_bytes(photo.read_bytes())
            if i == 0:
                Image.open(photo).save(raw / name / "extra.ppm")
                (raw / name / "extra2.jfif").write_bytes(photo.read_bytes())
    result = run_cli("prepare", raw, "--out", tmp_path / "formats", "-q")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "formats").rglob("*.jpg"))) == 12


def test_messages_carry_no_library_text(tmp_path):
    """Item 15: skipped files are `file …: reason` lines, not Python dicts; a damaged HEIC photo
    and an image declaring too many pixels are one reason each, with no Pillow internals."""
    raw = tmp_path / "raw"
    for name in ("glass", "metal"):
        (raw / name).mkdir(parents=True)
        for photo in sorted((SAMPLE / name).glob("*.jpg"))[:4]:
            (raw / name / photo.name).write_bytes(photo.read_bytes())
    (raw / "glass" / "broken.jpg").write_bytes(b"not a jpeg")
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    (raw / "glass" / "damaged.heic").write_bytes(heic)
    from PIL import Image

    Image.new("1", (9500, 9500)).save(raw / "metal" / "huge.png")  # 90 MP, a small file
    with warnings.catch_warnings(record=True) as caught:  # in this process: --workers 1
        warnings.simplefilter("always")
        result = run_cli("prepare", raw, "--out", tmp_path / "out", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    text = " ".join(result.output.split())
    assert "skipped file" in text and "{'" not in text, text
    assert "damaged HEIC" in text and "BytesIO" not in text, text
    assert "would decode to" in text and "DecompressionBombWarning" not in text, text


def test_a_url_is_named_as_typed():
    """Item 16: a URL given to predict is reported as typed (https://, not https:/)."""
    url = "https://example.com/a.jpg"
    result = run_cli("predict", url, PHOTOS[0], "--format", "csv")
    assert result.exit_code == 1
    rows = [line.split(",")[0] for line in result.stdout.splitlines()[1:]]
    assert url in rows and f"failed: {url}" in " ".join(result.stderr.split())


def test_onnxruntime_keeps_its_notes_to_itself(prepared, tmp_path, capfd):
    """Item 15: calibrating an ONNX file prints no "[W:onnxruntime…]" lines (they go to the
    process's stderr directly, hence capfd)."""
    model = tmp_path / "model.onnx"
    model.write_bytes(builtin_file(".onnx").read_bytes())
    result = run_cli("calibrate", model, "--data", prepared, "-q")
    assert result.exit_code == 0, result.output
    assert "onnxruntime:" not in capfd.readouterr().err
