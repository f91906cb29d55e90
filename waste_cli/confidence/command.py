"""`wastecls calibrate`: fit a model's temperature and unfamiliar flag on a prepared dataset and
write a calibrated copy beside it (never over it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from waste_cli.confidence.calibrate import FitOptions, calibrate_checkpoint, calibrate_onnx
from waste_cli.confidence.fit import FittedCalibration
from waste_cli.core.console import Reporter
from waste_cli.core.errors import ConfigError, DataError
from waste_cli.core.files import check_no_overlap, claim_file, record_written
from waste_cli.data.scan import class_folders, class_samples
from waste_cli.model.backends import OnnxRunner
from waste_cli.options import CalibrateOptions

__all__ = ["CalibrateResult", "calibrate", "default_target", "describe"]

@dataclass
class CalibrateResult:
    source: Path
    target: Path
    fitted: FittedCalibration


def default_target(model: Path) -> Path:
    """best.pt -> best.calibrated.pt, beside the model (never the model itself)."""
    return model.with_name(f"{model.stem}.calibrated{model.suffix}")


def _split(root: Path, split: str, classes: list[str]) -> list[tuple[Path, int]]:
    """The labelled images of ROOT/split whose class the model knows; a class it does not know
    is an error (its photos cannot be scored)."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{root} has no {split}/ folder: give a dataset made by `wastecls "
                        "prepare` (calibration fits on its train and val splits).")
    unknown = sorted(set(class_folders(folder)) - set(classes))
    if unknown:
        raise DataError(f"{folder} has classes the model does not know: {', '.join(unknown)}. "
                        "Calibrate on data with the model's classes.")
    return class_samples(folder, {c: classes.index(c) for c in class_folders(folder)})


def calibrate(options: CalibrateOptions, reporter: Reporter | None = None) -> CalibrateResult:
    """`wastecls calibrate`: a calibrated copy of a checkpoint or an exported ONNX file."""
    reporter = reporter or Reporter(options.quiet)
    source = options.model
    target = options.out or default_target(source)
    if target.is_dir():
        target = target / default_target(source).name
    if target.resolve() == source.resolve():
        raise ConfigError(f"--out {target} is the model itself: calibrate writes a copy, never "
                          "over the model. Choose another --out.")
    check_no_overlap([("--out", target)], [("data", options.data)])
    claim_file(target, "calibrate", options.overwrite, "--out")
    is_onnx = source.suffix.lower() == ".onnx"
    classes = OnnxRunner(source).classes if is_onnx else _checkpoint_classes(source)
    train, val = (_split(options.data, split, classes) for split in ("train", "val"))
    fit = FitOptions(options.familiar_share, options.min_confidence, options.batch_size,
                     options.workers)
    if is_onnx:
        if options.device not in ("auto", "cpu"):
            raise ConfigError("An ONNX model is calibrated on the CPU (onnxruntime): use "
                              "--device auto or cpu.")
        fitted = calibrate_onnx(source, target, train, val, fit, reporter)
    else:
        from waste_cli.core.runtime import resolve_device

        fitted = calibrate_checkpoint(source, target, train, val, fit,
                                      resolve_device(options.device), reporter)
    record_written(target, "calibrate")
    return CalibrateResult(source, target, fitted)


def _checkpoint_classes(path: Path) -> list[str]:
    from waste_cli.model.checkpoint import load_checkpoint

    return list(load_checkpoint(path)["classes"])


def describe(fitted: FittedCalibration) -> list[tuple[str, str]]:
    """The fit as (what, value) rows for the summary table."""
    c, r = fitted.calibration, fitted.report
    return [("temperature", f"{c.temperature:.3f}"),
            ("validation NLL", f"{r['val_nll_before']:.3f} -> {r['val_nll_after']:.3f}"),
            ("unfamiliar above", f"{c.unfamiliar_threshold:.4f} (k = {c.neighbours}, "
             f"{int(r['bank_rows'])} of {int(r['train_images'])} training photos carried)"),
            ("low-confidence below", f"{c.min_confidence:.2f}"),
            ("validation flagged", f"{r['val_flagged']:.1%} (familiar share "
             f"{c.familiar_share:.0%})")]
