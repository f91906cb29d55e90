"""Child processes that never outlive the command: each one asks the kernel to kill it when its
parent dies (Linux's PR_SET_PDEATHSIG), so a `kill -9` of wastecls leaves no survivors."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def die_with_parent(parent: int | None = None) -> None:
    """Have this process killed when its parent process dies; a no-op outside Linux.

    `parent` is the pid the caller expects as parent: if that one is already gone (it died
    before this call), the process exits at once instead of running on as an orphan.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl (an unusual libc): nothing to arm
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)
