"""How an answer is written, the same way by `predict` and the detector's second stage (boxes):
the CSV columns and cells, the JSON fields, the output format, and the classify options both
build from their own options.
"""

from __future__ import annotations

from typing import Any

from waste_cli.infer.core import (
    Classified,
    ClassifyOptions,
)
from waste_cli.options import PredictOptions

__all__ = ["ANSWER_COLUMNS", "answer_cells", "answer_fields", "classify_options", "output_format"]

def classify_options(options: PredictOptions) -> ClassifyOptions:
    """What the inference core needs of predict's options."""
    return ClassifyOptions(top_k=options.top_k, exclude_class=tuple(options.exclude_class),
                           tta=options.tta, min_confidence=options.min_confidence,
                           batch_size=options.batch_size, workers=options.workers)


def answer_fields(item: Classified, abstain: bool) -> dict[str, Any]:
    """What a row says first: the label to act on, its calibrated confidence, the flag and the
    unfamiliarity score (None: the model cannot say)."""
    return {"label": item.answer(abstain), "confidence": round(item.confidence, 6),
            "flag": item.flag, "unfamiliarity": None if item.unfamiliarity is None
            else round(item.unfamiliarity, 6)}


ANSWER_COLUMNS = ["label", "confidence", "flag", "unfamiliarity"]


def answer_cells(item: Classified, abstain: bool) -> list[str]:
    """answer_fields as CSV cells (empty for an error)."""
    if item.error:
        return [""] * len(ANSWER_COLUMNS)
    fields = answer_fields(item, abstain)
    return [fields["label"], f"{item.confidence:.6f}", item.flag,
            "" if item.unfamiliarity is None else f"{item.unfamiliarity:.6f}"]


def output_format(options: PredictOptions) -> str:
    """--format, or the one --output's extension names."""
    if options.output is None or options.format != "table":
        return options.format
    suffix = options.output.suffix.lower()
    return {".csv": "csv", ".json": "json", ".jsonl": "json"}.get(suffix, "csv")
