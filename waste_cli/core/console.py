"""Terminal output for the engine: messages, live progress bars and tables, or plain lines.

The engine reports through a `Reporter` so it never prints directly; a test or a script can pass
`Reporter(quiet=True)`. Bars are live only on a terminal; in a log file each bar ends with one
plain summary line instead of thousands of redraws.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["Bar", "Reporter", "entry_text", "printable", "terminal_text"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def entry_text(entry: object) -> str:
    """A skipped entry of a report (`{"file": "a.jpg", "reason": "..."}`) as a line a person
    reads: `file a.jpg: reason`."""
    if not isinstance(entry, Mapping):
        return str(entry)
    where = ", ".join(f"{str(key).replace('_', ' ')} {value}" for key, value in entry.items()
                      if key != "reason")
    reason = entry.get("reason")
    return f"{where}: {reason}" if reason is not None and where else str(reason or where)


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` with every control character (escape sequences, newlines, carriage returns)
    written as a visible escape (`\\x1b`, `\\n`): names from data cannot redraw the screen or
    fake a line of output."""
    pattern = _CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def terminal_text(text: object, keep_newlines: bool = False) -> str:
    """Text from data as rich markup that prints it literally (see `printable`)."""
    return escape(printable(str(text), keep_newlines))


def _format_fields(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


class Bar:
    """A progress bar that shows live metrics (loss, accuracy, images/s) beside the count."""

    def __init__(self, progress: Progress | None, task: int | None, total: int) -> None:
        self._progress, self._task, self.total = progress, task, total
        self.completed = 0
        self.fields: dict[str, Any] = {}
        self.started = time.perf_counter()

    def advance(self, steps: int = 1, **fields: Any) -> None:
        self.completed += steps
        self.fields.update(fields)
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, advance=steps, fields=_format_fields(self.fields)
            )

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class Reporter:
    """Where the engine sends what a person should see."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(highlight=False)
        self.warnings: list[str] = []

    @property
    def live(self) -> bool:
        return self.console.is_terminal and not self.quiet

    def info(self, message: str) -> None:
        """A line for the user; names from data in it are shown literally."""
        if not self.quiet:
            self.console.print(terminal_text(message), soft_wrap=True)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.console.print(f"[yellow]warning:[/] {terminal_text(message)}", soft_wrap=True)

    def warn_some(self, messages: list[str], limit: int = 20) -> None:
        """The first `limit` warnings of a long list, then how many more there are (they are
        all in the command's report)."""
        for message in messages[:limit]:
            self.warn(message)
        if len(messages) > limit:
            self.warn(f"... and {len(messages) - limit} more")

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Bar]:
        """A live bar on a terminal; one line with the totals when it ends otherwise."""
        if not self.live:
            bar = Bar(None, None, total)
            yield bar
            if not self.quiet:
                rate = bar.completed / max(bar.elapsed, 1e-9)
                fields = _format_fields(bar.fields)
                self.console.print(
                    f"{terminal_text(description)}: {bar.completed}/{total} in {bar.elapsed:.1f}s "
                    f"({rate:.1f}/s) {fields}".rstrip(), soft_wrap=True
                )
            return
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[fields]}"),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(terminal_text(description), total=total, fields="")
            yield Bar(progress, task, total)
