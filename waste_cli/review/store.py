"""review's decisions in SQLite: each committed (WAL, synchronous FULL) before the page shows
the next item, so a killed server, a crash or two tabs at once lose nothing.

`decisions` holds the current decision per item; `history` every decision and undo in order
(what happened, for anyone who asks later).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from waste_cli.core.errors import DataError

__all__ = ["ACTIONS", "DB_FILES", "DB_NAME", "Decision", "DecisionStore"]

ACTIONS = ("label", "skip", "drop")
DB_NAME = "review.sqlite"  # the default decisions file, inside or beside the source
DB_FILES = (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm")  # with SQLite's own while it is open
SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    item TEXT PRIMARY KEY,
    action TEXT NOT NULL CHECK (action IN ('label', 'skip', 'drop')),
    label TEXT NOT NULL DEFAULT '',
    given TEXT NOT NULL DEFAULT '',
    decided_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item TEXT NOT NULL,
    action TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL
);
"""

Decision = dict[str, Any]  # item, action, label, given, decided_at


class DecisionStore:
    """One SQLite file; safe to share between the server's threads (one lock) and with other
    processes on the same file (SQLite's own locking, a busy timeout)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, timeout=10, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise DataError(f"Cannot use {path} as review's decisions file: {exc}. Give "
                            "another --db, or move that file away.") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def decide(self, item: str, action: str, label: str = "", given: str = "") -> None:
        """Record (replace) the decision on `item`; returns once it is on disk."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO decisions (item, action, label, given, decided_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (item) DO UPDATE SET "
                    "action = excluded.action, label = excluded.label, "
                    "decided_at = excluded.decided_at", (item, action, label, given, now))
                self._db.execute("INSERT INTO history (item, action, label, at) "
                                 "VALUES (?, ?, ?, ?)", (item, action, label, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def undo(self, item: str) -> bool:
        """Forget the decision on `item`; False when there was none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._db.execute("DELETE FROM decisions WHERE item = ?", (item,)).rowcount
                if gone:
                    self._db.execute("INSERT INTO history (item, action, at) VALUES (?, ?, ?)",
                                     (item, "undo", time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return bool(gone)

    def decided(self) -> dict[str, Decision]:
        """Every current decision by item."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT item, action, label, given, decided_at FROM decisions")
            names = [c[0] for c in cursor.description]
            return {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}
