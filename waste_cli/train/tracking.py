"""Run records: run folders, metrics.csv, summary.json, and the optional Neptune mirror.

Local files are always the record of a run. Neptune (opt-in) receives the same numbers through
the same two events, `log_epoch` and `finish`, so the training loop knows nothing about it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Protocol

from waste_cli.core.errors import ConfigError
from waste_cli.core.files import atomic_write_text

__all__ = ["MetricsLog", "NeptuneTracker", "Tracker", "new_run_dir"]


def new_run_dir(project: Path, name: str) -> Path:
    """project/name, or project/name2, name3, ... when it is taken (as Ultralytics does)."""
    project.mkdir(parents=True, exist_ok=True)
    path = project / name
    if not path.exists():
        path.mkdir()
        return path
    stem = re.sub(r"\d+$", "", name)
    numbers = [int(m.group(1)) for p in project.iterdir()
               if (m := re.fullmatch(re.escape(stem) + r"(\d*)", p.name)) and m.group(1)]
    index = max([1, *numbers]) + 1
    while (project / f"{stem}{index}").exists():
        index += 1
    path = project / f"{stem}{index}"
    path.mkdir()
    return path


class MetricsLog:
    """metrics.csv: one row per finished epoch, rewritten whole (atomically) after each."""

    def __init__(self, path: Path, rows: list[dict[str, Any]] | None = None,
                 write: bool = True) -> None:
        self.path, self.write = path, write
        self.rows = list(rows or [])

    @classmethod
    def resume(cls, path: Path, last_epoch: int, write: bool = True) -> MetricsLog:
        """Rows up to `last_epoch`: an epoch interrupted after its row was written is redone."""
        if not path.is_file() or last_epoch == 0:
            return cls(path, write=write)
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(handle)]
        rows = [r | {"epoch": int(r["epoch"])} for r in rows if r["epoch"] <= last_epoch]
        return cls(path, rows, write)

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.write:
            return
        buffer = io.StringIO()
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())


class Tracker(Protocol):
    """What the trainer tells an experiment tracker."""

    def log_epoch(self, row: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any], files: dict[str, Path]) -> None: ...


class NeptuneTracker:
    """Mirror of a run in Neptune: config, per-epoch metrics, confusion matrix and report."""

    def __init__(self, config: dict[str, Any], mode: str, project: str | None,
                 run_name: str) -> None:
        try:
            import neptune
        except ImportError:
            raise ConfigError(
                "--neptune needs the neptune package: pip install 'wastecls[neptune]' "
                "(or pip install neptune)."
            ) from None
        if mode == "async" and not os.environ.get("NEPTUNE_API_TOKEN"):
            raise ConfigError(
                "--neptune in async mode needs NEPTUNE_API_TOKEN (and NEPTUNE_PROJECT or "
                "--neptune-project). Use --neptune-mode offline to log locally and sync later."
            )
        try:
            self.run = neptune.init_run(project=project, mode=mode, name=run_name,
                                        capture_hardware_metrics=False)
        except Exception as exc:  # neptune raises its own many types for bad projects/tokens
            raise ConfigError(f"Cannot start a Neptune run: {exc}") from None
        from neptune.utils import stringify_unsupported

        self.run["config"] = stringify_unsupported(config)

    def log_epoch(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float):
                self.run[f"metrics/{key}"].append(value, step=row["epoch"])

    def finish(self, summary: dict[str, Any], files: dict[str, Path]) -> None:
        from neptune.utils import stringify_unsupported

        self.run["summary"] = stringify_unsupported(json.loads(json.dumps(summary, default=str)))
        for name, path in files.items():
            if path.is_file():
                self.run[f"files/{name}"].upload(str(path))
        self.run.stop()
