"""The `wastecls` command: parse flags, build settings, call the engine, print, exit.

No machine learning happens here, and torch is imported only inside the commands that need it,
so `wastecls --help` is instant. Engine errors (WasteclsError) become a one-paragraph message
and their exit code; flags the user did not type stay None so that environment variables and
the config file can fill them (see cli/sources.py).
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import typer
from rich.table import Table

from waste_cli import __version__
from waste_cli.cli.flags import (
    Command,
    ConfigOption,
    Group,
    help_panels,
    help_text,
    plain_type,
    type_metavar,
)
from waste_cli.cli.render import (
    READER_GONE,
    calibration_table,
    counted,
    err_console,
    fail,
    flag_summary,
    out_console,
    reader_gone,
    reporter_for,
)
from waste_cli.cli.sources import load_settings
from waste_cli.core.console import terminal_text as shown
from waste_cli.core.errors import WasteclsError
from waste_cli.core.files import describe_os_error
from waste_cli.model.builtin import model_name
from waste_cli.options import (
    AuditOptions,
    CalibrateOptions,
    EvaluateOptions,
    ExportOptions,
    ModelRunOptions,
    Options,
    PredictOptions,
    PrepareOptions,
    PseudolabelOptions,
    ReviewOptions,
    ServeOptions,
    TrainOptions,
    flag_name,
)

__all__ = [
    "app",
    "audit",
    "calibrate",
    "evaluate",
    "export",
    "main",
    "predict",
    "prepare",
    "pseudolabel",
    "review",
    "serve",
    "settings_command",
    "train",
]

app = typer.Typer(
    name="wastecls",
    cls=Group,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def run_server(app: Any, host: str, port: int) -> None:
    """Serve `app` with uvicorn until Ctrl-C (or SIGTERM), which lets the requests in flight
    finish; then exit 130 as every command does on Ctrl-C. (uvicorn re-raises the signal it
    caught, but asyncio may finish the loop before that becomes an exception: the exit would
    depend on timing.)"""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=10))
    server.run()
    if server.should_exit:
        raise KeyboardInterrupt


def _size(path: Path) -> int:
    """Bytes of a file, or of every file in a folder (an OpenVINO export)."""
    return (sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir()
            else path.stat().st_size)


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
    panels = help_panels(list(cls.model_fields))

    def decorate(body: Callable[[Any], None]) -> Callable[..., None]:
        params = []
        for name in sorted(cls.model_fields, key=lambda n: (n not in arguments, n in shared)):
            info = cls.model_fields[name]
            kind = plain_type(info.annotation)
            metavar = (f"<{get_args(kind)[0].__name__}>..." if get_origin(kind) is list
                       else "" if kind is bool  # no <bool> noise
                       else type_metavar(info.annotation))
            required = info.is_required()
            if name in arguments:  # a required argument cannot come from a config file
                param = typer.Argument(help=info.description, show_default=False,
                                       metavar=name.upper())
            else:
                decls = short.get(name) or (flag_name(name),)
                if kind is bool and "/" not in decls[0]:
                    decls = (f"{decls[0]}/--no-{decls[0][2:]}", *decls[1:])
                param = typer.Option(*decls, help=help_text(info), show_default=False,
                                     rich_help_panel=panels[name],
                                     **({"metavar": metavar} if metavar is not None else {}))
            default = ... if required and name in arguments else None
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=Annotated[plain_type(info.annotation)
                                                                 | None, param]))
        params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=ConfigOption))

        def command(**flags: Any) -> None:
            try:
                options = load_settings(cls, flags, flags.pop("config"))
                body(options)
            except typer.Exit:  # the body's own exit code
                raise
            except WasteclsError as exc:
                fail(str(exc), exc.exit_code)
            except KeyboardInterrupt:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # further Ctrl-C: already ending
                fail("Interrupted. Files completed before this were kept; nothing "
                      "half-written carries a final name.", 130)
            except BrokenPipeError:  # the reader left early (`| head`): stop quietly
                reader_gone()
            except OSError as exc:
                fail(describe_os_error(exc), 1)
            except Exception as exc:  # a bug: still one paragraph, unless asked for more
                if os.environ.get("WASTECLS_DEBUG"):
                    raise
                fail(f"Unexpected error ({type(exc).__name__}: {exc}). This is a bug in "
                      "wastecls; please report it with the command you ran. Set "
                      "WASTECLS_DEBUG=1 to see the traceback.", 1)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__name__, command.__doc__ = body.__name__, body.__doc__
        epilog = "Examples:\n\n" + "\n\n".join(f"  {e}" for e in examples) if examples else None
        app.command(cls=Command, epilog=epilog)(command)
        return body

    return decorate


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
        "wastecls prepare raw/trashnet raw/garbage-v2 --out data/   # merged, split per source",
        "wastecls prepare --sources sources.yaml --out data/",
    ],
)
def prepare(options: PrepareOptions) -> None:
    """Split class-folder datasets, or crop COCO datasets, into train/val/test folders."""
    from waste_cli.data.prepare import prepare as run_prepare

    result = run_prepare(options, reporter_for(options))
    splits = [s for s in ("train", "val", "test", "pseudolabel") if any(result.counts[s].values())]
    table = Table(title=f"Prepared {shown(result.out)}", show_footer=True)
    table.add_column("class", footer="total")
    for split in splits:
        table.add_column(split, justify="right", footer=str(sum(result.counts[split].values())))
    for name in result.classes:
        table.add_row(shown(name), *(str(result.counts[s][name]) for s in splits))
    out_console.print(table)
    if len(result.sources) > 1:  # a merge: where the images came from, split by split
        table = Table(title="Sources", show_footer=True)
        table.add_column("source", footer="total")
        for split in splits:
            table.add_column(split, justify="right",
                             footer=str(sum(result.counts[split].values())))
        for name, per_split in result.sources.items():
            table.add_row(shown(name), *(str(per_split.get(s, 0)) for s in splits))
        out_console.print(table)
    copies = result.copies
    out_console.print(
        f"{len(result.classes)} classes, train imbalance (largest/smallest) "
        f"{result.imbalance:.1f}x, {counted(copies.exact, 'exact duplicate')} and "
        f"{counted(copies.near, 'near-duplicate')} "
        + (f"found ({copies.dropped} dropped)" if options.drop_duplicates else "kept together")
        + f", {len(result.skipped)} skipped (see prepare_report.json)"
        + (f", {counted(len(result.warnings), 'warning')} (above)." if result.warnings else ".")
    )
    if result.relabels is not None:
        changes = result.relabels
        out_console.print(
            f"--relabel {shown(changes['manifest'])}: "
            f"{counted(len(changes['relabelled']), 'photo')} moved to another class, "
            f"{len(changes['dropped'])} dropped"
            + (f", {changes['unmatched']} rows matched no photo of the sources"
               if changes["unmatched"] else "") + " (listed in prepare_report.json).")


@settings_command(
    TrainOptions,
    examples=[
        "wastecls train --data data/   # the recipe: every `auto` is printed and saved",
        "wastecls train --data data/ --weights tf_efficientnet_lite0.in1k.safetensors   # offline",
        "wastecls train --data data/ --weights waste-lite0   # start from the built-in model",
        "wastecls train --data data/ --arch efficientnet-b2 --sampler weighted --device cuda:1",
        "wastecls train --data data/ --arch resnet50 --freeze-backbone --sched exp --lr-decay 0.99",
        "wastecls train --resume runs/train/exp",
        "wastecls train --data data/ --nproc 2   # or: torchrun --nproc-per-node 2 -m waste_cli "
        "train --data data/",
    ],
)
def train(options: TrainOptions) -> None:
    """Fine-tune a timm model on a prepared dataset; writes a run folder with best.pt."""
    from waste_cli.train.distributed import launch_torchrun
    from waste_cli.train.run import train as run_train

    if options.nproc > 1 and "WORLD_SIZE" not in os.environ:
        code = launch_torchrun(options.nproc, sys.argv[1:])
        if code:
            err_console.print(f"[bold red]error:[/] a training process failed (exit {code}); "
                              "torchrun stopped the others. See the messages above.")
        raise typer.Exit(code)
    result = run_train(options, reporter_for(options))
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
        out_console.print(calibration_table(result.calibration, "Calibration (best.pt)"))
    out_console.print(f"{result.seconds:.0f}s. Results in {shown(result.run_dir)}: best.pt, "
                      "last.pt, metrics.csv, curves.png, confusion_matrix.png, summary.json")


@settings_command(
    CalibrateOptions,
    short={"out": ("--out", "-o")},
    examples=[
        "wastecls calibrate runs/train/exp/best.pt --data data/   # -> best.calibrated.pt",
        "wastecls calibrate model.onnx --data data/ --out model.calibrated.onnx",
        "wastecls calibrate best.pt --data data/ --familiar-share 0.98 --min-confidence 0.4",
    ],
)
def calibrate(options: CalibrateOptions) -> None:
    """Fit a model's temperature and unfamiliarity threshold on a dataset; write a copy."""
    from waste_cli.confidence.command import calibrate as run_calibrate

    result = run_calibrate(options, reporter_for(options))
    out_console.print(calibration_table(result.fitted, f"Calibrated {shown(result.source)}"))
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
def pseudolabel(options: PseudolabelOptions) -> None:
    """Label an unlabelled folder: a manifest and sorted copies; exit 1 if any image failed."""
    from waste_cli.infer.pseudolabel import pseudolabel as run_pseudolabel

    result = run_pseudolabel(options, reporter_for(options))
    table = Table(title=f"Pseudo-labels from {shown(model_name(result.model))} (threshold "
                  f"{options.threshold})",
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
        err_console.print(f"[yellow]failed:[/] {shown(item.where)}: {shown(item.error)}",
                          soft_wrap=True)
    out_console.print(f"Manifest: {shown(result.manifest)}"
                      + (f"; accepted images copied to {shown(options.copy_to)}"
                         if options.copy_to else ""))
    if result.failed:
        raise typer.Exit(1)


@settings_command(
    AuditOptions,
    short={"model": ("--model", "-m"), "out": ("--out", "-o")},
    examples=[
        "wastecls audit data/   # likely label errors, copies, outliers -> runs/audit/data",
        "wastecls audit data/ --arch tf_efficientnet_lite0 --weights lite0.safetensors",
        "wastecls review runs/audit/data   # go through them in the browser",
    ],
)
def audit(options: AuditOptions) -> None:
    """Find likely label errors, copies, outliers and bad photos; write a page to look at."""
    from waste_cli.review.audit import ISSUE_KINDS
    from waste_cli.review.audit import audit as run_audit

    result = run_audit(options, reporter_for(options))
    report = result.report
    table = Table(title=f"Audit of {shown(options.root)}: {report['photos']} photos, "
                  f"{len(report['classes'])} classes")
    table.add_column("issue")
    table.add_column("photos", justify="right")
    table.add_column("what to do")
    for kind, count in result.counts.items():
        if count:
            table.add_row(kind, str(count), ISSUE_KINDS[kind])
    if not any(result.counts.values()):
        table.add_row("none", "0", "nothing found")
    out_console.print(table)
    check = report["label_check"]
    out_console.print(f"Features: {shown(report['features']['model'])}; out-of-fold answers "
                      f"agree with {check['out_of_fold_agreement']:.1%} of the labels. "
                      f"{report['seconds']['total']:.0f}s.")
    out_console.print(f"Results in {shown(result.out)}: issues.csv, report.json, index.html")


@settings_command(
    ReviewOptions,
    short={"model": ("--model", "-m")},
    examples=[
        "wastecls review runs/audit/data   # the audit's findings, most uncertain first",
        "wastecls review predictions.csv --order diverse",
        "wastecls review annotations.json --images imgs/ --category 'Unlabeled litter'",
        "wastecls review runs/audit/data --export corrections.csv",
        "wastecls prepare raw/ --out data/ --relabel corrections.csv",
    ],
)
def review(options: ReviewOptions) -> None:
    """Go through photos in a local web page (keys 1-9, Enter, S, D, U); decisions in SQLite."""
    from waste_cli.review.command import export_decisions, open_review, serve

    reporter = reporter_for(options)
    queue, store = open_review(options, reporter)
    try:
        if options.export is not None:
            counts = export_decisions(queue, store, options.export, options.overwrite)
            out_console.print(
                f"Wrote {shown(options.export)}: {counted(counts['relabel'], 'photo')} "
                f"relabelled, {counts['confirm']} confirmed, {counts['drop']} dropped "
                f"(of {len(queue.items)} in the queue; skipped ones are not written).")
            return
        server = serve(options, queue, store)

        decided = sum(1 for i in queue.items if i.key in store.decided())
        err_console.print(f"Reviewing {counted(len(queue.items), 'item')} of {shown(queue.source)}"
                          f" ({decided} decided) at [bold]{shown(server.url)}[/]; decisions go "
                          f"to {shown(store.path)}. Ctrl-C stops.", soft_wrap=True)
        if options.open_browser:
            import webbrowser

            webbrowser.open(server.url)
        run_server(server.app, server.host, server.port)
    finally:
        store.close()


@settings_command(
    ServeOptions,
    short={"top_k": ("--top-k", "-k")},
    examples=[
        "wastecls serve   # the built-in model on http://127.0.0.1:8000/ (docs at /docs)",
        "curl -F file=@photo.jpg -F file=@other.jpg http://127.0.0.1:8000/predict",
        "wastecls serve best.onnx --host 0.0.0.0 --token \"$(openssl rand -hex 16)\"",
    ],
)
def serve(options: ServeOptions) -> None:
    """Serve a model over HTTP: POST /predict, GET /health, GET /model, a page to drop photos."""
    from waste_cli.serve.command import prepare_server

    server, model = prepare_server(options, reporter_for(options))
    err_console.print(f"Serving {shown(model)} at [bold]{shown(server.url)}[/] "
                      f"(POST /predict, GET /health, GET /model, docs at /docs). Ctrl-C stops.",
                      soft_wrap=True)
    run_server(server.app, server.host, server.port)


@settings_command(
    EvaluateOptions,
    short={"json_output": ("--json",)},
    examples=[
        "wastecls evaluate runs/train/exp/best.pt --data data/ --out runs/eval/exp",
        "wastecls evaluate model.onnx --data data/ --split val --json",
        "wastecls evaluate best.pt --data other_dataset/ --allow-subset",
    ],
)
def evaluate(options: EvaluateOptions) -> None:
    """Accuracy, balanced accuracy, macro-F1, per-class report and confusion matrix."""
    from waste_cli.core.formats import json_text
    from waste_cli.infer.evaluate import evaluate as run_evaluate

    if options.json_output:
        options = options.model_copy(update={"quiet": True})
    result = run_evaluate(options, reporter_for(options))
    report = result.report
    if options.json_output:
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
    if "unseen" in report:
        unseen = report["unseen"]
        out_console.print(f"Unseen classes (the model cannot know them): "
                          f"{shown(', '.join(unseen['classes'])) or '-'}, {unseen['images']} "
                          f"images, {unseen['flagged']:.1%} flagged")
    if "per_source" in report:
        out_console.print("Per source: " + ", ".join(
            f"{shown(name)} {row['accuracy']:.2%} of {row['images']}"
            for name, row in report["per_source"].items()))
    if "unfamiliar" in report:
        other = report["unfamiliar"]
        out_console.print(f"Unfamiliar photos ({other['images']} in {shown(other['folder'])}): "
                          f"{other['flagged']:.1%} flagged, AUROC {other['auroc']:.3f}")
    out_console.print(result.speed.summary())
    if result.out:
        out_console.print(f"Wrote {', '.join(result.written)} to {shown(result.out)}")


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
def predict(options: PredictOptions) -> None:
    """Classify images, folders and globs, or a detector's boxes; exit 1 if any input failed."""
    if options.boxes is not None:
        _predict_boxes(options)
        return
    from waste_cli.infer.predict import predict as run_predict

    result = run_predict(options, sys.stdout, reporter_for(options))
    for item in result.failed:
        err_console.print(f"[yellow]failed:[/] {shown(item.where)}: {shown(item.error)}",
                          soft_wrap=True)
    # The final summary, also under -q ("only warnings, errors and the final summary").
    err_console.print(f"{counted(result.predicted, 'image')} predicted, "
                      f"{len(result.failed)} failed{flag_summary(result.flags)} "
                      f"({shown(model_name(result.model))}, {result.backend})"
                      + (f"; results in {shown(options.output)}" if options.output else ""))
    if not options.quiet:
        err_console.print(result.speed.summary())
    if result.failed:
        raise typer.Exit(1)


def _predict_boxes(options: PredictOptions) -> None:
    from waste_cli.infer.boxes import predict_boxes

    result = predict_boxes(options, sys.stdout, reporter_for(options))
    for item in result.failed:
        err_console.print(f"[yellow]failed:[/] {shown(item.detection.image)} box "
                          f"{list(item.detection.region.box)}: {shown(item.error)}",
                          soft_wrap=True)
    err_console.print(  # the final summary, also under -q
        f"{counted(result.boxes, 'box', 'boxes')} classified, {len(result.failed)} failed"
        f"{flag_summary(result.flags)}, "
        f"{counted(len(result.skipped), 'entry', 'entries')} of {shown(options.boxes)} "
        f"skipped, {result.below_score} under --min-score "
        f"({shown(model_name(result.model))}, {result.backend})"
        + (f"; results in {shown(options.output)}" if options.output else "")
        + (f"; pictures in {shown(options.save_images)}" if options.save_images else ""))
    if not options.quiet:
        err_console.print(result.speed.summary().replace("per image", "per box"))
    if result.failed or result.skipped:
        raise typer.Exit(1)


@settings_command(
    ExportOptions,
    short={"model": ("--model", "-m"), "out": ("--out", "-o")},
    examples=[
        "wastecls export --onnx",
        "wastecls export --model runs/train/exp/best.pt --onnx --torchscript   # beside it",
        "wastecls export --onnx --int8 --calib-data data/train --out model-int8.onnx",
    ],
)
def export(options: ExportOptions) -> None:
    """Export a checkpoint to ONNX / TorchScript and verify it gives the same answers."""
    from waste_cli.export.command import export as run_export

    result = run_export(options, reporter_for(options))
    if options.quiet:  # what scripts need: the verified files, one per line
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
        table.add_row(name, shown(path), f"{_size(path) / 2**20:.1f}",
                      f"{check.max_abs_diff:.1e}" if check else "not verified",
                      f"{check.top1_agreement:.1%}" if check else "-", accuracy)
    out_console.print(table)


def main() -> None:
    """Console-script entry point. A reader that left early (`| head`) ends every command,
    --help included, as it ends Unix tools: exit 141 and no message. Click turns a broken pipe
    it meets into exit 1 (and pacifies stdout); output still buffered at the end is flushed
    here, where a broken pipe is caught too."""
    stdout = os.fstat(sys.stdout.fileno())
    try:
        app()
    except SystemExit as done:
        if done.code == 1 and _now_devnull(stdout):  # rich's console met the broken pipe
            raise SystemExit(READER_GONE) from None
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(READER_GONE) from None
        raise


def _now_devnull(before: os.stat_result) -> bool:
    """Whether standard output, `before` something else, was pointed at /dev/null since: what
    rich (and click) do when the reader of a pipe left."""
    now, null = os.fstat(sys.stdout.fileno()), os.stat(os.devnull)
    return (now.st_rdev, now.st_ino) == (null.st_rdev, null.st_ino) and \
        (before.st_rdev, before.st_ino) != (null.st_rdev, null.st_ino)
