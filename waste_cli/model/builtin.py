"""The waste classifier that ships inside the package, addressed by its name, and the model a
command uses when none is given.

Two files make it (waste_cli/assets/models/): the ONNX model that predict and evaluate run, and
a wastecls checkpoint (fp16 weights) that `train --weights` starts from and `export` converts.
Wherever a model or weights file is asked for, the name `waste-lite0` stands for the right one
of the two. `trashnet-lite0`, the name of the six-class TrashNet model it replaced, is kept as
an alias so that commands and configs written for it keep working (they now get ten classes).
"""

from __future__ import annotations

from pathlib import Path

from waste_cli.core.assets import asset_path
from waste_cli.core.console import Reporter
from waste_cli.core.errors import ModelError
from waste_cli.model.backends import OnnxRunner, is_openvino

__all__ = ["BUILTIN_ALIASES", "BUILTIN_MODEL", "builtin_file", "find_model", "is_builtin",
           "model_name", "named_file"]

BUILTIN_MODEL = "waste-lite0"
BUILTIN_ALIASES = ("trashnet-lite0",)  # earlier names of the built-in model


def builtin_file(suffix: str) -> Path | None:
    """The built-in model's `.onnx` or `.pt` file, if this installation has it."""
    path = asset_path(f"models/{BUILTIN_MODEL}{suffix}")
    return path if path.is_file() else None


def is_builtin(path: Path) -> bool:
    """Whether `path` is one of the built-in model's files."""
    return path.parent.name == "models" and path.stem == BUILTIN_MODEL and any(
        path == builtin_file(suffix) for suffix in (".onnx", ".pt"))


def named_file(path: Path | None, suffix: str) -> Path | None:
    """`path`, or the built-in model's `suffix` file when `path` is its name and no such file
    exists here (a local file of that name wins)."""
    if path is None or str(path) not in (BUILTIN_MODEL, *BUILTIN_ALIASES) or path.exists():
        return path
    found = builtin_file(suffix)
    if found is None:
        raise ValueError(f"this installation has no built-in model file {BUILTIN_MODEL}{suffix}")
    return found


def model_name(path: Path) -> str:
    """How a model file is named to the user: the built-in model by its name, others by path."""
    return f"built-in {BUILTIN_MODEL}" if is_builtin(path) else str(path)


def find_model(model: Path | None, reporter: Reporter, kind: str = ".onnx") -> Path:
    """The model to use: the one given, else the newest runs/train/*/best.pt here, else the
    built-in one's `kind` file (.onnx to run it, .pt where a checkpoint is needed)."""
    if model is not None:
        if not model.is_file() and not (model.is_dir() and is_openvino(model)):
            what = "is a folder" if model.is_dir() else "does not exist"
            raise ModelError(f"Model {model} {what}. Give a best.pt from `wastecls train`, or an "
                             ".onnx or .openvino from `wastecls export`.")
        return model
    candidates = sorted(Path("runs/train").glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    builtin = builtin_file(kind)
    if not candidates and builtin is not None:
        classes = OnnxRunner(builtin_file(".onnx") or builtin).classes
        reporter.info(f"model: built-in {BUILTIN_MODEL} ({len(classes)} classes: "
                      f"{', '.join(classes)}); give --model to use your own")
        return builtin
    if not candidates:
        raise ModelError(
            "No model given and no runs/train/*/best.pt under the current folder. Pass "
            "--model FILE (a best.pt or an exported .onnx) or set WASTECLS_MODEL."
        )
    reporter.info(f"using the newest trained model: {candidates[-1]}")
    return candidates[-1]
