"""Check the offline feature tables and load their latest values into the online store."""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kubeloop.errors import FeatureStoreError
from kubeloop.usecase import FEATURE_TIMESTAMP, TIMESTAMP, UseCase, resolve_use_case

if TYPE_CHECKING:
    from feast import FeatureStore


def offline_tables(use_case: UseCase | str | None = None) -> dict[str, tuple[str, pa.Schema, str]]:
    """(file name, expected schema, join key) of each offline table of `use_case`, by
    feature view: each entity's, in entity order, then each request-time state table."""
    return {
        e.feature_view: (e.features_file, e.feature_schema, e.join_key)
        for e in resolve_use_case(use_case).tables
    }


class FeatureTableError(FeatureStoreError):
    """An offline feature table is missing, unreadable or does not match its use case's
    feature schema."""

    def __init__(self, message: str, *, path: str | Path, column: str | None = None):
        self.path = str(path)
        self.column = column
        where = f"file {self.path}" + (f", column {column!r}" if column else "")
        super().__init__(f"[{where}] {message}")


@dataclass(frozen=True)
class TableStats:
    """What materialization needs to know about one offline table."""

    path: str
    rows: int
    entities: int
    first: datetime
    last: datetime


def validate_table(path: str | Path, expected: pa.Schema, key: str) -> TableStats:
    """Check one offline table against its schema and return its row/entity counts.

    Every expected column must be present with exactly the expected Arrow type (time
    zone and unit included), no other column may be there, and the join key and
    feature timestamp must have no nulls. Raises FeatureTableError naming file and column.
    """
    path = Path(path)
    if not path.exists():
        raise FeatureTableError("not found: run `kubeloop features build` first", path=path)
    try:
        actual = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise FeatureTableError(f"is not a readable Parquet file: {exc}", path=path) from exc

    for field in expected:
        if field.name not in actual.names:
            raise FeatureTableError("is missing", path=path, column=field.name)
        got = actual.field(field.name).type
        if got != field.type:
            raise FeatureTableError(
                f"has type {got}, expected {field.type} (see the use case's feature schema)",
                path=path,
                column=field.name,
            )
    extra = [name for name in actual.names if name not in expected.names]
    if extra:
        raise FeatureTableError(
            "is not in the use case's feature schema; the table must have exactly its columns",
            path=path,
            column=extra[0],
        )

    table = pq.read_table(path, columns=[key, FEATURE_TIMESTAMP])
    for name in (key, FEATURE_TIMESTAMP):
        nulls = table.column(name).null_count
        if nulls:
            raise FeatureTableError(f"has {nulls} null values", path=path, column=name)
    if table.num_rows == 0:
        raise FeatureTableError("has no rows", path=path)
    bounds = pc.min_max(table.column(FEATURE_TIMESTAMP))
    return TableStats(
        path=str(path),
        rows=table.num_rows,
        entities=len(pc.unique(table.column(key))),
        first=bounds["min"].as_py(),
        last=bounds["max"].as_py(),
    )


def validate_offline_tables(
    features_dir: str | Path, *, use_case: UseCase | str | None = None
) -> dict[str, TableStats]:
    """Validate every offline table of `use_case` in `features_dir`; returns stats by
    feature view name."""
    root = Path(features_dir)
    return {
        view: validate_table(root / file, expected, key)
        for view, (file, expected, key) in offline_tables(use_case).items()
    }


@dataclass(frozen=True)
class MaterializeSummary:
    """What a materialization loaded into the online store."""

    rows_online: int
    """Entity keys now in the online store (every entity together)."""
    entities: dict[str, int]
    """Entity keys now in the online store, by entity name."""
    start: datetime
    end: datetime
    seconds: float
    online_store: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the run report."""
        out = asdict(self)
        out["start"] = self.start.isoformat()
        out["end"] = self.end.isoformat()
        return out


def _as_utc(value: datetime) -> datetime:
    # Feast and the tables are in UTC; a naive datetime from the CLI means UTC too.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _entities_before(path: str, key: str, start: datetime, end: datetime) -> int:
    # Mirrors the window Feast's file offline store uses: start <= ts < end.
    table = pq.read_table(path, columns=[key, FEATURE_TIMESTAMP])
    ts = table.column(FEATURE_TIMESTAMP)
    mask = pc.and_(
        pc.greater_equal(ts, pa.scalar(start, TIMESTAMP)),
        pc.less(ts, pa.scalar(end, TIMESTAMP)),
    )
    return len(pc.unique(table.filter(mask).column(key)))


def materialize(
    store: FeatureStore,
    end: datetime | None = None,
    *,
    progress: bool = True,
    use_case: UseCase | str | None = None,
) -> MaterializeSummary:
    """Load, for every entity key of `use_case`, its latest feature row before `end` into
    the online store.

    `end` defaults to one second after the newest feature_timestamp, so every row is
    included (Feast's window excludes its end). The start is one second before the
    oldest row, so nothing is cut off by it. Every offline table (at the paths the
    registry holds) are validated first: a bad table raises FeatureTableError and the
    online store is not touched. `progress=False` silences Feast's own output.
    """
    started = time.perf_counter()
    use_case = resolve_use_case(use_case)
    tables = offline_tables(use_case)
    stats: dict[str, TableStats] = {}
    for view_name, (_, expected, key) in tables.items():
        try:
            view = store.get_feature_view(view_name)
        except Exception as exc:  # Feast raises its own FeatureViewNotFoundException
            raise FeatureStoreError(
                f"feature view {view_name!r} is not registered in project "
                f"{store.project!r}: run `kubeloop features apply` first ({exc})"
            ) from exc
        stats[view_name] = validate_table(view.batch_source.path, expected, key)

    start = min(s.first for s in stats.values()) - timedelta(seconds=1)
    newest = max(s.last for s in stats.values())
    end = _as_utc(end) if end is not None else newest + timedelta(seconds=1)
    if end <= start:
        raise FeatureStoreError(
            f"--end {end.isoformat()} is before the first feature row ({start.isoformat()})"
        )

    sink = contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO())
    quiet_err = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
    with sink, quiet_err:
        store.materialize(start_date=start, end_date=end)

    counts = {
        view_name: _entities_before(stats[view_name].path, key, start, end)
        for view_name, (_, _, key) in tables.items()
    }
    entities = {e.name: counts[e.feature_view] for e in use_case.entities}
    return MaterializeSummary(
        rows_online=sum(entities.values()),
        entities=entities,
        start=start,
        end=end,
        seconds=round(time.perf_counter() - started, 3),
        online_store=store.config.online_store.type,
    )


def reset_online_store(store: FeatureStore) -> None:
    """Empty the online store's tables (the registry and definitions are kept), so that the
    next `materialize(store, end=T)` leaves exactly the state as of T.

    Replaying past traffic needs this: a plain materialize with an earlier `end` would
    leave entities that only appear after T with their later values, and Redis keeps the
    newest row anyway. Feast has no public "truncate", so the provider's own table
    maintenance is used.

    The reset must be visible to servers that already hold a connection (a transformer
    started, and probed for readiness, before the replay). Feast's SQLite teardown unlinks
    the database file, and an open connection keeps reading the unlinked file forever, so
    for SQLite the tables are dropped and re-created inside the same file instead."""
    views = store.list_feature_views()
    entities = store.list_entities()
    provider = store._get_provider()
    if str(store.config.online_store.type).split(".")[-1] in ("sqlite", "SqliteOnlineStore"):
        provider.update_infra(
            store.project,
            tables_to_delete=views,
            tables_to_keep=[],
            entities_to_delete=[],
            entities_to_keep=entities,
            partial=False,
        )
    else:
        provider.teardown_infra(store.project, views, entities)
    provider.update_infra(
        store.project,
        tables_to_delete=[],
        tables_to_keep=views,
        entities_to_delete=[],
        entities_to_keep=entities,
        partial=False,
    )


class OnlineFeed:
    """Feeds the online store forward in time, hour by hour, the way a streaming feature
    pipeline would: `advance(until)` writes every offline feature row with
    last written < feature_timestamp <= until through Feast's `write_to_online_store`.

    Replaying traffic with it serves each request the feature row a point-in-time join
    would pick (the newest row at or before the hour the request falls in), so served
    inputs have the same freshness as the training set. The offline tables are read once."""

    def __init__(
        self, store: FeatureStore, start: datetime, *, use_case: UseCase | str | None = None
    ):
        import pandas as pd

        self.store = store
        self.tables = {}
        for view_name, (_, expected, key) in offline_tables(use_case).items():
            view = store.get_feature_view(view_name)
            validate_table(view.batch_source.path, expected, key)
            frame = pd.read_parquet(view.batch_source.path)
            frame = frame.sort_values(FEATURE_TIMESTAMP, kind="stable").reset_index(drop=True)
            self.tables[view_name] = (frame, key)
        self.position = _as_utc(start)

    def advance(self, until: datetime) -> int:
        """Write the rows in (position, until], each entity's newest; returns how many were
        written."""
        import pandas as pd

        until = _as_utc(until)
        if until <= self.position:
            return 0
        written = 0
        low, high = pd.Timestamp(self.position), pd.Timestamp(until)
        for view_name, (frame, key) in self.tables.items():
            ts = frame[FEATURE_TIMESTAMP]
            # Only each entity's newest row counts: the online store keeps one per entity
            # (a state table has a row per event, many per entity in an hour).
            rows = frame[(ts > low) & (ts <= high)].drop_duplicates(key, keep="last")
            if len(rows):
                self.store.write_to_online_store(view_name, rows)
                written += len(rows)
        self.position = until
        return written
