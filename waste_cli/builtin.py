"""The waste classifier that ships inside the package, addressed by its name.

Two files make it: the ONNX model that predict and evaluate run, and a wastecls checkpoint
(fp16 weights) that `train --weights` starts from and `export` converts. Wherever a model or
weights file is asked for, the name `trashnet-lite0` stands for the right one of the two.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["BUILTIN_MODEL", "builtin_file", "is_builtin", "model_name", "named_file"]

BUILTIN_MODEL = "trashnet-lite0"


def builtin_file(suffix: str) -> Path | None:
    """The built-in model's `.onnx` or `.pt` file, if this installation has it."""
    path = Path(str(resources.files("waste_cli").joinpath(f"models/{BUILTIN_MODEL}{suffix}")))
    return path if path.is_file() else None


def is_builtin(path: Path) -> bool:
    """Whether `path` is one of the built-in model's files."""
    return path.parent.name == "models" and path.stem == BUILTIN_MODEL and any(
        path == builtin_file(suffix) for suffix in (".onnx", ".pt"))


def named_file(path: Path | None, suffix: str) -> Path | None:
    """`path`, or the built-in model's `suffix` file when `path` is its name and no such file
    exists here (a local file of that name wins)."""
    if path is None or str(path) != BUILTIN_MODEL or path.exists():
        return path
    found = builtin_file(suffix)
    if found is None:
        raise ValueError(f"this installation has no built-in model file {BUILTIN_MODEL}{suffix}")
    return found


def model_name(path: Path) -> str:
    """How a model file is named to the user: the built-in model by its name, others by path."""
    return f"built-in {BUILTIN_MODEL}" if is_builtin(path) else str(path)
