"""`wastecls prepare`: both sources, validation, splitting, mapping and safety."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from PIL import Image

from waste_cli.core.console import Reporter
from waste_cli.core.errors import DataError
from waste_cli.data.prepare import prepare
from waste_cli.data.split import split_groups
from waste_cli.options import PrepareOptions


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _run(**kwargs):
    return prepare(PrepareOptions(**{"workers": 1, **kwargs}), Reporter(quiet=True))


def test_folder_dataset_split_is_stratified_and_complete(sample_dir, tmp_path):
    result = _run(source=sample_dir, out=tmp_path / "out")
    out = tmp_path / "out"
    assert result.classes == ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
    for name in result.classes:  # 12 per class: 20% test, 10% val, rest train
        assert (result.counts["test"][name], result.counts["val"][name]) == (2, 1)
        assert result.counts["train"][name] == 9
        assert len(list((out / "train" / name).glob("*.jpg"))) == 9
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["classes"] == result.classes and meta["counts"]["test"]["glass"] == 2
    assert (out / "config.yaml").is_file() and (out / "prepare_report.json").is_file()
    with Image.open(next((out / "train" / "glass").glob("*.jpg"))) as im:
        assert min(im.size) == 256  # re-encoded with the default shorter side


def test_split_is_deterministic_and_seeded(sample_dir, tmp_path):
    _run(source=sample_dir, out=tmp_path / "a", size=64)
    _run(source=sample_dir, out=tmp_path / "b", size=64, workers=2)
    _run(source=sample_dir, out=tmp_path / "c", size=64, seed=1)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    assert a != c
    for name in ("train/glass", "test/metal"):
        for f in (tmp_path / "a" / name).iterdir():
            assert f.read_bytes() == (tmp_path / "b" / name / f.name).read_bytes()


def test_split_groups_keeps_proportions():
    groups = {f"k{i}": "a" if i < 100 else "b" for i in range(150)}
    split = split_groups(groups, {"test": 0.2, "val": 0.1}, seed=3)
    counts = Counter((groups[k], s) for k, s in split.items())
    assert counts[("a", "test")] == 20 and counts[("a", "val")] == 10
    assert counts[("b", "test")] == 10 and counts[("b", "val")] == 5


def test_corrupt_truncated_empty_small_and_non_images_are_reported(sample_copy, tmp_path):
    good = next((sample_copy / "glass").glob("*.jpg")).read_bytes()
    (sample_copy / "glass" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (sample_copy / "glass" / "empty.jpg").write_bytes(b"")
    (sample_copy / "metal" / "notes.jpg").write_text("not an image")
    Image.new("RGB", (20, 40)).save(sample_copy / "paper" / "tiny.png")
    result = _run(source=sample_copy, out=tmp_path / "out")
    reasons = {Path(s["file"]).name: s["reason"] for s in result.skipped}
    assert set(reasons) == {"truncated.jpg", "empty.jpg", "notes.jpg", "tiny.png"}
    assert "min-size" in reasons["tiny.png"]
    assert "empty" in reasons["empty.jpg"]
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert len(report["skipped"]) == 4
    assert sum(sum(c.values()) for c in result.counts.values()) == 72


def test_hidden_files_and_folders_are_not_photos(sample_copy, tmp_path):
    """A camera card's .thumbnails/ and macOS's ._ copies carry .jpg names: never data."""
    photo = next((sample_copy / "glass").glob("*.jpg"))
    (sample_copy / "glass" / ".thumbnails").mkdir()
    shutil.copy(photo, sample_copy / "glass" / ".thumbnails" / "thumb.jpg")
    (sample_copy / "glass" / f"._{photo.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    result = _run(source=sample_copy, out=tmp_path / "out")
    assert not result.skipped
    assert sum(sum(c.values()) for c in result.counts.values()) == 72
    predicted = run_cli("predict", "-m", "waste-lite0", sample_copy / "glass", "--format",
                        "csv")
    assert predicted.exit_code == 0 and "thumb" not in predicted.stdout
    assert len(predicted.stdout.splitlines()) == 1 + 12


def test_exif_orientation_is_applied(sample_copy, tmp_path):
    src = next((sample_copy / "glass").glob("*.jpg"))
    image = Image.open(src)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    image.save(src, exif=exif)
    landscape = image.width > image.height
    _run(source=sample_copy, out=tmp_path / "out", size=0, val_frac=0, test_frac=0)
    with Image.open(tmp_path / "out" / "train" / "glass" / src.name) as out:
        assert (out.width > out.height) != landscape


def test_exact_duplicates_stay_in_one_split(sample_copy, tmp_path):
    for src in sorted((sample_copy / "glass").glob("*.jpg")):
        shutil.copy(src, sample_copy / "glass" / f"copy_{src.name}")
    result = _run(source=sample_copy, out=tmp_path / "out")
    assert result.copies.exact == 12
    for split in ("train", "val", "test"):
        for f in (tmp_path / "out" / split / "glass").glob("copy_*"):
            assert (f.parent / f.name.removeprefix("copy_")).exists()


def _plant_copies(sample_dir: Path, folder: Path) -> dict[str, str]:
    """A second source of copies of sample photos, each made as copying does (flip, turn,
    crop, letterbox, shrink + recompress); one flipped glass photo is filed under metal.
    Returns copy file name -> the original's path."""
    originals = sorted((sample_dir / "glass").glob("*.jpg"))[:5] + sorted(
        (sample_dir / "paper").glob("*.jpg"))[:1]
    planted = {}
    for k, original in enumerate(originals):
        with Image.open(original) as image:
            image = image.convert("RGB")
            w, h = image.size
            copy = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                    image.transpose(Image.Transpose.ROTATE_90),
                    image.crop((w // 20, h // 12, w - w // 10, h - h // 25)),
                    _letterbox(image),
                    image.resize((w // 2, h // 2)),
                    image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)][k]
        label = "metal" if k == 5 else original.parent.name
        (folder / label).mkdir(parents=True, exist_ok=True)
        copy.save(folder / label / f"copy{k}.jpg", quality=40 if k == 4 else 90)
        planted[f"copy{k}.jpg"] = str(original)
    return planted


def _letterbox(image: Image.Image) -> Image.Image:
    side = max(image.size)
    padded = Image.new("RGB", (side, side), (0, 0, 0))
    padded.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return padded.resize((side * 3 // 4, side * 3 // 4))


def test_near_duplicates_across_sources_stay_in_one_split(sample_dir, tmp_path):
    planted = _plant_copies(sample_dir, tmp_path / "copies")
    result = run_cli("prepare", sample_dir, tmp_path / "copies", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "6 near-duplicates kept together" in " ".join(result.stdout.split())
    assert "carry different classes" in result.output  # the glass photo filed under metal
    with open(tmp_path / "out" / "manifest.csv", newline="") as handle:
        split_of = {r["original"]: r["split"] for r in csv.DictReader(handle)}
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    groups = report["copy_groups"]
    # Every planted copy found, each with its original only: no other photo is called a copy.
    assert sorted(sorted(Path(p["file"]).name for p in g["photos"]) for g in groups) == sorted(
        sorted([name, Path(original).name]) for name, original in planted.items())
    for name, original in planted.items():
        copy = next(path for path in split_of if Path(path).name == name)
        assert split_of[copy] == split_of[original]
    assert report["near_duplicates_grouped"] == 6 and report["duplicates_dropped"] == 0


def test_drop_duplicates_keeps_the_largest_photo_of_each_group(sample_dir, tmp_path):
    planted = _plant_copies(sample_dir, tmp_path / "copies")
    result = run_cli("prepare", sample_dir, tmp_path / "copies", "--out", tmp_path / "out",
                     "--drop-duplicates")
    assert result.exit_code == 0, result.output
    assert "6 near-duplicates found (6 dropped)" in " ".join(result.stdout.split())
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["duplicates_dropped"] == 6
    for group in report["copy_groups"]:
        kept = [p for p in group["photos"] if p["kept"]]
        assert len(kept) == 1
        pixels = [p["size"][0] * p["size"][1] for p in group["photos"]]
        assert kept[0]["size"][0] * kept[0]["size"][1] == max(pixels)
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    total = sum(n for split in meta["counts"].values() for n in split.values())
    assert total == len(list(sample_dir.rglob("*.jpg"))) + len(planted) - 6
    # Without near-duplicates, only exact copies are grouped.
    result = run_cli("prepare", sample_dir, tmp_path / "copies", "--out", tmp_path / "exact",
                     "--no-near-duplicates", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "exact" / "prepare_report.json").read_text())
    assert report["copy_groups"] == [] and report["near_duplicates_grouped"] == 0


def test_unlabeled_frac_hides_labels_and_records_truth(sample_dir, tmp_path):
    result = _run(source=sample_dir, out=tmp_path / "out", unlabeled_frac=0.5)
    pool = sorted((tmp_path / "out" / "pseudolabel").glob("*.jpg"))
    assert len(pool) == sum(result.counts["pseudolabel"].values()) > 0
    with open(tmp_path / "out" / "pseudolabel_truth.csv") as handle:
        truth = {row["file"]: row["label"] for row in csv.DictReader(handle)}
    assert set(truth) == {p.name for p in pool}
    assert Counter(truth.values()) == {c: n for c, n in result.counts["pseudolabel"].items()}
    assert all(c not in p.name for p in pool for c in result.classes)


def test_class_names_with_spaces_and_mapping(sample_copy, tmp_path):
    (sample_copy / "paper").rename(sample_copy / "Paper and Cardboard")
    mapping = tmp_path / "map.yaml"
    mapping.write_text("paper_cardboard: ['paper and cardboard', Cardboard]\nignore: [trash]\n")
    result = _run(source=sample_copy, out=tmp_path / "out", map=mapping)
    assert result.classes == ["glass", "metal", "paper_cardboard", "plastic"]
    assert sum(result.counts[s]["paper_cardboard"] for s in ("train", "val", "test")) == 24
    result = _run(source=sample_copy, out=tmp_path / "raw_names")
    assert "Paper and Cardboard" in result.classes
    assert (tmp_path / "raw_names" / "train" / "Paper and Cardboard").is_dir()


def test_coco_crops_split_by_source_image(coco_dataset, tmp_path):
    ann, images = coco_dataset
    result = _run(source=ann, images=images, out=tmp_path / "out", taxonomy="detect-waste",
                  size=64, test_frac=0.34, val_frac=0)
    assert set(result.classes) == {"glass", "metals_and_plastic", "non_recyclable", "paper"}
    scene_split: dict[str, set[str]] = {}
    for split in ("train", "test"):
        for f in (tmp_path / "out" / split).rglob("*.jpg"):
            scene_split.setdefault(f.name.split("_")[0], set()).add(split)
    assert len(scene_split) == 6
    assert all(len(s) == 1 for s in scene_split.values())  # no photo in two splits


def test_coco_square_zoom_and_background(coco_dataset, tmp_path):
    ann, images = coco_dataset
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [16, 40, 96, 48]  # a wide box
    ann.write_text(json.dumps(data))
    _run(source=ann, images=images, out=tmp_path / "sq", size=0, square=True, zoom=1.0,
         background=1, val_frac=0, test_frac=0)
    first = next((tmp_path / "sq" / "train").rglob("scene0_1.jpg"))
    with Image.open(first) as im:
        assert im.size == (96, 96)  # squared to the long side
    bg = list((tmp_path / "sq" / "train" / "background").glob("*.jpg"))
    assert len(bg) == 6
    _run(source=ann, images=images, out=tmp_path / "zoom", size=0, zoom=1.25,
         val_frac=0, test_frac=0)
    with Image.open(next((tmp_path / "zoom" / "train").rglob("scene1_4.jpg"))) as im:
        assert im.size == (120, 120)


def test_coco_bad_annotations_are_skipped_not_followed(coco_dataset, tmp_path):
    ann, images = coco_dataset
    secret = tmp_path / "secret.jpg"
    shutil.copy(images / "scene0.jpg", secret)
    data = json.loads(ann.read_text())
    data["images"] += [
        {"id": 100, "file_name": "../secret.jpg", "width": 256, "height": 256},
        {"id": 101, "file_name": str(secret), "width": 256, "height": 256},
        {"id": 102, "file_name": "missing.jpg", "width": 256, "height": 256},
    ]
    data["annotations"] += [
        {"id": 900, "image_id": 100, "category_id": 1, "bbox": [0, 0, 50, 50]},
        {"id": 901, "image_id": 101, "category_id": 1, "bbox": [0, 0, 50, 50]},
        {"id": 902, "image_id": 102, "category_id": 1, "bbox": [0, 0, 50, 50]},
        {"id": 903, "image_id": 999, "category_id": 1, "bbox": [0, 0, 50, 50]},
        {"id": 904, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 50]},
        {"id": 905, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, -3]},
    ]
    ann.write_text(json.dumps(data))
    result = _run(source=ann, images=images, out=tmp_path / "out", size=64)
    reasons = json.dumps(result.skipped)
    assert reasons.count("escapes the image folder") == 2
    assert "unknown image id 999" in reasons and reasons.count("box without area") == 2
    assert "missing.jpg" in reasons
    assert not list((tmp_path / "out").rglob("secret*"))
    assert sum(sum(c.values()) for c in result.counts.values()) == 18


def test_output_is_refused_when_not_empty_and_replaced_with_overwrite(sample_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        _run(source=sample_dir, out=out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(DataError, match="replaces only a dataset"):
        _run(source=sample_dir, out=out, overwrite=True)  # not prepare's: left alone
    assert (out / "keep.txt").read_text() == "mine"
    ours = tmp_path / "ours"
    _run(source=sample_dir, out=ours, size=40)
    (ours / "train" / "stale.jpg").write_bytes(b"from an older run")
    _run(source=sample_dir, out=ours, overwrite=True, size=64)  # its own dataset: replaced
    assert not (ours / "train" / "stale.jpg").exists() and (ours / "dataset.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


class _InterruptedAtTheEnd(Reporter):
    """A Ctrl-C once every image is decoded, before the dataset is moved into place."""

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Any]:
        with super().bar(description, total) as bar:
            yield bar
        raise KeyboardInterrupt


def test_interrupted_run_leaves_no_output(sample_dir, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareOptions(source=sample_dir, out=tmp_path / "out", size=64, workers=1),
                _InterruptedAtTheEnd(quiet=True))
    assert list(tmp_path.iterdir()) == []


def test_cli_prepare_prints_summary_and_writes_config(sample_dir, tmp_path):
    result = run_cli("prepare", sample_dir, "--out", tmp_path / "out", "--size", "64")
    assert result.exit_code == 0, result.output
    assert "imbalance" in result.output and "cardboard" in result.output
    assert "size: 64" in (tmp_path / "out" / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere", "--out", "{tmp}/o"], "neither a folder"),
        (["{tmp}/a.json", "--out", "{tmp}/o"], "--images"),
        (["{sample}", "--out", "{tmp}/o", "--val-frac", "0.9"], "val_frac + test_frac"),
        (["{sample}", "--out", "{tmp}/o", "--taxonomy", "nope"], "taxonomy"),
        (["{sample}"], "out"),
    ],
)
def test_cli_prepare_errors_are_messages(sample_dir, tmp_path, args, message):
    (tmp_path / "a.json").write_text("{}")
    args = [a.format(tmp=tmp_path, sample=sample_dir) for a in args]
    result = run_cli("prepare", *args)
    assert result.exit_code in (1, 2)
    assert message in result.output and "Traceback" not in result.output


def test_folders_behind_symlinks_are_read_once_even_in_a_loop(sample_dir, tmp_path):
    """A class folder that is a symbolic link is read by predict as by prepare; a link back to
    an ancestor is a loop, not followed twice."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "glass").symlink_to(sample_dir / "glass", target_is_directory=True)
    shutil.copytree(sample_dir / "metal", raw / "metal")
    (raw / "metal" / "again").symlink_to(raw, target_is_directory=True)  # a loop
    expected = len(list((sample_dir / "glass").glob("*.jpg"))) + len(
        list((sample_dir / "metal").glob("*.jpg")))
    result = run_cli("predict", raw, "--format", "csv", "-q")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == expected + 1
    result = run_cli("prepare", raw, "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").rglob("*.jpg"))) == expected


def _two_sources(sample_dir: Path, root: Path) -> tuple[Path, Path]:
    """Two class-folder sources with different photos: `studio` (glass, metal) and `web`
    (glass, paper), the web photos re-encoded so that no file is a copy of another."""
    from PIL import Image

    studio, web = root / "studio", root / "web"
    for source, classes in ((studio, ("glass", "metal")), (web, ("glass", "paper"))):
        for name in classes:
            (source / name).mkdir(parents=True)
            for photo in sorted((sample_dir / name).glob("*.jpg")):
                if source is web:
                    Image.open(photo).rotate(3).save(source / name / photo.name, quality=80)
                else:
                    shutil.copy(photo, source / name / photo.name)
    return studio, web


def test_several_sources_merge_into_one_dataset_split_per_source(sample_dir, tmp_path):
    studio, web = _two_sources(sample_dir, tmp_path)
    result = run_cli("prepare", studio, web, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "Sources" in result.stdout and "studio" in result.stdout and "web" in result.stdout
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["classes"] == ["glass", "metal", "paper"]
    assert set(meta["sources"]) == {"studio", "web"}
    with open(tmp_path / "out" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["source"] for r in rows} == {"studio", "web"}
    per = Counter((r["source"], r["label"], r["split"]) for r in rows)
    for source, label in (("studio", "glass"), ("web", "glass")):
        # Stratified by class and source: each source's glass photos reach every split.
        assert all(per[(source, label, split)] for split in ("train", "val", "test")), per
    assert all((tmp_path / "out" / r["file"]).is_file() for r in rows)


def test_a_sources_file_gives_each_source_its_own_map(sample_dir, tmp_path):
    _two_sources(sample_dir, tmp_path)
    (tmp_path / "web-map.yaml").write_text("recyclable: [glass, paper]\n")
    (tmp_path / "sources.yaml").write_text(
        "sources:\n  - path: studio\n    name: lab\n  - path: web\n    map: web-map.yaml\n")
    result = run_cli("prepare", "--sources", tmp_path / "sources.yaml", "--out",
                     tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["classes"] == ["glass", "metal", "recyclable"]  # the web map only: lab's glass
    assert set(meta["sources"]) == {"lab", "web"}
    (tmp_path / "bad.yaml").write_text("sources:\n  - path: studio\n    colour: red\n")
    result = run_cli("prepare", "--sources", tmp_path / "bad.yaml", "--out", tmp_path / "x")
    assert result.exit_code == 1 and "colour" in result.output, result.output


def test_evaluate_reports_accuracy_per_source(sample_dir, tmp_path):
    """A merged dataset's test split: evaluate says how the model does on each source."""
    studio, web = _two_sources(sample_dir, tmp_path)
    assert run_cli("prepare", studio, web, "--out", tmp_path / "out", "-q").exit_code == 0
    result = run_cli("evaluate", "waste-lite0", "--data", tmp_path / "out", "--json",
                     "--allow-subset")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    per_source = report["per_source"]
    assert set(per_source) == {"studio", "web"}
    assert sum(row["images"] for row in per_source.values()) == report["images"]
    weighted = sum(row["accuracy"] * row["images"] for row in per_source.values())
    assert weighted / report["images"] == pytest.approx(report["accuracy"])
