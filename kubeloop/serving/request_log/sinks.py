"""Where the request log is kept: `RequestLogSink`, with SQLite (default) and JSON Lines
implementations, `open_sink(path)` and `iter_events`."""

from __future__ import annotations

import abc
import base64
import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from kubeloop.cloudevents import JSON_CONTENT_TYPE, REQUEST_TYPE
from kubeloop.serving.request_log.events import LoggedEvent, full_type, since_iso
from kubeloop.serving.request_log.sqlite_threads import ThreadConnections


class RequestLogSink(abc.ABC):
    """Where logged events are kept. `write` must be safe to call from several threads,
    and from several processes writing to the same place."""

    @abc.abstractmethod
    def write(self, events: Sequence[LoggedEvent]) -> None:
        """Append `events` (in one transaction where the sink has them)."""

    @abc.abstractmethod
    def iter_events(
        self,
        since: datetime | str | float | None = None,
        variant: str | None = None,
        type: str | None = None,
    ) -> Iterator[LoggedEvent]:
        """Events in the order written, optionally only those at or after `since` (a
        datetime, ISO string or epoch seconds; naive means UTC), of one `variant`
        ("primary"/"canary") and of one `type` (the full ce-type, or "request"/"response")."""

    def close(self) -> None:
        """Release files and connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Request ids are looked up for request events only (a label's join): the index holds
# those, so a logged exchange adds one id to it, not two. Ids that callers bring are
# often random UUIDs, whose inserts land on random pages (the log's costliest part per
# row). `events_id`, the full index of older logs, is dropped.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ce_id TEXT NOT NULL,
    ce_type TEXT NOT NULL,
    ce_source TEXT NOT NULL,
    ce_specversion TEXT NOT NULL,
    ce_time TEXT NOT NULL,
    ce_inferenceservicename TEXT,
    ce_namespace TEXT,
    ce_component TEXT,
    ce_endpoint TEXT,
    ce_revision TEXT,
    ce_recordedtime TEXT,
    ce_metadata TEXT,
    content_type TEXT NOT NULL,
    data BLOB NOT NULL,
    variant TEXT,
    model_version TEXT,
    latency_ms REAL,
    status_code INTEGER
);
CREATE INDEX IF NOT EXISTS events_time ON events (ce_time);
CREATE INDEX IF NOT EXISTS events_request_id ON events (ce_id) WHERE ce_type = '{REQUEST_TYPE}';
DROP INDEX IF EXISTS events_id;
"""

_COLUMNS = (
    "ce_id, ce_type, ce_source, ce_specversion, ce_time, ce_inferenceservicename,"
    " ce_namespace, ce_component, ce_endpoint, content_type, data, variant, model_version,"
    " latency_ms, status_code, ce_revision, ce_recordedtime, ce_metadata"
)
_N_COLUMNS = _COLUMNS.count(",") + 1
# The columns of a row of `SQLiteRequestLog.write_rows`, in order.
ROW_COLUMNS = tuple(name.strip() for name in _COLUMNS.split(","))
# Columns added after the first release, created on logs that predate them.
_ADDED_COLUMNS = {"ce_revision": "TEXT", "ce_recordedtime": "TEXT", "ce_metadata": "TEXT"}


# The page size of a new SQLite log, and how much write-ahead log gathers before SQLite
# copies it into the database (its default is 1,000 pages, whatever their size).
PAGE_SIZE = 32768
CHECKPOINT_BYTES = 16 * 1024 * 1024


def _checkpoint_by_size(conn: sqlite3.Connection) -> None:
    """Checkpoint every `CHECKPOINT_BYTES` of write-ahead log, at the file's page size."""
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.execute(f"PRAGMA wal_autocheckpoint={max(1, CHECKPOINT_BYTES // page_size)}")


class SQLiteRequestLog(RequestLogSink):
    """Events in a SQLite database (table `events`), in WAL mode so readers never block
    the writer. Each thread gets its own connection; writers in other processes wait for
    the lock (busy timeout) instead of failing."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0):
        # synchronous=NORMAL: in WAL mode a killed process loses nothing committed and a
        # power loss at worst the last commits, never the log, without an fsync per batch.
        # A new log gets 32 KiB pages (a log made earlier keeps its own: SQLite fixes the
        # page size when it creates the file). A request body of tens of KB spilled over
        # several 4 KiB overflow pages, each its own write-ahead frame and write(), and
        # again at the checkpoint. Writer CPU per exchange, in-process at 40-exchange
        # batches: 64 rows (~25 KB) ~119 us with 4 KiB pages, ~76 with 32 KiB, ~74 with
        # 64 KiB; 1 row ~27, ~29, ~30 (each commit rewrites its last, larger pages).
        self._db = ThreadConnections(
            path,
            timeout=timeout,
            pragmas=(f"page_size={PAGE_SIZE}", "synchronous=NORMAL"),
            setup=_checkpoint_by_size,
        )
        self.path, self.timeout = self._db.path, timeout
        conn = self._conn()
        for attempt in range(50):
            try:
                conn.executescript(_SCHEMA)
                self._add_columns(conn)
                break
            except sqlite3.OperationalError:  # another process creating it at this moment
                if attempt == 49:
                    raise
                time.sleep(0.05)

    @staticmethod
    def _add_columns(conn: sqlite3.Connection) -> None:
        """Add the columns a log written by an older kubeloop lacks."""
        have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
        for column, sql_type in _ADDED_COLUMNS.items():
            if column not in have:
                conn.execute(f"ALTER TABLE events ADD COLUMN {column} {sql_type}")

    def _conn(self) -> sqlite3.Connection:
        return self._db.get()

    def write(self, events: Sequence[LoggedEvent]) -> None:
        if not events:
            return
        self.write_rows(
            [
                (
                    e.attributes["id"],
                    e.attributes["type"],
                    e.attributes["source"],
                    e.attributes["specversion"],
                    e.attributes["time"],
                    e.attributes.get("inferenceservicename"),
                    e.attributes.get("namespace"),
                    e.attributes.get("component"),
                    e.attributes.get("endpoint"),
                    e.content_type,
                    e.data,
                    e.variant,
                    e.model_version,
                    e.latency_ms,
                    e.status_code,
                    e.attributes.get("revision"),
                    e.attributes.get("recordedtime"),
                    e.attributes.get("metadata"),
                )
                for e in events
            ]
        )

    def write_rows(self, rows: Sequence[tuple]) -> None:
        """Append rows already in the table's column order (`ROW_COLUMNS`), in one
        transaction: what `write` does after it has read the events' fields (a logger
        that makes no events, only rows, calls it directly)."""
        if not rows:
            return
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                f"INSERT INTO events ({_COLUMNS}) VALUES ({', '.join('?' * _N_COLUMNS)})", rows
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def iter_events(self, since=None, variant=None, type=None) -> Iterator[LoggedEvent]:
        where, args = [], []
        if (cutoff := since_iso(since)) is not None:
            where.append("ce_time >= ?")
            args.append(cutoff)
        if variant is not None:
            where.append("variant = ?")
            args.append(variant)
        if (wanted := full_type(type)) is not None:
            where.append("ce_type = ?")
            args.append(wanted)
        sql = f"SELECT {_COLUMNS} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        for row in self._conn().execute(sql, args):
            attrs = {
                "specversion": row[3],
                "id": row[0],
                "type": row[1],
                "source": row[2],
                "time": row[4],
                "inferenceservicename": row[5],
                "namespace": row[6],
                "component": row[7],
                "endpoint": row[8],
                "revision": row[15],
                "recordedtime": row[16],
                "metadata": row[17],
                "modelversion": row[12],
                "variant": row[11],
            }
            yield LoggedEvent(
                attributes={k: v for k, v in attrs.items() if v is not None},
                data=bytes(row[10]),
                variant=row[11],
                model_version=row[12],
                latency_ms=row[13],
                status_code=row[14],
                content_type=row[9],
            )

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class JSONLRequestLog(RequestLogSink):
    """Events appended to a JSON Lines file, one object per event:
    `{"attributes": {...}, "data": <payload as JSON, or a string>, "data_encoding": ...,
    "variant": ..., "model_version": ..., "latency_ms": ..., "status_code": ...,
    "content_type": ...}`. Each batch is written with one append under an exclusive
    `flock`, so lines from concurrent writers never interleave."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    @staticmethod
    def _line(e: LoggedEvent) -> str:
        record: dict[str, Any] = {"attributes": e.attributes}
        try:
            record["data"] = json.loads(e.data)
            record["data_encoding"] = "json"
        except ValueError:
            try:
                record["data"] = e.data.decode("utf-8")
                record["data_encoding"] = "text"
            except UnicodeDecodeError:
                record["data"] = base64.b64encode(e.data).decode("ascii")
                record["data_encoding"] = "base64"
        record.update(
            variant=e.variant,
            model_version=e.model_version,
            latency_ms=e.latency_ms,
            status_code=e.status_code,
            content_type=e.content_type,
        )
        return json.dumps(record, separators=(",", ":")) + "\n"

    def write(self, events: Sequence[LoggedEvent]) -> None:
        if not events:
            return
        payload = "".join(self._line(e) for e in events).encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                os.close(fd)  # closing releases the flock

    @staticmethod
    def _event(record: dict[str, Any]) -> LoggedEvent:
        encoding = record.get("data_encoding", "json")
        raw = record.get("data")
        if encoding == "json":
            data = json.dumps(raw, separators=(",", ":")).encode("utf-8")
        elif encoding == "base64":
            data = base64.b64decode(raw)
        else:
            data = str(raw).encode("utf-8")
        return LoggedEvent(
            attributes=record["attributes"],
            data=data,
            variant=record.get("variant"),
            model_version=record.get("model_version"),
            latency_ms=record.get("latency_ms"),
            status_code=record.get("status_code"),
            content_type=record.get("content_type", JSON_CONTENT_TYPE),
        )

    def iter_events(self, since=None, variant=None, type=None) -> Iterator[LoggedEvent]:
        cutoff = since_iso(since)
        wanted = full_type(type)
        try:
            handle = open(self.path, encoding="utf-8")  # noqa: SIM115
        except FileNotFoundError:
            return
        with handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # a line still being written
                record = json.loads(line)
                attrs = record["attributes"]
                if cutoff is not None and attrs["time"] < cutoff:
                    continue
                if variant is not None and record.get("variant") != variant:
                    continue
                if wanted is not None and attrs["type"] != wanted:
                    continue
                yield self._event(record)


def open_sink(path: str | Path) -> RequestLogSink:
    """A sink for `path`: JSON Lines for `.jsonl`/`.ndjson`, else SQLite."""
    path = Path(path)
    if path.suffix in (".jsonl", ".ndjson"):
        return JSONLRequestLog(path)
    return SQLiteRequestLog(path)


def iter_events(
    sink: RequestLogSink | str | Path,
    since: datetime | str | float | None = None,
    variant: str | None = None,
    type: str | None = None,
) -> Iterator[LoggedEvent]:
    """`sink.iter_events(...)`, also accepting the path of a log."""
    if isinstance(sink, RequestLogSink):
        yield from sink.iter_events(since=since, variant=variant, type=type)
        return
    with open_sink(sink) as opened:
        yield from opened.iter_events(since=since, variant=variant, type=type)
