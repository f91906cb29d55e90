"""The exporter: ONNX and TorchScript files that provably give the checkpoint's answers.

A small table of formats, one writer per format. Each file is written to a temporary path,
checked against the PyTorch model on real images, and only then renamed into place: a file
that fails verification never appears. Preprocessing travels inside every file as metadata.
`wastecls export` (export.py) and the inference core's cached ONNX twin both write through here.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from waste_cli import __version__
from waste_cli.confidence.graph import logits_nodes, set_metadata
from waste_cli.core.assets import asset_path
from waste_cli.core.console import Reporter
from waste_cli.core.errors import ConfigError, ModelError, WasteclsError
from waste_cli.core.extras import require
from waste_cli.core.files import atomic_folder, atomic_path, atomic_write_text, file_sha256
from waste_cli.core.names import name_problem
from waste_cli.data.batching import EvalImages
from waste_cli.data.scan import class_folders, class_samples, list_images
from waste_cli.model.backends import (
    OPENVINO_META,
    OPENVINO_SUFFIX,
    OPENVINO_XML,
    TFLITE_SUFFIX,
    OnnxRunner,
    OpenVinoRunner,
    TfliteRunner,
)
from waste_cli.model.checkpoint import Checkpoint, load_checkpoint
from waste_cli.model.heads import ScoredClassifier, SortFreeScoredClassifier, deployable_model
from waste_cli.options import stored_options

__all__ = ["FORMATS", "MIN_OPSET", "ExportResult", "TwinExportError", "Verification",
           "WriteOptions", "export_checkpoint", "export_metadata", "max_opset", "onnx_twin",
           "stem_and_classifier_nodes"]

FP32_TOLERANCE = 1e-3
MIN_OPSET = 18  # the first that torch's dynamo exporter writes without a version conversion
VERIFY_IMAGES = 64
CALIBRATION_IMAGES = 128
TWIN_IMAGES = 8


@dataclass(frozen=True)
class WriteOptions:
    """How one file is written and held to the checkpoint. The defaults are what an ONNX twin
    for inference must be: float32 and a dynamic batch axis."""

    opset: int = MIN_OPSET
    batch: str = "dynamic"  # or a fixed batch size, as digits
    half: bool = False
    int8: bool = False
    max_drop: float = 1.0  # --half/--int8: accuracy points a reduced precision may lose


def max_opset() -> int:
    """The newest opset the installed onnx knows; whether torch writes it is checked on the
    written file (`_write_onnx`)."""
    import onnx

    return max(MIN_OPSET, onnx.defs.onnx_opset_version())


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
    """Everything a consumer needs to preprocess exactly as training did, and to read the
    outputs as wastecls does (the calibration)."""
    config = checkpoint["data_config"]
    calibrated = checkpoint.get("calibration") is not None
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
        "calibration": checkpoint.get("calibration"),
        "input": "image: float32 NCHW, RGB, resized, centre-cropped and normalised",
        "output": "logits: float32 [batch, classes]; probabilities are softmax(logits / "
                  "calibration.temperature)" + (
                      "; unfamiliarity: float32 [batch], flagged above "
                      "calibration.unfamiliar_threshold" if calibrated else ""),
    }


class _Float16(nn.Module):
    """fp16 weights behind a float32 interface, so consumers feed the same tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half()
        self.output_names = _output_names(model)

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = self.model(image.half())
        if isinstance(outputs, tuple):
            return tuple(out.float() for out in outputs)
        return outputs.float()


def _output_names(model: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "output_names", ("logits",)))


def _named(model: nn.Module, outputs: torch.Tensor | tuple[torch.Tensor, ...]
           ) -> dict[str, torch.Tensor]:
    """A model's outputs by name, in float32."""
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return {name: out.float() for name, out in zip(_output_names(model), outputs, strict=True)}


def _example(meta: dict[str, Any], batch: str) -> torch.Tensor:
    size = 2 if batch == "dynamic" else int(batch)
    return torch.zeros(size, *meta["input_size"])


def _write_onnx(model: nn.Module, path: Path, meta: dict[str, Any], options: WriteOptions,
                calibration: torch.Tensor | None = None) -> None:
    import onnx

    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if options.batch == "dynamic" \
        else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (_example(meta, options.batch),), str(path), dynamo=True,
                          input_names=["image"], output_names=list(_output_names(model)),
                          dynamic_shapes=dynamic, opset_version=options.opset,
                          external_data=False, verbose=False)
    if options.int8:
        _quantize_int8(path, calibration, 16 if options.batch == "dynamic" else int(options.batch))
    proto = onnx.load(str(path))
    written = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                  default=0)
    if written != options.opset:
        raise ConfigError(f"--opset {options.opset} was asked for but the exporter wrote opset "
                          f"{written}. Choose an opset from {MIN_OPSET} to {max_opset()}.")
    set_metadata(proto, meta)
    onnx.save(proto, str(path))


def stem_and_classifier_nodes(path: Path) -> list[str]:
    """Nodes that read the image or write the logits, and the unfamiliarity score's (which
    compares features with the carried ones): kept in float when quantizing, the usual
    practice, which keeps int8 closer to fp32 for a small share of its speed-up."""
    import onnx

    graph = onnx.load(str(path)).graph
    ends = {i.name for i in graph.input} | {o.name for o in graph.output}
    classifier = {id(node) for node in logits_nodes(graph)}
    return [node.name for node in graph.node
            if ends & {*node.input, *node.output} or id(node) not in classifier]


def _quantize_int8(path: Path, calibration: torch.Tensor | None, batch: int) -> None:
    """Quantize in place: static QDQ with calibration images (fed `batch` at a time, the size a
    fixed batch axis takes), else dynamic."""
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
                usable = len(calibration) - len(calibration) % batch or len(calibration)
                self.batches = iter(calibration[:usable].split(batch))

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
                       options: WriteOptions, calibration: torch.Tensor | None = None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, _example(meta, options.batch))
        torch.jit.save(traced, str(path), _extra_files={"wastecls.json": json.dumps(meta)})


def _write_openvino(model: nn.Module, path: Path, meta: dict[str, Any], options: WriteOptions,
                    calibration: torch.Tensor | None = None) -> None:
    """The ONNX export converted by OpenVINO's own converter into `path` (a folder: model.xml,
    model.bin), the metadata in the model's rt_info; fp16 weights with --half."""
    require("export --openvino", "openvino", "openvino")
    import openvino as ov

    onnx_file = path / "model.onnx"
    _write_onnx(model, onnx_file, meta, options)
    converted = ov.convert_model(str(onnx_file))
    onnx_file.unlink()
    converted.set_rt_info(json.dumps(meta), list(OPENVINO_META))
    ov.save_model(converted, str(path / OPENVINO_XML), compress_to_fp16=options.half)


def _write_tflite(model: nn.Module, path: Path, meta: dict[str, Any], options: WriteOptions,
                  calibration: torch.Tensor | None = None) -> None:
    """LiteRT's converter (litert-torch) from the PyTorch model at batch 1; with --int8, int8
    weights with activations quantized at run time (dynamic range: no accuracy to speak of
    lost, bench_deploy.py; full int8 lost 9 points on TrashNet). The unfamiliarity score
    travels inside, its k-th nearest found without a sort (SortFreeScoredClassifier)."""
    require("export --tflite", "tflite", "litert_torch")
    import litert_torch

    if isinstance(model, ScoredClassifier):
        model = SortFreeScoredClassifier.of(model)
    example = (_example(meta, "1"),)
    quant_config = None
    if options.int8:
        from litert_torch.quantize.pt2e_quantizer import (
            PT2EQuantizer,
            get_symmetric_quantization_config,
        )
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = PT2EQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
        prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
        prepared(*example)
        model = convert_pt2e(prepared, fold_quantize=False)
        quant_config = QuantConfig(pt2e_quantizer=quantizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = litert_torch.convert(model, example, quant_config=quant_config)
    converted.export(str(path))


def _tflite_runner(path: Path, meta: dict[str, Any]) -> Run:
    runner = TfliteRunner(path, metadata=meta)  # its sidecar is written once it is verified
    return lambda images: {k: torch.from_numpy(v) for k, v in runner(images.numpy()).items()}


Run = Callable[[torch.Tensor], dict[str, torch.Tensor]]  # images -> outputs by name


def _onnx_runner(path: Path, meta: dict[str, Any]) -> Run:
    runner = OnnxRunner(path)
    return lambda images: {k: torch.from_numpy(v) for k, v in runner(images.numpy()).items()}


def _torchscript_runner(path: Path, meta: dict[str, Any]) -> Run:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still asked for
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            outputs = module(images)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {name: out.float() for name, out in zip(ScoredClassifier.output_names, outputs,
                                                       strict=False)}

    return run


def _openvino_runner(path: Path, meta: dict[str, Any]) -> Run:
    runner = OpenVinoRunner(path)
    return lambda images: {k: torch.from_numpy(v) for k, v in runner(images.numpy()).items()}


@dataclass(frozen=True)
class ExportFormat:
    suffix: str
    write: Callable[..., None]
    runner: Callable[[Path, dict[str, Any]], Run]  # the file written, its metadata
    folder: bool = False  # written as a folder of files, not one file


FORMATS = {
    "onnx": ExportFormat(".onnx", _write_onnx, _onnx_runner),
    "torchscript": ExportFormat(".torchscript", _write_torchscript, _torchscript_runner),
    "openvino": ExportFormat(OPENVINO_SUFFIX, _write_openvino, _openvino_runner, folder=True),
    "tflite": ExportFormat(TFLITE_SUFFIX, _write_tflite, _tflite_runner),
}


def _image_folder_samples(folder: Path, classes: list[str]) -> list[tuple[Path, int | None]]:
    """Labelled samples when `folder` has class folders the model knows, else unlabelled."""
    known = [c for c in class_folders(folder) if c in classes] if folder.is_dir() else []
    if known:
        return class_samples(folder, {c: classes.index(c) for c in known})
    return [(p, None) for p in list_images(folder)]


def _evenly(items: list[Any], count: int) -> list[Any]:
    if len(items) <= count:
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def _default_images(checkpoint: Checkpoint, split: str) -> list[tuple[Path, int | None]]:
    """A split of the data the model was trained on, else the sample bundled with wastecls."""
    data = stored_options(checkpoint).get("data")
    if data and (Path(data) / split).is_dir():
        samples = _image_folder_samples(Path(data) / split, checkpoint["classes"])
        if samples:
            return samples
    bundled = asset_path("sample")
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


def _verify(outputs: dict[str, torch.Tensor], run: Run, images: torch.Tensor,
            labels: torch.Tensor | None, batch: str) -> Verification:
    """Compare every output at batch 1 (first images) and at batch > 1 (all, in chunks)."""
    chunk = 16 if batch == "dynamic" else int(batch)
    reference = outputs["logits"]
    single = [run(images[i : i + 1]) for i in range(min(4, len(images)))] if batch in (
        "dynamic", "1") else []
    usable = len(images) - len(images) % chunk if batch != "dynamic" else len(images)
    parts = [run(part) for part in images[:usable].split(chunk)]
    diffs = [float((out[name] - outputs[name][i : i + 1]).abs().max())
             for i, out in enumerate(single) for name in outputs]
    batched = torch.cat([part["logits"] for part in parts]) if parts else \
        torch.empty(0, reference.shape[1])
    for name in outputs if parts else ():
        whole = torch.cat([part[name] for part in parts])
        diffs.append(float((whole - outputs[name][:usable]).abs().max()))
    agreement = float((batched.argmax(1) == reference[:usable].argmax(1)).float().mean()) if len(
        batched) else 1.0
    result = Verification(max(diffs), agreement, len(images))
    if labels is not None and len(batched):
        result.accuracy_reference = float((reference.argmax(1) == labels).float().mean())
        result.accuracy_export = float((batched.argmax(1) == labels[:usable]).float().mean())
    return result


def _check(verification: Verification, options: WriteOptions, name: str) -> None:
    if not (options.half or (options.int8 and name in ("onnx", "tflite"))):
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
    if drop > options.max_drop:
        raise VerificationError(
            f"{name} export loses {drop:.1f} points of {what} on {verification.images} images "
            f"(limit --max-drop {options.max_drop}). The file was not written."
        )


@dataclass
class _Reference:
    """The checkpoint's own answers (every output) on the verification images, to hold each
    export to."""

    outputs: dict[str, torch.Tensor]
    images: torch.Tensor
    labels: torch.Tensor | None


def _reference(model: nn.Module, samples: list[tuple[Path, int | None]],
               config: dict[str, Any], count: int) -> _Reference:
    images, labels = _tensors(samples, config, count)
    with torch.inference_mode():
        outputs = _named(model, model(images))
    if not all(torch.isfinite(out).all() for out in outputs.values()):
        raise VerificationError(
            "The model's outputs are not finite numbers (NaN or inf) on the verification "
            "images: the checkpoint is broken (a diverged training run?). Nothing was written.")
    return _Reference(outputs, images, labels)


def _write_verified(name: str, model: nn.Module, target: Path, meta: dict[str, Any],
                    options: WriteOptions, reference: _Reference | None,
                    calibration: torch.Tensor | None = None) -> Verification | None:
    """Write one format to a temporary file, verify it, and only then rename it to `target`."""
    fmt = FORMATS[name]
    with (atomic_folder if fmt.folder else atomic_path)(target) as tmp:
        fmt.write(model, tmp, meta, options, calibration)
        if reference is None:
            return None
        check = _verify(reference.outputs, fmt.runner(tmp, meta), reference.images,
                        reference.labels, options.batch)
        _check(check, options, name)
    return check


def export_checkpoint(source: Path, targets: dict[str, Path], options: WriteOptions,
                      reporter: Reporter, *, verify: bool = True,
                      verify_data: Path | None = None,
                      calib_data: Path | None = None) -> ExportResult:
    """Write checkpoint `source` in each format of `targets` (name -> file), each verified
    against the checkpoint on real images before it takes its name, with a `.json` of its
    metadata beside it. Verification uses `verify_data`, else the model's val split; int8
    calibration `calib_data`, else its train split (else the bundled sample)."""
    checkpoint = load_checkpoint(source)
    model = deployable_model(checkpoint)
    precision = "fp16" if options.half else "int8" if options.int8 else "fp32"
    meta = export_metadata(checkpoint, source, precision)
    reference = None
    if verify:
        samples = (_image_folder_samples(verify_data, checkpoint["classes"])
                   if verify_data else _default_images(checkpoint, "val"))
        reference = _reference(model, samples, meta["data_config"], VERIFY_IMAGES)
    calibration = None
    if options.int8:
        calib = (_image_folder_samples(calib_data, checkpoint["classes"])
                 if calib_data else _default_images(checkpoint, "train"))
        calibration = _tensors(calib, meta["data_config"], CALIBRATION_IMAGES)[0]
    exported = _Float16(model) if options.half else model
    files, checks = {}, {}
    for name, target in targets.items():
        with reporter.bar(f"export {name} ({precision})", 1) as bar:
            check = _write_verified(name, exported, target, meta, options, reference,
                                    calibration)
            bar.advance()
        if check is not None:
            checks[name] = check
        atomic_write_text(target.with_name(target.name + ".json"), json.dumps(meta, indent=2))
        files[name] = target
    return ExportResult(files, checks, source)


def _cached_twin(path: Path, digest: str) -> OnnxRunner | None:
    """The runner of `path` when it is an fp32, dynamic-batch export of the checkpoint hashed
    `digest` (read from onnxruntime's cheap probe, the one the runner opens anyway)."""
    try:
        runner = OnnxRunner(path)
    except ModelError:  # unreadable, damaged or foreign
        return None
    meta = runner.metadata
    same = (meta.get("precision") == "fp32" and meta.get("source_checkpoint_sha256") == digest
            and runner.dynamic_batch)
    return runner if same else None


def _twin_name(source: Path, digest: str) -> str:
    return f"{source.stem}.{digest[:16]}.onnx"


def onnx_twin(source: Path, reporter: Reporter) -> OnnxRunner:
    """The runner of a verified fp32 ONNX copy of checkpoint `source`, exported once and kept
    beside it.

    The file is named by the checkpoint's hash, so a cache hit loads no checkpoint and a changed
    checkpoint gets a new twin. A file of that name that is not what a twin must be (float32, a
    dynamic batch axis, exported from this very checkpoint) is written again. The previous twin
    of the same checkpoint name (and only a file of exactly that form) is removed. Raises
    ModelError when it cannot be written or verified.
    """
    digest = file_sha256(source)
    target = source.with_name(_twin_name(source, digest))
    if name_problem(target.name) is not None:
        raise TwinExportError(f"Cannot export {source} to ONNX for onnxruntime: its twin's name "
                              f"{target.name!r} cannot be a file name "
                              f"({name_problem(target.name)}).")
    cached = _cached_twin(target, digest) if target.is_file() else None
    if cached is not None:
        return cached
    checkpoint = load_checkpoint(source)
    reporter.info(f"exporting {source} to ONNX once for fast CPU inference ({target.name})")
    try:
        model = deployable_model(checkpoint)
        reference = _reference(model, _default_images(checkpoint, "val"),
                               checkpoint["data_config"], TWIN_IMAGES)
        _write_verified("onnx", model, target, export_metadata(checkpoint, source, "fp32"),
                        WriteOptions(), reference)
    except (OSError, WasteclsError) as exc:
        raise TwinExportError(f"Cannot export {source} to ONNX for onnxruntime: {exc}") from None
    own = re.compile(re.escape(source.stem) + r"\.[0-9a-f]{16}\.onnx")
    for stale in source.parent.glob(f"{source.stem}.*.onnx"):
        if stale != target and own.fullmatch(stale.name):
            stale.unlink(missing_ok=True)
    return OnnxRunner(target)
