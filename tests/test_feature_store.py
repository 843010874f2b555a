"""Feast repository on the embedded SQLite online store: apply, materialize, online
lookup, point-in-time join, training set, and the offline-table checks."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from kubeloop.errors import FeatureStoreError, LakeError
from kubeloop.features.definitions import DEFAULT_TTL, build_definitions
from kubeloop.features.materialize import FeatureTableError, materialize
from kubeloop.features.online import online_columns, online_features
from kubeloop.features.store import (
    FEATURE_STORE_YAML,
    FeatureStoreSettings,
    RedisStoreConfig,
    SqliteStoreConfig,
    apply_definitions,
    online_store_config,
    open_store,
    write_repo,
)
from kubeloop.features.training_set import (
    build_training_set,
    point_in_time_join,
    training_schema,
)
from usecases.ctr import schema

pytestmark = [
    # Feast and its dependencies warn about their own internals on import and apply.
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

D0 = datetime(2024, 3, 1, tzinfo=UTC)


def day(n: int, hours: float = 0) -> datetime:
    """Midnight UTC of day n of the test calendar, plus `hours`."""
    return D0 + timedelta(days=n, hours=hours)


# Feature rows by entity: (feature_timestamp, tag). Every value of a row is derived from
# its tag, so a joined value tells which row it came from (integers: tag * 100 + i).
USER_ROWS = {
    1: [(day(2), 11), (day(3), 12), (day(5), 13)],
    2: [(day(2), 21)],
    3: [(day(4), 31), (day(6), 32)],
}
AD_ROWS = {
    10: [(day(1), 101), (day(3), 102)],
    11: [(day(2), 111), (day(4), 112), (day(5), 113)],
}
NULL_CELL = (2, 21, "user_ctr_1d")  # a feature the ETL may leave null


def _value(field: pa.Field, index: int, tag: int):
    if pa.types.is_string(field.type):
        return f"{field.name}-{tag}"
    if pa.types.is_integer(field.type):
        return tag * 100 + index
    return tag + index / 8  # exact in binary, so equality is exact


def feature_table(table_schema: pa.Schema, key: str, rows: dict[int, list], tag_shift: int = 0):
    """An offline feature table with `table_schema` holding `rows`."""
    columns: dict[str, list] = {f.name: [] for f in table_schema}
    for entity, entity_rows in rows.items():
        for ts, tag in entity_rows:
            for index, field in enumerate(table_schema):
                if field.name == key:
                    value = entity
                elif field.name == schema.FEATURE_TIMESTAMP:
                    value = ts
                elif (entity, tag, field.name) == NULL_CELL:
                    value = None
                else:
                    value = _value(field, index, tag + tag_shift)
                columns[field.name].append(value)
    return pa.table(columns, schema=table_schema)


def write_features(features_dir: Path, tag_shift: int = 0) -> Path:
    """Write both hand-built offline tables, and the request-time state tables (one row
    per feature row, at its time), into `features_dir`."""
    features_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        feature_table(schema.USER_FEATURE_SCHEMA, "user_id", USER_ROWS, tag_shift),
        features_dir / schema.USER_FEATURES_FILE,
    )
    pq.write_table(
        feature_table(schema.AD_FEATURE_SCHEMA, "ad_id", AD_ROWS, tag_shift),
        features_dir / schema.AD_FEATURES_FILE,
    )
    for state_schema, key, rows in (
        (schema.USER_STATE_SCHEMA, "user_id", USER_ROWS),
        (schema.AD_STATE_SCHEMA, "ad_id", AD_ROWS),
    ):
        pq.write_table(
            feature_table(state_schema, key, rows, tag_shift),
            features_dir / f"{state_schema.names[2].removesuffix('_last_us')}.parquet",
        )
    return features_dir


def make_store(
    root: Path, settings: FeatureStoreSettings | None = None, end: datetime | None = None
):
    """A repository under `root` with the hand-built tables applied and materialized."""
    features = write_features(root / "features")
    write_repo(root / "repo", settings or FeatureStoreSettings(), features)
    store = open_store(root / "repo")
    apply_definitions(store, features)
    summary = materialize(store, end, progress=False)
    return store, summary


def latest_offline(table: pa.Table, key: str, before: datetime | None = None) -> pd.DataFrame:
    """Latest row per entity (strictly before `before` if given), indexed by the key."""
    frame = table.to_pandas()
    if before is not None:
        frame = frame[frame[schema.FEATURE_TIMESTAMP] < before]
    frame = frame.sort_values(schema.FEATURE_TIMESTAMP).groupby(key).tail(1)
    return frame.set_index(key)


def assert_same_values(got: pd.Series, expected: pd.Series, context: str) -> None:
    for name, value in expected.items():
        actual = got[name]
        if pd.isna(value):
            assert pd.isna(actual), f"{context}: {name} = {actual!r}, expected null"
        else:
            assert actual == value, f"{context}: {name} = {actual!r}, expected {value!r}"


@pytest.fixture(scope="module", params=["file", "asof"])
def store_and_summary(request, tmp_path_factory):
    """Applied and materialized repository, once per offline store engine."""
    settings = FeatureStoreSettings(offline_store=request.param)
    return make_store(tmp_path_factory.mktemp(f"feast_{request.param}"), settings)


@pytest.fixture(scope="module")
def store(store_and_summary):
    return store_and_summary[0]


# --- configuration ---------------------------------------------------------------------


def test_settings_default_to_embedded_sqlite():
    settings = FeatureStoreSettings()
    assert settings.project == "kubeloop"
    assert settings.online_store == SqliteStoreConfig(path="online_store.db")
    assert settings.feast_yaml()["offline_store"] == {"type": "file"}


def test_online_store_configs_are_typed_and_strict():
    chosen = FeatureStoreSettings(online_store={"type": "redis", "key_ttl_seconds": 60})
    assert isinstance(chosen.online_store, RedisStoreConfig)
    with pytest.raises(ValidationError):
        SqliteStoreConfig(path="x.db", host="nope")
    with pytest.raises(ValidationError):
        FeatureStoreSettings(online_store={"type": "memcached"})
    with pytest.raises(ValidationError):
        FeatureStoreSettings(project="_hidden")
    with pytest.raises(FeatureStoreError, match="unknown online store 'memcached'"):
        online_store_config("memcached")
    assert (
        online_store_config("redis", connection_string=None).connection_string == "127.0.0.1:6379"
    )


@pytest.mark.parametrize(
    ("given", "feast_form"),
    [
        ("127.0.0.1:6379", "127.0.0.1:6379"),
        ("redis://10.0.0.5:6380/2", "10.0.0.5:6380,db=2"),
        ("redis://:s3cret@redis.kubeloop.svc", "redis.kubeloop.svc:6379,password=s3cret"),
        ("rediss://cache:6379/0", "cache:6379,db=0,ssl=true"),
    ],
)
def test_redis_urls_become_feast_connection_strings(given, feast_form):
    assert RedisStoreConfig(connection_string=given).connection_string == feast_form


def test_write_repo_is_a_real_feast_repository(tmp_path, monkeypatch):
    from feast import FeatureStore

    monkeypatch.chdir(tmp_path)  # nothing may land in the current directory
    features = write_features(tmp_path / "features")
    repo = tmp_path / "repo"
    yaml_path = write_repo(repo, FeatureStoreSettings(project="kl_yaml"), features)
    assert yaml_path == repo.resolve() / FEATURE_STORE_YAML
    written = yaml.safe_load(yaml_path.read_text())
    assert written["online_store"] == {"type": "sqlite", "path": "online_store.db"}
    apply_definitions(open_store(repo), features)

    # Feast's own loader (what `feast -c repo ...` uses) reads the yaml and the registry.
    native = FeatureStore(repo_path=str(repo))
    assert sorted(v.name for v in native.list_feature_views()) == sorted(
        [
            schema.AD_FEATURE_VIEW,
            schema.USER_FEATURE_VIEW,
            schema.AD_STATE_VIEW,
            schema.USER_STATE_VIEW,
        ]
    )
    assert (repo / "registry.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "repo"]


def test_offline_store_engines_round_trip_through_the_yaml(tmp_path):
    from kubeloop.features.store import read_settings
    from kubeloop.features.training_set import ASOF_OFFLINE_STORE, AsofFileOfflineStore

    features = write_features(tmp_path / "features")
    for engine in ("file", "asof"):
        settings = FeatureStoreSettings(offline_store=engine)
        write_repo(tmp_path / engine, settings, features)
        assert read_settings(tmp_path / engine) == settings
    assert FeatureStoreSettings(offline_store="asof").feast_yaml()["offline_store"] == {
        "type": ASOF_OFFLINE_STORE
    }
    store = open_store(tmp_path / "asof")
    assert type(store._get_provider().offline_store) is AsofFileOfflineStore


def test_open_store_without_repo_names_the_fix(tmp_path):
    with pytest.raises(FeatureStoreError, match="kubeloop features apply"):
        open_store(tmp_path / "nowhere")


def test_definitions():
    user, ad, user_view, ad_view, user_state, ad_state, service = build_definitions(
        "/data/features"
    )
    # The request-time state views: keyed by the same entities, never stale, not served.
    assert (user_state.name, ad_state.name) == (schema.USER_STATE_VIEW, schema.AD_STATE_VIEW)
    assert user_state.entities == ["user"] and ad_state.entities == ["ad"]
    assert user_state.ttl == timedelta(0)
    assert (user.name, user.join_key, ad.name, ad.join_key) == ("user", "user_id", "ad", "ad_id")
    assert user_view.name == schema.USER_FEATURE_VIEW and ad_view.name == schema.AD_FEATURE_VIEW
    assert [f.name for f in user_view.features] == schema.USER_FEATURES
    assert [f.name for f in ad_view.features] == schema.AD_FEATURES
    assert user_view.ttl >= timedelta(days=8) and ad_view.ttl >= timedelta(days=8)
    assert user_view.batch_source.path == "/data/features/user_features.parquet"
    assert user_view.batch_source.timestamp_field == schema.FEATURE_TIMESTAMP
    assert service.name == schema.FEATURE_SERVICE
    served = {p.name: [f.name for f in p.features] for p in service.feature_view_projections}
    assert served == {
        schema.USER_FEATURE_VIEW: schema.USER_FEATURES,
        schema.AD_FEATURE_VIEW: schema.AD_FEATURES,
    }
    with pytest.raises(ValueError, match="at least 8 days"):
        build_definitions("/data/features", ttl=timedelta(days=7))


# --- materialization and online lookup ------------------------------------------------


def test_materialize_counts_entities(store_and_summary):
    _, summary = store_and_summary
    assert (summary.entities, summary.rows_online) == ({"user": 3, "ad": 2}, 5)
    assert summary.end == day(6) + timedelta(seconds=1)
    assert summary.start < day(1)
    assert summary.online_store == "sqlite"


def test_online_features_equal_latest_offline_values(store):
    users = latest_offline(
        feature_table(schema.USER_FEATURE_SCHEMA, "user_id", USER_ROWS), "user_id"
    )
    ads = latest_offline(feature_table(schema.AD_FEATURE_SCHEMA, "ad_id", AD_ROWS), "ad_id")
    pairs = [(u, a) for u in USER_ROWS for a in AD_ROWS]
    got = online_features(store, [{"user_id": u, "ad_id": a} for u, a in pairs])

    assert list(got.columns) == online_columns()
    assert len(got) == len(pairs)
    for (user_id, ad_id), (_, row) in zip(pairs, got.iterrows()):
        assert (row["user_id"], row["ad_id"]) == (user_id, ad_id)
        assert_same_values(row, users.loc[user_id, schema.USER_FEATURES], f"user {user_id}")
        assert_same_values(row, ads.loc[ad_id, schema.AD_FEATURES], f"ad {ad_id}")


def test_online_features_of_unknown_entities_are_null(store):
    got = online_features(store, [{"user_id": 404, "ad_id": 10}])
    assert got[schema.USER_FEATURES].isna().all(axis=None)
    assert got.loc[0, "ad_impressions_1d"] == 102 * 100 + schema.AD_FEATURE_SCHEMA.names.index(
        "ad_impressions_1d"
    )
    assert str(got["user_impressions_1d"].dtype) == "Int64"  # nulls keep integers integral
    with pytest.raises(FeatureStoreError, match="no ad_id"):
        online_features(store, [{"user_id": 1}])


def test_materialize_up_to_end_loads_rows_before_it(tmp_path):
    end = day(4)
    store, summary = make_store(tmp_path, end=end)
    assert summary.entities == {"user": 2, "ad": 2}  # user 3's first row is at day 4: excluded
    assert summary.end == end
    users = latest_offline(
        feature_table(schema.USER_FEATURE_SCHEMA, "user_id", USER_ROWS), "user_id", end
    )
    ads = latest_offline(feature_table(schema.AD_FEATURE_SCHEMA, "ad_id", AD_ROWS), "ad_id", end)
    got = online_features(store, [{"user_id": 1, "ad_id": 11}, {"user_id": 3, "ad_id": 10}])
    assert_same_values(got.iloc[0], users.loc[1, schema.USER_FEATURES], "user 1 before day 4")
    assert_same_values(got.iloc[0], ads.loc[11, schema.AD_FEATURES], "ad 11 before day 4")
    assert got.loc[1, schema.USER_FEATURES].isna().all()


def test_reset_is_seen_by_a_server_that_already_reads_the_store(tmp_path):
    """A transformer opens its online-store connection when it is first probed for
    readiness, before a replay resets the store to an earlier time. Feast's SQLite teardown
    unlinks the database file, and a connection opened before keeps reading the unlinked
    file: the server then serves the newest rows instead of the state as of the reset's
    time (the training/serving skew behind the closed loop's false alarm). The reset must
    be visible to that reader."""
    from kubeloop.features.materialize import reset_online_store

    writer, _ = make_store(tmp_path)  # fully materialized: the newest rows
    reader = open_store(tmp_path / "repo")  # the server's own FeatureStore
    newest = online_features(reader, [{"user_id": 1, "ad_id": 11}])
    end = day(4)
    reset_online_store(writer)
    materialize(writer, end, progress=False)
    got = online_features(reader, [{"user_id": 1, "ad_id": 11}, {"user_id": 3, "ad_id": 10}])
    users = latest_offline(
        feature_table(schema.USER_FEATURE_SCHEMA, "user_id", USER_ROWS), "user_id", end
    )
    assert_same_values(got.iloc[0], users.loc[1, schema.USER_FEATURES], "user 1 after reset")
    assert got.loc[1, schema.USER_FEATURES].isna().all()  # user 3 first appears at day 4
    assert not newest.iloc[0][schema.USER_FEATURES].equals(got.iloc[0][schema.USER_FEATURES])


# --- point-in-time join ----------------------------------------------------------------


def _tag(value) -> int | None:
    return None if pd.isna(value) else int(value) // 100


def test_point_in_time_join_takes_latest_row_at_or_before_the_event(store):
    cases = [
        # event_id, event_timestamp, user_id, ad_id, expected user row tag, expected ad row tag
        (1, day(3), 1, 10, 12, 102),  # exactly at a feature_timestamp: that row
        (2, day(4, 12), 1, 11, 12, 112),  # between rows: the earlier one
        (3, day(1, 12), 1, 10, None, 101),  # before any row of user 1: nulls
        (4, day(4, 12), 1, 10, 12, 102),  # same user and time as event 2, other ad
        (5, day(12), 2, 11, None, 113),  # user 2's only row is 10 days old: past ttl
        (6, day(2) - timedelta(microseconds=1), 2, 11, None, None),  # 1 us too early
        (7, day(6), 404, 10, None, 102),  # unknown user
        (8, day(3), 1, 10, 12, 102),  # exact duplicate of event 1's keys
    ]
    events = pd.DataFrame(
        [case[:4] for case in cases], columns=["event_id", "event_timestamp", "user_id", "ad_id"]
    )
    got = point_in_time_join(store, events)

    assert list(got["event_id"]) == [case[0] for case in cases]  # one row per event, in order
    assert [_tag(v) for v in got["user_impressions_1d"]] == [case[4] for case in cases]
    assert [_tag(v) for v in got["ad_impressions_1d"]] == [case[5] for case in cases]
    first = got.iloc[0]
    assert first["user_segment"] == "user_segment-12" and first["ad_category"] == "ad_category-102"


def test_feature_service_in_one_call(store):
    # With the asof engine Feast's own call over the whole service is right as it is;
    # Feast's Dask engine loses rows on the same input (next test).
    events = pd.DataFrame(
        {
            "event_timestamp": [day(1, 12), day(4, 12), day(4, 12)],
            "user_id": [1, 1, 1],
            "ad_id": [10, 11, 10],
        }
    )
    got = store.get_historical_features(
        events, features=store.get_feature_service(schema.FEATURE_SERVICE)
    ).to_df()
    if store.config.offline_store.type == "file":
        assert len(got) < len(events)
        return
    assert list(got.columns) == [*events.columns, *schema.USER_FEATURES, *schema.AD_FEATURES]
    assert [_tag(v) for v in got["user_clicks_1d"]] == [None, 12, 12]
    assert [_tag(v) for v in got["ad_clicks_1d"]] == [101, 112, 102]


def test_feast_dask_join_defects_still_present(tmp_path):
    """Why training_set.point_in_time_join calls Feast per view: if this fails, Feast's
    Dask store has been fixed and the workaround can be reconsidered."""
    store, _ = make_store(tmp_path)
    events = pd.DataFrame(
        {
            "event_id": [1, 2, 3],
            "event_timestamp": [day(1, 12), day(4, 12), day(4, 12)],
            "user_id": [1, 1, 1],
            "ad_id": [10, 11, 10],
        }
    )
    got = store.get_historical_features(
        events, features=store.get_feature_service(schema.FEATURE_SERVICE)
    ).to_df()
    # event 1 (before user 1's first row) is dropped; events 2 and 3 collapse into one
    assert len(got) == 1


def test_feast_join_is_inclusive_at_the_feature_timestamp(store):
    # Feast itself, without kubeloop's wrapping: `feature_timestamp <= event_timestamp`.
    entity_df = pd.DataFrame(
        {"user_id": [1, 1], "event_timestamp": [day(5), day(5) - timedelta(seconds=1)]}
    )
    got = store.get_historical_features(
        entity_df, features=[f"{schema.USER_FEATURE_VIEW}:user_clicks_7d"]
    ).to_df()
    got = got.sort_values("event_timestamp")
    assert [_tag(v) for v in got["user_clicks_7d"]] == [12, 13]


# --- training set ----------------------------------------------------------------------


def _events(rows: list[tuple[int, datetime, int, int]]) -> pa.Table:
    columns: dict[str, list] = {f.name: [] for f in schema.EVENT_SCHEMA}
    for event_id, ts, user_id, ad_id in rows:
        values = {
            "event_id": event_id,
            "event_timestamp": ts,
            "user_id": user_id,
            "ad_id": ad_id,
            "hour": ts.hour,
            "weekday": ts.weekday(),
            "slot_position": event_id % 3,
            "device": "mobile",
            "click": event_id % 2,
            "true_ctr": 0.25,
        }
        for field in schema.EVENT_SCHEMA:
            default = "x" if pa.types.is_string(field.type) else 1
            columns[field.name].append(values.get(field.name, default))
    return pa.table(columns, schema=schema.EVENT_SCHEMA)


def write_lake(lake: Path, rows: list[tuple[int, datetime, int, int]]) -> None:
    """Hive-partitioned event log, one file per day, no `day` column inside files."""
    table = _events(rows)
    days = sorted({ts.date() for _, ts, _, _ in rows})
    for d in days:
        part = lake / schema.EVENTS_DIR / f"{schema.PARTITION_KEY}={d.isoformat()}"
        part.mkdir(parents=True)
        keep = [i for i, (_, ts, _, _) in enumerate(rows) if ts.date() == d]
        pq.write_table(table.take(keep), part / "part-00000.parquet")


LAKE_ROWS = [
    # written out of time order on purpose: the output must be sorted
    (30, day(4, 9), 3, 11),
    (10, day(1, 8), 1, 10),
    (11, day(1, 8), 2, 10),
    (20, day(3), 1, 10),
    (22, day(3, 23.5), 2, 11),
    (21, day(3), 1, 11),
    (31, day(4, 20), 404, 10),
]


def _oracle(rows: list[tuple[int, datetime, int, int]]) -> pd.DataFrame:
    """The point-in-time join written independently with pandas.merge_asof."""
    events = _events(rows).to_pandas()[schema.ENTITY_COLUMNS]
    events["event_timestamp"] = events["event_timestamp"].astype("datetime64[ns, UTC]")
    events = events.sort_values("event_timestamp")
    for table_schema, key, entity_rows in (
        (schema.USER_FEATURE_SCHEMA, "user_id", USER_ROWS),
        (schema.AD_FEATURE_SCHEMA, "ad_id", AD_ROWS),
    ):
        features = feature_table(table_schema, key, entity_rows).to_pandas()
        features[schema.FEATURE_TIMESTAMP] = features[schema.FEATURE_TIMESTAMP].astype(
            "datetime64[ns, UTC]"
        )
        events = pd.merge_asof(
            events,
            features.sort_values(schema.FEATURE_TIMESTAMP),
            left_on="event_timestamp",
            right_on=schema.FEATURE_TIMESTAMP,
            by=key,
            tolerance=pd.Timedelta(DEFAULT_TTL),
            allow_exact_matches=True,
        ).drop(columns=[schema.FEATURE_TIMESTAMP])
    # Recency to each event's own time, from the state as CTR's hourly materialization
    # leaves it (state_freshness_seconds=3600): the newest state row at or before the
    # event's hour.
    hour = events["event_timestamp"].dt.floor("h")
    for state_schema, key, entity_rows in (
        (schema.USER_STATE_SCHEMA, "user_id", USER_ROWS),
        (schema.AD_STATE_SCHEMA, "ad_id", AD_ROWS),
    ):
        state = feature_table(state_schema, key, entity_rows).to_pandas()
        state[schema.FEATURE_TIMESTAMP] = state[schema.FEATURE_TIMESTAMP].astype(
            "datetime64[ns, UTC]"
        )
        last = state_schema.names[2]
        events = (
            pd.merge_asof(
                events.assign(__as_of=hour).sort_values("__as_of"),
                state.sort_values(schema.FEATURE_TIMESTAMP),
                left_on="__as_of",
                right_on=schema.FEATURE_TIMESTAMP,
                by=key,
                allow_exact_matches=True,
            )
            .drop(columns=[schema.FEATURE_TIMESTAMP, "__as_of"])
            .sort_values(["event_timestamp", "event_id"])
            .reset_index(drop=True)
        )
        hour = events["event_timestamp"].dt.floor("h")
        now_us = events["event_timestamp"].astype("int64") // 1000
        hours = (now_us - events[last]).clip(lower=0) / 3_600_000_000
        events[last.replace("_state_last_us", "_hours_since_last")] = hours
    return events.sort_values(["event_timestamp", "event_id"]).reset_index(drop=True)


def test_training_set_is_the_point_in_time_join_of_the_lake(store, tmp_path):
    write_lake(tmp_path / "lake", LAKE_ROWS)
    out = tmp_path / "training" / "training_set.parquet"
    summary = build_training_set(store, str(tmp_path / "lake"), out, progress=False)

    assert summary.columns == schema.TRAINING_COLUMNS
    assert summary.rows == len(LAKE_ROWS) and summary.days == 3
    written = pq.read_table(out)
    assert written.schema.equals(training_schema())
    assert written.column_names == schema.TRAINING_COLUMNS
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left

    got = written.to_pandas()
    got["event_timestamp"] = got["event_timestamp"].astype("datetime64[ns, UTC]")
    expected = _oracle(LAKE_ROWS)[schema.TRAINING_COLUMNS]
    assert list(got["event_id"]) == [10, 11, 20, 21, 22, 30, 31]
    for (_, row), (_, want) in zip(got.iterrows(), expected.iterrows()):
        assert_same_values(row, want, f"event {want['event_id']}")


def test_training_set_of_chosen_days(store, tmp_path):
    write_lake(tmp_path / "lake", LAKE_ROWS)
    out = tmp_path / "ts.parquet"
    summary = build_training_set(
        store, str(tmp_path / "lake"), out, days=[day(4).date()], progress=False
    )
    assert summary.rows == 2
    assert pq.read_table(out, columns=["event_id"]).column(0).to_pylist() == [30, 31]
    with pytest.raises(LakeError, match="2024-03-09"):
        build_training_set(
            store, str(tmp_path / "lake"), out, days=[date(2024, 3, 9)], progress=False
        )
    with pytest.raises(LakeError, match="events"):
        build_training_set(store, str(tmp_path / "empty"), out, progress=False)


def test_training_set_reads_an_fsspec_lake(store, tmp_path):
    import fsspec

    write_lake(tmp_path / "lake", LAKE_ROWS)
    memory = fsspec.filesystem("memory")
    root = f"/kl_{uuid.uuid4().hex}"
    try:
        for path in (tmp_path / "lake").rglob("*.parquet"):
            memory.pipe(
                f"{root}/{path.relative_to(tmp_path / 'lake').as_posix()}", path.read_bytes()
            )
        summary = build_training_set(
            store, f"memory://{root}", tmp_path / "ts.parquet", progress=False
        )
    finally:
        memory.rm(root, recursive=True)
    assert summary.rows == len(LAKE_ROWS)


# --- bad offline tables -------------------------------------------------------------------


def _without(table: pa.Table, column: str) -> pa.Table:
    return table.drop_columns([column])


def _retyped(table: pa.Table, column: str) -> pa.Table:
    index = table.schema.get_field_index(column)
    return table.set_column(
        index, pa.field(column, pa.float64()), table.column(column).cast(pa.float64())
    )


@pytest.mark.parametrize(
    ("damage", "column", "message"),
    [
        (_without, "user_ctr_7d", "is missing"),
        (_retyped, "user_clicks_1d", "has type double, expected int64"),
    ],
)
def test_bad_feature_table_is_named_and_leaves_online_store_unchanged(
    tmp_path, damage, column, message
):
    store, _ = make_store(tmp_path)
    rows = [{"user_id": u, "ad_id": a} for u in USER_ROWS for a in AD_ROWS]
    before = online_features(store, rows)

    # New values (another tag) in a damaged table: loading them would change the answers.
    shifted = feature_table(schema.USER_FEATURE_SCHEMA, "user_id", USER_ROWS, tag_shift=1000)
    path = tmp_path / "features" / schema.USER_FEATURES_FILE
    pq.write_table(damage(shifted, column), path)

    with pytest.raises(FeatureTableError) as caught:
        materialize(store, progress=False)
    assert str(path) in str(caught.value) and repr(column) in str(caught.value)
    assert message in str(caught.value)
    assert (caught.value.path, caught.value.column) == (str(path), column)
    pd.testing.assert_frame_equal(online_features(store, rows), before)

    with pytest.raises(FeatureTableError, match=column):
        apply_definitions(store, tmp_path / "features")


def test_missing_feature_table_names_the_file(tmp_path):
    features = write_features(tmp_path / "features")
    os.remove(features / schema.AD_FEATURES_FILE)
    with pytest.raises(FeatureTableError, match="ad_features.parquet"):
        apply_definitions(open_store_at(tmp_path, features), features)


def open_store_at(root: Path, features: Path):
    write_repo(root / "repo", FeatureStoreSettings(), features)
    return open_store(root / "repo")


# --- command line ------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["file", "asof"])
def test_cli_apply_materialize_online_training_set(tmp_path, engine):
    from typer.testing import CliRunner

    from kubeloop.cli.features import app

    runner = CliRunner()
    features = write_features(tmp_path / "features")
    write_lake(tmp_path / "lake", LAKE_ROWS)
    repo = str(tmp_path / "repo")

    result = runner.invoke(
        app, ["apply", "--repo", repo, "--features", str(features), "--offline-store", engine]
    )
    assert result.exit_code == 0, result.output
    assert "ctr_model" in result.output and f"offline store: {engine}" in result.output

    result = runner.invoke(app, ["materialize", "--repo", repo, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "3 user keys and 2 ad keys" in result.output

    result = runner.invoke(
        app, ["online", "--repo", repo, "--key", "user_id=1", "--key", "ad_id=404"]
    )
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.output.strip().splitlines())
    assert lines["user_segment"] == "user_segment-13"
    assert lines["ad_category"] == "null"

    out = tmp_path / "ts.parquet"
    result = runner.invoke(
        app,
        [
            "training-set",
            "--repo",
            repo,
            "--lake",
            str(tmp_path / "lake"),
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).num_rows == len(LAKE_ROWS)

    result = runner.invoke(
        app, ["apply", "--repo", repo, "--features", str(features), "--redis", "x:1"]
    )
    assert isinstance(result.exception, FeatureStoreError)
