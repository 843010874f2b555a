"""The training set: the event log joined point-in-time with both feature views.

Each event gets, from each feature view, the row of its entity with the greatest
feature_timestamp <= event_timestamp and no older than the view's ttl (nulls when there
is none). The join itself is Feast's `get_historical_features` over the feature service.

Two defects of Feast 0.47's file (Dask) offline store shape how it is called here,
both checked by tests/test_feature_store.py:

* it drops an entity row outright when its entity has feature rows but none usable
  (all after the event, or older than the ttl) instead of returning nulls;
* it de-duplicates its result on (join keys seen so far, event_timestamp), so two events
  of one user at the same instant with different ads collapse into one row.

So the service is resolved into its feature views and Feast is asked once per view with
the distinct (join key, event_timestamp) pairs, which makes both harmless: a dropped
pair becomes nulls in a left join back onto the events, and the pairs are unique.

The Dask store is also slow here: it merges every event with every feature row of its
entity before filtering, and the ETL writes one row per entity per active hour, so a
300k-event lake costs minutes. `AsofFileOfflineStore` below is a drop-in Feast offline
store over the same FileSources (settings: offline_store="asof") whose historical
retrieval is a sorted as-of merge; materialization stays Feast's own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from feast.infra.offline_stores.dask import (
    DaskOfflineStore,
    DaskOfflineStoreConfig,
    DaskRetrievalJob,
)

from kubeloop.atomic import atomic_path
from kubeloop.data.reads import external_path, lake_reads
from kubeloop.errors import FeatureStoreError, LakeError
from kubeloop.usecase import (
    EVENT_ID,
    EVENT_TIMESTAMP,
    EVENTS_DIR,
    PARTITION_KEY,
    UseCase,
    resolve_use_case,
)

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.feature_view import FeatureView
    from feast.infra.offline_stores.offline_store import RetrievalJob
    from feast.infra.registry.base_registry import BaseRegistry
    from feast.repo_config import RepoConfig

_NS_UTC = "datetime64[ns, UTC]"


def training_schema(use_case: UseCase | str | None = None) -> pa.Schema:
    """Arrow schema of the training set: the use case's training columns with their types."""
    return resolve_use_case(use_case).training_schema()


@dataclass(frozen=True)
class TrainingSetSummary:
    """What `build_training_set` wrote."""

    rows: int
    columns: list[str]
    seconds: float
    path: str = ""
    days: int = 0
    seconds_feast: float = 0.0
    """Time spent inside Feast's get_historical_features."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the run report."""
        return asdict(self)


class _EventLog:
    """The lake's events as a pyarrow dataset, with the file list that lake_reads needs."""

    def __init__(self, lake_root: str, use_case: UseCase):
        import fsspec

        fs, root = fsspec.core.url_to_fs(lake_root)
        events_dir = f"{root.rstrip('/')}/{EVENTS_DIR}"
        self.use_case = use_case
        if not fs.isdir(events_dir):
            raise LakeError(
                "no events directory: run `kubeloop data generate` first", path=events_dir
            )
        self.lake_root = lake_root
        self._fs = fs
        self._events_dir = events_dir
        partitioning = ds.partitioning(pa.schema([(PARTITION_KEY, pa.string())]), flavor="hive")
        # Page CRCs verified (the lake's writer writes them): a flipped byte in a page is
        # an error here, not a silently wrong value in the training set.
        parquet = ds.ParquetFileFormat(
            default_fragment_scan_options=ds.ParquetFragmentScanOptions(
                page_checksum_verification=True
            )
        )
        with lake_reads(self.files(), lake_root):
            self.dataset = ds.dataset(
                events_dir,
                filesystem=fs,
                format=parquet,
                partitioning=partitioning,
                schema=use_case.events.columns.append(pa.field(PARTITION_KEY, pa.string())),
            )

    def files(self) -> Iterator[str]:
        """The lake's Parquet files (hidden ones skipped, as the dataset skips them), listed
        only when a read failed: lake_reads consumes this lazily."""
        for path in sorted(self._fs.find(self._events_dir)):
            if path.endswith(".parquet") and not path.rsplit("/", 1)[-1].startswith((".", "_")):
                yield external_path(self._fs, path)

    def days(self) -> list[str]:
        """The day partitions that hold files, oldest first."""
        found = set()
        for fragment in self.dataset.get_fragments():
            key = ds.get_partition_keys(fragment.partition_expression).get(PARTITION_KEY)
            if key is not None:
                found.add(key)
        return sorted(found)

    def read_day(self, day: str) -> pd.DataFrame:
        """The entity columns of one day; a file that cannot be decoded raises the
        LakeError naming it and its column."""
        with lake_reads(self.files(), self.lake_root):
            table = self.dataset.to_table(
                columns=self.use_case.events.entity_columns,
                filter=ds.field(PARTITION_KEY) == day,
            )
        frame = table.to_pandas()
        frame[EVENT_TIMESTAMP] = frame[EVENT_TIMESTAMP].astype(_NS_UTC)
        return frame


def _service_views(
    store: FeatureStore, use_case: UseCase
) -> list[tuple[str, list[str], list[str]]]:
    """(view name, join keys, feature names) of each view in the feature service."""
    service = store.get_feature_service(use_case.feature_service)
    out = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        out.append(
            (projection.name_to_use(), view.join_keys, [f.name for f in projection.features])
        )
    return out


def uses_asof_engine(store: FeatureStore) -> bool:
    """Whether `store` retrieves historical features with AsofFileOfflineStore."""
    return isinstance(store.config.offline_store, AsofFileOfflineStoreConfig)


def point_in_time_join(
    store: FeatureStore, events: pd.DataFrame, *, use_case: UseCase | str | None = None
) -> pd.DataFrame:
    """Join `events` (with event_timestamp and every join key) with every feature of the
    use case's feature service, point in time; one output row per input row, in input order.
    Request-time features are then computed at each event's own time from the state
    tables (`kubeloop.features.request_time.offline_request_features`).

    Calls Feast once per feature view with the distinct (key, event_timestamp) pairs;
    see the module docstring for why the service is not passed to Feast in one call.
    """
    use_case = resolve_use_case(use_case)
    events = events.copy()
    events[EVENT_TIMESTAMP] = pd.to_datetime(events[EVENT_TIMESTAMP], utc=True).astype(_NS_UTC)
    out = events
    for view_name, keys, features in _service_views(store, use_case):
        on = [*keys, EVENT_TIMESTAMP]
        entity_df = events[on].drop_duplicates(ignore_index=True)
        refs = [f"{view_name}:{name}" for name in features]
        job = store.get_historical_features(
            entity_df=entity_df, features=refs, full_feature_names=False
        )
        got = job.to_df()[[*on, *features]]
        got[EVENT_TIMESTAMP] = got[EVENT_TIMESTAMP].astype(_NS_UTC)
        out = out.merge(got, on=on, how="left", validate="many_to_one")
    if len(out) != len(events):
        raise FeatureStoreError(
            f"point-in-time join returned {len(out)} rows for {len(events)} events"
        )
    if use_case.request_features is not None:
        from kubeloop.features.request_time import offline_request_features

        paths = {s.feature_view: _source_path(store, s.feature_view) for s in use_case.state_tables}
        computed = offline_request_features(use_case, out, paths)
        for name in computed.columns:
            out[name] = computed[name].to_numpy()
    return out


def _source_path(store: FeatureStore, view_name: str) -> str:
    """The offline file of a registered feature view (relative paths: to the repo)."""
    source = store.get_feature_view(view_name).batch_source
    path = Path(source.path)
    if not path.is_absolute() and store.config.repo_path:
        path = Path(store.config.repo_path) / path
    return str(path)


def build_training_set(
    store: FeatureStore,
    lake_root: str,
    out_path: Path,
    days: list[date] | None = None,
    progress: bool = True,
    *,
    use_case: UseCase | str | None = None,
) -> TrainingSetSummary:
    """Write the training set of the events in `lake_root` (all days, or `days`).

    Reads the event log (the use case's `events.entity_columns`) day by day from the
    hive-partitioned lake, joins every feature of the feature service point in time (Feast
    get_historical_features; one day per call on Feast's Dask engine, all days in one
    call on the as-of engine), and writes Parquet at `out_path` with columns
    `use_case.training_columns` in that order and their contract types, sorted by
    event_timestamp then event_id. The file is written to a temporary name and renamed,
    so a reader never sees half a file. Raises LakeError for a missing lake or day.
    """
    started = time.perf_counter()
    from tqdm import tqdm

    use_case = resolve_use_case(use_case)
    log = _EventLog(lake_root, use_case)
    available = log.days()
    if days is None:
        wanted = available
    else:
        wanted = sorted({d.isoformat() for d in days})
        missing = [d for d in wanted if d not in available]
        if missing:
            raise LakeError(
                f"no events for day(s) {', '.join(missing)}",
                path=f"{lake_root}/{EVENTS_DIR}",
            )
    if not wanted:
        raise LakeError("the event log is empty", path=f"{lake_root}/{EVENTS_DIR}")

    target = use_case.training_schema()
    # Feast's Dask join needs memory per event x feature rows of its entity: one day at a
    # time keeps a 300k-event lake under 2 GB. The as-of engine is linear, so one batch.
    batches = [[day] for day in wanted] if not uses_asof_engine(store) else [wanted]
    parts: list[pa.Table] = []
    feast_seconds = 0.0
    bar = tqdm(total=len(wanted), desc="training set", unit="day", disable=not progress)
    for batch in batches:
        frames = [f for f in (log.read_day(d) for d in batch) if not f.empty]
        if frames:
            events = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
            t0 = time.perf_counter()
            joined = point_in_time_join(store, events, use_case=use_case)
            feast_seconds += time.perf_counter() - t0
            parts.append(
                pa.Table.from_pandas(joined[target.names], schema=target, preserve_index=False)
            )
        bar.update(len(batch))
    bar.close()

    table = pa.concat_tables(parts) if parts else target.empty_table()
    table = table.sort_by([(EVENT_TIMESTAMP, "ascending"), (EVENT_ID, "ascending")])

    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)

    return TrainingSetSummary(
        rows=table.num_rows,
        columns=list(table.column_names),
        seconds=round(time.perf_counter() - started, 3),
        path=str(out_path),
        days=len(wanted),
        seconds_feast=round(feast_seconds, 3),
    )


# --- a Feast offline store whose point-in-time join is an as-of merge ------------------

ASOF_OFFLINE_STORE = f"{__name__}.AsofFileOfflineStore"
"""The `offline_store.type` of feature_store.yaml that selects AsofFileOfflineStore."""


class AsofFileOfflineStoreConfig(DaskOfflineStoreConfig):
    """Feast config of AsofFileOfflineStore (Feast finds it by the store's name + Config)."""

    # Feast resolves a dotted type to this class; the Dask base keeps materialization
    # working, since Feast's Dask code asserts its own config type.
    type: Literal["kubeloop.features.training_set.AsofFileOfflineStore"] = (  # type: ignore[assignment]
        "kubeloop.features.training_set.AsofFileOfflineStore"
    )


class AsofFileOfflineStore(DaskOfflineStore):
    """Feast's file offline store with a correct and fast `get_historical_features`.

    Same FileSources, same semantics as Feast documents them: for each entity row and
    feature view, the row of that entity with the greatest timestamp <= the entity row's
    event_timestamp and not older than the view's ttl (ties broken by the created
    timestamp column if the source has one), else nulls. Computed with
    `pandas.merge_asof` per view, so the cost is a sort, not entity rows x feature rows;
    every entity row comes back exactly once, in the entity dataframe's order.
    Materialization and everything else are inherited from Feast's Dask store.
    """

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
    ) -> RetrievalJob:
        import dask.dataframe as dd
        from feast.infra.offline_stores.offline_store import RetrievalMetadata
        from feast.infra.offline_stores.offline_utils import DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
        from feast.on_demand_feature_view import OnDemandFeatureView
        from feast.utils import _get_requested_feature_views_to_features_dict

        ts_col = DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
        if not isinstance(entity_df, pd.DataFrame):
            raise TypeError("AsofFileOfflineStore needs the entity dataframe as a pandas DataFrame")
        if ts_col not in entity_df.columns:
            raise ValueError(f"the entity dataframe needs a {ts_col!r} column")
        views_to_features, _ = _get_requested_feature_views_to_features_dict(
            feature_refs, feature_views, registry.list_on_demand_feature_views(project)
        )
        event_ts = pd.to_datetime(entity_df[ts_col], utc=True)
        repo_path = Path(config.repo_path) if config.repo_path else Path.cwd()

        def evaluate():
            result = _asof_join(entity_df, views_to_features, repo_path, full_feature_names)
            return dd.from_pandas(result, npartitions=1, sort=False)

        return DaskRetrievalJob(
            evaluation_function=evaluate,
            full_feature_names=full_feature_names,
            repo_path=str(repo_path),
            on_demand_feature_views=OnDemandFeatureView.get_requested_odfvs(
                feature_refs, project, registry
            ),
            metadata=RetrievalMetadata(
                features=feature_refs,
                keys=[c for c in entity_df.columns if c != ts_col],
                min_event_timestamp=event_ts.min().to_pydatetime(),
                max_event_timestamp=event_ts.max().to_pydatetime(),
            ),
        )


def _asof_join(
    entity_df: pd.DataFrame,
    views_to_features: dict,
    repo_path: Path,
    full_feature_names: bool,
) -> pd.DataFrame:
    """Entity rows + the as-of feature values of each view, in the entity rows' order."""
    row_id = "__kubeloop_row"
    left = entity_df.copy()
    left[EVENT_TIMESTAMP] = pd.to_datetime(left[EVENT_TIMESTAMP], utc=True).astype(_NS_UTC)
    left[row_id] = range(len(left))
    left = left.sort_values(EVENT_TIMESTAMP, kind="stable")

    for view, features in views_to_features.items():
        source = view.batch_source
        path = Path(source.path)
        if not path.is_absolute():
            path = repo_path / path
        ts_field = source.timestamp_field
        created = source.created_timestamp_column or None
        # source column -> name in the view (field_mapping), then join key -> entity df column
        mapping = dict(source.field_mapping or {})
        keys = [column.name for column in view.entity_columns]
        key_map = {k: view.projection.join_key_map.get(k, k) for k in keys}
        inverse = {v: k for k, v in mapping.items()}
        wanted = [*keys, ts_field, *([created] if created else []), *features]
        right = pd.read_parquet(
            path, columns=list(dict.fromkeys(inverse.get(c, c) for c in wanted))
        )
        right = right.rename(columns=mapping)[list(dict.fromkeys(wanted))]

        on = f"__{view.name}_ts"
        right = right.rename(columns={ts_field: on, **key_map})
        right[on] = pd.to_datetime(right[on], utc=True).astype(_NS_UTC)
        right = right.dropna(subset=[on])
        order = [on, created] if created else [on]
        right = right.sort_values(order, kind="stable").drop(columns=[created] if created else [])
        prefix = f"{view.projection.name_to_use()}__" if full_feature_names else ""
        right = right.rename(columns={f: f"{prefix}{f}" for f in features})
        by = list(key_map.values())
        for key in by:
            if right[key].dtype != left[key].dtype:
                right[key] = right[key].astype(left[key].dtype)

        ttl = view.ttl if view.ttl and view.ttl.total_seconds() > 0 else None
        left = pd.merge_asof(
            left,
            right,
            left_on=EVENT_TIMESTAMP,
            right_on=on,
            by=by,
            direction="backward",
            allow_exact_matches=True,
            tolerance=pd.Timedelta(ttl) if ttl else None,
        ).drop(columns=[on])

    return left.sort_values(row_id).drop(columns=[row_id]).reset_index(drop=True)
