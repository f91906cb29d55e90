"""The detector's second stage: `predict --boxes` and `evaluate --boxes` on real photos pasted
into canvases at known boxes."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import COCO_NAMES, SAMPLE, run_cli
from PIL import Image

from waste_cli.core.errors import DataError
from waste_cli.data.batching import EvalImages
from waste_cli.data.detections import Region, read_detections
from waste_cli.data.sources import cut_box

CLASSES = sorted(COCO_NAMES)
CROP = {"square": True, "zoom": 1.2, "size": 64}


def _scenes(root: Path, scenes: int = 4, side: int = 900) -> tuple[Path, Path, dict]:
    """Camera-sized canvases with three sample photos each at known places; COCO annotations
    named by the classes' own names (so a model of these classes can be scored on them)."""
    images = root / "images"
    images.mkdir(parents=True)
    photos = {c: sorted((SAMPLE / c).glob("*.jpg")) for c in CLASSES}
    coco: dict = {"images": [], "annotations": [],
                  "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]}
    for s in range(scenes):
        canvas = Image.new("RGB", (side, side * 3 // 4), (190, 190, 190))
        for q in range(3):
            cls = CLASSES[(s + q) % len(CLASSES)]
            size = 220 + 40 * q
            photo = Image.open(photos[cls][s % len(photos[cls])]).convert("RGB").resize(
                (size, size))
            x, y = 30 + q * 290, 60 + q * 40
            canvas.paste(photo, (x, y))
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": s + 1,
                                        "category_id": CLASSES.index(cls) + 1,
                                        "bbox": [x, y, size, size], "score": 0.9 - 0.2 * q})
        canvas.save(images / f"scene{s}.jpg", quality=92)
        coco["images"].append({"id": s + 1, "file_name": f"scene{s}.jpg",
                               "width": canvas.width, "height": canvas.height})
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps(coco))
    return annotations, images, coco


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return _scenes(tmp_path_factory.mktemp("scenes"))


def test_box_crops_equal_prepares_byte_for_byte(scenes, tmp_path):
    annotations, images, coco = scenes
    out = tmp_path / "data"
    result = run_cli("prepare", annotations, "--images", images, "--out", out, "--square",
                     "--zoom", "1.2", "--size", "64", "--val-frac", "0", "--test-frac", "0",
                     "-q")
    assert result.exit_code == 0, result.output
    detections, skipped = read_detections(annotations, images)
    assert not skipped and len(detections) == len(coco["annotations"])
    config = {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.5] * 3,
              "std": [0.5] * 3, "crop_pct": 1.0, "crop_mode": "center"}
    crops = EvalImages([(d.image, -1) for d in detections], config,
                       [d.region for d in detections], CROP)
    for i, detection in enumerate(detections):
        stem, ann_id = detection.image.stem, detection.record["id"]
        (saved,) = out.glob(f"train/*/{stem}_{ann_id}.jpg")
        encoded = io.BytesIO()
        crops.image(i).save(encoded, "JPEG", quality=90)  # prepare's encoding
        assert encoded.getvalue() == saved.read_bytes(), saved.name


def test_exif_rotated_photo_is_cropped_in_its_upright_frame(scenes, tmp_path):
    _, images, coco = scenes
    upright = Image.open(images / "scene0.jpg")
    rotated = tmp_path / "scene0.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(rotated, quality=95, exif=exif)
    box = Region(tuple(coco["annotations"][0]["bbox"]))
    config = {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.5] * 3,
              "std": [0.5] * 3, "crop_pct": 1.0, "crop_mode": "center"}
    a, b = (np.asarray(EvalImages([(path, -1)], config, [box], CROP).image(0), dtype=float)
            for path in (images / "scene0.jpg", rotated))
    assert a.shape == b.shape and np.abs(a - b).mean() < 4


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_every_detection_format_gives_the_same_labels(trained, scenes, tmp_path):
    annotations, images, coco = scenes
    model = trained.run_dir / "best.pt"
    base = ("predict", "-m", model, "--images", images, "--format", "csv", "--backend",
            "torch", "--top-k", "6")
    from_annotations = run_cli(*base, "--boxes", annotations)
    assert from_annotations.exit_code == 0, from_annotations.output
    rows = _csv(from_annotations.stdout)
    assert len(rows) == len(coco["annotations"])

    results = tmp_path / "results.json"  # a detector's COCO results: a list of boxes
    results.write_text(json.dumps([{"image_id": a["image_id"], "bbox": a["bbox"],
                                    "score": a["score"], "category_id": 1}
                                   for a in coco["annotations"]]))
    from_results = run_cli(*base, "--boxes", results, "--coco-images", annotations)
    assert from_results.exit_code == 0, from_results.output

    labels = tmp_path / "labels"  # Ultralytics' save_txt: class cx cy w h conf, normalised
    labels.mkdir()
    for image in coco["images"]:
        lines = []
        for a in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = a["bbox"]
            lines.append(f"0 {(x + w / 2) / image['width']:.6f} {(y + h / 2) / image['height']:.6f}"
                         f" {w / image['width']:.6f} {h / image['height']:.6f} {a['score']}")
        (labels / f"{Path(image['file_name']).stem}.txt").write_text("\n".join(lines) + "\n")
    from_yolo = run_cli(*base, "--boxes", labels)
    assert from_yolo.exit_code == 0, from_yolo.output

    def key(row):
        return row["image"], row["detector_score"]

    def probs(result) -> dict:
        return {key(r): {r[f"label{k}"]: float(r[f"prob{k}"]) for k in range(1, 7)}
                for r in _csv(result.stdout)}

    expected = probs(from_annotations)
    assert probs(from_results) == expected  # the same boxes: the same crops
    yolo = probs(from_yolo)  # coordinates rounded to 6 decimals: a pixel may move
    assert yolo.keys() == expected.keys()
    for box, classes in expected.items():
        assert all(abs(classes[c] - yolo[box][c]) < 0.02 for c in classes), box


def test_outputs_scores_exclusion_and_pictures(trained, scenes, tmp_path):
    annotations, images, coco = scenes
    output, pictures = tmp_path / "labelled.json", tmp_path / "pictures"
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", "--boxes", annotations,
                     "--images", images, "--format", "json", "--output", output,
                     "--min-score", "0.6", "--exclude-class", "trash", "--top-k", "3",
                     "--save-images", pictures, "--backend", "torch")
    assert result.exit_code == 0, result.output
    records = json.loads(output.read_text())
    kept = [a for a in coco["annotations"] if a["score"] >= 0.6]
    assert len(records) == len(kept) and f"{len(coco['annotations']) - len(kept)} under" in (
        " ".join(result.output.split()))
    for record in records:
        assert {"id", "image_id", "bbox", "score"} <= set(record)  # the detector's fields
        assert record["category_name"] != "trash" and len(record["top_k"]) == 3
        assert record["category_id"] == CLASSES.index(record["category_name"]) + 1
        assert record["classifier_score"] == record["top_k"][0]["score"]
    drawn = sorted(p.name for p in pictures.iterdir() if not p.name.startswith("."))
    assert drawn == sorted([*(f"scene{s}.jpg" for s in range(len(coco["images"]))),
                            "config.yaml"])
    picture = Image.open(pictures / "scene0.jpg")
    assert picture.size == Image.open(images / "scene0.jpg").size


def test_bad_boxes_are_skipped_listed_and_fail_the_exit_code(trained, scenes, tmp_path):
    annotations, images, coco = scenes
    bad = json.loads(annotations.read_text())
    bad["annotations"] += [
        {"id": 900, "image_id": 1, "category_id": 1, "bbox": [5000, 5000, 50, 50]},
        {"id": 901, "image_id": 1, "category_id": 1, "bbox": ["x", 1, 2, 3]},
        {"id": 902, "image_id": 99, "category_id": 1, "bbox": [1, 1, 50, 50]},
    ]
    bad["images"] += [{"id": 7, "file_name": "../escape.jpg"}, {"id": 8, "file_name": "gone.jpg"}]
    bad["annotations"] += [{"id": 903, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5]},
                           {"id": 904, "image_id": 8, "category_id": 1, "bbox": [1, 1, 5, 5]}]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(bad))
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", "--boxes", broken,
                     "--images", images, "--format", "csv", "--backend", "torch")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    for reason in ("box lies outside the image", "non-numeric", "unknown image id 99",
                   "leaves", "image file not found"):
        assert reason in text, reason
    rows = _csv(result.stdout)
    assert len(rows) == len(coco["annotations"]) + 1  # the box outside: a row with its error
    assert "4 entries of" in text and "1 failed" in text


def test_evaluate_on_boxes(trained, scenes, tmp_path):
    annotations, images, coco = scenes
    out = tmp_path / "eval"
    result = run_cli("evaluate", trained.run_dir / "best.pt", "--boxes", annotations,
                     "--images", images, "--out", out, "--backend", "torch", "--allow-subset")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == len(coco["annotations"])
    matrix = report["confusion_matrix"]
    assert report["accuracy"] == pytest.approx(
        sum(matrix[i][i] for i in range(len(matrix))) / report["images"])
    assert (out / "top_losses.png").read_bytes()[:4] == b"\x89PNG"
    taxonomy = run_cli("evaluate", trained.run_dir / "best.pt", "--boxes", annotations,
                       "--images", images, "--taxonomy", "detect-waste", "--backend", "torch")
    assert taxonomy.exit_code == 1 and "--allow-subset" in taxonomy.output


def test_predict_without_inputs_or_boxes_is_a_usage_error(trained, scenes):
    _, images, _ = scenes
    assert run_cli("predict", "-m", trained.run_dir / "best.pt").exit_code == 2
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", "--boxes", images)
    assert result.exit_code == 2 and "--images" in result.output


def test_images_folder_is_required_to_exist(trained, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    shutil.copy(SAMPLE / "LICENSE.md", labels / "x.txt")
    result = run_cli("predict", "-m", trained.run_dir / "best.pt", "--boxes", labels,
                     "--images", tmp_path / "none")
    assert result.exit_code == 1 and "does not exist" in result.output


@pytest.mark.parametrize(("content", "message"), [
    ({"images": [], "annotations": [], "categories": None}, "'categories' is not a list"),
    ({"images": [], "annotations": [], "categories": 5}, "'categories' is not a list"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_malformed_detection_files_are_one_message(tmp_path, content, message):
    detections = tmp_path / "detections.json"
    detections.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DataError, match=message):
        read_detections(detections, tmp_path)


def test_results_need_a_file_that_names_their_images(scenes, tmp_path):
    _, images, _ = scenes
    results, names = tmp_path / "results.json", tmp_path / "names.json"
    results.write_text(json.dumps([{"image_id": 1, "bbox": [1, 1, 9, 9], "score": 0.5}]))
    names.write_text(json.dumps({"images": 3}))
    with pytest.raises(DataError, match="no 'images' list"):
        read_detections(results, images, names)


def test_hostile_numbers_are_skipped_with_their_reason(scenes, tmp_path):
    annotations, images, _ = scenes
    hostile = [{"image_id": 1, "bbox": [10**400, 1, 2, 3]},  # no float holds it
               {"image_id": 1, "bbox": [1e308, 1e308, 1e308, 1e308]},
               {"image_id": 1, "bbox": [1, 1, 50, 50], "score": 10**400}]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(hostile))
    found, skipped = read_detections(results, images, annotations)
    assert not found
    assert [s["reason"].split(" ")[0] for s in skipped] == ["non-numeric", "bbox", "non-numeric"]
    assert "beyond any image's size" in skipped[1]["reason"]


def test_a_box_under_a_pixel_is_said_to_be_so():
    image = Image.new("RGB", (100, 80))
    assert cut_box(image, (100, 80), (50, 40, 50.2, 40.2), size=0) == \
        "box is less than a pixel wide or high"
    assert "outside the image (100x80)" in cut_box(image, (100, 80), (200, 0, 220, 20), size=0)
