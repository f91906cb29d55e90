"""`wastecls export`: ONNX and TorchScript files that provably give the checkpoint's answers.

A small table of formats, one writer per format. Each file is written to a temporary path,
checked against the PyTorch model on real images, and only then renamed into place: a file
that fails verification never appears. Preprocessing travels inside every file as metadata.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from waste_cli import __version__
from waste_cli.backends import ONNX_META_KEY, OnnxRunner, find_model
from waste_cli.builtin import is_builtin
from waste_cli.checkpoint import Checkpoint, load_checkpoint
from waste_cli.console import Reporter
from waste_cli.data.scan import class_folders, list_images
from waste_cli.errors import ConfigError, ModelError, WasteclsError
from waste_cli.fileio import (
    atomic_path,
    atomic_write_text,
    check_no_overlap,
    ensure_writable,
    file_sha256,
)
from waste_cli.inference import EvalImages
from waste_cli.models import model_from_checkpoint
from waste_cli.settings import ExportSettings

__all__ = ["ExportResult", "TwinExportError", "Verification", "export", "export_metadata",
           "onnx_twin",
           "stem_and_classifier_nodes"]

FP32_TOLERANCE = 1e-3
MIN_OPSET = 18  # the first that torch's dynamo exporter writes without a version conversion


def max_opset() -> int:
    """The newest opset the installed torch exporter writes."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_MAX_OPSET", MIN_OPSET))
VERIFY_IMAGES = 64
CALIBRATION_IMAGES = 128


class VerificationError(WasteclsError):
    """The exported file does not reproduce the checkpoint's answers."""


class TwinExportError(ModelError):
    """A checkpoint's ONNX twin could not be written or verified (the checkpoint itself is
    fine: it can still run on PyTorch)."""


@dataclass
class Verification:
    max_abs_diff: float
    top1_agreement: float
    images: int
    accuracy_reference: float | None = None
    accuracy_export: float | None = None


@dataclass
class ExportResult:
    files: dict[str, Path]
    verifications: dict[str, Verification]
    model: Path


def export_metadata(checkpoint: Checkpoint, source: Path, precision: str) -> dict[str, Any]:
    """Everything a consumer needs to preprocess exactly as training did."""
    config = checkpoint["data_config"]
    return {
        "classes": list(checkpoint["classes"]),
        "data_config": config,
        "input_size": config["input_size"],
        "mean": config["mean"],
        "std": config["std"],
        "interpolation": config["interpolation"],
        "crop_pct": config["crop_pct"],
        "crop": checkpoint.get("crop", {}),
        "arch": checkpoint["arch"],
        "precision": precision,
        "wastecls_version": __version__,
        "source_checkpoint_sha256": file_sha256(source),
        "input": "image: float32 NCHW, RGB, resized, centre-cropped and normalised",
        "output": "logits: float32 [batch, classes]",
    }


class _Float16(nn.Module):
    """fp16 weights behind a float32 interface, so consumers feed the same tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image.half()).float()


def _example(meta: dict[str, Any], batch: str) -> torch.Tensor:
    size = 2 if batch == "dynamic" else int(batch)
    return torch.zeros(size, *meta["input_size"])


def _write_onnx(model: nn.Module, path: Path, meta: dict[str, Any], settings: ExportSettings,
                calibration: torch.Tensor | None = None) -> None:
    import onnx

    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if settings.batch == "dynamic" \
        else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (_example(meta, settings.batch),), str(path), dynamo=True,
                          input_names=["image"], output_names=["logits"],
                          dynamic_shapes=dynamic, opset_version=settings.opset,
                          external_data=False, verbose=False)
    if settings.int8:
        _quantize_int8(path, calibration)
    proto = onnx.load(str(path))
    written = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                  default=0)
    if written != settings.opset:
        raise ConfigError(f"--opset {settings.opset} was asked for but the exporter wrote opset "
                          f"{written}. Choose an opset from {MIN_OPSET} to {max_opset()}.")
    entries = {ONNX_META_KEY: json.dumps(meta)} | {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def stem_and_classifier_nodes(path: Path) -> list[str]:
    """Nodes that read the image or write the logits: kept in float when quantizing, the usual
    practice, which keeps int8 closer to fp32 for a small share of its speed-up."""
    import onnx

    graph = onnx.load(str(path)).graph
    ends = {i.name for i in graph.input} | {o.name for o in graph.output}
    return [node.name for node in graph.node if ends & {*node.input, *node.output}]


def _quantize_int8(path: Path, calibration: torch.Tensor | None) -> None:
    """Quantize in place: static QDQ with calibration images, else dynamic."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    staged = path.with_name(path.name + ".pre.onnx")  # a temporary of the same family
    try:
        quant_pre_process(str(path), str(staged), skip_symbolic_shape=True)
        if calibration is None:
            quantize_dynamic(str(staged), str(path), weight_type=QuantType.QInt8)
            return

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter(calibration.split(16))

            def get_next(self) -> dict[str, Any] | None:
                batch = next(self.batches, None)
                return None if batch is None else {"image": batch.numpy()}

        quantize_static(str(staged), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        nodes_to_exclude=stem_and_classifier_nodes(staged))
    finally:
        staged.unlink(missing_ok=True)


def _write_torchscript(model: nn.Module, path: Path, meta: dict[str, Any],
                       settings: ExportSettings, calibration: torch.Tensor | None = None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, _example(meta, settings.batch))
        torch.jit.save(traced, str(path), _extra_files={"wastecls.json": json.dumps(meta)})


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    runner = OnnxRunner(path)
    return lambda images: torch.from_numpy(runner(images.numpy()))


def _torchscript_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still asked for
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(images).float()

    return run


@dataclass(frozen=True)
class ExportFormat:
    suffix: str
    write: Callable[..., None]
    runner: Callable[[Path], Callable[[torch.Tensor], torch.Tensor]]


FORMATS = {
    "onnx": ExportFormat(".onnx", _write_onnx, _onnx_runner),
    "torchscript": ExportFormat(".torchscript", _write_torchscript, _torchscript_runner),
}


def _image_folder_samples(folder: Path, classes: list[str]) -> list[tuple[Path, int | None]]:
    """Labelled samples when `folder` has class folders the model knows, else unlabelled."""
    known = [c for c in class_folders(folder) if c in classes] if folder.is_dir() else []
    if known:
        return [(p, classes.index(c)) for c in known for p in list_images(folder / c)]
    return [(p, None) for p in list_images(folder)]


def _evenly(items: list[Any], count: int) -> list[Any]:
    if len(items) <= count:
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def _default_images(checkpoint: Checkpoint, split: str) -> list[tuple[Path, int | None]]:
    """A split of the data the model was trained on, else the sample bundled with wastecls."""
    data = checkpoint.get("settings", {}).get("data")
    if data and (Path(data) / split).is_dir():
        samples = _image_folder_samples(Path(data) / split, checkpoint["classes"])
        if samples:
            return samples
    bundled = Path(str(resources.files("waste_cli.data").joinpath("sample")))
    return _image_folder_samples(bundled, checkpoint["classes"])


def _tensors(samples: list[tuple[Path, int | None]], config: dict[str, Any],
             count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    samples = _evenly(samples, count)
    images, _, readable, _ = EvalImages([(p, -1) for p, _ in samples], config).batch(
        list(range(len(samples))))  # unreadable images are left out
    if not len(readable):
        raise ConfigError("No readable images to verify or calibrate with: pass "
                          "--verify-data DIR.")
    labels = [samples[i][1] for i in readable]
    return torch.from_numpy(images), (torch.tensor(labels) if None not in labels else None)


def _verify(reference: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor],
            images: torch.Tensor, labels: torch.Tensor | None, batch: str) -> Verification:
    """Compare at batch 1 (first images) and at batch > 1 (all, in chunks)."""
    chunk = 16 if batch == "dynamic" else int(batch)
    single = [run(images[i : i + 1]) for i in range(min(4, len(images)))] if batch in (
        "dynamic", "1") else []
    usable = len(images) - len(images) % chunk if batch != "dynamic" else len(images)
    batched = torch.cat([run(part) for part in images[:usable].split(chunk)]) if usable else \
        torch.empty(0, reference.shape[1])
    diffs = [float((out - reference[i : i + 1]).abs().max()) for i, out in enumerate(single)]
    if len(batched):
        diffs.append(float((batched - reference[:usable]).abs().max()))
    agreement = float((batched.argmax(1) == reference[:usable].argmax(1)).float().mean()) if len(
        batched) else 1.0
    result = Verification(max(diffs), agreement, len(images))
    if labels is not None and len(batched):
        result.accuracy_reference = float((reference.argmax(1) == labels).float().mean())
        result.accuracy_export = float((batched.argmax(1) == labels[:usable]).float().mean())
    return result


def _check(verification: Verification, settings: ExportSettings, name: str) -> None:
    if not (settings.half or (settings.int8 and name == "onnx")):
        if verification.top1_agreement < 1.0 or verification.max_abs_diff >= FP32_TOLERANCE:
            raise VerificationError(
                f"{name} export disagrees with the checkpoint: max |diff| "
                f"{verification.max_abs_diff:.2e} (limit {FP32_TOLERANCE:.0e}), top-1 agreement "
                f"{verification.top1_agreement:.1%}. The file was not written."
            )
        return
    if verification.accuracy_reference is not None:
        drop = 100 * (verification.accuracy_reference - (verification.accuracy_export or 0))
        what = "accuracy"
    else:
        drop, what = 100 * (1 - verification.top1_agreement), "top-1 agreement"
    if drop > settings.max_drop:
        raise VerificationError(
            f"{name} export loses {drop:.1f} points of {what} on {verification.images} images "
            f"(limit --max-drop {settings.max_drop}). The file was not written."
        )


@dataclass
class _Reference:
    """The checkpoint's own answers on the verification images, to hold each export to."""

    logits: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor | None


def _reference(model: nn.Module, samples: list[tuple[Path, int | None]],
               config: dict[str, Any], count: int) -> _Reference:
    images, labels = _tensors(samples, config, count)
    with torch.inference_mode():
        return _Reference(model(images).float(), images, labels)


def _write_verified(name: str, model: nn.Module, target: Path, meta: dict[str, Any],
                    settings: ExportSettings, reference: _Reference | None,
                    calibration: torch.Tensor | None = None) -> Verification | None:
    """Write one format to a temporary file, verify it, and only then rename it to `target`."""
    fmt = FORMATS[name]
    with atomic_path(target) as tmp:
        fmt.write(model, tmp, meta, settings, calibration)
        if reference is None:
            return None
        check = _verify(reference.logits, fmt.runner(tmp), reference.images, reference.labels,
                        settings.batch)
        _check(check, settings, name)
    return check


def _target(settings: ExportSettings, source: Path, suffix: str) -> Path:
    """--out (inside it, named as the checkpoint, when it is a folder), or the checkpoint's path
    (the current folder for the built-in model, whose folder belongs to the installation), with
    the format's suffix."""
    if settings.out is not None:
        base = settings.out / source.stem if settings.out.is_dir() else settings.out
    elif is_builtin(source):
        base = Path(source.stem)
    else:
        base = source.with_suffix("")
    return base if base.suffix == suffix else base.with_suffix(suffix)


def export(settings: ExportSettings, reporter: Reporter | None = None) -> ExportResult:
    """Write the requested formats; verify each before it is renamed into place."""
    reporter = reporter or Reporter(settings.quiet)
    if settings.onnx and not MIN_OPSET <= settings.opset <= max_opset():
        raise ConfigError(f"--opset {settings.opset} is outside what this torch exports: "
                          f"choose {MIN_OPSET} to {max_opset()} (default 18).")
    source = find_model(settings.model, reporter)
    if source.suffix.lower() == ".onnx":
        raise ConfigError(f"{source} is already exported; export takes a .pt checkpoint.")
    targets = {name: _target(settings, source, FORMATS[name].suffix)
               for name in FORMATS if getattr(settings, name)}
    check_no_overlap([("--out", path) for path in targets.values()],
                     [("model", source), ("--verify-data", settings.verify_data),
                      ("--calib-data", settings.calib_data)])
    for path in targets.values():
        ensure_writable(path.parent, "export folder")
    checkpoint = load_checkpoint(source)
    model = model_from_checkpoint(checkpoint)
    precision = "fp16" if settings.half else "int8" if settings.int8 else "fp32"
    meta = export_metadata(checkpoint, source, precision)
    reference = None
    if settings.verify:
        samples = (_image_folder_samples(settings.verify_data, checkpoint["classes"])
                   if settings.verify_data else _default_images(checkpoint, "val"))
        reference = _reference(model, samples, meta["data_config"], VERIFY_IMAGES)
    calibration = None
    if settings.int8:
        calib = (_image_folder_samples(settings.calib_data, checkpoint["classes"])
                 if settings.calib_data else _default_images(checkpoint, "train"))
        calibration = _tensors(calib, meta["data_config"], CALIBRATION_IMAGES)[0]
    exported = _Float16(model) if settings.half else model
    files, checks = {}, {}
    for name, target in targets.items():
        with reporter.bar(f"export {name} ({precision})", 1) as bar:
            check = _write_verified(name, exported, target, meta, settings, reference,
                                    calibration)
            bar.advance()
        if check is not None:
            checks[name] = check
        atomic_write_text(target.with_name(target.name + ".json"), json.dumps(meta, indent=2))
        files[name] = target
    return ExportResult(files, checks, source)


TWIN_IMAGES = 8


def _twin_name(source: Path, digest: str) -> str:
    return f"{source.stem}.{digest[:16]}.onnx"


def onnx_twin(source: Path, reporter: Reporter) -> Path:
    """A verified fp32 ONNX copy of checkpoint `source`, exported once and kept beside it.

    The file is named by the checkpoint's hash, so a cache hit reads no checkpoint and a changed
    checkpoint gets a new twin; the previous twin of the same checkpoint name (and only a file
    of exactly that form) is removed. Raises ModelError when it cannot be written or verified.
    """
    digest = file_sha256(source)
    target = source.with_name(_twin_name(source, digest))
    if target.is_file():
        return target
    checkpoint = load_checkpoint(source)
    settings = ExportSettings(model=source, onnx=True, quiet=True)
    reporter.info(f"exporting {source} to ONNX once for fast CPU inference ({target.name})")
    try:
        model = model_from_checkpoint(checkpoint)
        reference = _reference(model, _default_images(checkpoint, "val"),
                               checkpoint["data_config"], TWIN_IMAGES)
        _write_verified("onnx", model, target, export_metadata(checkpoint, source, "fp32"),
                        settings, reference)
    except (OSError, WasteclsError) as exc:
        raise TwinExportError(f"Cannot export {source} to ONNX for onnxruntime: {exc}") from None
    own = re.compile(re.escape(source.stem) + r"\.[0-9a-f]{16}\.onnx")
    for stale in source.parent.glob(f"{source.stem}.*.onnx"):
        if stale != target and own.fullmatch(stale.name):
            stale.unlink(missing_ok=True)
    return target
