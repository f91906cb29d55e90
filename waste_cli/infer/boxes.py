"""`wastecls predict --boxes`: the second stage of a litter detector. Each box the detector found
is cropped exactly as `prepare` cropped the training boxes (the model carries its crop settings)
and classified; the detector's fields are kept in the output.

Boxes are taken image by image, so a photo is decoded once (at the size its smallest box
needs) however many boxes it holds, and all crops flow through predict's batched workers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from waste_cli.core.console import Reporter, entry_text, printable
from waste_cli.core.files import (
    atomic_path,
    atomic_text,
    check_no_overlap,
    claim_file,
    claim_folder,
    record_written,
)
from waste_cli.core.formats import csv_writer, json_text
from waste_cli.data.batching import EvalImages, Speed
from waste_cli.data.detections import Detection, read_detections
from waste_cli.data.sources import DECODE_ERRORS, decode_image
from waste_cli.infer.answers import (
    FINE_COLUMNS,
    answer_cells,
    answer_columns,
    answer_fields,
    classify_options,
    output_format,
)
from waste_cli.infer.core import Classified, ClassifyOptions, classify, open_model
from waste_cli.model.backends import Runner
from waste_cli.model.builtin import find_model
from waste_cli.options import PredictOptions, write_config

__all__ = ["BoxPrediction", "BoxesResult", "classify_boxes", "load_boxes", "predict_boxes",
           "save_pictures", "write_boxes"]

DRAW_SHORT_SIDE = 1280  # pictures of the labelled boxes are drawn at about this size


@dataclass
class BoxPrediction(Classified):
    """The answer for one detector box."""

    detection: Detection | None = None


@dataclass
class BoxesResult:
    model: Path
    backend: str
    boxes: int  # classified
    failed: list[BoxPrediction]
    skipped: list[dict[str, Any]]  # unusable entries of the detections file
    below_score: int  # detections under --min-score, left out on purpose
    speed: Speed
    flags: dict[str, int] = field(default_factory=dict)  # flag -> boxes


def load_boxes(options: PredictOptions) -> tuple[list[Detection], list[dict[str, Any]], int]:
    """The detections to classify, ordered image by image; the skipped entries; how many
    were under --min-score."""
    assert options.boxes is not None and options.images is not None  # settings checked
    found, skipped = read_detections(options.boxes, options.images, options.coco_images)
    kept = [d for d in found if d.score is None or d.score >= options.min_score]
    order = sorted(range(len(kept)), key=lambda i: str(kept[i].image))  # stable: file order
    return [kept[i] for i in order], skipped, len(found) - len(kept)


def classify_boxes(runner: Runner, detections: list[Detection], options: ClassifyOptions,
                   reporter: Reporter, speed: Speed) -> Iterator[BoxPrediction]:
    """One BoxPrediction per detection, in order."""
    images = EvalImages([(d.image, -1) for d in detections], runner.data_config,
                        [d.region for d in detections], runner.crop)
    for i, answer in classify(runner, images, options, reporter, speed, "classify boxes"):
        yield BoxPrediction(**vars(answer), detection=detections[i])


def _box_columns(detection: Detection) -> list[str]:
    x, y, w, h = detection.region.box
    kind = "cxcywh_normalized" if detection.region.normalized else "xywh_pixels"
    return [f"{x:g}", f"{y:g}", f"{w:g}", f"{h:g}", kind]


def category_id(name: str, classes: list[str]) -> int:
    """A class's COCO category id: its 1-based index in the model; `unknown` (--abstain), when
    the model has no class of that name, comes after the model's classes."""
    return classes.index(name) + 1 if name in classes else len(classes) + 1


class _BoxWriter:
    """COCO results (a JSON list, the detector's fields kept), CSV rows, or a table."""

    def __init__(self, fmt: str, handle: IO[str], top_k: int, classes: list[str],
                 abstain: bool, grouped: bool) -> None:
        """`classes`: the classes answered in (the grouping's targets, with --taxonomy or
        --map): COCO category ids are their index + 1."""
        self.fmt, self.handle, self.top_k, self.classes = fmt, handle, top_k, classes
        self.abstain, self.grouped, self.first = abstain, grouped, True
        if fmt == "csv":
            self.csv = csv_writer(handle)
            columns = [c for k in range(1, top_k + 1) for c in (f"label{k}", f"prob{k}")]
            self.csv.writerow(["image", "x", "y", "w", "h", "box_format", "detector_score",
                               *answer_columns(grouped), *columns, "error"])
        elif fmt == "json":
            handle.write("[")

    def write(self, item: BoxPrediction) -> None:
        detection = item.detection
        if self.fmt == "json":
            record: dict[str, Any] = {**detection.record, "image": str(detection.image)}
            if item.error:
                record["error"] = item.error
            else:
                answer = answer_fields(item, self.abstain)
                record |= {"category_id": category_id(answer["label"], self.classes),
                           "category_name": answer["label"],
                           "classifier_score": answer["confidence"],
                           "flag": answer["flag"], "unfamiliarity": answer["unfamiliarity"],
                           **{k: answer[k] for k in FINE_COLUMNS if k in answer},
                           "top_k": [{"category_name": label, "score": round(p, 6)}
                                     for label, p in zip(item.labels, item.probs, strict=True)]}
            self.handle.write(("\n" if self.first else ",\n") + json_text(record))
            self.first = False
        elif self.fmt == "csv":
            score = "" if detection.score is None else f"{detection.score:g}"
            self.csv.writerow([str(detection.image), *_box_columns(detection), score,
                               *answer_cells(item, self.abstain, self.grouped),
                               *item.cells(self.top_k),
                               item.error])
        else:
            box = " ".join(_box_columns(detection)[:4])
            self.handle.write(f"{printable(str(detection.image))} [{box}]  "
                              f"{printable(item.shown(self.abstain))}\n")

    def close(self) -> None:
        if self.fmt == "json":
            self.handle.write("\n]\n")


def write_boxes(predictions: Iterator[BoxPrediction], fmt: str, handle: IO[str], top_k: int,
                classes: list[str], abstain: bool = False, grouped: bool = False
                ) -> list[BoxPrediction]:
    """Write every prediction as it comes; return them all (for the pictures and the count)."""
    writer = _BoxWriter(fmt, handle, top_k, classes, abstain, grouped)
    done = []
    for item in predictions:
        writer.write(item)
        done.append(item)
    writer.close()
    return done


def _picture(image: Path, images_root: Path) -> Path:
    """Where the picture of `image`'s boxes goes, relative to --save-images: its place under
    --images, as JPEG."""
    return image.resolve().relative_to(images_root.resolve()).with_suffix(".jpg")


def save_pictures(predictions: list[BoxPrediction], images_root: Path, folder: Path,
                  reporter: Reporter, abstain: bool = False) -> int:
    """Draw each photo's boxes with their labels into `folder` (same relative paths, as JPEG;
    flagged answers in orange): a detector and a classifier are checked by looking. Returns the
    pictures written."""
    from PIL import ImageDraw, ImageFont

    by_image: dict[Path, list[BoxPrediction]] = {}
    for item in predictions:
        by_image.setdefault(item.detection.image, []).append(item)
    written = 0
    with reporter.bar("draw labelled boxes", len(by_image)) as bar:
        for path, items in by_image.items():
            try:
                image, full = decode_image(path.read_bytes(), DRAW_SHORT_SIDE)
            except (*DECODE_ERRORS, OSError):
                bar.advance()
                continue
            scale = image.width / full[0]
            draw = ImageDraw.Draw(image)
            font = ImageFont.load_default(size=max(12, image.height // 40))
            line = max(2, image.height // 300)
            for item in items:
                x0, y0, x1, y1 = (v * scale for v in item.detection.region.corners(full, False,
                                                                                    1.0))
                colour = ((220, 40, 40) if item.error else (240, 150, 20) if item.flag
                          else (40, 200, 60))
                draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
                text = (f"{item.answer(abstain)} {item.confidence:.0%}" if item.labels
                        else "error") + (f" ({item.flag})" if item.flag else "")
                left, top, right, bottom = draw.textbbox((x0, y0), text, font=font)
                lift = bottom - top + 2 * line
                draw.rectangle((left, top - lift, right + 2 * line, bottom - lift), fill=colour)
                draw.text((x0 + line, y0 - lift), text, fill=(255, 255, 255), font=font)
            target = folder / _picture(path, images_root)
            with atomic_path(target) as tmp:
                image.save(tmp, "JPEG", quality=90)
            written += 1
            bar.advance()
    return written


def predict_boxes(options: PredictOptions, stdout: IO[str],
                  reporter: Reporter | None = None) -> BoxesResult:
    """Classify every detection of --boxes; write the results to --output (atomically) or
    `stdout` as they come, and the pictures to --save-images."""
    reporter = reporter or Reporter(options.quiet)
    assert options.images is not None  # settings checked
    model_path = find_model(options.model, reporter)
    inputs = [("model", model_path), ("--images folder", options.images),
              ("--boxes", options.boxes), ("--coco-images", options.coco_images)]
    check_no_overlap([("--output", options.output), ("--save-images", options.save_images)],
                     inputs)
    if options.output is not None:
        claim_file(options.output, "predict", options.overwrite, "--output")
    detections, skipped, below = load_boxes(options)
    if options.save_images is not None:
        claim_folder(options.save_images, "predict",
                     {_picture(d.image, options.images).parts[0] for d in detections}
                     | {"config.yaml"}, options.overwrite, "--save-images folder")
        write_config(options, options.save_images / "config.yaml")
    reporter.warn_some([f"skipped {entry_text(entry)}" for entry in skipped])
    runner = open_model(model_path, options.device, options.backend, reporter)
    fmt, speed = output_format(options), Speed()
    classify = classify_options(options, runner.classes)
    grouping = classify.grouping
    answers = list(grouping.classes) if grouping is not None else runner.classes
    stream = classify_boxes(runner, detections, classify, reporter, speed)
    if options.output is None:
        done = write_boxes(stream, fmt, stdout, options.top_k, answers, options.abstain,
                           grouping is not None)
    else:
        with atomic_text(options.output) as handle:
            done = write_boxes(stream, fmt, handle, options.top_k, answers, options.abstain,
                               grouping is not None)
        record_written(options.output, "predict")
    if options.save_images is not None:
        save_pictures(done, options.images, options.save_images, reporter, options.abstain)
    failed = [item for item in done if item.error]
    flags = Counter(item.flag for item in done if item.flag)
    return BoxesResult(model_path, runner.name, len(done) - len(failed), failed, skipped,
                       below, speed, dict(flags))
