"""`wastecls export`: which files to write, from which checkpoint; the exporter writes them."""

from __future__ import annotations

from pathlib import Path

from waste_cli.core.console import Reporter
from waste_cli.core.errors import ConfigError
from waste_cli.core.files import check_no_overlap, claim_file, is_stream, record_written
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


def _target(options: ExportOptions, source: Path, suffix: str, formats: int) -> Path:
    """--out as given (inside it, named as the checkpoint, when it is a folder), or the
    checkpoint's path with the format's suffix (the current folder for the built-in model,
    whose folder belongs to the installation)."""
    out = options.out
    exported_folder = any(f.folder and f.suffix == out.suffix for f in FORMATS.values()) \
        if out is not None else False  # a folder format's own output, written before
    if out is not None and (not out.is_dir() or exported_folder):
        if is_stream(out):
            raise ConfigError(f"--out {out} is a pipe or a device: an exported model is a "
                              "binary file, written whole and verified before it takes its "
                              "name. Give a file name or a folder.")
        if formats > 1:
            raise ConfigError(f"--out {out} names one file, but {formats} formats were asked "
                              "for: give a folder (each file is named after the checkpoint).")
        if out.suffix != suffix:  # wastecls tells a file's format by its suffix
            raise ConfigError(f"--out {out} does not end in {suffix}, the suffix that tells "
                              f"predict and evaluate what the file is: use --out "
                              f"{out.with_name(out.name + suffix)}.")
        return out
    if out is not None:
        base = out / source.stem
    elif is_builtin(source):
        base = Path(source.stem)
    else:
        base = source.with_suffix("")
    return base.with_suffix(suffix)


def export(options: ExportOptions, reporter: Reporter | None = None) -> ExportResult:
    """Write the requested formats; verify each before it is renamed into place."""
    reporter = reporter or Reporter(options.quiet)
    if options.onnx and not MIN_OPSET <= options.opset <= max_opset():
        raise ConfigError(f"--opset {options.opset} is outside what can be exported here: "
                          f"choose {MIN_OPSET} to {max_opset()} (default {MIN_OPSET}).")
    source = find_model(options.model, reporter, kind=".pt")
    if source.suffix.lower() == ".onnx":
        raise ConfigError(f"{source} is already exported: export takes the .pt checkpoint it "
                          "came from (e.g. --model runs/train/exp/best.pt).")
    names = [name for name in FORMATS if getattr(options, name)]
    targets = {name: _target(options, source, FORMATS[name].suffix, len(names))
               for name in names}
    check_no_overlap([("--out", path) for path in targets.values()],
                     [("model", source), ("--verify-data", options.verify_data),
                      ("--calib-data", options.calib_data)])
    for name, path in targets.items():
        claim_file(path, "export", options.overwrite, "--out", folder=FORMATS[name].folder)
    write = WriteOptions(opset=options.opset, batch=options.batch, half=options.half,
                         int8=options.int8, max_drop=options.max_drop)
    result = export_checkpoint(source, targets, write, reporter, verify=options.verify,
                               verify_data=options.verify_data, calib_data=options.calib_data)
    for path in result.files.values():
        record_written(path, "export")
    return result
