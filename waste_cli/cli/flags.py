"""Flags generated from the options models: types shown as users read them, help panels.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from waste_cli.cli.sources import ENV_PREFIX

__all__ = ["PANELS", "ConfigOption"]

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


class Command(_FlagsWithoutType, typer.core.TyperCommand):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """With a config file (--config or WASTECLS_CONFIG), a required argument may come from
        it (`prepare --config OUT/config.yaml` repeats a run): Click does not insist on it
        then, and the options model says what is still missing."""
        configured = os.environ.get(f"{ENV_PREFIX}CONFIG") or any(
            a in ("--config", "-c") or a.startswith("--config=") for a in args)
        arguments = [p for p in self.params if p.param_type_name == "argument" and p.required]
        if not configured:
            return super().parse_args(ctx, args)
        for param in arguments:
            param.required = False
        try:
            return super().parse_args(ctx, args)
        finally:
            for param in arguments:
                param.required = True


class Group(_FlagsWithoutType, typer.core.TyperGroup):
    pass


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML/YAML config file (flags and WASTECLS_* win).",
                 show_default=False),
]


def help_text(info: FieldInfo) -> str:
    """The field's description and its default (flags themselves default to "not given")."""
    text = info.description or ""
    if info.is_required():
        text += " \\[required]"
    if not any(info.default is v for v in (PydanticUndefined, None, False)):
        text += f" \\[default: {info.default}]"
    return text


def plain_type(annotation: Any) -> Any:
    """The type Typer parses a field as: `X | None` -> X (Literal fields list their values in
    --help); a union such as `int | Literal["auto"]`, which Typer cannot parse, -> str.
    Pydantic validates the value afterwards."""
    if get_origin(annotation) is Annotated:  # a validated type: Typer parses its base
        annotation = get_args(annotation)[0]
    if get_origin(annotation) not in (Union, UnionType):
        return annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    return args[0] if len(args) == 1 else str


def type_metavar(annotation: Any) -> str | None:
    """`<int|auto>` for a number-or-word union; None lets Typer choose."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) not in (Union, UnionType) or plain_type(annotation) is not str:
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
                          "freeze_backbone", "freeze_epochs", "freeze_layers", "wise_ft"),
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


def help_panels(fields: list[str]) -> dict[str, str]:
    """The --help panel of each of a command's fields."""
    panel_of = {field: panel for panel, names in PANELS.items() for field in names}
    sizes = {panel: sum(panel_of.get(f) == panel for f in fields) for panel in PANELS}
    return {f: panel_of[f] if sizes.get(panel_of.get(f, ""), 0) > 1 else "Options"
            for f in fields}
