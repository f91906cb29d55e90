"""`wastecls predict`: classify files, folders and globs, streaming.

A pipeline in the Ultralytics manner: find the model -> expand the sources -> classify in
batches (`inference.classify`) -> write each result as it comes, in input order. Memory does
not grow with the number of inputs.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from waste_cli.backends import Runner
from waste_cli.batching import EvalImages, Speed
from waste_cli.console import Reporter, printable
from waste_cli.data.scan import is_image_path, list_images
from waste_cli.fileio import (
    atomic_text,
    check_no_overlap,
    csv_writer,
    ensure_file_writable,
    json_text,
)
from waste_cli.inference import Classified, ClassifyOptions, classify, find_model, open_model
from waste_cli.settings import PredictOptions

__all__ = ["PredictResult", "Prediction", "classify_options", "expand_inputs", "output_format",
           "predict", "predict_stream"]


@dataclass
class Prediction(Classified):
    """The answer for one image file."""

    path: Path = field(default_factory=Path)


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
            failed.append(Prediction(path=Path(item), error="URLs and standard input are not "
                                     "supported: save the image to a file and give its path"))
            continue
        literal = Path(item).exists() or not glob.has_magic(item)  # `a[1].jpg` that exists
        matches = [Path(item)] if literal else [Path(m) for m in sorted(glob.glob(item,
                                                                               recursive=True))]
        if not matches or not matches[0].exists():
            failed.append(Prediction(path=Path(item),
                                     error="no such file, folder or glob match"))
            continue
        for match in matches:
            if match.is_dir():
                found = list_images(match)
                if not found:
                    failed.append(Prediction(path=match, error="folder holds no images"))
                paths += found
            elif match.is_file() and (is_image_path(match) or literal):
                paths.append(match)
            elif literal:  # a pipe, a device, a socket: nothing to decode
                failed.append(Prediction(path=match, error="not a regular file (a pipe or a "
                                         "device?): give an image file"))
    return paths, failed


def classify_options(options: PredictOptions) -> ClassifyOptions:
    """What the inference core needs of predict's options."""
    return ClassifyOptions(top_k=options.top_k, exclude_class=tuple(options.exclude_class),
                           tta=options.tta, batch_size=options.batch_size,
                           workers=options.workers)


def predict_stream(runner: Runner, paths: list[Path], options: ClassifyOptions,
                   reporter: Reporter, speed: Speed | None = None) -> Iterator[Prediction]:
    """Yield one Prediction per path, in input order, batch by batch."""
    images = EvalImages([(p, -1) for p in paths], runner.data_config)
    for i, answer in classify(runner, images, options, reporter, speed):
        yield Prediction(answer.labels, answer.probs, answer.error, paths[i])


class _Writer:
    """Streams predictions as a table (screen), JSON lines or CSV rows."""

    def __init__(self, fmt: str, handle: IO[str], top_k: int) -> None:
        self.fmt, self.handle, self.top_k = fmt, handle, top_k
        self.csv = csv_writer(handle) if fmt == "csv" else None
        if self.csv is not None:
            columns = [c for k in range(1, top_k + 1) for c in (f"label{k}", f"prob{k}")]
            self.csv.writerow(["path", *columns, "error"])

    def write(self, item: Prediction) -> None:
        if self.fmt == "json":
            record: dict[str, Any] = {"path": str(item.path), "labels": item.labels,
                                      "probs": [round(p, 6) for p in item.probs]}
            if item.error:
                record["error"] = item.error
            self.handle.write(json_text(record) + "\n")
        elif self.csv is not None:
            self.csv.writerow([str(item.path), *item.cells(self.top_k), item.error])
        else:
            self.handle.write(f"{printable(str(item.path))}  {printable(item.shown())}\n")


def output_format(options: PredictOptions) -> str:
    """--format, or the one --output's extension names."""
    if options.output is None or options.format != "table":
        return options.format
    suffix = options.output.suffix.lower()
    return {".csv": "csv", ".json": "json", ".jsonl": "json"}.get(suffix, "csv")


def predict(options: PredictOptions, stdout: IO[str],
            reporter: Reporter | None = None) -> PredictResult:
    """Predict every input; write results to --output (atomically) or `stdout` as they come."""
    reporter = reporter or Reporter(options.quiet)
    paths, failed = expand_inputs(options.inputs)
    model_path = find_model(options.model, reporter)
    if options.output is not None:
        check_no_overlap([("--output", options.output)],
                         [("model", model_path),
                          *(("input", Path(i)) for i in options.inputs if Path(i).exists()),
                          *(("input", p) for p in paths)])
        ensure_file_writable(options.output, "--output")
    runner = open_model(model_path, options.device, options.backend, reporter)
    fmt = output_format(options)
    count, speed = 0, Speed()

    def run(handle: IO[str]) -> None:
        nonlocal count
        writer = _Writer(fmt, handle, options.top_k)
        for item in failed:
            writer.write(item)
        for item in predict_stream(runner, paths, classify_options(options), reporter, speed):
            writer.write(item)
            if item.error:
                failed.append(item)
            else:
                count += 1

    if options.output is None:
        run(stdout)
    else:
        with atomic_text(options.output) as handle:
            run(handle)
    return PredictResult(model_path, runner.name, count, failed, speed)
