"""The `wastecls` command: parse flags, build settings, call the engine, print, exit.

No machine learning happens here, and torch is imported only inside the commands that need it,
so `wastecls --help` is instant. Engine errors (WasteclsError) become a one-paragraph message
and their exit code; flags the user did not type stay None so that environment variables and
the config file can fill them (see settings.py).
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, NoReturn, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.table import Table

from waste_cli import __version__
from waste_cli.builtin import model_name
from waste_cli.console import terminal_text as shown
from waste_cli.errors import WasteclsError
from waste_cli.fileio import describe_os_error
from waste_cli.settings import (
    CalibrateOptions,
    EvaluateOptions,
    ExportOptions,
    ModelRunOptions,
    Options,
    PredictOptions,
    PrepareOptions,
    PseudolabelOptions,
    TrainOptions,
    flag_name,
    load_settings,
)


class _FlagsWithoutType:
    """--help says what a value is: flags (--help, --version, --no-x) show no `<bool>` (they
    take no value), and a repeated argument shows its items, not a Python `<list[str]>`."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
            elif param.param_type_name == "argument" and param.nargs == -1:
                param.display_type_rich = lambda ctx: "<file|folder|glob>..."
        return params


class _Command(_FlagsWithoutType, typer.core.TyperCommand):
    pass


class _Group(_FlagsWithoutType, typer.core.TyperGroup):
    pass


app = typer.Typer(
    name="wastecls",
    cls=_Group,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML/YAML config file (flags and WASTECLS_* win).",
                 show_default=False),
]


def _help(info: FieldInfo) -> str:
    """The field's description and its default (flags themselves default to "not given")."""
    text = info.description or ""
    if info.is_required():
        text += " \\[required]"
    if not any(info.default is v for v in (PydanticUndefined, None, False)):
        text += f" \\[default: {info.default}]"
    return text


def _plain(annotation: Any) -> Any:
    """The type Typer parses a field as: `X | None` -> X (Literal fields list their values in
    --help); a union such as `int | Literal["auto"]`, which Typer cannot parse, -> str.
    Pydantic validates the value afterwards."""
    if get_origin(annotation) is Annotated:  # a validated type: Typer parses its base
        annotation = get_args(annotation)[0]
    if get_origin(annotation) not in (Union, UnionType):
        return annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    return args[0] if len(args) == 1 else str


def _metavar(annotation: Any) -> str | None:
    """`<int|auto>` for a number-or-word union; None lets Typer choose."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) not in (Union, UnionType) or _plain(annotation) is not str:
        return None
    names = []
    for arg in get_args(annotation):
        base = get_args(arg)[0] if get_origin(arg) is Annotated else arg
        if get_origin(base) is Literal:
            names += [str(v) for v in get_args(base)]
        elif base is not type(None):
            names.append(base.__name__)
    return "<" + "|".join(names) + ">"


# --help panels, grouped as the README groups the flags; fields not named here, and a panel
# that would hold one flag only, go to the first panel, "Options", beside --help.
PANELS: dict[str, tuple[str, ...]] = {
    "Data": ("data", "boxes", "images", "coco_images", "min_score", "val_frac", "test_frac",
             "unlabeled_frac", "size", "min_size", "quality", "square", "zoom", "background",
             "map", "taxonomy", "img_size", "aug", "cache", "sampler", "split", "allow_subset",
             "inputs", "source"),
    "Model and weights": ("model", "arch", "pretrained", "weights", "drop_rate", "backend",
                          "freeze_backbone", "freeze_epochs", "freeze_layers"),
    "Optimisation": ("opt", "lr", "weight_decay", "layer_decay", "sched", "warmup_epochs",
                     "lr_decay", "decay_epochs", "epochs", "label_smoothing",
                     "class_weights", "ema", "ema_decay", "amp", "channels_last"),
    "Selection": ("monitor", "patience"),
    "Confidence": ("familiar_share", "min_confidence", "abstain", "unfamiliar"),
    "Pseudo-labels": ("pseudolabel", "pseudo_data", "pseudo_start", "pseudo_threshold",
                      "pseudo_weight", "pseudo_ramp", "extra_labels", "threshold", "copy_to"),
    "Output": ("out", "output", "save_images", "format", "top_k", "top_losses", "json_output",
               "exclude_class", "tta", "onnx", "torchscript", "opset", "batch", "half", "int8",
               "calib_data", "verify", "verify_data", "max_drop", "overwrite"),
    "Tracking": ("neptune", "neptune_mode", "neptune_project"),
}


def _panels(fields: list[str]) -> dict[str, str]:
    """The --help panel of each of a command's fields."""
    panel_of = {field: panel for panel, names in PANELS.items() for field in names}
    sizes = {panel: sum(panel_of.get(f) == panel for f in fields) for panel in PANELS}
    return {f: panel_of[f] if sizes.get(panel_of.get(f, ""), 0) > 1 else "Options"
            for f in fields}


def settings_command(
    cls: type[Options],
    *,
    short: dict[str, tuple[str, ...]] | None = None,
    examples: list[str] | None = None,
) -> Callable[[Callable[[Any], None]], Callable[..., None]]:
    """Register a command whose flags are generated from its settings model.

    Every settings field becomes a flag (`val_frac` -> `--val-frac`; booleans get `--no-` forms)
    whose help is the field's description. Flags default to None, meaning "not given", so the
    environment and the config file can supply the value (see settings.load_settings).
    """
    short = {"quiet": ("--quiet", "-q"), **(short or {})}
    arguments = cls.arguments
    shared = set(Options.model_fields) | set(ModelRunOptions.model_fields)
    panels = _panels(list(cls.model_fields))

    def decorate(body: Callable[[Any], None]) -> Callable[..., None]:
        params = []
        for name in sorted(cls.model_fields, key=lambda n: (n not in arguments, n in shared)):
            info = cls.model_fields[name]
            kind = _plain(info.annotation)
            metavar = (f"<{get_args(kind)[0].__name__}>..." if get_origin(kind) is list
                       else "" if kind is bool else _metavar(info.annotation))  # no <bool> noise
            required = info.is_required()
            if name in arguments:  # a required argument cannot come from a config file
                param = typer.Argument(help=info.description, show_default=False,
                                       metavar=name.upper())
            else:
                decls = short.get(name) or (flag_name(name),)
                if kind is bool and "/" not in decls[0]:
                    decls = (f"{decls[0]}/--no-{decls[0][2:]}", *decls[1:])
                param = typer.Option(*decls, help=_help(info), show_default=False,
                                     rich_help_panel=panels[name],
                                     **({"metavar": metavar} if metavar is not None else {}))
            default = ... if required and name in arguments else None
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=Annotated[_plain(info.annotation)
                                                                 | None, param]))
        params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=ConfigOption))

        def command(**flags: Any) -> None:
            try:
                settings = load_settings(cls, flags, flags.pop("config"))
                body(settings)
            except typer.Exit:  # the body's own exit code
                raise
            except WasteclsError as exc:
                _fail(str(exc), exc.exit_code)
            except KeyboardInterrupt:
                _fail("Interrupted. Files completed before this were kept; nothing "
                      "half-written carries a final name.", 130)
            except BrokenPipeError:  # the reader left early (`| head`): stop quietly
                _reader_gone()
            except OSError as exc:
                _fail(describe_os_error(exc), 1)
            except Exception as exc:  # a bug: still one paragraph, unless asked for more
                if os.environ.get("WASTECLS_DEBUG"):
                    raise
                _fail(f"Unexpected error ({type(exc).__name__}: {exc}). This is a bug in "
                      "wastecls; please report it with the command you ran. Set "
                      "WASTECLS_DEBUG=1 to see the traceback.", 1)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__name__, command.__doc__ = body.__name__, body.__doc__
        epilog = "Examples:\n\n" + "\n\n".join(f"  {e}" for e in examples) if examples else None
        app.command(cls=_Command, epilog=epilog)(command)
        return body

    return decorate


def _count(number: int, noun: str, plural: str = "") -> str:
    """"1 box", "2 boxes": a number with its noun in the right form."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def _reader_gone() -> NoReturn:
    """Exit as Unix tools do when the pipe they write to closes: no message, the status of a
    process stopped by SIGPIPE (141), and no second error when Python flushes stdout at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise typer.Exit(141)


def _fail(message: str, code: int) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {shown(message, keep_newlines=True)}",
                      soft_wrap=True)
    raise typer.Exit(code)


def _reporter(settings: Options, stderr: bool = False) -> Any:
    """Progress and messages for the engine; on stderr when stdout carries the results."""
    from waste_cli.console import Reporter

    return Reporter(settings.quiet, err_console if stderr else out_console)


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

    Typical use: wastecls prepare raw/ --out data/, then wastecls train --data data/,
    wastecls evaluate, wastecls predict img.jpg and wastecls export.
    """


@settings_command(
    PrepareOptions,
    short={"out": ("--out", "-o")},
    examples=[
        "wastecls prepare raw/trashnet --out data/",
        "wastecls prepare annotations.json --images raw/ --out data/ --taxonomy detect-waste "
        "--square --background 1",
        "wastecls prepare raw/ --out data/ --unlabeled-frac 0.8 --size 224",
    ],
)
def prepare(settings: PrepareOptions) -> None:
    """Split a class-folder dataset, or crop a COCO dataset, into train/val/test folders."""
    from waste_cli.data.prepare import prepare as run_prepare

    result = run_prepare(settings, _reporter(settings))
    splits = [s for s in ("train", "val", "test", "pseudolabel") if any(result.counts[s].values())]
    table = Table(title=f"Prepared {shown(result.out)}", show_footer=True)
    table.add_column("class", footer="total")
    for split in splits:
        table.add_column(split, justify="right", footer=str(sum(result.counts[split].values())))
    for name in result.classes:
        table.add_row(shown(name), *(str(result.counts[s][name]) for s in splits))
    out_console.print(table)
    out_console.print(
        f"{len(result.classes)} classes, train imbalance (largest/smallest) "
        f"{result.imbalance:.1f}x, {_count(result.duplicates, 'exact duplicate')} kept "
        f"together, {len(result.skipped)} skipped (see prepare_report.json)"
        + (f", {_count(len(result.warnings), 'warning')} (above)." if result.warnings else ".")
    )


@settings_command(
    TrainOptions,
    examples=[
        "wastecls train --data data/   # the recipe: every `auto` is printed and saved",
        "wastecls train --data data/ --weights tf_efficientnet_lite0.in1k.safetensors   # offline",
        "wastecls train --data data/ --weights trashnet-lite0   # start from the built-in model",
        "wastecls train --data data/ --arch efficientnet-b2 --sampler weighted --device cuda:1",
        "wastecls train --data data/ --arch resnet50 --freeze-backbone --sched exp --lr-decay 0.99",
        "wastecls train --resume runs/train/exp",
        "wastecls train --data data/ --nproc 2   # or: torchrun --nproc-per-node 2 -m waste_cli "
        "train --data data/",
    ],
)
def train(settings: TrainOptions) -> None:
    """Fine-tune a timm model on a prepared dataset; writes a run folder with best.pt."""
    from waste_cli.distributed import launch_torchrun
    from waste_cli.trainer import train as run_train

    if settings.nproc > 1 and "WORLD_SIZE" not in os.environ:
        code = launch_torchrun(settings.nproc, sys.argv[1:])
        if code:
            err_console.print(f"[bold red]error:[/] a training process failed (exit {code}); "
                              "torchrun stopped the others. See the messages above.")
        raise typer.Exit(code)
    result = run_train(settings, _reporter(settings))
    if int(os.environ.get("RANK", "0")):
        return  # the other ranks of a torchrun job stay silent
    table = Table(title=f"Best epoch {result.best_epoch} of {result.epochs_run}"
                  + (" (early stop)" if result.stopped_early else ""))
    for column in ("val_acc", "val_balanced_acc", "val_macro_f1", "val_loss", "train_acc"):
        table.add_column(column, justify="right")
    table.add_row(*(f"{float(result.best[c]):.4f}" for c in (
        "val_acc", "val_balanced_acc", "val_macro_f1", "val_loss", "train_acc")))
    out_console.print(table)
    if result.skipped_images:
        out_console.print(f"[yellow]{len(result.skipped_images)} unreadable training images "
                          "were skipped[/] (listed in summary.json).")
    if result.calibration is not None:
        out_console.print(_calibration_table(result.calibration, "Calibration (best.pt)"))
    out_console.print(f"{result.seconds:.0f}s. Results in {shown(result.run_dir)}: best.pt, "
                      "last.pt, metrics.csv, curves.png, confusion_matrix.png, summary.json")


def _calibration_table(fitted: Any, title: str) -> Table:
    from waste_cli.calibrate import describe

    table = Table(title=title, show_header=False)
    table.add_column("")
    table.add_column("")
    for name, value in describe(fitted):
        table.add_row(name, value)
    return table


@settings_command(
    CalibrateOptions,
    short={"out": ("--out", "-o")},
    examples=[
        "wastecls calibrate runs/train/exp/best.pt --data data/   # -> best.calibrated.pt",
        "wastecls calibrate model.onnx --data data/ --out model.calibrated.onnx",
        "wastecls calibrate best.pt --data data/ --familiar-share 0.98 --min-confidence 0.4",
    ],
)
def calibrate(settings: CalibrateOptions) -> None:
    """Fit a model's temperature and unfamiliarity threshold on a dataset; write a copy."""
    from waste_cli.calibrate import calibrate as run_calibrate

    result = run_calibrate(settings, _reporter(settings))
    out_console.print(_calibration_table(result.fitted, f"Calibrated {shown(result.source)}"))
    out_console.print(f"Wrote {shown(result.target)}")


@settings_command(
    PseudolabelOptions,
    short={"model": ("--model", "-m"), "out": ("--out", "-o")},
    examples=[
        "wastecls pseudolabel --model runs/train/exp/best.pt --data data/pseudolabel "
        "--threshold 0.9 --out manifest.csv",
        "wastecls pseudolabel -m best.pt --data unknown_litter/ --exclude-class unknown "
        "--copy-to sorted/",
        "wastecls train --data data/ --extra-labels manifest.csv   # the next self-training round",
    ],
)
def pseudolabel(settings: PseudolabelOptions) -> None:
    """Label an unlabelled folder: a manifest and sorted copies; exit 1 if any image failed."""
    from waste_cli.pseudolabel import pseudolabel as run_pseudolabel

    result = run_pseudolabel(settings, _reporter(settings))
    table = Table(title=f"Pseudo-labels from {shown(model_name(result.model))} (threshold "
                  f"{settings.threshold})",
                  show_footer=True)
    total = sum(len(v) for v in result.accepted.values())
    table.add_column("class", footer="total")
    table.add_column("accepted", justify="right", footer=f"{total} of {result.images}")
    table.add_column("mean confidence", justify="right")
    for name, confidences in sorted(result.accepted.items()):
        table.add_row(shown(name), str(len(confidences)),
                      f"{sum(confidences) / len(confidences):.3f}")
    out_console.print(table)
    for item in result.failed:
        err_console.print(f"[yellow]failed:[/] {shown(item.path)}: {shown(item.error)}",
                          soft_wrap=True)
    out_console.print(f"Manifest: {shown(result.manifest)}"
                      + (f"; accepted images copied to {shown(settings.copy_to)}"
                         if settings.copy_to else ""))
    if result.failed:
        raise typer.Exit(1)


@settings_command(
    EvaluateOptions,
    short={"json_output": ("--json",)},
    examples=[
        "wastecls evaluate runs/train/exp/best.pt --data data/ --out runs/eval/exp",
        "wastecls evaluate model.onnx --data data/ --split val --json",
        "wastecls evaluate best.pt --data other_dataset/ --allow-subset",
    ],
)
def evaluate(settings: EvaluateOptions) -> None:
    """Accuracy, balanced accuracy, macro-F1, per-class report and confusion matrix."""
    from waste_cli.evaluate import EVALUATE_FILES
    from waste_cli.evaluate import evaluate as run_evaluate
    from waste_cli.fileio import json_text

    if settings.json_output:
        settings = settings.model_copy(update={"quiet": True})
    result = run_evaluate(settings, _reporter(settings, stderr=True))
    report = result.report
    if settings.json_output:
        print(json_text(report, indent=2))
        return
    summary = Table(title=f"{shown(model_name(result.model))} on {shown(report['data'])} "
                    f"({report['images']} images, {result.backend})")
    for column in ("accuracy", "balanced acc", "macro-F1", f"top-{report['top_k']} acc"):
        summary.add_column(column, justify="right")
    summary.add_row(*(f"{report[k]:.2%}" for k in (
        "accuracy", "balanced_accuracy", "macro_f1", f"top{report['top_k']}_accuracy")))
    per_class = Table(title="Per class")
    for column in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for row in report["per_class"]:
        per_class.add_row(shown(row["class"]), f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                          f"{row['f1']:.3f}", str(row["support"]))
    matrix = Table(title="Confusion matrix (rows: true, columns: predicted)")
    matrix.add_column("")
    for name in report["classes"]:
        matrix.add_column(shown(name[:10]), justify="right")
    for name, counts in zip(report["classes"], report["confusion_matrix"], strict=True):
        matrix.add_row(shown(name), *(f"[bold]{c}[/]" if c else "·" for c in counts))
    for table in (summary, per_class, matrix):
        out_console.print(table)
    pairs = ", ".join(f"{shown(p['true'])} -> {shown(p['predicted'])} ({p['count']})"
                      for p in report["most_confused"])
    out_console.print(f"Most confused: {pairs or 'none'}")
    calibration, selective = report["calibration"], report["selective"]
    before = report["uncalibrated"]["ece"]
    out_console.print(f"Confidence: ECE {calibration['ece']:.1%} (uncalibrated {before:.1%}, "
                      f"temperature {report['temperature']:.3f}), NLL {calibration['nll']:.3f}, "
                      f"Brier {calibration['brier']:.3f}; accuracy on the 90% most confident "
                      f"{selective['accuracy_at_90_coverage']:.2%} (AURC "
                      f"{selective['aurc']:.3f})")
    flags = report["flags"]
    rest = flags["accuracy_unflagged"]
    out_console.print(f"Flagged: {flags['flagged']:.1%} of the images ({flags['unfamiliar']} "
                      f"unfamiliar, {flags['low_confidence']} low-confidence)"
                      + (f"; accuracy {rest:.2%} on the others" if rest == rest else ""))
    if "unfamiliar" in report:
        other = report["unfamiliar"]
        out_console.print(f"Unfamiliar photos ({other['images']} in {shown(other['folder'])}): "
                          f"{other['flagged']:.1%} flagged, AUROC {other['auroc']:.3f}")
    out_console.print(result.speed.summary())
    if result.out:
        out_console.print(f"Wrote report.json, per_class.csv, predictions.csv and "
                          f"{', '.join(n for n in EVALUATE_FILES if n.endswith('.png'))} to "
                          f"{shown(result.out)}")


@settings_command(
    PredictOptions,
    short={"model": ("--model", "-m")},
    examples=[
        "wastecls predict img.jpg",
        "wastecls predict photos/ 'more/**/*.png' --top-k 3 --format csv --output preds.csv",
        "wastecls predict --model model.onnx litter/ --exclude-class unknown --tta",
        "wastecls predict --boxes detections.json --images photos/ --format json "
        "--output labelled.json --save-images checked/",
        "wastecls predict --boxes runs/detect/predict/labels --images photos/ --min-score 0.3",
    ],
)
def predict(settings: PredictOptions) -> None:
    """Classify images, folders and globs, or a detector's boxes; exit 1 if any input failed."""
    if settings.boxes is not None:
        _predict_boxes(settings)
        return
    from waste_cli.predict import predict as run_predict

    result = run_predict(settings, sys.stdout, _reporter(settings, stderr=True))
    for item in result.failed:
        err_console.print(f"[yellow]failed:[/] {shown(item.path)}: {shown(item.error)}",
                          soft_wrap=True)
    if not settings.quiet:
        err_console.print(f"{_count(result.predicted, 'image')} predicted, "
                          f"{len(result.failed)} failed{_flagged(result.flags)} "
                          f"({shown(model_name(result.model))}, {result.backend})"
                          + (f"; results in {shown(settings.output)}" if settings.output else ""))
        err_console.print(result.speed.summary())
    if result.failed:
        raise typer.Exit(1)


def _flagged(flags: dict[str, int]) -> str:
    """`, 3 flagged (2 unfamiliar, 1 low-confidence)`, or nothing when none was."""
    total = sum(flags.values())
    if not total:
        return ""
    return f", {total} flagged ({', '.join(f'{n} {flag}' for flag, n in sorted(flags.items()))})"


def _predict_boxes(settings: PredictOptions) -> None:
    from waste_cli.boxes import predict_boxes

    result = predict_boxes(settings, sys.stdout, _reporter(settings, stderr=True))
    for item in result.failed:
        err_console.print(f"[yellow]failed:[/] {shown(item.detection.image)} box "
                          f"{list(item.detection.region.box)}: {shown(item.error)}",
                          soft_wrap=True)
    if not settings.quiet:
        err_console.print(
            f"{_count(result.boxes, 'box', 'boxes')} classified, {len(result.failed)} failed"
            f"{_flagged(result.flags)}, "
            f"{_count(len(result.skipped), 'entry', 'entries')} of {shown(settings.boxes)} "
            f"skipped, {result.below_score} under --min-score "
            f"({shown(model_name(result.model))}, {result.backend})"
            + (f"; results in {shown(settings.output)}" if settings.output else "")
            + (f"; pictures in {shown(settings.save_images)}" if settings.save_images else ""))
        err_console.print(result.speed.summary().replace("per image", "per box"))
    if result.failed or result.skipped:
        raise typer.Exit(1)


@settings_command(
    ExportOptions,
    short={"model": ("--model", "-m"), "out": ("--out", "-o")},
    examples=[
        "wastecls export --onnx",
        "wastecls export --model runs/train/exp/best.pt --onnx --torchscript --out model.onnx",
        "wastecls export --onnx --int8 --calib-data data/train --out model-int8.onnx",
    ],
)
def export(settings: ExportOptions) -> None:
    """Export a checkpoint to ONNX / TorchScript and verify it gives the same answers."""
    from waste_cli.export import export as run_export

    result = run_export(settings, _reporter(settings))
    if settings.quiet:  # what scripts need: the verified files, one per line
        for path in result.files.values():
            out_console.print(str(path), soft_wrap=True, highlight=False)
        return
    table = Table(title=f"Exported {shown(model_name(result.model))}")
    for column in ("format", "file", "MB", "max |diff|", "top-1 agree", "acc (pt -> export)"):
        table.add_column(column, justify="left" if column in ("format", "file") else "right",
                         overflow="fold")
    for name, path in result.files.items():
        check = result.verifications.get(name)
        accuracy = "-"
        if check and check.accuracy_reference is not None:
            accuracy = f"{check.accuracy_reference:.1%} -> {check.accuracy_export:.1%}"
        table.add_row(name, shown(path), f"{path.stat().st_size / 2**20:.1f}",
                      f"{check.max_abs_diff:.1e}" if check else "not verified",
                      f"{check.top1_agreement:.1%}" if check else "-", accuracy)
    out_console.print(table)


def main() -> None:
    """Console-script entry point."""
    app()
