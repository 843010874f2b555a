"""The feature build on Spark gives exactly the DuckDB build's tables, from the same SQL.

The compile checks need no JVM. The parity checks (marker `spark`) share one local
SparkSession (the `spark` fixture of conftest.py; skipped without Java, failing under
CI=true) and compare whole tables, schema and every value, not samples: the hand-built lake
of the point-in-time tests with extra edge cases, a generated 100k-event lake of every
registered use case, and the second use case defined in tests/test_usecase_boundary.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_features_build import CONFIG, D1, D2, H, M

from kubeloop import plugins
from kubeloop.features.build import FeatureBuildConfig, build_features
from kubeloop.features.spark_job import SparkEngineError
from kubeloop.features.spark_sql import SparkSqlError, to_spark_sql, to_spark_sql_split
from kubeloop.usecase import EntitySpec, UseCase, load_use_case
from usecases.ctr.schema import EVENT_SCHEMA

PARAMS = {"prior_positives": 0.8, "prior_strength": 20.0}
SPARK = CONFIG.model_copy(update={"engine": "spark"})


def _spec(query: str) -> EntitySpec:
    schema = pa.schema([("k", pa.int64()), ("feature_timestamp", pa.timestamp("us", tz="UTC"))])
    return EntitySpec("e", "k", "e_features", schema, query)


# --- compiling: no JVM --------------------------------------------------------------------


def test_duckdb_functions_become_their_spark_equivalents() -> None:
    sql = to_spark_sql(
        _spec("SELECT k, arg_max(a, (t, i)) AS a, epoch_us(t) / 3600.0 AS h FROM events"),
        PARAMS,
    )
    assert "UNIX_MICROS(t)" in sql and "EPOCH_US" not in sql
    # DuckDB's arg_max skips NULL values; Spark's max_by skips NULL orderings only.
    assert "MAX_BY(a, IF(NOT a IS NULL, (t, i), NULL))" in sql
    # A decimal literal would keep Spark's division in DECIMAL; DuckDB divides in DOUBLE.
    assert "CAST(3600.0 AS DOUBLE)" in sql


def test_parameters_become_exact_double_literals() -> None:
    sql = to_spark_sql(
        _spec("SELECT k, (c + $prior_positives) / (n + $prior_strength) AS r FROM events"),
        {"prior_positives": 20.0 * 0.07, "prior_strength": 20.0},
    )
    assert f"CAST({20.0 * 0.07!r} AS DOUBLE)" in sql and "CAST(20.0 AS DOUBLE)" in sql
    assert "$" not in sql and ":prior" not in sql


def test_an_unknown_parameter_or_unparsable_query_is_one_line() -> None:
    with pytest.raises(SparkSqlError, match=r"entity 'e'.*\$lookback") as err:
        to_spark_sql(_spec("SELECT k, $lookback AS x FROM events"), PARAMS)
    assert "\n" not in str(err.value)
    with pytest.raises(SparkSqlError, match="does not compile to Spark SQL") as err:
        to_spark_sql(_spec("SELECT k, FROM WHERE (("), PARAMS)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", plugins.names(plugins.USECASES))
def test_every_registered_use_case_compiles(name: str) -> None:
    for spec in load_use_case(name).tables:
        assert "FROM events" in to_spark_sql(spec, PARAMS)
        # Every table ends sorted by its key and time, which the engine sorts from a cache.
        body, keys = to_spark_sql_split(spec, PARAMS)
        assert keys and keys.startswith(spec.join_key)
        assert body != to_spark_sql(spec, PARAMS) and body in to_spark_sql(spec, PARAMS)


def test_spark_refuses_a_filesystem_it_cannot_read(tmp_path: Path) -> None:
    import fsspec
    from test_features_build import random_events, write_lake

    local = write_lake(tmp_path / "lake", random_events(seed=3, n=20))
    fs = fsspec.filesystem("memory")
    url = f"memory://kubeloop-spark-{tmp_path.name}"
    try:
        for path in sorted((local / "events").rglob("*.parquet")):
            fs.pipe(f"{url}/{path.relative_to(local).as_posix()}", path.read_bytes())
        with pytest.raises(SparkEngineError, match="use --engine duckdb"):
            build_features(url, tmp_path / "out", SPARK, progress=False)
    finally:
        fs.rm(url, recursive=True)
    assert not (tmp_path / "out").exists()


# --- parity: both engines, whole tables ---------------------------------------------------


def write_rows(root: Path, events: list[dict]) -> Path:
    """The CTR lake of `events` (user_id, ad_id, ts, click; any other column may be given,
    else it is derived from the ids as in test_features_build.write_lake)."""
    rows = []
    for i, e in enumerate(sorted(events, key=lambda e: (e["ts"], e.get("event_id", 0)))):
        ts = e["ts"]
        row = {
            "event_id": i,
            "event_timestamp": ts,
            "user_id": e["user_id"],
            "ad_id": e["ad_id"],
            "user_segment": f"seg{e['user_id'] % 3}",
            "user_country": f"c{e['user_id'] % 2}",
            "user_device_pref": "mobile" if e["user_id"] % 2 else "desktop",
            "advertiser_id": 100 + e["ad_id"] % 4,
            "ad_category": f"cat{e['ad_id'] % 5}",
            "ad_creative_age_days": 1.0 + e["ad_id"] + (ts - D1).total_seconds() / 86400,
            "hour": ts.hour,
            "weekday": ts.weekday(),
            "device": "mobile",
            "slot_position": 1,
            "click": e["click"],
            "true_ctr": 0.05,
        }
        row.update({k: v for k, v in e.items() if k in EVENT_SCHEMA.names})
        rows.append(row)
    frame = pd.DataFrame(rows)
    days = frame["event_timestamp"].map(lambda t: t.date().isoformat())
    for day in sorted(days.unique()):
        table = pa.Table.from_pandas(frame[days == day], schema=EVENT_SCHEMA, preserve_index=False)
        path = root / "events" / f"day={day}"
        path.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path / "part-00000.parquet")
    return root


def edge_case_events() -> list[dict]:
    """The point-in-time tests' hand-built events, and the cases where two engines could
    part ways."""
    us = dt.timedelta(microseconds=1)
    return [
        # test_features_build.hand_built: windows, hour edges, a microsecond before one
        {"user_id": 1, "ad_id": 7, "ts": D1 + 10 * H + 15 * M, "click": 1, "ad_creative_age_days": 3.0},
        {"user_id": 1, "ad_id": 7, "ts": D1 + 10 * H + 40 * M, "click": 0, "ad_creative_age_days": 3.5},
        {"user_id": 1, "ad_id": 7, "ts": D1 + 11 * H + 5 * M, "click": 1, "ad_creative_age_days": 4.0},
        {"user_id": 1, "ad_id": 7, "ts": D2 + 10 * H + 30 * M, "click": 0, "ad_creative_age_days": 5.0},
        {"user_id": 3, "ad_id": 8, "ts": D1 + 11 * H, "click": 1},
        {"user_id": 3, "ad_id": 8, "ts": D2 + 11 * H - us, "click": 0},
        {"user_id": 3, "ad_id": 8, "ts": D2 + 11 * H, "click": 1},
        # two events in one microsecond: event_id decides the attribute taken
        {"user_id": 4, "ad_id": 9, "ts": D1 + 5 * H, "click": 0, "event_id": 0, "user_segment": "first"},
        {"user_id": 4, "ad_id": 9, "ts": D1 + 5 * H, "click": 1, "event_id": 1, "user_segment": "second"},
        # the latest event's attribute is NULL: DuckDB's arg_max takes the latest non-NULL
        {"user_id": 5, "ad_id": 9, "ts": D1 + 6 * H + M, "click": 0, "user_country": "late"},
        {"user_id": 5, "ad_id": 9, "ts": D1 + 6 * H + 2 * M, "click": 0, "user_country": None},
        # every attribute of a bucket NULL
        {"user_id": 6, "ad_id": 10, "ts": D1 + 7 * H, "click": 0, "ad_category": None},
        # exactly 24 h and 168 h apart (the windows' closed and open edges), across midnight
        {"user_id": 7, "ad_id": 11, "ts": D1 + 23 * H + 59 * M, "click": 1},
        {"user_id": 7, "ad_id": 11, "ts": D2 + 23 * H + 59 * M, "click": 1},
        {"user_id": 7, "ad_id": 11, "ts": D1 + dt.timedelta(days=7) + 23 * H + 59 * M, "click": 0},
        {"user_id": 7, "ad_id": 11, "ts": D1 + dt.timedelta(days=8, hours=1), "click": 1},
        # a lone event at midnight
        {"user_id": 8, "ad_id": 12, "ts": D2, "click": 0},
    ]


def assert_same_tables(use_case: UseCase, duck: Path, spark: Path) -> None:
    """Every offline table: the same files, schema (types and order) and every value, in
    the same row order."""
    assert sorted(p.name for p in spark.iterdir()) == sorted(p.name for p in duck.iterdir())
    # Request-time state tables too, for a use case that has them.
    for spec in use_case.tables:
        a = pq.read_table(duck / spec.features_file)
        b = pq.read_table(spark / spec.features_file)
        assert b.schema.remove_metadata() == spec.feature_schema
        assert a.schema.remove_metadata() == b.schema.remove_metadata()
        assert a.num_rows == b.num_rows > 0
        for name in spec.feature_schema.names:
            assert a.column(name).to_pylist() == b.column(name).to_pylist(), (spec.name, name)


def build_both(lake: str, root: Path, use_case, config: FeatureBuildConfig = CONFIG):
    duck = build_features(lake, root / "duckdb", config, progress=False, use_case=use_case)
    spark = build_features(
        lake,
        root / "spark",
        config.model_copy(update={"engine": "spark"}),
        progress=False,
        use_case=use_case,
    )
    assert spark.model_dump(exclude={"seconds"}) == duck.model_dump(exclude={"seconds"})
    return root / "duckdb", root / "spark"


@pytest.mark.spark
@pytest.mark.slow
def test_edge_cases_give_identical_tables(spark, tmp_path: Path) -> None:
    lake = write_rows(tmp_path / "lake", edge_case_events())
    ctr = load_use_case("ctr")
    duck, sp = build_both(str(lake), tmp_path, ctr)
    assert_same_tables(ctr, duck, sp)
    users = pq.read_table(sp / "user_features.parquet").to_pandas().set_index("user_id")
    # the cases above happened, in both engines (each entity's first row is the row of its
    # first bucket: a table may add later rows where a window's content changes)
    assert users.loc[[4]].iloc[0]["user_segment"] == "second"
    assert users.loc[[5]].iloc[0]["user_country"] == "late"
    ads = pq.read_table(sp / "ad_features.parquet").to_pandas().set_index("ad_id")
    assert ads.loc[[10]].iloc[0]["ad_category"] is None


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("name", plugins.names(plugins.USECASES))
def test_a_generated_100k_event_lake_gives_identical_tables(spark, name, tmp_path: Path) -> None:
    use_case = load_use_case(name)
    config = use_case.generator_config({"events": 100_000, "days": 8, "seed": 11})
    use_case.synthetic.generate(config, str(tmp_path / "lake"), False)
    duck, sp = build_both(str(tmp_path / "lake"), tmp_path, use_case)
    assert_same_tables(use_case, duck, sp)


@pytest.mark.spark
@pytest.mark.slow
def test_parts_on_a_scratch_store_give_the_same_tables(spark, tmp_path: Path) -> None:
    # In a SparkApplication the executors write Spark's part files to storage they all
    # reach (SparkSettings.scratch_uri, s3a:// there), and the driver merges them from it.
    lake = write_rows(tmp_path / "lake", edge_case_events())
    ctr = load_use_case("ctr")
    scratch = tmp_path / "scratch"
    config = CONFIG.model_copy(
        update={"engine": "spark", "spark": CONFIG.spark.model_copy(update={"scratch_uri": str(scratch)})}
    )
    build_features(str(lake), tmp_path / "spark", config, progress=False, use_case=ctr)
    build_features(str(lake), tmp_path / "duckdb", CONFIG, progress=False, use_case=ctr)
    assert_same_tables(ctr, tmp_path / "duckdb", tmp_path / "spark")
    assert not scratch.exists() or not any(scratch.iterdir()), "the parts are removed once merged"


@pytest.mark.spark
@pytest.mark.slow
def test_the_second_use_case_gives_identical_tables(spark, tmp_path: Path) -> None:
    from test_usecase_boundary import fraud_events, make_use_case, write_fraud_lake

    lake = write_fraud_lake(tmp_path / "lake", fraud_events())
    use_case = make_use_case(str(lake))
    duck, sp = build_both(str(lake), tmp_path, use_case)
    assert_same_tables(use_case, duck, sp)


@pytest.mark.spark
@pytest.mark.slow
def test_cli_builds_with_engine_spark(spark, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kubeloop.cli.main import app

    lake = write_rows(tmp_path / "lake", edge_case_events())
    result = CliRunner().invoke(
        app,
        ["features", "build", "--lake", str(lake), "--out", str(tmp_path / "s"),
         "--engine", "spark", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    build_features(str(lake), tmp_path / "d", CONFIG, progress=False)
    assert_same_tables(load_use_case("ctr"), tmp_path / "d", tmp_path / "s")


# --- the pipeline's and the demo's engine ------------------------------------------------


def test_the_demo_passes_its_features_engine_to_the_pipeline(tmp_path: Path) -> None:
    from kubeloop.demo import DemoConfig
    from kubeloop.pipeline.params import TrainingRunParams

    config = DemoConfig.model_validate({"generator": {}, "features_engine": "spark"})
    assert DemoConfig.model_validate({"generator": {}}).features_engine == "duckdb"
    params = TrainingRunParams(
        lake_uri="l", features_uri="f", feature_repo="r", registry_uri="g",
        feature_config={"build": {"engine": config.features_engine}},
    )
    assert params.arguments()["engine"] == "spark"
    with pytest.raises(ValueError, match="engine"):
        DemoConfig.model_validate({"generator": {}, "features_engine": "flink"})


@pytest.mark.spark
@pytest.mark.slow
def test_the_features_step_with_engine_spark_gives_the_same_training_set(
    spark, tmp_path: Path
) -> None:
    """The pipeline's `engine` parameter reaches the build; the training set the models
    are fitted on is the same file content, so the same seed gives the same metrics."""
    import json

    from kubeloop.pipeline.steps import features_step

    use_case = load_use_case("ctr")
    config = use_case.generator_config({"events": 20_000, "days": 3, "seed": 5})
    use_case.synthetic.generate(config, str(tmp_path / "lake"), False)
    sets = {}
    for engine in ("duckdb", "spark"):
        run = tmp_path / engine
        summary = features_step(
            str(tmp_path / "lake"), str(run / "features"), str(run / "repo"),
            json.dumps({"progress": False}), str(run / "training.parquet"),
            str(run / "summary.json"), "ctr", engine=engine,
        )
        assert summary["rows_offline"] > 0
        sets[engine] = pq.read_table(run / "training.parquet")
    assert sets["duckdb"].schema == sets["spark"].schema
    assert sets["duckdb"].to_pylist() == sets["spark"].to_pylist()
    with pytest.raises(ValueError, match="engine"):
        features_step(
            str(tmp_path / "lake"), str(tmp_path / "x"), str(tmp_path / "xr"), "{}",
            str(tmp_path / "x.parquet"), str(tmp_path / "x.json"), "ctr", engine="flink",
        )
