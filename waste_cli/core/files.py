"""Safe writes: atomic files, temporaries that a killed run leaves behind cleaned up by the next
one, and the one rule for what a command may write over (never its inputs).

Every temporary is named `.NAME.wastecls-PID-TAG` beside its final NAME, so it never carries a
final name, and the next write of NAME removes those whose process PID no longer runs.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from waste_cli.core.errors import ConfigError, WasteclsError
from waste_cli.core.formats import json_text
from waste_cli.core.names import NAME_MAX

__all__ = [
    "OUTPUT_MARKER",
    "atomic_folder",
    "atomic_path",
    "atomic_text",
    "atomic_write_text",
    "check_no_overlap",
    "claim_file",
    "claim_folder",
    "describe_os_error",
    "ensure_file_writable",
    "ensure_writable",
    "file_sha256",
    "hold_lock",
    "is_stream",
    "owned_by",
    "record_written",
    "remove_stale_temporaries",
    "temporary_name",
    "write_error",
    "write_json",
]

def temporary_name(path: Path, tag: str) -> Path:
    """Where this process stages `path` (a file or a folder): hidden, beside it, never final,
    and short enough for any final name (room is left for mkstemp's random part)."""
    suffix = f".wastecls-{os.getpid()}-{tag}"
    base = f".{path.name}"
    room = NAME_MAX - len(suffix.encode()) - 8
    if len(base.encode("utf-8", "surrogateescape")) > room:
        digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:8]
        cut = base.encode("utf-8", "surrogateescape")[:room - 9].decode("utf-8", "ignore")
        base = f"{cut}~{digest}"
    return path.with_name(base + suffix)


def hold_lock(path: Path) -> int:
    """Open `path` (a file or a folder) and hold an exclusive lock on it for as long as the
    returned descriptor is open: the sign that a live process owns this temporary, whatever
    its PID namespace (see `remove_stale_temporaries`)."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _abandoned(path: Path) -> bool:
    """Whether no process holds the lock of temporary `path` (its writer is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: a live writer, here or in another container
    finally:
        os.close(fd)
    return True


_STALE = re.compile(r"\..+\.wastecls-\d+-[\w.]*")


_CLEANED: set[Path] = set()  # folders this process has already cleaned


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries left in `path`'s folder by wastecls runs that are gone (killed):
    those whose lock nobody holds. Each folder is looked at once per process (a command may
    write thousands of files into one)."""
    folder = path.parent.resolve()
    if folder in _CLEANED:
        return
    _CLEANED.add(folder)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if not _STALE.fullmatch(entry.name) or entry.is_symlink() or not _abandoned(entry):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _names_a_descriptor(path: Path) -> bool:
    """Whether `path` leads, through any chain of symlinks, to an open file descriptor
    (/dev/stdout -> /proc/self/fd/1, /dev/fd/N): whatever that descriptor is (a file the
    shell opened with `>`, a pipe), it is written into, never replaced."""
    hop = path
    for _ in range(40):  # the kernel's own limit on a chain of links
        if not hop.is_symlink():
            return False
        try:
            target = Path(os.readlink(hop))
        except OSError:
            return False
        hop = Path(os.path.normpath(hop.parent / target))
        parts = hop.parts
        if (parts[:2] == ("/", "proc") and "fd" in parts[2:4]) or parts[:3] == ("/", "dev", "fd"):
            return True
    return False


def is_stream(path: Path) -> bool:
    """Whether `path` is written as a stream, never replaced: a FIFO, a character device
    (/dev/null, a terminal) or a socket, also behind symlinks (the check follows them, as
    opening does), or a link to an open descriptor such as /dev/stdout."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)
            or _names_a_descriptor(path))


def _umask_mode() -> int:
    """The permissions a plainly created file gets here (0o644 with the usual umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()
_FOLDER_MODE = _FILE_MODE | ((_FILE_MODE & 0o444) >> 2)  # readable -> searchable (0o755)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path` with the
    permissions of a plainly created file (mkstemp's own are owner-only)."""
    if is_stream(path) or (path.exists() and not path.is_file() and not path.is_dir()):
        raise write_error(OSError(errno.EINVAL, "not a regular file (a device or a pipe?)"),
                          path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=temporary_name(path, "").name, dir=path.parent)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held until the rename: this temporary is alive
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename not in (None, tmp, str(path)):
            raise  # about another file (an input being read): not this write's failure
        raise write_error(exc, path) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
        os.close(fd)


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it takes the name `path` (a folder
    there before, which the caller claimed, is replaced whole). A killed run leaves only a
    temporary name, which the next run removes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_name(path, "").name, dir=path.parent))
    lock = hold_lock(tmp)
    old = None
    try:
        yield tmp
        os.chmod(tmp, _FOLDER_MODE)
        if path.exists():
            old = temporary_name(path, "old")
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(exc, path) from None
    finally:
        os.close(lock)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_text(path: Path) -> Iterator[IO[str]]:
    """A UTF-8 text file to write that appears at `path`, complete, when the block ends.

    File names that are not UTF-8 (copied from another system) reach Python as surrogate
    escapes (PEP 383); they are written back as the same bytes, so a listed name is the file's
    own name, as the shell shows it."""
    if is_stream(path):  # a pipe, a device or a descriptor: written into, never replaced
        # Appending: a descriptor the shell opened (`>` or `>>`) keeps its place and contents.
        with open(path, "a", encoding="utf-8", errors="surrogateescape") as handle:
            yield handle
        return
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8",
                                        errors="surrogateescape") as handle:
        yield handle


def atomic_write_text(path: Path, text: str) -> None:
    """Write text (UTF-8) through a temporary file and a rename."""
    with atomic_text(path) as handle:
        handle.write(text)


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented, always-valid JSON (non-finite numbers become null), atomically."""
    atomic_write_text(path, json_text(data, indent=2) + "\n")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _overlap(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are the same file or one holds the other."""
    a, b = a.resolve(), b.resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_no_overlap(outputs: Iterable[tuple[str, Path | None]],
                     inputs: Iterable[tuple[str, Path | None]]) -> None:
    """The one rule for every writing command: no output is, holds or lies inside an input.

    `outputs` and `inputs` are (what it is, path) pairs, e.g. ("--output", FILE) and ("model",
    best.pt); None entries are ignored. Raises ConfigError naming both.
    """
    given = [(what, path) for what, path in inputs if path is not None]
    for out_name, out in outputs:
        if out is None:
            continue
        for in_name, source in given:
            if _overlap(out, source):
                raise ConfigError(
                    f"{out_name} {out} overlaps the {in_name} {source}: wastecls never writes "
                    "over or inside what it reads. Choose another output path.")


def ensure_writable(folder: Path, what: str) -> None:
    """Check before the long work starts that files can be created in `folder` (made if
    missing); raise the same message a failed write would."""
    probe = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=temporary_name(folder / "probe", "").name,
                                     dir=folder)
        os.close(fd)
    except OSError as exc:
        raise write_error(exc, folder, what) from None
    finally:
        if probe is not None:
            Path(probe).unlink(missing_ok=True)


def ensure_file_writable(path: Path, what: str) -> None:
    """`ensure_writable` for an output file: its folder, and no folder of its name in the way."""
    if is_stream(path):
        return
    ensure_writable(path.parent, f"{what} folder")
    if path.is_dir():
        raise write_error(IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)), path, what)


_ADVICE = {
    errno.ENOSPC: "Free some space or write elsewhere.",
    errno.EDQUOT: "Free some space or write elsewhere.",
    errno.EFBIG: "The file system refused a file this large; write elsewhere.",
    errno.EROFS: "The file system is read-only; write elsewhere.",
    errno.EACCES: "Check the folder's permissions or write elsewhere.",
    errno.EPERM: "Check the folder's permissions or write elsewhere.",
    errno.ENAMETOOLONG: "Use a shorter path.",
    errno.ENOTDIR: "A part of the path is a file, not a folder; choose another path.",
    errno.EEXIST: "A file of that name is in the way; choose another path.",
    errno.EISDIR: "A folder of that name is in the way; choose another path.",
}


def write_error(exc: OSError, path: Path | str | None, what: str = "output",
                kept: str = "Files completed before this were kept.") -> WasteclsError:
    """A one-paragraph message for a failed write: which file, what happened, what to do, and
    (`kept`) what is left of the work."""
    where = path or exc.filename or "a file"
    advice = _ADVICE.get(exc.errno or 0, "Check the path and the disk, then run again.")
    return WasteclsError(f"Cannot write the {what} {where}: {exc.strerror or exc}. {advice} "
                         f"{kept}")


def describe_os_error(exc: OSError) -> str:
    """A file-system error met anywhere, as one paragraph: the file, the error, what to do."""
    where = " and ".join(str(f) for f in (exc.filename, exc.filename2) if f) or "a file"
    advice = _ADVICE.get(exc.errno or 0, "Check the path and the disk, then run again.")
    return (f"File system error on {where}: {exc.strerror or exc}. {advice} Files completed "
            "before this were kept; nothing half-written carries a final name.")


OUTPUT_MARKER = ".wastecls-output.json"  # which command wrote which entries of a folder


def _claims(folder: Path) -> dict[str, str]:
    """Entry name -> the command that recorded it as its own in `folder`'s marker."""
    try:
        marker = json.loads((folder / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(marker, dict):
        return {}
    entries = marker.get("entries")
    if isinstance(entries, list):  # the first form: one command for every entry
        command = marker.get("command")
        return {str(n): command for n in entries if isinstance(n, str) and isinstance(command, str)}
    if isinstance(entries, dict):
        return {str(n): c for n, c in entries.items() if isinstance(c, str)}
    return {}


def owned_by(folder: Path, command: str) -> set[str]:
    """The entries of `folder` that `command` recorded as its own."""
    return {name for name, owner in _claims(folder).items() if owner == command}


def _record_claims(folder: Path, command: str, entries: Iterable[str]) -> None:
    claims = _claims(folder) | dict.fromkeys(entries, command)
    atomic_write_text(folder / OUTPUT_MARKER,
                      json_text({"entries": dict(sorted(claims.items()))}, indent=2) + "\n")


def claim_file(path: Path, command: str, overwrite: bool, what: str,
               folder: bool = False) -> None:
    """Before `command` writes the file `path`: the one rule for file outputs. A pipe, device
    or descriptor is streamed into; a file that `command` did not write there (a user's own,
    another command's) is refused unless `overwrite`. Once written, `record_written` notes it
    in the folder's marker, so that running the same command again replaces its own file.
    With `folder`, the output is a folder written whole (atomic_folder) under the same rule."""
    if is_stream(path):
        return
    if folder:
        ensure_writable(path.parent, f"{what} folder")
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{what} {path} exists and is not a folder: choose another name.")
    else:
        ensure_file_writable(path, what)
    if path.exists() and not overwrite and path.name not in owned_by(path.parent, command):
        raise ConfigError(f"{what} {path} exists and `wastecls {command}` did not write it. "
                          "Choose another name, or add --overwrite to replace it.")


def record_written(path: Path, command: str) -> None:
    """Note in the folder's marker that `command` wrote the file `path` (see claim_file)."""
    if not is_stream(path) and (path.is_file() or path.is_dir()):
        _record_claims(path.parent, command, [path.name])


def claim_folder(folder: Path, command: str, entries: Iterable[str], overwrite: bool,
                 what: str, shared: Iterable[str] = ()) -> None:
    """Before `command` writes `entries` into `folder`: refuse, unless `overwrite`, a folder
    holding anything that this command did not write there (another run's pictures, a
    training run's files, a user's own), then record the claim in the folder's marker. Names in
    `shared` belong to a command that works on this one's output in its folder (review's
    decisions beside an audit) and are left alone."""
    found = ({e.name for e in folder.iterdir()} - {OUTPUT_MARKER, *shared} if folder.is_dir()
             else set())
    foreign = sorted(found - owned_by(folder, command))
    if foreign and not overwrite:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise ConfigError(f"The {what} {folder} holds files that `wastecls {command}` did not "
                          f"write ({shown}). Choose a new or empty folder, or add --overwrite "
                          "to write into it anyway.")
    ensure_writable(folder, what)
    _record_claims(folder, command, entries)
