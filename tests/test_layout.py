"""The house keeps its shape: imports run down the floors, commands sit apart from the
libraries they drive, no two modules have names that differ only by a suffix, package data
holds no code. Read from the source with ast: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "waste_cli"
# Each package may import only those below it (its own modules aside). Top to bottom.
FLOORS = ["cli", "review", "serve", "train", "infer", "export", "confidence", "data", "options",
          "model", "core"]
ALLOWED = {
    "cli": set(FLOORS[1:]),
    "review": {"infer", "export", "confidence", "data", "options", "model", "core"},
    "serve": {"infer", "export", "confidence", "data", "options", "model", "core"},
    "train": {"confidence", "data", "options", "model", "core"},  # not infer/export: no use
    "infer": {"export", "confidence", "data", "options", "model", "core"},
    "export": {"confidence", "data", "options", "model", "core"},
    "confidence": {"data", "options", "model", "core"},
    "data": {"options", "model", "core"},
    "options": {"model", "core"},
    "model": {"core"},
    "core": set(),
}
# One module per command: only the CLI imports them.
COMMANDS = {"data.prepare", "train.run", "infer.predict", "infer.boxes", "infer.evaluate",
            "infer.pseudolabel", "export.command", "confidence.command", "review.audit",
            "review.command", "serve.command"}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
            or "__init__": p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Modules of the package that `path` imports, at any depth (function-level too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("waste_cli."):
            found.add(node.module.removeprefix("waste_cli."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("waste_cli.") for a in node.names
                      if a.name.startswith("waste_cli.")}
    return found


def test_imports_run_down_the_floors():
    wrong = []
    for name, path in _modules().items():
        floor = name.split(".")[0]
        if floor not in ALLOWED:
            continue  # __init__, __main__
        for target in _imports(path):
            other = target.split(".")[0]
            if other != floor and other not in ALLOWED[floor]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports running up or across floors:\n" + "\n".join(wrong)


def test_only_the_cli_imports_commands():
    wrong = [f"{name} -> {target}" for name, path in _modules().items()
             if not name.startswith("cli") for target in _imports(path) & COMMANDS]
    assert not wrong, wrong
    assert all(name in _modules() for name in COMMANDS)


def test_no_import_cycles():
    graph = {name: _imports(path) & set(_modules()) for name, path in _modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, " -> ".join([*trail, nxt])
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_two_names_differ_only_by_a_suffix():
    names = {p.stem for p in PACKAGE.rglob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("_")}
    clashes = sorted((a, b) for a in names for b in names
                     if a != b and b.startswith(a) and len(b) - len(a) <= 3)
    assert not clashes, clashes


def test_package_data_holds_no_code():
    assets = PACKAGE / "assets"
    assert (assets / "models").is_dir() and (assets / "sample").is_dir()
    assert not list(assets.rglob("*.py"))
    stray = [p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in {".py", ".pyc"}
             and assets not in p.parents and "__pycache__" not in p.parts]
    assert not stray, stray
