"""`wastecls calibrate`, and the fit at the end of `train`: run a model over a dataset's train and
validation images, fit its temperature and unfamiliarity threshold (confidence/fit.py), and write
a calibrated copy of the model (a checkpoint, or an ONNX file that computes the score itself).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from waste_cli.confidence.fit import FittedCalibration, fit_calibration, knn_distance
from waste_cli.confidence.graph import FEATURES, UNFAMILIARITY, with_features, with_unfamiliarity
from waste_cli.core.console import Reporter
from waste_cli.core.errors import DataError
from waste_cli.core.files import atomic_path, file_sha256
from waste_cli.core.policy import default_batch_size
from waste_cli.data.batching import run_labelled
from waste_cli.model.backends import OnnxRunner, Runner

__all__ = ["SCORE_TOLERANCE", "FitOptions", "calibrate_checkpoint", "fit_runner",
           "write_features_copy"]

SCORE_TOLERANCE = 1e-4  # the written model's score against the fit's own


@dataclass(frozen=True)
class FitOptions:
    """What the fit needs besides the model and the images."""

    familiar_share: float
    min_confidence: float
    batch_size: int | None = None
    workers: int | None = None


def fit_runner(runner: Runner, train: list[tuple[Path, int]], val: list[tuple[Path, int]],
               options: FitOptions, reporter: Reporter) -> FittedCalibration:
    """Run a model that outputs its pooled features (`features`) over the training and
    validation images (evaluation preprocessing) and fit on them; unreadable images are left
    out."""
    if not train or not val:
        raise DataError("Calibration needs training and validation images; one of the splits "
                        "is empty.")
    batch = options.batch_size or default_batch_size(runner.name, runner.on_cpu)
    seen = {}
    for split, samples in (("train", train), ("val", val)):
        outputs, bad = run_labelled(runner, samples, batch, options.workers, reporter,
                                    f"calibrate: {split} images ({runner.name})")
        keep = np.setdiff1d(np.arange(len(samples)), bad)
        if not len(keep):
            raise DataError(f"No readable {split} image to calibrate with.")
        seen[split] = ({name: out[keep] for name, out in outputs.items()},
                       np.array([samples[i][1] for i in keep]))
    (train_out, _), (val_out, val_targets) = seen["train"], seen["val"]
    if not np.isfinite(val_out["logits"]).all():
        raise DataError("The model's outputs are not finite numbers on the validation images: "
                        "it is broken (a diverged training run?); nothing was calibrated.")
    return fit_calibration(val_out["logits"], val_targets, train_out[FEATURES],
                           val_out[FEATURES], familiar_share=options.familiar_share,
                           min_confidence=options.min_confidence)


def calibrate_checkpoint(source: Path, target: Path, train: list[tuple[Path, int]],
                         val: list[tuple[Path, int]], options: FitOptions, device: Any,
                         reporter: Reporter) -> FittedCalibration:
    """Fit a checkpoint on `device` and write it with its calibration to `target` (atomically;
    `target` may be `source` for a checkpoint this run wrote)."""
    import torch

    from waste_cli.model.backends import TorchRunner
    from waste_cli.model.checkpoint import load_checkpoint, save_checkpoint
    from waste_cli.model.factory import model_from_checkpoint
    from waste_cli.model.heads import FeatureClassifier

    checkpoint = load_checkpoint(source)
    model = FeatureClassifier(model_from_checkpoint(checkpoint)).to(
        device, memory_format=torch.channels_last)
    runner = TorchRunner(model, checkpoint["classes"], checkpoint["data_config"], device, True)
    fitted = fit_runner(runner, train, val, options, reporter)
    checkpoint["calibration"] = fitted.calibration.model_dump()
    checkpoint["familiar_features"] = torch.from_numpy(fitted.bank)
    save_checkpoint(target, dict(checkpoint))
    return fitted


def calibrate_onnx(source: Path, target: Path, train: list[tuple[Path, int]],
                    val: list[tuple[Path, int]], options: FitOptions,
                    reporter: Reporter) -> FittedCalibration:
    """Fit an exported ONNX model through a copy that outputs its features, then write a copy
    with the score appended, checked against the fit on the validation images."""
    with tempfile.TemporaryDirectory(prefix="wastecls-calibrate-") as tmp:
        probe = Path(tmp) / "features.onnx"
        write_features_copy(source, probe)
        runner = OnnxRunner(probe)
        fitted = fit_runner(runner, train, val, options, reporter)
        meta = {**runner.metadata, "calibration": fitted.calibration.model_dump(),
                "calibrated_from_sha256": file_sha256(source)}
        with atomic_path(target) as written:
            with_unfamiliarity(probe, written, fitted.bank, fitted.calibration.neighbours,
                               meta)
            _check_scores(OnnxRunner(written), runner, val, fitted)
    return fitted


def write_features_copy(source: Path, target: Path) -> None:
    """An ONNX copy of `source` whose second output is the features its unfamiliarity score
    compares (what `calibrate` fits on and `audit` reads)."""
    with_features(source, target, _mid_level(OnnxRunner(source).metadata, source))


def _mid_level(meta: dict[str, Any], path: Path) -> str | None:
    """The module whose output the score compares (`models.mid_level_stage`), for the arch an
    exported file names (the model is built on the meta device: no weights, no memory)."""
    import timm
    import torch

    from waste_cli.model.heads import mid_level_stage

    arch = str(meta.get("arch", ""))
    if not timm.is_model(arch.split(".")[0]):
        raise DataError(f"Cannot calibrate {path}: its arch {arch!r} is not a timm model this "
                        "installation knows.")
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=len(meta["classes"]))
    stage = mid_level_stage(model)
    return stage[1] if stage is not None else None


def _check_scores(written: OnnxRunner, probe: OnnxRunner, val: list[tuple[Path, int]],
                  fitted: FittedCalibration) -> None:
    """The written file's logits and score on a few validation images equal the fit's own."""
    from waste_cli.data.batching import EvalImages

    images, _, readable, _ = EvalImages(val[:8], written.data_config).batch(
        list(range(min(8, len(val)))))
    if not len(readable):
        return
    mine, reference = written(images), probe(images)
    expected = knn_distance(reference[FEATURES], fitted.bank, fitted.calibration.neighbours)
    gap = max(float(np.abs(mine["logits"] - reference["logits"]).max()),
              float(np.abs(mine[UNFAMILIARITY] - expected).max()))
    if not gap <= SCORE_TOLERANCE:
        raise DataError(f"The calibrated ONNX file does not reproduce the fit (largest "
                        f"difference {gap:.2e}); nothing was written.")
