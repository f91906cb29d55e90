"""`wastecls evaluate`: how good is the model really, class by class, where does it fail, and
how far can its confidence and its flags be trusted.

Classes are matched by name, never by index, and preprocessing and calibration are the model's
own (from the checkpoint or the ONNX metadata).
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from waste_cli.confidence.fit import LOW_CONFIDENCE, UNFAMILIAR, flags_of
from waste_cli.confidence.measures import auroc, calibration_report, risk_coverage, scaled_softmax
from waste_cli.core.console import Reporter, entry_text
from waste_cli.core.errors import DataError, ModelError
from waste_cli.core.files import (
    atomic_write_text,
    check_no_overlap,
    claim_folder,
    owned_by,
    write_json,
)
from waste_cli.core.formats import csv_writer
from waste_cli.core.metrics import (
    classification_report,
    confusion_matrix,
    most_confused,
    topk_correct,
)
from waste_cli.core.plots import (
    plot_confusion_matrix,
    plot_image_grid,
    plot_reliability,
    plot_risk_coverage,
)
from waste_cli.core.policy import default_batch_size
from waste_cli.data.batching import EvalImages, Speed, run_labelled
from waste_cli.data.detections import read_detections
from waste_cli.data.scan import SPLITS, class_folders, class_samples, image_sources, list_images
from waste_cli.data.taxonomy import choose_class_map
from waste_cli.infer.core import BROKEN_OUTPUT, Grouping, open_model, temperature
from waste_cli.model.backends import Runner
from waste_cli.model.builtin import find_model
from waste_cli.options import EvaluateOptions, write_config

EVALUATE_FILES = ("report.json", "per_class.csv", "predictions.csv", "confusion_matrix.png",
                  "reliability.png", "risk_coverage.png")  # always written
TOP_LOSSES = "top_losses.png"  # written when there are mistakes to show

__all__ = ["EvaluateResult", "build_report", "evaluate", "labelled_folder"]


@dataclass
class EvaluateResult:
    report: dict[str, Any]
    model: Path
    backend: str
    out: Path | None
    speed: Speed
    written: list[str]  # the files written into `out`


def labelled_folder(data: Path, split: str) -> Path:
    """ROOT/split for a prepare root, or `data` itself when it holds class folders."""
    if (data / split).is_dir():
        return data / split
    if any((data / s).is_dir() for s in SPLITS):
        raise DataError(f"{data} has no {split}/ split. Choose --split among "
                        f"{', '.join(s for s in SPLITS if (data / s).is_dir())}.")
    if not data.is_dir() or not class_folders(data):
        raise DataError(f"{data} is neither a `prepare` root nor a folder of class folders.")
    return data


def _match_classes(model_classes: list[str], data_classes: list[str], folder: Path,
                   allow_subset: bool) -> list[str]:
    """The data classes to evaluate; a difference from the model's is an error unless allowed."""
    only_data = sorted(set(data_classes) - set(model_classes))
    only_model = sorted(set(model_classes) - set(data_classes))
    if (only_data or only_model) and not allow_subset:
        raise DataError(
            f"The model's classes differ from the data's in {folder}. Only in the data: "
            f"{', '.join(only_data) or '-'}; only in the model: {', '.join(only_model) or '-'}. "
            "Add --allow-subset to evaluate on the shared classes."
        )
    shared = [c for c in data_classes if c in model_classes]
    if not shared:
        raise DataError(f"The model and {folder} share no class names.")
    return shared


def _write_outputs(out: Path, report: dict[str, Any], images: EvalImages,
                   logits: torch.Tensor, flags: list[str], classes: list[str],
                   top_losses: int) -> list[str]:
    """Write the files of --out (`logits` already divided by the model's temperature); the
    names written. A top_losses.png of an earlier run is removed when there is no mistake."""
    samples = images.samples
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    for row in report["per_class"]:
        writer.writerow([row["class"], f"{row['precision']:.4f}", f"{row['recall']:.4f}",
                         f"{row['f1']:.4f}", row["support"]])
    atomic_write_text(out / "per_class.csv", buffer.getvalue())

    probs = torch.from_numpy(scaled_softmax(logits.numpy(), dtype=np.float32))
    targets = torch.tensor([label for _, label in samples])
    valid = ~logits.isnan().any(1)
    losses = torch.full((len(samples),), float("nan"))
    losses[valid] = F.cross_entropy(logits[valid], targets[valid], reduction="none")
    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(["path", "true", "predicted", "confidence", "flag", "loss"])
    for i, (path, label) in enumerate(samples):
        if valid[i]:
            pred = int(probs[i].argmax())
            writer.writerow([str(path), classes[label], classes[pred],
                             f"{float(probs[i, pred]):.6f}", flags[i], f"{float(losses[i]):.6f}"])
        else:
            writer.writerow([str(path), classes[label], "", "", "", ""])
    atomic_write_text(out / "predictions.csv", buffer.getvalue())

    cm = np.array(report["confusion_matrix"])
    calibration = report["calibration"]
    plot_reliability(calibration["bins"], out / "reliability.png",
                     f"ECE {calibration['ece']:.1%} on {int(cm.sum())} images")
    curve = risk_coverage(probs[valid].double().numpy(), targets[valid].numpy())
    plot_risk_coverage(curve["coverage"], curve["risk"], out / "risk_coverage.png",
                       f"AURC {curve['aurc']:.3f}")
    plot_confusion_matrix(cm, classes, out / "confusion_matrix.png",
                          f"accuracy {report['accuracy']:.1%} on {int(cm.sum())} images")
    wrong = [i for i in range(len(samples)) if valid[i] and int(probs[i].argmax()) != samples[i][1]]
    wrong.sort(key=lambda i: -float(losses[i]))
    if top_losses and wrong:
        picks = wrong[:top_losses]
        pictures = [np.asarray(_thumbnail(images, i)) for i in picks]
        captions = [f"true {classes[samples[i][1]]}\npred {classes[int(probs[i].argmax())]} "
                    f"({float(probs[i].max()):.0%})\n{samples[i][0].name}" for i in picks]
        plot_image_grid(pictures, captions, out / TOP_LOSSES,
                        "Most confident mistakes (check these labels first)")
        claim_folder(out, "evaluate", [TOP_LOSSES], overwrite=True, what="--out folder")
        return [*EVALUATE_FILES, TOP_LOSSES]
    if TOP_LOSSES in owned_by(out, "evaluate"):  # an earlier run's picture, not this one's
        (out / TOP_LOSSES).unlink(missing_ok=True)
    return list(EVALUATE_FILES)


def _thumbnail(images: EvalImages, index: int) -> Image.Image:
    """What the model was shown for sample `index` (the image, or the box's crop), small."""
    picture = images.image(index)
    picture.thumbnail((128, 128))
    return picture


def _flag_report(flags: list[str], correct: np.ndarray) -> dict[str, Any]:
    flagged = np.array([bool(f) for f in flags], dtype=bool)
    return {"flagged": float(flagged.mean()) if len(flags) else 0.0,
            "unfamiliar": flags.count(UNFAMILIAR), "low_confidence": flags.count(LOW_CONFIDENCE),
            "accuracy_unflagged": float(correct[~flagged].mean()) if (~flagged).any() else
            float("nan"),
            "accuracy_flagged": float(correct[flagged].mean()) if flagged.any() else
            float("nan")}


def build_report(logits: torch.Tensor, targets: torch.Tensor, classes: list[str], top_k: int,
                 unreadable: list[str], scale: float = 1.0, flags: list[str] | None = None
                 ) -> dict[str, Any]:
    """Everything `evaluate` reports, as plain data (report.json): `logits` are the model's
    raw ones, `scale` its temperature, `flags` each image's flag."""
    valid = ~logits.isnan().any(1)
    logits, targets = logits[valid], targets[valid]
    cm = confusion_matrix(targets, logits.argmax(1), len(classes))
    rows = cm.sum(1, keepdim=True).clamp(min=1)
    probs, labels = scaled_softmax(logits.numpy(), scale), targets.numpy()
    selective = risk_coverage(probs, labels)
    raw = calibration_report(scaled_softmax(logits.numpy()), labels)
    kept = [f for f, ok in zip(flags or [""] * len(valid), valid.tolist(), strict=True) if ok]
    return {
        "temperature": scale,
        "calibration": calibration_report(probs, labels),
        "uncalibrated": {k: raw[k] for k in ("ece", "nll", "brier")},
        "selective": {k: v for k, v in selective.items() if k not in ("coverage", "risk")},
        "flags": _flag_report(kept, probs.argmax(axis=1) == labels),
        **classification_report(cm, classes),
        f"top{top_k}_accuracy": topk_correct(logits, targets, top_k) / max(len(targets), 1),
        "top_k": top_k,
        "images": len(targets),
        "classes": classes,
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": (cm / rows).round(decimals=4).tolist(),
        "most_confused": most_confused(cm, classes),
        "unreadable": unreadable,
    }


def _per_source(logits: torch.Tensor, targets: torch.Tensor, samples: list[tuple[Path, int]],
                origins: dict[str, str]) -> dict[str, dict[str, float]]:
    """Accuracy on each source's images (a merged dataset's manifest names them)."""
    valid = ~logits.isnan().any(1)
    correct = (logits.argmax(1) == targets) & valid
    seen: dict[str, list[int]] = defaultdict(list)
    for i, (path, _) in enumerate(samples):
        if valid[i]:
            seen[origins.get(os.path.normpath(path), "?")].append(i)
    return {name: {"images": len(rows), "accuracy": float(correct[rows].float().mean())}
            for name, rows in sorted(seen.items())}


@dataclass(frozen=True)
class _Space:
    """The classes an evaluation is scored in: the model's own, or, with --map or --taxonomy
    on class folders, the map's targets, both the model's classes and the data's mapped."""

    classes: list[str]
    grouping: Grouping | None = None
    unseen: tuple[str, ...] = ()  # data classes whose target the model cannot answer


UNSEEN = -1  # the label of an image whose class the model cannot know


def _folder_images(options: EvaluateOptions, runner: Runner, folder: Path
                   ) -> tuple[EvalImages, Path, _Space]:
    """The labelled images of a class-folder split, and the classes they are scored in."""
    if options.map is None and options.taxonomy is None:
        shared = _match_classes(runner.classes, class_folders(folder), folder,
                                options.allow_subset)
        labels = {c: runner.classes.index(c) for c in shared}
        space = _Space(runner.classes)
    else:
        class_map = choose_class_map(options.map, options.taxonomy)
        grouping = Grouping.of(runner.classes, class_map,
                               str(options.map or f"--taxonomy {options.taxonomy}"))
        targets = list(grouping.classes)
        labels, unseen = {}, []
        for name in class_folders(folder):
            target = class_map.target(name, f"class folder {folder / name}")
            if target is None:
                continue
            labels[name] = targets.index(target) if target in targets else UNSEEN
            if target not in targets:
                unseen.append(name)
        space = _Space(targets, grouping, tuple(unseen))
    samples = class_samples(folder, labels)
    if not samples:
        raise DataError(f"No images in the class folders of {folder}.")
    return EvalImages(samples, runner.data_config), folder, space


def _in_space(space: _Space, logits: torch.Tensor, targets: torch.Tensor, flags: list[str],
              images: EvalImages, scale: float, data_config: dict[str, Any]
              ) -> tuple[torch.Tensor, torch.Tensor, list[str], EvalImages, dict[str, Any]]:
    """The evaluation in the map's space: the images of classes the model can know, their
    logits summed into the targets' (as log-probabilities times the temperature, so that the
    calibrated probabilities are the sums); and what the model did with the unseen ones."""
    assert space.grouping is not None
    valid = ~logits.isnan().any(1)
    known = targets != UNSEEN
    unseen_flags = [f for f, k, v in zip(flags, known.tolist(), valid.tolist(), strict=True)
                    if v and not k]
    unseen = {"classes": list(space.unseen), "images": len(unseen_flags),
              "flagged": (sum(bool(f) for f in unseen_flags) / len(unseen_flags)
                          if unseen_flags else float("nan"))}
    summed = scaled_softmax(logits.numpy(), scale) @ space.grouping.members
    with np.errstate(divide="ignore"):  # a target of excluded classes only: -inf, never chosen
        grouped = torch.from_numpy((np.log(summed) * scale).astype(np.float32))
    rows = known.nonzero().flatten().tolist()
    kept = EvalImages([images.samples[i] for i in rows], data_config)
    return (grouped[rows], targets[rows], [flags[i] for i in rows], kept, unseen)


def _box_images(options: EvaluateOptions, runner: Runner, reporter: Reporter
                ) -> tuple[EvalImages, Path]:
    """The annotated boxes of a COCO file, each labelled with its (mapped) category and cropped
    as the model's training boxes were."""
    assert options.boxes is not None and options.images is not None  # settings checked
    class_map = choose_class_map(options.map, options.taxonomy)
    found, skipped = read_detections(options.boxes, options.images)
    reporter.warn_some([f"skipped {entry_text(entry)}" for entry in skipped])
    labelled = [(d, class_map(d.category)) for d in found if d.category is not None]
    labelled = [(d, label) for d, label in labelled if label is not None]
    shared = _match_classes(runner.classes, sorted({label for _, label in labelled}),
                            options.boxes, options.allow_subset)
    kept = sorted(((d, label) for d, label in labelled if label in shared),
                  key=lambda pair: str(pair[0].image))  # a photo's boxes together: one decode
    if not kept:
        raise DataError(f"No usable boxes in {options.boxes}.")
    samples = [(d.image, runner.classes.index(label)) for d, label in kept]
    return EvalImages(samples, runner.data_config, [d.region for d, _ in kept],
                      runner.crop), options.boxes


def _scores(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The unfamiliarity score of every image (NaN: the model cannot say)."""
    logits = outputs["logits"]
    return outputs.get("unfamiliarity", np.full(len(logits), np.nan, np.float32))


def _unfamiliar_report(options: EvaluateOptions, runner: Runner, inside: np.ndarray,
                       batch_size: int, reporter: Reporter) -> dict[str, Any]:
    """How the flags treat photos of other things (--unfamiliar DIR): the share flagged, and
    how well the score (and, for comparison, the top probability alone) separates them from
    the evaluated images (AUROC)."""
    assert options.unfamiliar is not None
    paths = list_images(options.unfamiliar) if options.unfamiliar.is_dir() else []
    if not paths:
        raise DataError(f"--unfamiliar {options.unfamiliar} is not a folder of images.")
    outputs, bad = run_labelled(runner, [(p, -1) for p in paths], batch_size, options.workers,
                                reporter, f"unfamiliar photos ({runner.name})")
    valid = np.isfinite(outputs["logits"]).all(axis=1)
    confidence = scaled_softmax(outputs["logits"][valid], temperature(runner)).max(axis=1)
    scores = _scores(outputs)[valid]
    flags = flags_of(confidence, scores, runner.calibration, options.min_confidence)
    return {"folder": str(options.unfamiliar), "images": int(valid.sum()),
            "unreadable": len(bad), "flagged": sum(bool(f) for f in flags) / max(len(flags), 1),
            "unfamiliar": flags.count(UNFAMILIAR), "low_confidence": flags.count(LOW_CONFIDENCE),
            "auroc": auroc(inside, scores) if runner.calibration is not None else float("nan"),
            "mean_confidence": float(confidence.mean()) if len(confidence) else float("nan")}


def evaluate(options: EvaluateOptions, reporter: Reporter | None = None) -> EvaluateResult:
    """Evaluate a checkpoint or ONNX model on a labelled folder or on annotated boxes;
    optionally write files."""
    reporter = reporter or Reporter(options.quiet)
    model_path = find_model(options.model, reporter)
    if options.out is not None:
        data = options.data or options.images
        check_no_overlap([("--out", options.out)], [("model", model_path), ("data", data),
                                                     ("--boxes", options.boxes)])
        claim_folder(options.out, "evaluate", [*EVALUATE_FILES, "config.yaml"],
                     options.overwrite, "--out folder")
        write_config(options, options.out / "config.yaml")
    # A wrong --data fails here, before the model is loaded.
    folder = labelled_folder(options.data, options.split) if options.data else None
    runner = open_model(model_path, options.device, options.backend, reporter)
    images, source, space = (_folder_images(options, runner, folder) if folder is not None
                             else (*_box_images(options, runner, reporter),
                                   _Space(runner.classes)))
    samples = images.samples
    speed = Speed()
    batch_size = options.batch_size or default_batch_size(runner.name, runner.on_cpu)
    outputs, bad = run_labelled(runner, images, batch_size, options.workers, reporter,
                                f"evaluate ({runner.name})", speed=speed)
    logits = torch.from_numpy(outputs["logits"])
    unreadable = set(bad)
    broken = [i for i in range(len(samples))
              if i not in unreadable and not torch.isfinite(logits[i]).all()]
    if broken:
        raise ModelError(f"{model_path}: {BROKEN_OUTPUT} ({len(broken)} of {len(samples)} "
                         f"images, e.g. {samples[broken[0]][0]}).")
    for i in bad:
        reporter.warn(f"skipped {samples[i][0]}: {images.reason(i)}")
    targets = torch.tensor([label for _, label in samples])
    scale = temperature(runner)
    scores = _scores(outputs)
    flags = flags_of(scaled_softmax(logits.numpy(), scale).max(axis=1), scores,
                     runner.calibration, options.min_confidence)
    unreadable_names = [str(samples[i][0]) for i in bad]
    unseen = None
    if space.grouping is not None:
        logits, targets, flags, images, unseen = _in_space(space, logits, targets, flags,
                                                           images, scale, runner.data_config)
        samples = images.samples
    report = build_report(logits, targets, space.classes, options.top_k, unreadable_names,
                          scale, flags)
    if unseen is not None:
        report["unseen"] = unseen
    report |= {"model": str(model_path), "backend": runner.name, "data": str(source),
               "speed_ms_per_image": speed.per_image_ms()}
    origins = image_sources(folder.parent) if folder is not None else {}
    if len(set(origins.values())) > 1:  # a merge of sources: how the model does on each
        report["per_source"] = _per_source(logits, targets, samples, origins)
    if options.unfamiliar is not None:
        valid = np.isfinite(outputs["logits"]).all(axis=1)
        report["unfamiliar"] = _unfamiliar_report(options, runner, scores[valid], batch_size,
                                                  reporter)
    written = ([*_write_outputs(options.out, report, images, logits / scale, flags,
                                space.classes, options.top_losses), "config.yaml"]
               if options.out is not None else [])
    return EvaluateResult(report, model_path, runner.name, options.out, speed, written)
