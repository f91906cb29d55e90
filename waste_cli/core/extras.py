"""Optional packages a command needs, asked for with one clear message."""

from __future__ import annotations

import importlib.util

from waste_cli.core.errors import ConfigError

__all__ = ["require"]


def require(command: str, extra: str, *modules: str) -> None:
    """Raise a ConfigError naming the extra to install when one of `modules` is missing."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"`wastecls {command}` needs {', '.join(missing)}: pip install "
                          f"'wastecls[{extra}]'.")
