"""Names from data become path components only through `safe_name`: one rule, one function.

Class names, category names and file names come from strangers. A name that is not exactly
one safe path component is refused (UnsafeNameError, exit 2), naming where it came from.
"""

from __future__ import annotations

import re
import unicodedata

from waste_cli.core.errors import UnsafeNameError

__all__ = ["NAME_MAX", "name_problem", "safe_name"]

NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems


_UNSAFE_IN_NAME = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be one path component wastecls writes, or None when it can."""
    if not name.strip():
        return "it is empty"
    if name in (".", ".."):
        return "it names a folder itself"
    if found := _UNSAFE_IN_NAME.search(name):
        return f"it contains {found.group()!r} (a path separator or a control character)"
    if name.startswith("."):
        return "it starts with a dot (a hidden name, which is never data)"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"it is longer than {NAME_MAX} bytes"
    return None


def safe_name(name: str, where: str) -> str:
    """`name`, NFC-normalised (the same name typed on macOS and Linux is one name), when it may
    be one path component; else an UnsafeNameError naming `where` it came from. Every class,
    category, map target and file name from data passes here before it becomes a path."""
    name = unicodedata.normalize("NFC", str(name))
    problem = name_problem(name)
    if problem is not None:
        raise UnsafeNameError(
            f"The name {name!r} ({where}) cannot be a folder or file name: {problem}. Rename "
            "it at its source, or map it to another name with --map."
        )
    return name
