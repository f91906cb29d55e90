"""`wastecls predict`: classify files, folders and globs, streaming.

A pipeline in the Ultralytics manner: find the model -> expand the sources -> classify in
batches (`inference.classify`) -> write each result as it comes, in input order. Memory does
not grow with the number of inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from waste_cli.batching import Speed
from waste_cli.console import Reporter, printable
from waste_cli.fileio import (
    atomic_text,
    check_no_overlap,
    csv_writer,
    ensure_file_writable,
    json_text,
)
from waste_cli.inference import (
    ClassifyOptions,
    Prediction,
    expand_inputs,
    find_model,
    open_model,
    predict_stream,
)
from waste_cli.settings import PredictOptions

__all__ = ["PredictResult", "classify_options", "output_format", "predict"]


@dataclass
class PredictResult:
    model: Path
    backend: str
    predicted: int
    failed: list[Prediction]
    speed: Speed


def classify_options(options: PredictOptions) -> ClassifyOptions:
    """What the inference core needs of predict's options."""
    return ClassifyOptions(top_k=options.top_k, exclude_class=tuple(options.exclude_class),
                           tta=options.tta, batch_size=options.batch_size,
                           workers=options.workers)


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
