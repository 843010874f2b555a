"""One SQLite connection per thread to one database file, shared by the request log's
SQLite sink and the label store: WAL mode (readers never block the writer), a busy timeout
(writers in other processes wait for the lock instead of failing) and autocommit, so each
caller opens its own transactions. sqlite3 connections must not be shared across threads
while a transaction is open, hence one per thread; `close` closes every thread's."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path


class ThreadConnections:
    """Per-thread connections to `path`, each set up with `pragmas` after the busy timeout,
    then with `setup` (if given)."""

    def __init__(
        self,
        path: str | Path,
        *,
        timeout: float = 30.0,
        pragmas: Sequence[str] = (),
        setup: Callable[[sqlite3.Connection], None] | None = None,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.pragmas = tuple(pragmas)
        self.setup = setup
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # WAL is a property of the database file: set once, by the first connection. A
        # read-only or network file system refuses it; the log still works without it.
        with contextlib.suppress(sqlite3.OperationalError):
            self.get().execute("PRAGMA journal_mode=WAL")

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            for pragma in self.pragmas:
                conn.execute(f"PRAGMA {pragma}")
            if self.setup is not None:
                self.setup(conn)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every thread's connection; a later `get` opens a new one."""
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()
