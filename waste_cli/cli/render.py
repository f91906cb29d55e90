"""What the CLI prints: consoles, tables and the one-paragraph error with its exit code."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from waste_cli.core.console import terminal_text as shown
from waste_cli.options import Options

__all__ = ["READER_GONE", "err_console", "out_console"]

READER_GONE = 141  # the status of a process stopped by SIGPIPE, as `| head` leaves Unix tools


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """Rich's own handling, but the exit status of a Unix tool whose reader left (rich
        exits 1)."""
        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(READER_GONE)


err_console = _Console(stderr=True, highlight=False)
out_console = _Console(highlight=False)


def counted(number: int, noun: str, plural: str = "") -> str:
    """"1 box", "2 boxes": a number with its noun in the right form."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def reader_gone() -> NoReturn:
    """Exit as Unix tools do when the pipe they write to closes: no message, the status of a
    process stopped by SIGPIPE (141), and no second error when Python flushes stdout at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise typer.Exit(READER_GONE)


def fail(message: str, code: int) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {shown(message, keep_newlines=True)}",
                      soft_wrap=True)
    raise typer.Exit(code)


def reporter_for(options: Options) -> Any:
    """Progress and messages for the engine, on stderr: stdout carries only results (tables,
    predictions, reports), so that a pipe gets nothing else."""
    from waste_cli.core.console import Reporter

    return Reporter(options.quiet, err_console)


def calibration_table(fitted: Any, title: str) -> Table:
    from waste_cli.confidence.command import describe

    table = Table(title=title, show_header=False)
    table.add_column("")
    table.add_column("")
    for name, value in describe(fitted):
        table.add_row(name, value)
    return table


def flag_summary(flags: dict[str, int]) -> str:
    """`, 3 flagged (2 unfamiliar, 1 low-confidence)`, or nothing when none was."""
    total = sum(flags.values())
    if not total:
        return ""
    return f", {total} flagged ({', '.join(f'{n} {flag}' for flag, n in sorted(flags.items()))})"
