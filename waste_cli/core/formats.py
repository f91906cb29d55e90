"""Reading and writing structured text: YAML/TOML/JSON input (no aliases), always-valid JSON,
and CSV cells that a spreadsheet cannot run as formulas (OWASP).
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CsvWriter",
    "csv_writer",
    "json_text",
    "plain_cell",
    "read_structured",
    "spreadsheet_cell",
]

def _yaml_loader() -> type:
    """PyYAML's SafeLoader without aliases: a few hundred bytes of nested aliases expand to
    gigabytes (a "billion laughs"), and no wastecls file needs one."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not allowed in wastecls files",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)

    return NoAliases


def read_structured(path: Path, other: str = "json") -> Any:
    """The data in a JSON (.json), YAML (.yaml, .yml) or TOML (.toml) file; files with any other
    suffix are read as `other` ("json" or "yaml").

    Raises OSError when the file cannot be read, and ValueError with the reason when it does not
    hold valid data: text that is not UTF-8, a syntax error, or nesting too deep for the parser
    (a hostile file must give a message, never a RecursionError), or a YAML alias."""
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    kind = {".json": "json", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}.get(suffix, other)
    try:
        if kind == "toml":
            return tomllib.loads(text)
        if kind == "yaml":
            import yaml  # only commands that read YAML pay its import

            try:
                return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader
            except yaml.YAMLError as exc:
                raise ValueError(str(exc)) from None
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to read") from None


# Cells that a spreadsheet would run as a formula (OWASP's CSV injection list).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: object) -> str:
    """A CSV cell that a spreadsheet shows as the text it is: one that would start a formula
    gets a leading apostrophe, as OWASP advises; numbers (-0.5) stay numbers."""
    text = str(value)
    if text.startswith(_FORMULA_START):
        try:
            float(text)
        except ValueError:
            return "'" + text
    return text


def plain_cell(text: str) -> str:
    """A cell as `spreadsheet_cell` wrote it, back to its text."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


class CsvWriter:
    """csv.writer whose every cell goes through `spreadsheet_cell`."""

    def __init__(self, handle: IO[str]) -> None:
        self._writer = csv.writer(handle, lineterminator="\n")

    def writerow(self, cells: Iterable[object]) -> None:
        self._writer.writerow([spreadsheet_cell(c) for c in cells])

    def writerows(self, rows: Iterable[Iterable[object]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(handle: IO[str]) -> CsvWriter:
    """The CSV writer of every table wastecls writes for people and spreadsheets."""
    return CsvWriter(handle)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def json_text(data: Any, indent: int | None = None) -> str:
    """Valid JSON for `data`, whatever it holds: a number that is not finite (NaN, inf), which
    JSON cannot express, becomes null; anything else unusual becomes its text."""
    return json.dumps(_finite(data), indent=indent, default=str, allow_nan=False)
