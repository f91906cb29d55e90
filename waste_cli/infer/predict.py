"""`wastecls predict`: classify files, folders and globs, streaming.

A pipeline in the Ultralytics manner: find the model -> expand the sources -> classify in
batches (`inference.classify`) -> write each result as it comes, in input order. Memory does
not grow with the number of inputs.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from waste_cli.core.console import Reporter, printable
from waste_cli.core.files import (
    atomic_text,
    atomic_write_text,
    check_no_overlap,
    claim_file,
    is_stream,
    record_written,
)
from waste_cli.core.formats import csv_writer, json_text
from waste_cli.data.batching import Speed
from waste_cli.data.exif import photo_place
from waste_cli.infer.answers import (
    answer_cells,
    answer_columns,
    answer_fields,
    classify_options,
    output_format,
)
from waste_cli.infer.core import (
    Prediction,
    expand_inputs,
    open_model,
    predict_stream,
)
from waste_cli.infer.video import (
    SEGMENT_COLUMNS,
    Segment,
    VideoOptions,
    classify_video,
    is_video_input,
)
from waste_cli.model.builtin import find_model
from waste_cli.options import PredictOptions

__all__ = ["PredictResult", "predict"]

@dataclass
class PredictResult:
    model: Path
    backend: str
    predicted: int
    failed: list[Prediction]
    speed: Speed
    flags: dict[str, int] = field(default_factory=dict)  # flag -> images
    segments: list[Segment] = field(default_factory=list)  # of the video inputs


class _Writer:
    """Streams predictions as a table (screen), JSON lines, CSV rows or a GeoJSON
    FeatureCollection (one Point per photo with an EXIF position; the others listed)."""

    def __init__(self, fmt: str, handle: IO[str], top_k: int, abstain: bool,
                 grouped: bool) -> None:
        self.fmt, self.handle, self.top_k, self.abstain = fmt, handle, top_k, abstain
        self.grouped = grouped
        self.csv = csv_writer(handle) if fmt == "csv" else None
        self.placed = 0
        self.unplaced: list[str] = []
        if self.csv is not None:
            columns = [c for k in range(1, top_k + 1) for c in (f"label{k}", f"prob{k}")]
            self.csv.writerow(["path", *answer_columns(grouped), *columns, "error"])
        if fmt == "geojson":
            handle.write('{"type": "FeatureCollection", "features": [\n')

    def segments(self, segments: list[Segment]) -> None:
        """A video's segments: JSON records after its frames, lines on a screen (a CSV's go
        to their own file)."""
        for segment in segments:
            record = segment.record()
            if self.fmt == "json":
                self.handle.write(json_text({"segment": record}) + "\n")
            elif self.fmt == "table":
                self.handle.write(f"segment {printable(record['source'])} "
                                  f"{record['start']:.2f}-{record['end']:.2f}s  "
                                  f"{printable(record['label'])} "
                                  f"{record['confidence']:.1%}\n")

    def close(self) -> None:
        """End the document (GeoJSON: the photos without a position close it)."""
        if self.fmt == "geojson":
            self.handle.write("\n],\n" + json_text({"without_location": self.unplaced})[1:]
                              + "\n")

    def _feature(self, item: Prediction) -> None:
        place = photo_place(Path(item.where)) if not item.error else None
        if place is None:
            self.unplaced.append(item.where)
            return
        properties: dict[str, Any] = {"path": item.where, "taken": place.taken}
        properties |= answer_fields(item, self.abstain) | {
            "labels": item.labels, "probs": [round(p, 6) for p in item.probs]}
        feature = {"type": "Feature", "properties": properties,
                   "geometry": {"type": "Point",
                                "coordinates": [place.longitude, place.latitude]}}
        self.handle.write(("" if not self.placed else ",\n") + json_text(feature))
        self.placed += 1

    def write(self, item: Prediction) -> None:
        if self.fmt == "geojson":
            self._feature(item)
        elif self.fmt == "json":
            record: dict[str, Any] = {"path": item.where}
            if item.error:
                record["error"] = item.error
            else:
                record |= answer_fields(item, self.abstain) | {
                    "labels": item.labels, "probs": [round(p, 6) for p in item.probs]}
            self.handle.write(json_text(record) + "\n")
        elif self.csv is not None:
            self.csv.writerow([item.where, *answer_cells(item, self.abstain, self.grouped),
                               *item.cells(self.top_k), item.error])
        else:
            self.handle.write(f"{printable(item.where)}  "
                              f"{printable(item.shown(self.abstain))}\n")


def predict(options: PredictOptions, stdout: IO[str],
            reporter: Reporter | None = None) -> PredictResult:
    """Predict every input; write results to --output (atomically) or `stdout` as they come."""
    reporter = reporter or Reporter(options.quiet)
    videos = [i for i in options.inputs if is_video_input(i)]
    paths, failed = expand_inputs([i for i in options.inputs if i not in videos])
    model_path = find_model(options.model, reporter)
    if options.output is not None:
        check_no_overlap([("--output", options.output)],
                         [("model", model_path),
                          *(("input", Path(i)) for i in options.inputs if Path(i).exists()),
                          *(("input", p) for p in paths)])
        claim_file(options.output, "predict", options.overwrite, "--output")
        if videos and output_format(options) == "csv" and not is_stream(options.output):
            claim_file(segments_path(options.output), "predict", options.overwrite,
                       "segments file")
    runner = open_model(model_path, options.device, options.backend, reporter)
    fmt = output_format(options)
    count, speed, flags = 0, Speed(), Counter[str]()
    segments: list[Segment] = []
    classify = classify_options(options, runner.classes)

    def run(handle: IO[str]) -> None:
        nonlocal count
        writer = _Writer(fmt, handle, options.top_k, options.abstain,
                         classify.grouping is not None)
        for item in failed:
            writer.write(item)
        for item in predict_stream(runner, paths, classify, reporter, speed):
            writer.write(item)
            if item.error:
                failed.append(item)
            else:
                count += 1
                flags[item.flag] += bool(item.flag)
        video = VideoOptions(options.fps, options.smooth, options.duration, options.top_k,
                             options.min_confidence)
        for source in videos:
            frames, found = classify_video(runner, source, video, reporter)
            for item in frames:
                writer.write(item)
                count += 1
                flags[item.flag] += bool(item.flag)
            writer.segments(found)
            segments.extend(found)
        writer.close()
        if writer.unplaced and fmt == "geojson":
            reporter.warn(f"{len(writer.unplaced)} of {len(writer.unplaced) + writer.placed} "
                          "photos record no GPS position: they are listed under "
                          "without_location, not on the map")

    if options.output is None:
        run(stdout)
    else:
        with atomic_text(options.output) as handle:
            run(handle)
        record_written(options.output, "predict")
    if segments and fmt == "csv" and options.output is not None:
        _write_segments(options.output, segments)
    return PredictResult(model_path, runner.name, count, failed, speed,
                         {flag: n for flag, n in flags.items() if n}, segments)


def segments_path(output: Path) -> Path:
    """Where a CSV output's video segments go: `preds.csv` -> `preds.segments.csv`."""
    return output.with_name(f"{output.stem}.segments.csv")


def _write_segments(output: Path, segments: list[Segment]) -> None:
    if is_stream(output):
        return
    target = segments_path(output)
    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(SEGMENT_COLUMNS)
    for segment in segments:
        record = segment.record()
        writer.writerow([record[c] for c in SEGMENT_COLUMNS])
    atomic_write_text(target, buffer.getvalue())
    record_written(target, "predict")
