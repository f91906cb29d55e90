"""Class mapping: rename, merge or drop source class names (folder names or COCO categories)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from waste_cli.core.assets import asset_path
from waste_cli.core.errors import DataError
from waste_cli.core.formats import read_structured
from waste_cli.core.names import safe_name

__all__ = ["IGNORE", "ClassMap", "builtin_taxonomy", "choose_class_map", "load_class_map"]

IGNORE = "ignore"
TAXONOMIES = {"detect-waste": ("detect-waste.yaml", "unknown")}


@dataclass(frozen=True)
class ClassMap:
    """Maps source names (case-insensitively) to target classes; None means 'drop'.

    Names the map does not list keep their own name, unless `default` is set (detect-waste maps
    every unlisted TACO category to 'unknown', as the original project did).
    """

    targets: dict[str, str | None] = field(default_factory=dict)
    default: str | None = None

    def __call__(self, name: str) -> str | None:
        key = unicodedata.normalize("NFC", name).strip().casefold()
        if key in self.targets:
            return self.targets[key]
        return self.default if self.default is not None else name

    def target(self, name: str, where: str) -> str | None:
        """The class `name` becomes, checked to be a safe folder name (see
        `core.names.safe_name`; `where` says where the name came from), or None: dropped."""
        found = self(name)
        return None if found is None else safe_name(found, where)


def _from_mapping(data: object, origin: str, default: str | None = None) -> ClassMap:
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError(
            f"Class map {origin} must map each target class to a list of source names, e.g.\n"
            "  paper: [cardboard, paper]\n  ignore: [rubbish]"
        )
    targets: dict[str, str | None] = {}
    for target, names in data.items():
        value = None if target == IGNORE else safe_name(str(target),
                                                        f"a target class of {origin}")
        for name in names:
            key = unicodedata.normalize("NFC", str(name)).strip().casefold()
            if key in targets and targets[key] != value:
                raise DataError(
                    f"Class map {origin} maps '{name}' to both '{targets[key]}' and '{value}'."
                )
            targets[key] = value
    return ClassMap(targets, default)


def builtin_taxonomy(name: str) -> ClassMap:
    """A mapping shipped with wastecls (see TAXONOMIES)."""
    if name not in TAXONOMIES:
        raise DataError(f"Unknown taxonomy '{name}'. Built in: {', '.join(TAXONOMIES)}.")
    filename, default = TAXONOMIES[name]
    text = asset_path(filename).read_text(encoding="utf-8")
    return _from_mapping(yaml.safe_load(text), f"'{name}'", default)


def load_class_map(path: Path) -> ClassMap:
    """Read a YAML or JSON file of `target: [source names]`; the target `ignore` drops them."""
    try:
        data = read_structured(path, other="yaml")
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read class map {path}: {exc}") from exc
    return _from_mapping(data, str(path))


def choose_class_map(map_file: Path | None, taxonomy: str | None) -> ClassMap:
    """--map's file, else --taxonomy's built-in mapping, else names kept as they are."""
    if map_file is not None:
        return load_class_map(map_file)
    if taxonomy is not None:
        return builtin_taxonomy(taxonomy)
    return ClassMap()
