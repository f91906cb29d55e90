"""How an answer is written, the same way by `predict` and the detector's second stage (boxes):
the CSV columns and cells, the JSON fields, the output format, and the classify options both
build from their own options.
"""

from __future__ import annotations

from typing import Any

from waste_cli.data.taxonomy import choose_class_map
from waste_cli.infer.core import (
    Classified,
    ClassifyOptions,
    Grouping,
)
from waste_cli.options import PredictOptions, ServeOptions

__all__ = ["ANSWER_COLUMNS", "FINE_COLUMNS", "answer_cells", "answer_columns", "answer_fields",
           "classify_options", "output_format"]

def classify_options(options: PredictOptions | ServeOptions, classes: list[str]
                     ) -> ClassifyOptions:
    """What the inference core needs of predict's options, for a model of `classes`."""
    grouping = None
    if options.map is not None or options.taxonomy is not None:
        where = str(options.map) if options.map is not None else f"--taxonomy {options.taxonomy}"
        grouping = Grouping.of(classes, choose_class_map(options.map, options.taxonomy), where)
    return ClassifyOptions(top_k=options.top_k, exclude_class=tuple(options.exclude_class),
                           tta=options.tta, min_confidence=options.min_confidence,
                           batch_size=options.batch_size, workers=options.workers,
                           grouping=grouping)


def answer_fields(item: Classified, abstain: bool) -> dict[str, Any]:
    """What a row says first: the label to act on, its calibrated confidence, the flag and the
    unfamiliarity score (None: the model cannot say); answered in coarser classes, also the
    model's own label and its confidence."""
    fields = {"label": item.answer(abstain), "confidence": round(item.confidence, 6),
              "flag": item.flag, "unfamiliarity": None if item.unfamiliarity is None
              else round(item.unfamiliarity, 6)}
    if item.fine_confidence is not None:
        fields |= {"fine_label": item.fine_label,
                   "fine_confidence": round(item.fine_confidence, 6)}
    return fields


ANSWER_COLUMNS = ["label", "confidence", "flag", "unfamiliarity"]
FINE_COLUMNS = ["fine_label", "fine_confidence"]  # with --taxonomy or --map


def answer_columns(grouped: bool) -> list[str]:
    """The CSV columns answer_cells fills."""
    return [*ANSWER_COLUMNS, *FINE_COLUMNS] if grouped else list(ANSWER_COLUMNS)


def answer_cells(item: Classified, abstain: bool, grouped: bool = False) -> list[str]:
    """answer_fields as CSV cells (empty for an error)."""
    if item.error:
        return [""] * len(answer_columns(grouped))
    fields = answer_fields(item, abstain)
    cells = [fields["label"], f"{item.confidence:.6f}", item.flag,
             "" if item.unfamiliarity is None else f"{item.unfamiliarity:.6f}"]
    if grouped:
        cells += [item.fine_label, "" if item.fine_confidence is None
                  else f"{item.fine_confidence:.6f}"]
    return cells


def output_format(options: PredictOptions) -> str:
    """--format, or the one --output's extension names."""
    if options.output is None or options.format != "table":
        return options.format
    suffix = options.output.suffix.lower()
    return {".csv": "csv", ".json": "json", ".jsonl": "json",
            ".geojson": "geojson"}.get(suffix, "csv")
