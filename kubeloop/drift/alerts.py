"""Where drift alerts are kept: the alert stores, and `--since` as they read it.

The alert itself is `kubeloop.alert.Alert` (the one model, also imported from here).

Stores implement `AlertStore` (`add`, `list`, `count`):

* `SQLiteAlertStore` — the default: one file, WAL journal, a busy timeout and
  `INSERT OR IGNORE`, so several processes may write to the same file at once.
* `PostgresAlertStore` — psycopg 3, one table (name and schema configurable), created on
  first use under an advisory lock, `ON CONFLICT DO NOTHING` on the alert id.

`open_alert_store("sqlite:////abs/alerts.db" | "sqlite:///rel/alerts.db" | "path/alerts.db"
| "postgresql://...")` picks one from a URL (SQLite URLs as in SQLAlchemy); `kubeloop.drift.backends.make_alert_store` from a config mapping.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from kubeloop import duration

# Alert, AlertWindow and DETECTORS are imported from here by the store's callers too.
from kubeloop.alert import (  # noqa: F401
    DETECTORS,
    Alert,
    AlertWindow,
    DetectorKind,
    Severity,
    iso_utc,
    utc,
)
from kubeloop.errors import KubeloopError

if TYPE_CHECKING:
    from kubeloop.drift.backends import PostgresAlertStoreConfig, SQLiteAlertStoreConfig


class AlertStoreError(KubeloopError):
    """The alert store cannot be opened, written or read."""


def parse_since(value: str | datetime | timedelta | None, *, now: datetime | None = None):
    """`kubeloop.duration.parse_since` (the one `--since` grammar), failing as the store does."""
    try:
        return duration.parse_since(value, now=now)
    except duration.DurationError as exc:
        raise AlertStoreError(str(exc)) from None


class AlertStore(ABC):
    """Where alerts are kept. Implementations are safe for concurrent writers (threads and
    processes), and `add` is idempotent on the alert id."""

    @abstractmethod
    def add(self, alert: Alert) -> bool:
        """Store `alert`; False when an alert with its id is already there."""

    @abstractmethod
    def list(
        self,
        since: datetime | str | timedelta | None = None,
        model: str | None = None,
        variant: str | None = None,
        detector: str | None = None,
        limit: int | None = None,
    ) -> list[Alert]:
        """Alerts raised at or after `since`, filtered, oldest first (the newest `limit`)."""

    @abstractmethod
    def count(self, *args: Any, **filters: Any) -> int:
        """How many alerts `list` would return for the same filters (since, model,
        variant, detector) without a limit."""

    def add_many(self, alerts: Iterable[Alert]) -> int:
        """Store several alerts; the number that were new."""
        return sum(1 for a in alerts if self.add(a))

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_COLUMNS = (
    "id", "time", "model", "version", "variant", "detector", "statistic", "p_value",
    "threshold", "features", "window_start", "window_end", "window_n", "window_index",
    "severity", "details", "revision",
)  # fmt: skip
# Columns added after the first release, created on stores that predate them.
_ADDED_COLUMNS = {"revision": "TEXT"}


def _filters(
    since, model, variant, detector, placeholder: str, time_value
) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    since_dt = parse_since(since)
    if since_dt is not None:
        where.append(f"time >= {placeholder}")
        args.append(time_value(since_dt))
    for column, value in (("model", model), ("variant", variant), ("detector", detector)):
        if value is not None:
            where.append(f"{column} = {placeholder}")
            args.append(value)
    return (" WHERE " + " AND ".join(where)) if where else "", args


def _json_safe(value: Any) -> Any:
    """`value` with numpy scalars as Python numbers and non-finite floats as text
    ("inf", "-inf", "nan"): JSON and JSONB have no infinity."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _finite(value: float) -> float | None:
    # JSON/SQL have no infinity: a calibration ratio with no observed click is stored as NULL.
    value = float(value)
    return value if math.isfinite(value) else None


class SQLiteAlertStore(AlertStore):
    """Alerts in one SQLite file (WAL; concurrent writers from several processes wait on a
    busy timeout instead of failing)."""

    def __init__(self, config: SQLiteAlertStoreConfig | str | Path, *, timeout: float = 30.0):
        path = getattr(config, "path", config)
        self.path = Path(path).expanduser()
        self.timeout = float(getattr(config, "timeout", timeout))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = self._retry(self._open)

    def _retry(self, fn, *args):
        # busy_timeout covers most contention; a few statements (journal mode change,
        # schema creation) can still report "locked" at once, so retry them briefly.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return fn(*args)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise AlertStoreError(f"alert store {self.path}: {exc}") from exc
                if time.monotonic() > deadline:
                    raise AlertStoreError(f"alert store {self.path} stayed locked: {exc}") from exc
                time.sleep(0.05)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                """CREATE TABLE IF NOT EXISTS alerts (
                    id TEXT PRIMARY KEY, time TEXT NOT NULL, model TEXT NOT NULL,
                    version TEXT NOT NULL, variant TEXT NOT NULL, detector TEXT NOT NULL,
                    statistic REAL, p_value REAL, threshold REAL, features TEXT NOT NULL,
                    window_start TEXT NOT NULL, window_end TEXT NOT NULL,
                    window_n INTEGER NOT NULL, window_index INTEGER NOT NULL,
                    severity TEXT NOT NULL, details TEXT NOT NULL, revision TEXT)"""
            )
            have = {row[1] for row in conn.execute("PRAGMA table_info(alerts)")}
            for column, sql_type in _ADDED_COLUMNS.items():
                if column not in have:
                    conn.execute(f"ALTER TABLE alerts ADD COLUMN {column} {sql_type}")
            conn.execute("CREATE INDEX IF NOT EXISTS alerts_time ON alerts (time)")
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _row(self, alert: Alert) -> tuple:
        return (
            alert.id, iso_utc(alert.time), alert.model, alert.version, alert.variant,
            alert.detector, _finite(alert.statistic), _finite(alert.p_value),
            _finite(alert.threshold), json.dumps(alert.features), iso_utc(alert.window.start),
            iso_utc(alert.window.end), alert.window.n, alert.window.index, alert.severity,
            json.dumps(_json_safe(alert.details), allow_nan=False), alert.revision,
        )  # fmt: skip

    def add(self, alert: Alert) -> bool:
        row = self._row(alert)
        sql = f"INSERT OR IGNORE INTO alerts ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
        with self._lock:
            cursor = self._retry(self._conn.execute, sql, row)
        return cursor.rowcount == 1

    def list(self, since=None, model=None, variant=None, detector=None, limit=None) -> list[Alert]:
        where, args = _filters(since, model, variant, detector, "?", iso_utc)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM alerts{where} ORDER BY time DESC, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._retry(lambda: self._conn.execute(sql, args).fetchall())
        return [_from_row(r, json_columns=True) for r in reversed(rows)]

    def count(self, since=None, model=None, variant=None, detector=None) -> int:
        where, args = _filters(since, model, variant, detector, "?", iso_utc)
        with self._lock:
            row = self._retry(
                lambda: self._conn.execute(f"SELECT COUNT(*) FROM alerts{where}", args).fetchone()
            )
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SQLiteAlertStore({str(self.path)!r})"


def _from_row(row: tuple, *, json_columns: bool) -> Alert:
    data = dict(zip(_COLUMNS, row, strict=True))

    def load(value: Any) -> Any:
        return json.loads(value) if json_columns and isinstance(value, str) else value

    def num(value: Any) -> float:
        return float("nan") if value is None else float(value)

    def when(value: Any) -> datetime:
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)

    return Alert(
        id=data["id"],
        time=when(data["time"]),
        model=data["model"],
        version=data["version"],
        variant=data["variant"],
        detector=data["detector"],
        statistic=num(data["statistic"]),
        p_value=num(data["p_value"]),
        threshold=num(data["threshold"]),
        features=load(data["features"]),
        window=AlertWindow(
            start=when(data["window_start"]),
            end=when(data["window_end"]),
            n=int(data["window_n"]),
            index=int(data["window_index"]),
        ),
        severity=data["severity"],
        details=load(data["details"]),
        revision=data["revision"],
    )


_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresAlertStore(AlertStore):
    """Alerts in one PostgreSQL table (psycopg 3)."""

    def __init__(self, config: PostgresAlertStoreConfig):
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - psycopg is a core dependency
            from kubeloop.errors import MissingExtraError

            raise MissingExtraError(
                "psycopg", "the PostgreSQL alert store", "'psycopg[binary]>=3.1'"
            ) from exc
        for ident in (config.table, config.db_schema):
            if ident is not None and not _IDENT.match(ident):
                raise AlertStoreError(
                    f"invalid PostgreSQL identifier {ident!r}: use lowercase letters, digits, '_'"
                )
        self.config = config
        self._qualified = (
            f'"{config.db_schema}"."{config.table}"' if config.db_schema else f'"{config.table}"'
        )
        self._lock = threading.Lock()
        try:
            self._conn = psycopg.connect(config.dsn, autocommit=True, connect_timeout=10)
            self._create()
        except psycopg.Error as exc:
            raise AlertStoreError(f"PostgreSQL alert store ({_redact(config.dsn)}): {exc}") from exc

    def _create(self) -> None:
        with self._conn.transaction():
            # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalog.
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._qualified,))
            if self.config.db_schema:
                self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.config.db_schema}"')
            self._conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {self._qualified} (
                    id TEXT PRIMARY KEY, time TIMESTAMPTZ NOT NULL, model TEXT NOT NULL,
                    version TEXT NOT NULL, variant TEXT NOT NULL, detector TEXT NOT NULL,
                    statistic DOUBLE PRECISION, p_value DOUBLE PRECISION,
                    threshold DOUBLE PRECISION, features JSONB NOT NULL,
                    window_start TIMESTAMPTZ NOT NULL, window_end TIMESTAMPTZ NOT NULL,
                    window_n INTEGER NOT NULL, window_index INTEGER NOT NULL,
                    severity TEXT NOT NULL, details JSONB NOT NULL, revision TEXT)"""
            )
            for column, sql_type in _ADDED_COLUMNS.items():
                self._conn.execute(
                    f'ALTER TABLE {self._qualified} ADD COLUMN IF NOT EXISTS "{column}" {sql_type}'
                )
            index = f"{self.config.table}_time"
            self._conn.execute(f'CREATE INDEX IF NOT EXISTS "{index}" ON {self._qualified} (time)')

    def add(self, alert: Alert) -> bool:
        from psycopg.types.json import Jsonb

        row = (
            alert.id, alert.time, alert.model, alert.version, alert.variant, alert.detector,
            _finite(alert.statistic), _finite(alert.p_value), _finite(alert.threshold),
            Jsonb(alert.features), alert.window.start, alert.window.end, alert.window.n,
            alert.window.index, alert.severity,
            Jsonb(_json_safe(alert.details)), alert.revision,
        )  # fmt: skip
        sql = (
            f"INSERT INTO {self._qualified} ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join(['%s'] * len(_COLUMNS))}) ON CONFLICT (id) DO NOTHING"
        )
        with self._lock:
            cursor = self._conn.execute(sql, row)
        return cursor.rowcount == 1

    def list(self, since=None, model=None, variant=None, detector=None, limit=None) -> list[Alert]:
        where, args = _filters(since, model, variant, detector, "%s", lambda d: d)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM {self._qualified}{where} ORDER BY time DESC, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [_from_row(r, json_columns=False) for r in reversed(rows)]

    def count(self, since=None, model=None, variant=None, detector=None) -> int:
        where, args = _filters(since, model, variant, detector, "%s", lambda d: d)
        with self._lock:
            row = self._conn.execute(
                f"SELECT COUNT(*) FROM {self._qualified}{where}", args
            ).fetchone()
        return int(row[0])

    def drop(self) -> None:
        """Drop the table (tests and teardown)."""
        with self._lock:
            self._conn.execute(f"DROP TABLE IF EXISTS {self._qualified}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"PostgresAlertStore({_redact(self.config.dsn)!r}, table={self._qualified})"


def _redact(dsn: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", dsn)


def open_alert_store(url: str | Path) -> AlertStore:
    """An alert store from a URL: `sqlite:///relative.db`, `sqlite:////abs/path.db`, a
    plain file path, or
    `postgresql://user@host:5432/db?table=drift_alerts&schema=kubeloop` (`table` and
    `schema` are read here and not passed to libpq)."""
    from kubeloop.drift.backends import alert_store_config_from_url, make_alert_store

    return make_alert_store(alert_store_config_from_url(str(url)))
