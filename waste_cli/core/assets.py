"""The package's data files (waste_cli/assets/: the built-in model, the sample photos, the
taxonomy YAML), addressed in one place. No code lives beside them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["asset_path"]


def asset_path(relative: str) -> Path:
    """The installed path of `relative` under waste_cli/assets/ (it may not exist)."""
    return Path(str(resources.files("waste_cli").joinpath("assets", *relative.split("/"))))
