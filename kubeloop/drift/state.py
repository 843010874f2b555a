"""The monitor's persistent state: one SQLite file under the state directory.

Everything a restart must not lose lives here, written in the same transaction as the
event that changed it:

    rows       the buffered events of every open window (per window kind and key)
    windows    per (kind, key): the open window's index, first/last event time, size
    pending    request or response halves of CloudEvents still waiting for their partner
    awaiting   served predictions waiting for a delayed label
    learned    reference predictions learned from served traffic (when the model is absent)
    counters   running totals (events, windows, alerts, labels, ...)
    last_alert when each (key, detector) last alerted (for the cooldown)
    timeline   one compact record per evaluated window and detector (estimated and
               realized performance, data-quality rates, p-values): what reports plot

A key is (model, version, variant), stored as its JSON list. The file uses WAL with
synchronous=NORMAL: a committed transaction survives a crash of the process (what a pod
restart is); only a power loss may drop the last moments.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "drift_state.db"
# 2: `awaiting` is kept in rowid order (oldest first), with no seq column and its index:
# one B-tree fewer per served event. A format-1 file is migrated when opened.
FORMAT_VERSION = 2

Key = tuple[str, str, str]


def key_text(key: Key) -> str:
    return json.dumps(list(key))


def key_of(text: str) -> Key:
    model, version, variant = json.loads(text)
    return (model, version, variant)


@dataclass
class WindowMeta:
    """The open window of one (kind, key): its 0-based index, event-time span and size."""

    kind: str
    key: Key
    index: int = 0
    start: float | None = None
    end: float | None = None
    n: int = 0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, key TEXT NOT NULL,
    t REAL NOT NULL, payload TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS rows_window ON rows (kind, key, seq);
CREATE TABLE IF NOT EXISTS windows (
    kind TEXT NOT NULL, key TEXT NOT NULL, idx INTEGER NOT NULL, start REAL, "end" REAL,
    n INTEGER NOT NULL, PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS pending (
    id TEXT NOT NULL, half TEXT NOT NULL, seq INTEGER NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (id, half));
CREATE INDEX IF NOT EXISTS pending_seq ON pending (seq);
CREATE TABLE IF NOT EXISTS awaiting (
    id TEXT NOT NULL UNIQUE, key TEXT NOT NULL, t REAL NOT NULL, prediction REAL NOT NULL);
CREATE TABLE IF NOT EXISTS learned (
    key TEXT NOT NULL, stratum TEXT NOT NULL, value REAL NOT NULL,
    seq INTEGER PRIMARY KEY AUTOINCREMENT);
CREATE INDEX IF NOT EXISTS learned_key ON learned (key, stratum);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS timeline (
    key TEXT NOT NULL, detector TEXT NOT NULL, idx INTEGER NOT NULL, start REAL NOT NULL,
    "end" REAL NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (key, detector, idx));
CREATE TABLE IF NOT EXISTS last_alert (
    key TEXT NOT NULL, detector TEXT NOT NULL, t REAL NOT NULL, PRIMARY KEY (key, detector));
"""


_ATOMS = frozenset({str, int, bool, type(None)})
_SCALARS = _ATOMS | {float}


def _nones(value: Any) -> int:
    """The None values in `value` when it holds only dicts, lists, tuples, text, ints,
    bools, None and floats (exact types), else -1. (Keys are not looked at: orjson refuses
    keys that are not text.)"""
    kind = type(value)
    if kind is dict:
        return _nones_in(list(value.values()))
    if kind is list or kind is tuple:
        return _nones_in(value)
    if kind is float:
        return 0
    return (1 if value is None else 0) if kind in _ATOMS else -1


def _nones_in(items: list | tuple) -> int:
    if set(map(type, items)) <= _SCALARS:  # the common row: counted in C
        return items.count(None)
    total = 0
    for item in items:
        n = _nones(item)
        if n < 0:
            return -1
        total += n
    return total


def _encode_half(payload: dict) -> str | bytes:
    """A pending half as stored: orjson's bytes (several times faster than json, both
    ways) when they read back exactly as json's text would, else json's text. orjson
    writes NaN and infinities as null where json writes NaN and Infinity: its bytes are
    kept only when they hold exactly one null per None of the payload (a text holding
    "null" also sends it to json), and only for plain types (orjson would also write a
    datetime or a dataclass json refuses; it refuses ints beyond 64 bits json writes)."""
    nones = _nones(payload)
    if nones >= 0:
        import orjson

        try:
            data = orjson.dumps(payload)
        except TypeError:  # orjson.JSONEncodeError
            data = None
        if data is not None and data.count(b"null") == nones:
            return data
    return json.dumps(payload)


class StateStore:
    """Typed access to the state file. Not shared between processes: one monitor owns a
    state directory (a second process opening it waits on the lock, it does not corrupt
    it). Thread-safe through `transaction()`."""

    def __init__(self, state_dir: str | Path):
        self.dir = Path(state_dir).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / STATE_FILE
        self._lock = threading.RLock()
        self._depth = 0
        # Row counts of the capped tables, kept in memory (COUNT(*) scans the table);
        # dropped on rollback and recounted on next use.
        self._sizes: dict[str, int] = {}
        # Counter increments of the open transaction, written once at its commit (a batch
        # of requests bumps the same few counters hundreds of times).
        self._pending_counts: dict[str, float] = defaultdict(float)
        # Bumped on every rollback: in-memory mirrors of stored rows (the open windows'
        # buffered events) compare it with theirs and reload when it moved.
        self.generation = 0
        self._conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA busy_timeout = 30000")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        with self.transaction():
            # executescript would COMMIT the open transaction: run statement by statement.
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            row = self._conn.execute("SELECT value FROM meta WHERE name='format'").fetchone()
            if row is not None and int(row[0]) == 1:
                self._migrate_awaiting()
                row = None
            if row is None:
                self._conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(FORMAT_VERSION),)
                )
            elif int(row[0]) != FORMAT_VERSION:
                raise RuntimeError(
                    f"{self.path} has state format {row[0]}, this kubeloop writes "
                    f"{FORMAT_VERSION}: move the state directory away"
                )

    def _migrate_awaiting(self) -> None:
        """Format 1 -> 2: the awaiting rows, oldest first, into the rowid-ordered table."""
        x = self._conn.execute
        x(
            "CREATE TABLE awaiting_v2 (id TEXT NOT NULL UNIQUE, key TEXT NOT NULL, "
            "t REAL NOT NULL, prediction REAL NOT NULL)"
        )
        x(
            "INSERT INTO awaiting_v2 (id, key, t, prediction) "
            "SELECT id, key, t, prediction FROM awaiting ORDER BY seq, rowid"
        )
        x("DROP TABLE awaiting")
        x("ALTER TABLE awaiting_v2 RENAME TO awaiting")

    # -- transactions ---------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (nested calls join the outer one)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self._sizes.clear()
                self._pending_counts.clear()
                self.generation += 1
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._write_counts()
            except BaseException:
                self._depth = 0
                self._sizes.clear()
                self.generation += 1
                self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            self._conn.execute("COMMIT")

    def _x(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, args)

    # -- meta -----------------------------------------------------------------------------

    def get_meta(self, name: str) -> str | None:
        row = self._x("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        self._x("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    # -- windows --------------------------------------------------------------------------

    def window(self, kind: str, key: Key) -> WindowMeta:
        row = self._x(
            'SELECT idx, start, "end", n FROM windows WHERE kind = ? AND key = ?',
            (kind, key_text(key)),
        ).fetchone()
        if row is None:
            return WindowMeta(kind, key)
        return WindowMeta(kind, key, int(row[0]), row[1], row[2], int(row[3]))

    def save_window(self, meta: WindowMeta) -> None:
        self._x(
            'INSERT OR REPLACE INTO windows (kind, key, idx, start, "end", n) VALUES (?,?,?,?,?,?)',
            (meta.kind, key_text(meta.key), meta.index, meta.start, meta.end, meta.n),
        )

    def windows(self, kind: str | None = None) -> list[WindowMeta]:
        sql = 'SELECT kind, key, idx, start, "end", n FROM windows'
        args: tuple = ()
        if kind is not None:
            sql += " WHERE kind = ?"
            args = (kind,)
        return [
            WindowMeta(r[0], key_of(r[1]), int(r[2]), r[3], r[4], int(r[5]))
            for r in self._x(sql + " ORDER BY kind, key", args).fetchall()
        ]

    def append_rows(self, kind: str, key: Key, rows: Sequence[tuple[float, dict]]) -> None:
        """Buffer rows of an open window: one stored row per call holding all of them (a
        JSON array, encoded once with orjson: NaN and infinities become null), so a batch
        of requests is one insert, not one per event."""
        if rows:
            self.append_payloads(kind, key, float(rows[0][0]), [p for _, p in rows])

    def append_payloads(self, kind: str, key: Key, t: float, payloads: Sequence[dict]) -> None:
        """`append_rows` of payloads whose first event time is `t`."""
        if not payloads:
            return
        import orjson

        self._x(
            "INSERT INTO rows (kind, key, t, payload) VALUES (?, ?, ?, ?)",
            (kind, key_text(key), float(t), orjson.dumps(payloads)),
        )

    def window_rows(self, kind: str, key: Key) -> list[dict]:
        """The buffered rows of an open window, oldest first (a stored row is one payload
        or, since batches are stored whole, a JSON array of them)."""
        import orjson

        out: list[dict] = []
        for (payload,) in self._x(
            "SELECT payload FROM rows WHERE kind = ? AND key = ? ORDER BY seq",
            (kind, key_text(key)),
        ).fetchall():
            value = orjson.loads(payload) if isinstance(payload, bytes) else json.loads(payload)
            if isinstance(value, list):
                out.extend(value)
            else:
                out.append(value)
        return out

    def clear_rows(self, kind: str, key: Key) -> None:
        self._x("DELETE FROM rows WHERE kind = ? AND key = ?", (kind, key_text(key)))

    # -- pending CloudEvent halves -------------------------------------------------------

    def pop_pending(self, event_id: str, half: str) -> dict | None:
        row = self._x(
            "SELECT payload FROM pending WHERE id = ? AND half = ?", (event_id, half)
        ).fetchone()
        if row is None:
            return None
        self._x("DELETE FROM pending WHERE id = ? AND half = ?", (event_id, half))
        self._grow("pending", -1)
        payload = row[0]
        if isinstance(payload, bytes):  # written by orjson (see `_encode_half`)
            import orjson

            return orjson.loads(payload)
        return json.loads(payload)

    def put_pending(self, event_id: str, half: str, payload: dict, max_pending: int) -> int:
        """Keep one half; returns how many of the oldest halves were evicted to stay
        within `max_pending`."""
        seq = self._next_seq("pending")
        cursor = self._x(
            "INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?)",
            (event_id, half, seq, _encode_half(payload)),
        )
        if cursor.rowcount == 1:
            self._grow("pending", 1)
        else:  # the same half again (a retried delivery): keep the newest
            self._x(
                "UPDATE pending SET seq = ?, payload = ? WHERE id = ? AND half = ?",
                (seq, _encode_half(payload), event_id, half),
            )
        return self._evict("pending", max_pending)

    def pending_count(self) -> int:
        return self._size("pending")

    # -- predictions awaiting labels ------------------------------------------------------

    def put_awaiting(
        self, key: Key, rows: Iterable[tuple[str, float, float]], max_rows: int
    ) -> int:
        """Keep (request id, event time, prediction) rows until their label comes; returns
        how many of the oldest were evicted to stay within `max_rows`."""
        rows = list(rows)
        return self.put_awaiting_columns(
            key,
            [r[0] for r in rows],
            [float(r[1]) for r in rows],
            [float(r[2]) for r in rows],
            max_rows,
        )

    def put_awaiting_columns(
        self,
        key: Key,
        ids: Sequence[str],
        times: Sequence[float],
        predictions: Sequence[float],
        max_rows: int,
    ) -> int:
        """`put_awaiting` of rows given as three columns of equal length (times and
        predictions already floats): no tuple is built per row in Python."""
        k = key_text(key)
        if len(set(ids)) != len(ids):
            # A request id seen again replaces its earlier prediction (also within one
            # batch), and counts as the newest: it is deleted and inserted again (rowid
            # order is age).
            last = {rid: (rid, t, p) for rid, t, p in zip(ids, times, predictions, strict=True)}
            ids = list(last)
            times = [last[i][1] for i in ids]
            predictions = [last[i][2] for i in ids]
        insert = "INSERT INTO awaiting (id, key, t, prediction) VALUES (?, ?, ?, ?)"
        # Request ids are new in the common batch: insert at once, and only when one is
        # there already (the UNIQUE id refuses it) undo the partial insert and replace.
        self._x("SAVEPOINT awaiting_batch")
        try:
            self._conn.executemany(insert, zip(ids, itertools.repeat(k), times, predictions))
        except sqlite3.IntegrityError:
            self._x("ROLLBACK TO awaiting_batch")
            self._x("RELEASE awaiting_batch")
            self._pop_ids("awaiting", list(ids))
            self._conn.executemany(insert, zip(ids, itertools.repeat(k), times, predictions))
        else:
            self._x("RELEASE awaiting_batch")
        self._grow("awaiting", len(ids))
        return self._evict("awaiting", max_rows)

    def pop_awaiting(self, ids: Sequence[str]) -> list[tuple[str, Key, float, float]]:
        """(id, key, event time, prediction) of those `ids` that await a label; removed."""
        rows = self._pop_ids("awaiting", ids)
        return [(r[0], key_of(r[1]), float(r[2]), float(r[3])) for r in rows]

    def _pop_ids(self, table: str, ids: Sequence[str]) -> list[tuple]:
        found: list[tuple] = []
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._x(
                f"SELECT id, key, t, prediction FROM {table} WHERE id IN ({marks})", chunk
            ).fetchall()
            if rows:
                self._x(f"DELETE FROM {table} WHERE id IN ({marks})", chunk)
                self._grow(table, -len(rows))
            found.extend(rows)
        return found

    def awaiting_count(self) -> int:
        return self._size("awaiting")

    def _size(self, table: str) -> int:
        if table not in self._sizes:
            self._sizes[table] = int(self._x(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        return self._sizes[table]

    def _grow(self, table: str, by: int) -> None:
        if table in self._sizes:
            self._sizes[table] += by

    def _next_seq(self, table: str) -> int:
        row = self._x(f"SELECT MAX(seq) FROM {table}").fetchone()
        return int(row[0] or 0) + 1

    def _evict(self, table: str, limit: int) -> int:
        extra = self._size(table) - int(limit)
        if extra <= 0:
            return 0
        # pending orders its halves by seq; awaiting is in rowid order (see FORMAT_VERSION).
        order = "seq" if table == "pending" else "rowid"
        self._x(
            f"DELETE FROM {table} WHERE rowid IN "
            f"(SELECT rowid FROM {table} ORDER BY {order} LIMIT ?)",
            (extra,),
        )
        self._grow(table, -extra)
        return extra

    # -- learned reference predictions --------------------------------------------------

    def learned(self, key: Key) -> list[tuple[str, float]]:
        return [
            (str(r[0]), float(r[1]))
            for r in self._x(
                "SELECT stratum, value FROM learned WHERE key = ? ORDER BY seq", (key_text(key),)
            ).fetchall()
        ]

    def add_learned(self, key: Key, values: Iterable[tuple[str, float]]) -> None:
        k = key_text(key)
        self._conn.executemany(
            "INSERT INTO learned (key, stratum, value) VALUES (?, ?, ?)",
            ((k, s, float(v)) for s, v in values),
        )

    # -- counters and alert times -------------------------------------------------------

    def incr(self, name: str, by: float = 1) -> None:
        """Add `by` to a counter; written with the transaction's commit (outside one, at
        once)."""
        with self._lock:
            self._pending_counts[name] += by
            if not self._depth:
                self._write_counts()

    def _write_counts(self) -> None:
        if self._pending_counts:
            self._conn.executemany(
                "INSERT INTO counters VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                list(self._pending_counts.items()),
            )
            self._pending_counts.clear()

    def counters(self) -> dict[str, float]:
        with self._lock:
            self._write_counts()
            return {r[0]: r[1] for r in self._x("SELECT name, value FROM counters ORDER BY name")}

    def last_alert(self, key: Key, detector: str) -> float | None:
        row = self._x(
            "SELECT t FROM last_alert WHERE key = ? AND detector = ?", (key_text(key), detector)
        ).fetchone()
        return None if row is None else float(row[0])

    def set_last_alert(self, key: Key, detector: str, t: float) -> None:
        self._x("INSERT OR REPLACE INTO last_alert VALUES (?, ?, ?)", (key_text(key), detector, t))

    def put_timeline(
        self, key: Key, detector: str, index: int, start: float, end: float, payload: dict
    ) -> None:
        """Record (or replace, when a window is re-evaluated) one window's figures."""
        self._x(
            "INSERT OR REPLACE INTO timeline VALUES (?, ?, ?, ?, ?, ?)",
            (key_text(key), detector, index, start, end, json.dumps(payload, default=float)),
        )

    def timeline(self, key: Key | None = None, detector: str | None = None) -> list[dict]:
        """The recorded windows, oldest first: {key, detector, index, start, end, **payload}."""
        sql, args = 'SELECT key, detector, idx, start, "end", payload FROM timeline', []
        where = []
        if key is not None:
            where.append("key = ?")
            args.append(key_text(key))
        if detector is not None:
            where.append("detector = ?")
            args.append(detector)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start, detector"
        return [
            {
                "key": list(key_of(k)),
                "detector": d,
                "index": int(i),
                "start": float(a),
                "end": float(b),
                **json.loads(payload),
            }
            for k, d, i, a, b, payload in self._x(sql, args)
        ]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
