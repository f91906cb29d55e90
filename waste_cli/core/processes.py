"""Child processes that never outlive the command: each one asks the kernel to kill it when its
parent dies (Linux's PR_SET_PDEATHSIG), so a `kill -9` of wastecls leaves no survivors; and
that a Ctrl-C while they are being forked still stops the command."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["die_with_parent", "interrupts_held"]

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


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, then raise it: for work that must not be cut in two
    (an epoch's metrics.csv and last.pt), and while worker processes are forked, where a
    KeyboardInterrupt raised inside the standard library's fork handlers is printed as
    "Exception ignored" and dropped, and the command would run on. Children forked inside the
    block inherit the holding handler; their initializer sets their own."""
    if threading.current_thread() is not threading.main_thread():  # signals are the main's
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, _: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
