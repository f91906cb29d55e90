"""`wastecls export`: which files to write, from which checkpoint; the exporter writes them."""

from __future__ import annotations

from pathlib import Path

from waste_cli.core.console import Reporter
from waste_cli.core.errors import ConfigError
from waste_cli.core.files import check_no_overlap, ensure_writable
from waste_cli.export.formats import (
    FORMATS,
    MIN_OPSET,
    ExportResult,
    WriteOptions,
    export_checkpoint,
    max_opset,
)
from waste_cli.model.builtin import find_model, is_builtin
from waste_cli.options import ExportOptions

__all__ = ["export"]


def _target(options: ExportOptions, source: Path, suffix: str) -> Path:
    """--out (inside it, named as the checkpoint, when it is a folder), or the checkpoint's path
    (the current folder for the built-in model, whose folder belongs to the installation), with
    the format's suffix."""
    if options.out is not None:
        base = options.out / source.stem if options.out.is_dir() else options.out
    elif is_builtin(source):
        base = Path(source.stem)
    else:
        base = source.with_suffix("")
    return base if base.suffix == suffix else base.with_suffix(suffix)


def export(options: ExportOptions, reporter: Reporter | None = None) -> ExportResult:
    """Write the requested formats; verify each before it is renamed into place."""
    reporter = reporter or Reporter(options.quiet)
    if options.onnx and not MIN_OPSET <= options.opset <= max_opset():
        raise ConfigError(f"--opset {options.opset} is outside what can be exported here: "
                          f"choose {MIN_OPSET} to {max_opset()} (default {MIN_OPSET}).")
    source = find_model(options.model, reporter)
    if source.suffix.lower() == ".onnx":
        raise ConfigError(f"{source} is already exported; export takes a .pt checkpoint.")
    targets = {name: _target(options, source, FORMATS[name].suffix)
               for name in FORMATS if getattr(options, name)}
    check_no_overlap([("--out", path) for path in targets.values()],
                     [("model", source), ("--verify-data", options.verify_data),
                      ("--calib-data", options.calib_data)])
    for path in targets.values():
        ensure_writable(path.parent, "export folder")
    write = WriteOptions(opset=options.opset, batch=options.batch, half=options.half,
                         int8=options.int8, max_drop=options.max_drop)
    return export_checkpoint(source, targets, write, reporter, verify=options.verify,
                             verify_data=options.verify_data, calib_data=options.calib_data)
