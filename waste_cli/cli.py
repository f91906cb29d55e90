"""The `wastecls` command: parse flags, build settings, call the engine, print, exit.

No machine learning happens here, and torch is imported only inside the commands that need it,
so `wastecls --help` is instant. Engine errors (WasteclsError) become a one-paragraph message
and their exit code; flags the user did not type stay None so that environment variables and
the config file can fill them (see settings.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.table import Table

from waste_cli import __version__
from waste_cli.errors import WasteclsError
from waste_cli.settings import CommandSettings, PrepareSettings, flag_name, load_settings

app = typer.Typer(
    name="wastecls",
    help="Train, evaluate and ship image classifiers for waste and litter.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


def opt(model: type[CommandSettings], field: str, *decls: str, **kwargs: Any) -> Any:
    """A Typer option whose help and shown default come from the settings field."""
    info = model.model_fields[field]
    help_text = info.description or ""
    default = info.default
    if default is not PydanticUndefined and default is not None and default is not False:
        help_text += f" [dim]\\[default: {default}][/]"
    if info.annotation is bool:
        decls = decls or (f"{flag_name(field)}/--no-{flag_name(field)[2:]}",)
    return typer.Option(*(decls or (flag_name(field),)), help=help_text,
                        show_default=False, **kwargs)


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML/YAML config file (flags and WASTECLS_* win).",
                 show_default=False),
]


def _run(cls: type[CommandSettings], config: Path | None, flags: dict[str, Any]) -> Any:
    """Resolve settings; engine errors end the program with their message and exit code."""
    try:
        return load_settings(cls, flags, config)
    except WasteclsError as exc:
        _fail(exc)


def _fail(exc: WasteclsError) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _version(value: bool) -> None:
    if value:
        out_console.print(f"wastecls {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Train, evaluate and ship image classifiers for waste and litter.

    Typical use: [bold]wastecls prepare raw/ --out data/[/] then
    [bold]wastecls train --data data/[/], [bold]wastecls evaluate[/], [bold]wastecls predict
    img.jpg[/] and [bold]wastecls export --onnx[/].
    """


@app.command(epilog="Examples:\n\n"
             "  wastecls prepare raw/trashnet --out data/\n\n"
             "  wastecls prepare annotations.json --images raw/ --out data/ "
             "--taxonomy detect-waste --square --background 1\n\n"
             "  wastecls prepare raw/ --out data/ --unlabeled-frac 0.8 --size 224")
def prepare(
    source: Annotated[Path | None, typer.Argument(
        help="Class-folder dataset (SRC/<class>/*.jpg) or COCO annotations .json.",
        show_default=False)] = None,
    out: Annotated[Path | None, opt(PrepareSettings, "out", "--out", "-o")] = None,
    images: Annotated[Path | None, opt(PrepareSettings, "images")] = None,
    val_frac: Annotated[float | None, opt(PrepareSettings, "val_frac")] = None,
    test_frac: Annotated[float | None, opt(PrepareSettings, "test_frac")] = None,
    unlabeled_frac: Annotated[float | None, opt(PrepareSettings, "unlabeled_frac")] = None,
    size: Annotated[int | None, opt(PrepareSettings, "size")] = None,
    min_size: Annotated[int | None, opt(PrepareSettings, "min_size")] = None,
    quality: Annotated[int | None, opt(PrepareSettings, "quality")] = None,
    square: Annotated[bool | None, opt(PrepareSettings, "square")] = None,
    zoom: Annotated[float | None, opt(PrepareSettings, "zoom")] = None,
    background: Annotated[int | None, opt(PrepareSettings, "background")] = None,
    map_file: Annotated[Path | None, opt(PrepareSettings, "map", "--map")] = None,
    taxonomy: Annotated[str | None, opt(PrepareSettings, "taxonomy")] = None,
    workers: Annotated[int | None, opt(PrepareSettings, "workers")] = None,
    overwrite: Annotated[bool | None, opt(PrepareSettings, "overwrite")] = None,
    seed: Annotated[int | None, opt(PrepareSettings, "seed")] = None,
    quiet: Annotated[bool | None, opt(PrepareSettings, "quiet", "--quiet", "-q")] = None,
    config: ConfigOption = None,
) -> None:
    """Split a class-folder dataset, or crop a COCO dataset, into train/val/test folders."""
    from waste_cli.console import Reporter
    from waste_cli.data.prepare import prepare as run_prepare

    settings = _run(PrepareSettings, config, dict(
        source=source, out=out, images=images, val_frac=val_frac, test_frac=test_frac,
        unlabeled_frac=unlabeled_frac, size=size, min_size=min_size, quality=quality,
        square=square, zoom=zoom, background=background, map=map_file, taxonomy=taxonomy,
        workers=workers, overwrite=overwrite, seed=seed, quiet=quiet))
    try:
        result = run_prepare(settings, Reporter(settings.quiet, out_console))
    except WasteclsError as exc:
        _fail(exc)
    splits = [s for s in ("train", "val", "test", "pseudolabel") if any(result.counts[s].values())]
    table = Table(title=f"Prepared {result.out}", show_footer=True)
    table.add_column("class", footer="total")
    for split in splits:
        total = sum(result.counts[split].values())
        table.add_column(split, justify="right", footer=str(total))
    for name in result.classes:
        table.add_row(name, *(str(result.counts[s][name]) for s in splits))
    out_console.print(table)
    out_console.print(
        f"{len(result.classes)} classes, train imbalance (largest/smallest) "
        f"{result.imbalance:.1f}x, {result.duplicates} exact duplicates kept together, "
        f"{len(result.skipped)} skipped (see prepare_report.json)."
    )


def _not_implemented(name: str) -> None:
    err_console.print(f"[bold red]error:[/] `wastecls {name}` is not implemented yet.")
    raise typer.Exit(2)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train() -> None:
    """Train a classifier (not implemented yet)."""
    _not_implemented("train")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def pseudolabel() -> None:
    """Label an unlabeled folder with a trained model (not implemented yet)."""
    _not_implemented("pseudolabel")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def evaluate() -> None:
    """Evaluate a trained model (not implemented yet)."""
    _not_implemented("evaluate")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def predict() -> None:
    """Predict classes for images (not implemented yet)."""
    _not_implemented("predict")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def export() -> None:
    """Export a trained model to ONNX / TorchScript (not implemented yet)."""
    _not_implemented("export")


def main() -> None:
    """Console-script entry point."""
    app()
