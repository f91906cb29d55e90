"""Where a prepared dataset's images come from: one or several sources merged into one class
list, each with its own path, images folder (COCO) and class map.

`wastecls prepare SRC1 SRC2 ... --out OUT` takes the sources from the command line (the shared
--images, --map and --taxonomy apply to each); `--sources FILE` lists them with their own
settings, for when one flag cannot serve all of them:

    sources:
      - path: trashnet/                 # class folders
      - path: taco/annotations.json     # COCO: boxes cropped into classes
        images: taco/images
        taxonomy: detect-waste
        name: taco                      # default: the folder's or the file's name
      - path: garbage-v2/
        map: maps/garbage.yaml

Relative paths in the file are relative to the file's folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waste_cli.core.errors import DataError
from waste_cli.core.formats import read_structured
from waste_cli.core.names import safe_name
from waste_cli.data.taxonomy import ClassMap, choose_class_map

__all__ = ["Origin", "read_origins"]

_KEYS = {"path", "images", "map", "taxonomy", "name"}


@dataclass(frozen=True)
class Origin:
    """One source of a dataset: its name (recorded with every image), what to read, how its
    class names map into the dataset's."""

    name: str
    path: Path
    images: Path | None
    class_map: ClassMap


def _entries(path: Path) -> list[dict[str, Any]]:
    try:
        data = read_structured(path, other="yaml")
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read the sources file {path}: {exc}") from None
    entries = data.get("sources") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries or not all(
            isinstance(e, dict) and isinstance(e.get("path"), str) for e in entries):
        raise DataError(f"The sources file {path} must hold a list `sources:` of entries, each "
                        "with a `path` (and optionally images, map, taxonomy, name).")
    for entry in entries:
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise DataError(f"The sources file {path} has unknown keys {', '.join(unknown)} in "
                            f"the entry of {entry['path']}; allowed: {', '.join(sorted(_KEYS))}.")
    return entries


def read_origins(paths: list[Path], images: Path | None, class_map: ClassMap,
                 sources_file: Path | None) -> list[Origin]:
    """The sources of one dataset: `paths` (from the command line, with the shared `images`
    and `class_map`), then those of `sources_file`. Names are unique and safe as file names."""
    found: list[tuple[str | None, Path, Path | None, ClassMap]] = [
        (None, path, images, class_map) for path in paths]
    if sources_file is not None:
        base = sources_file.parent
        for entry in _entries(sources_file):
            own = entry.get("map"), entry.get("taxonomy")
            entry_map = (choose_class_map(base / own[0] if own[0] else None, own[1])
                         if any(own) else class_map)
            found.append((entry.get("name"), base / entry["path"],
                          base / entry["images"] if entry.get("images") else None, entry_map))
    origins: list[Origin] = []
    taken: set[str] = set()
    for name, path, own_images, own_map in found:
        default = path.stem if path.suffix.lower() == ".json" else path.resolve().name
        base_name = safe_name(str(name) if name else (default or "source"),
                              f"the name of source {path}")
        unique, counter = base_name, 1
        while unique in taken:
            counter += 1
            unique = f"{base_name}-{counter}"
        taken.add(unique)
        origins.append(Origin(unique, path, own_images, own_map))
    return origins
