"""`wastecls predict`: classify files, folders and globs, streaming.

A pipeline in the Ultralytics manner: set up the model -> expand the sources -> decode,
preprocess and infer in batches (on a CPU, inside one single-threaded worker process per core;
see `inference.iterate_batches`) -> postprocess (TTA, excluded classes, top-k) -> write each
result as it comes, in input order. Memory does not grow with the number of inputs.
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from waste_cli.backends import Runner, find_model, open_runner
from waste_cli.console import Reporter
from waste_cli.data.scan import is_image_path, list_images
from waste_cli.errors import ConfigError
from waste_cli.fileio import atomic_text, check_no_overlap, ensure_file_writable
from waste_cli.inference import EvalImages, Speed, iterate_batches
from waste_cli.policy import choose_backend, default_batch_size
from waste_cli.settings import InferenceSettings, PredictSettings

__all__ = ["FlipAveraged", "PredictResult", "Prediction", "classify", "expand_inputs",
           "open_model", "output_format", "predict", "predict_stream"]


@dataclass
class Prediction:
    path: Path
    labels: list[str] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    error: str = ""


@dataclass
class PredictResult:
    model: Path
    backend: str
    predicted: int
    failed: list[Prediction]
    speed: Speed


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[Prediction]]:
    """Files, folders (recursive, image extensions in any case) and globs -> image paths.

    Inputs that match nothing are returned as failures with their reason.
    """
    paths: list[Path] = []
    failed: list[Prediction] = []
    for item in inputs:
        if item == "-" or "://" in item:
            failed.append(Prediction(Path(item), error="URLs and standard input are not "
                                     "supported: save the image to a file and give its path"))
            continue
        matches = [Path(m) for m in sorted(glob.glob(item, recursive=True))] if glob.has_magic(
            item) else [Path(item)]
        if not matches or not matches[0].exists():
            failed.append(Prediction(Path(item), error="no such file, folder or glob match"))
            continue
        for match in matches:
            if match.is_dir():
                found = list_images(match)
                if not found:
                    failed.append(Prediction(match, error="folder holds no images"))
                paths += found
            elif match.is_file() and (is_image_path(match) or not glob.has_magic(item)):
                paths.append(match)
    return paths, failed


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (a -inf logit gets probability 0)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _postprocess(logits: np.ndarray, runner: Runner, excluded: list[int],
                 top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, class indices) of the top k classes, best first, per row."""
    if excluded:
        logits = logits.copy()
        logits[:, excluded] = -np.inf
    probs = _softmax(logits)
    k = min(top_k, len(runner.classes) - len(excluded))
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: the lower class index
    return np.take_along_axis(probs, best, axis=1), best


def open_model(settings: InferenceSettings, reporter: Reporter,
               path: Path | None = None) -> tuple[Path, Runner]:
    """(the model file, its runner) for an inference command, on the backend policy picks.

    A checkpoint that is to run on onnxruntime is first exported to a verified ONNX twin (once;
    see `export.onnx_twin`). If that fails under `--backend auto`, PyTorch runs it instead and
    the user is told why; under `--backend onnxruntime` it is an error.
    """
    path = path or find_model(settings.model, reporter)
    device = None
    if path.suffix.lower() != ".onnx" or settings.device not in ("auto", "cpu"):
        from waste_cli.runtime import resolve_device

        device = resolve_device(settings.device)  # an absent device is an error, even for ONNX
    backend = choose_backend(path, device.type if device else "cpu", settings.backend)
    runnable = path
    if backend == "onnxruntime" and path.suffix.lower() != ".onnx":
        from waste_cli.export import TwinExportError, onnx_twin

        try:
            runnable = onnx_twin(path, reporter)
        except TwinExportError as exc:
            if settings.backend == "onnxruntime":
                raise
            reporter.warn(f"{exc} Running PyTorch instead.")
    return path, open_runner(runnable, device)


class FlipAveraged:
    """--tta: the log of the mean softmax over an image and its mirror image."""

    def __init__(self, runner: Runner) -> None:
        self.runner, self.name, self.classes = runner, runner.name, runner.classes
        self.data_config, self.on_cpu, self.crop = runner.data_config, runner.on_cpu, runner.crop

    def __call__(self, images: np.ndarray) -> np.ndarray:
        mirrored = np.ascontiguousarray(images[..., ::-1])
        both = _softmax(self.runner(images)) + _softmax(self.runner(mirrored))
        with np.errstate(divide="ignore"):  # a probability that underflowed: -inf, as in torch
            return np.log(both / 2)

    def for_worker(self, threads: int) -> FlipAveraged:
        return FlipAveraged(self.runner.for_worker(threads))


def classify(runner: Runner, images: EvalImages, settings: PredictSettings,
             reporter: Reporter, speed: Speed | None = None, what: str = "predict"
             ) -> Iterator[tuple[int, list[str], list[float], str]]:
    """(sample index, top-k labels, their probabilities, error) for every sample of `images`,
    in sample order, batch by batch: the postprocessing of predict and of detector boxes."""
    unknown = sorted(set(settings.exclude_class) - set(runner.classes))
    if unknown:
        raise ConfigError(f"--exclude-class {', '.join(unknown)}: the model has no such class "
                          f"(it knows {', '.join(runner.classes)}).")
    excluded = [runner.classes.index(c) for c in settings.exclude_class]
    model = FlipAveraged(runner) if settings.tta else runner
    batch_size = settings.batch_size or default_batch_size(runner.name, runner.on_cpu)
    batches = iterate_batches(model, images, batch_size, settings.workers, speed=speed)
    with reporter.bar(f"{what} ({runner.name})", len(images.samples)) as bar:
        for logits, _, indices, bad in batches:
            results: dict[int, tuple[list[str], list[float], str]] = {
                i: ([], [], images.reason(i)) for i in bad}
            if len(indices):
                probs, labels = _postprocess(logits, runner, excluded, settings.top_k)
                for i, p, y in zip(indices.tolist(), probs.tolist(), labels.tolist(),
                                   strict=True):
                    results[i] = ([runner.classes[k] for k in y], p, "")
            for i in sorted(results):
                yield i, *results[i]
            bar.advance(len(results))


def predict_stream(runner: Runner, paths: list[Path], settings: PredictSettings,
                   reporter: Reporter, speed: Speed | None = None) -> Iterator[Prediction]:
    """Yield one Prediction per path, in input order, batch by batch."""
    images = EvalImages([(p, -1) for p in paths], runner.data_config)
    for i, labels, probs, error in classify(runner, images, settings, reporter, speed):
        yield Prediction(paths[i], labels, probs, error)


class _Writer:
    """Streams predictions as a table (screen), JSON lines or CSV rows."""

    def __init__(self, fmt: str, handle: IO[str], top_k: int) -> None:
        self.fmt, self.handle, self.top_k = fmt, handle, top_k
        self.csv = csv.writer(handle, lineterminator="\n") if fmt == "csv" else None
        if self.csv is not None:
            columns = [c for k in range(1, top_k + 1) for c in (f"label{k}", f"prob{k}")]
            self.csv.writerow(["path", *columns, "error"])

    def write(self, item: Prediction) -> None:
        if self.fmt == "json":
            record: dict[str, Any] = {"path": str(item.path), "labels": item.labels,
                                      "probs": [round(p, 6) for p in item.probs]}
            if item.error:
                record["error"] = item.error
            self.handle.write(json.dumps(record) + "\n")
        elif self.csv is not None:
            cells = [c for label, p in zip(item.labels, item.probs, strict=True)
                     for c in (label, f"{p:.6f}")]
            cells += [""] * (2 * self.top_k - len(cells))
            self.csv.writerow([str(item.path), *cells, item.error])
        else:
            shown = "  ".join(f"{label} {p:.1%}" for label, p in zip(item.labels, item.probs,
                                                                      strict=True))
            self.handle.write(f"{item.path}  {shown or 'ERROR ' + item.error}\n")


def output_format(settings: PredictSettings) -> str:
    """--format, or the one --output's extension names."""
    if settings.output is None or settings.format != "table":
        return settings.format
    suffix = settings.output.suffix.lower()
    return {".csv": "csv", ".json": "json", ".jsonl": "json"}.get(suffix, "csv")


def predict(settings: PredictSettings, stdout: IO[str],
            reporter: Reporter | None = None) -> PredictResult:
    """Predict every input; write results to --output (atomically) or `stdout` as they come."""
    reporter = reporter or Reporter(settings.quiet)
    paths, failed = expand_inputs(settings.inputs)
    model_path = find_model(settings.model, reporter)
    if settings.output is not None:
        check_no_overlap([("--output", settings.output)],
                         [("model", model_path),
                          *(("input", Path(i)) for i in settings.inputs if Path(i).exists()),
                          *(("input", p) for p in paths)])
        ensure_file_writable(settings.output, "--output")
    model_path, runner = open_model(settings, reporter, model_path)
    fmt = output_format(settings)
    count, speed = 0, Speed()

    def run(handle: IO[str]) -> None:
        nonlocal count
        writer = _Writer(fmt, handle, settings.top_k)
        for item in failed:
            writer.write(item)
        for item in predict_stream(runner, paths, settings, reporter, speed):
            writer.write(item)
            if item.error:
                failed.append(item)
            else:
                count += 1

    if settings.output is None:
        run(stdout)
    else:
        with atomic_text(settings.output) as handle:
            run(handle)
    return PredictResult(model_path, runner.name, count, failed, speed)
