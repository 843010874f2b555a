"""The feature build on Spark: the same tables as the DuckDB job, from the same SQL.

`kubeloop features build --engine spark` (and the pipeline's features step with
`engine: spark`) runs this instead of DuckDB. Everything around the queries is the build's
own (`kubeloop.features.build`): the lake is validated first, tables are staged and checked
against the feature schemas, and published all-or-nothing. What differs is who runs the
SQL: each entity's `EntitySpec.query`, compiled to Spark SQL by
`kubeloop.features.spark_sql`, runs in a SparkSession (local mode by default; in the
cluster, the driver of the SparkApplication the pipeline creates), Spark writes it as
Parquet part files in query order, and those are streamed into the one file per entity the
feature store reads, cast to exactly the entity's schema.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.errors import KubeloopError
from kubeloop.features.spark_app import SparkApplicationSettings

LOG4J2_PROPERTIES = Path(__file__).with_name("spark-log4j2.properties")
# Rows per Arrow batch and Parquet row group, as the DuckDB engine writes them
# (kubeloop.features.build.BATCH_ROWS; not imported: build imports this module).
BATCH_ROWS = 131_072


class SparkEngineError(KubeloopError):
    """The Spark engine cannot run here (no Java, a lake Spark cannot read)."""


class SparkSettings(BaseModel):
    """How the feature build's SparkSession is made (`engine: spark`).

    The defaults suit one machine: two local cores, a handful of shuffle partitions (the
    aggregated tables are small next to the events), no web UI. In the cluster, the
    SparkApplication's driver passes its own master and sizes."""

    model_config = ConfigDict(extra="forbid")

    master: str = Field("local[2]", description="Spark master URL; local[N] runs in this process")
    shuffle_partitions: int = Field(4, ge=1, description="spark.sql.shuffle.partitions")
    driver_memory: str = Field("1g", description="spark.driver.memory (local mode: all of Spark)")
    submit: Literal["local", "operator"] = Field(
        "local",
        description="local: a SparkSession in this process; operator: a SparkApplication for "
        "the Kubeflow Spark Operator (in the cluster), whose driver runs the same build",
    )
    application: SparkApplicationSettings = Field(
        default_factory=SparkApplicationSettings, description="submit: operator only"
    )
    scratch_uri: str | None = Field(
        None,
        description="where Spark writes its part files before they are merged into one table "
        "per entity; unset: the build's local staging directory. With executors in other pods "
        "(a SparkApplication) it must be storage they all reach, e.g. s3://bucket/prefix",
    )


def java_available() -> bool:
    """Whether a Java runtime is on PATH or under JAVA_HOME (PySpark starts a JVM)."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return True
    return shutil.which("java") is not None


def session_builder(settings: SparkSettings):
    """A SparkSession builder with the engine's fixed settings: UTC session time zone (hour
    buckets are UTC, as in DuckDB), Parquet timestamps as INT64 microseconds (the schema's
    type; Spark's default INT96 is not), no UI, logs at WARN and above."""
    from pyspark.sql import SparkSession

    if settings.master.startswith("local"):
        # Spark otherwise warns that the host name resolves to loopback, on every start.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    quiet = f"-Dlog4j2.configurationFile=file:{LOG4J2_PROPERTIES}"
    builder = (
        SparkSession.builder.master(settings.master)
        .appName("kubeloop-features")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
        .config("spark.default.parallelism", str(settings.shuffle_partitions))
        .config("spark.driver.memory", settings.driver_memory)
        .config("spark.driver.extraJavaOptions", quiet)
        .config("spark.executor.extraJavaOptions", quiet)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        # Spark's _SUCCESS and .crc files are not Parquet; the merge reads part files only.
        .config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
    )
    return builder


@contextmanager
def spark_session(settings: SparkSettings):
    """The active SparkSession if there is one (a test's, a SparkApplication driver's), else
    a new one that is stopped on exit."""
    if not java_available():
        raise SparkEngineError(
            "engine spark needs Java 17+ (PySpark starts a JVM): install a JDK or set "
            "JAVA_HOME, or build with --engine duckdb"
        )
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    session = session_builder(settings).getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


def _tables(use_case) -> tuple:
    """Every offline table the build writes: the entities' feature tables, then the
    request-time state tables of a use case that has them (`UseCase.tables`)."""
    return tuple(use_case.tables)


def _spark_path(path: str) -> str:
    # Hadoop's S3 connector is s3a://; fsspec's s3:// names the same objects.
    return "s3a://" + path[len("s3://") :] if path.startswith("s3://") else path


def _merge_parts(parts_uri: str, schema, path: Path) -> int:
    """Stream Spark's part files under `parts_uri` (a local directory or an fsspec URL; in
    name order, which is the query's order) into one Parquet file with exactly `schema`;
    return its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(parts_uri)
    names = sorted(
        p for p in fs.ls(root, detail=False)
        if p.rsplit("/", 1)[-1].startswith("part-") and p.endswith(".parquet")
    )
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for name in names:
            with fs.open(name, "rb") as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS):
                    table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
                    writer.write_table(table)
                    rows += table.num_rows
    return rows


def _remove(uri: str) -> None:
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(uri)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _query(spark, name: str, body: str, order: str | None):
    """(the entity's table as a DataFrame, what to call once it is written).

    With `order` (see spark_sql.to_spark_sql_split), the unsorted result is cached and the
    cache sorted, so that the sampling pass of Spark's global sort reads the cache instead
    of computing the windows a second time."""
    if order is None:
        return spark.sql(body), lambda: None
    from pyspark import StorageLevel

    unsorted = spark.sql(body).persist(StorageLevel.MEMORY_AND_DISK)
    view = f"kubeloop_unsorted_{name}"
    unsorted.createOrReplaceTempView(view)

    def release() -> None:
        spark.catalog.dropTempView(view)
        unsorted.unpersist()

    return spark.sql(f"SELECT * FROM {view} ORDER BY {order}"), release


def _check_output(path: Path, schema, rows: int) -> None:
    import pyarrow.parquet as pq

    found = pq.read_schema(path).remove_metadata()
    if not found.equals(schema):
        raise RuntimeError(f"{path} has schema {found}, expected {schema}")
    if pq.ParquetFile(path).metadata.num_rows != rows:
        raise RuntimeError(f"{path} holds a different number of rows than were written")


def stage_tables(manifest, config, staging: Path, step, use_case) -> tuple[int, dict[str, int]]:
    """Write every table (`_tables`) into `staging` with Spark (the DuckDB engine's
    `_stage_tables` counterpart); return (events, rows per table)."""
    from kubeloop.features.spark_sql import to_spark_sql_split

    params = {
        "prior_positives": config.prior_strength * config.ctr_prior,
        "prior_strength": config.prior_strength,
    }
    # Compile before starting a JVM: a query Spark cannot run fails in a second.
    queries = {spec.name: to_spark_sql_split(spec, params) for spec in _tables(use_case)}
    if not manifest.local and not manifest.lake_root.startswith(("s3://", "s3a://", "gs://")):
        raise SparkEngineError(
            f"engine spark reads local, s3:// and gs:// lakes, not {manifest.lake_root}; "
            "use --engine duckdb for other fsspec filesystems"
        )
    rows: dict[str, int] = {}
    with spark_session(config.spark) as spark:
        step("read")
        columns = use_case.events.columns.names
        # The validated file list is read, not the directory, as in the DuckDB engine.
        events_df = spark.read.parquet(*(_spark_path(f) for f in manifest.files)).select(*columns)
        events_df.createOrReplaceTempView("events")
        events = events_df.count()
        if events != manifest.rows:
            raise RuntimeError(f"read {events} events but the lake's footers count {manifest.rows}")
        scratch = config.spark.scratch_uri
        for spec in _tables(use_case):
            step(f"aggregate {spec.name}")
            if scratch:
                parts = f"{scratch.rstrip('/')}/{spec.name}"
            else:
                parts = str(staging / f"{spec.name}.spark-parts")
            # Overwrite: a retried driver finds its earlier attempt's parts there.
            table, release = _query(spark, spec.name, *queries[spec.name])
            table.write.mode("overwrite").parquet(_spark_path(parts))
            release()
            rows[spec.name] = _merge_parts(parts, spec.feature_schema, staging / spec.features_file)
            _remove(parts)
        spark.catalog.dropTempView("events")
    step("write")
    for spec in _tables(use_case):
        _check_output(staging / spec.features_file, spec.feature_schema, rows[spec.name])
    return events, rows


def _custom_objects_api():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def publish_tables(local_dir: Path, uri: str, use_case) -> None:
    """Copy the built tables (one file per entity) from `local_dir` to `uri`, a directory
    or an fsspec URL (the driver's side of an operator build)."""
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(uri)
    fs.makedirs(root, exist_ok=True)
    for spec in _tables(use_case):
        fs.put_file(str(Path(local_dir) / spec.features_file), f"{root.rstrip('/')}/{spec.features_file}")


def fetch_tables(uri: str, out_dir: Path, use_case) -> dict[str, int]:
    """Copy the tables the driver published at `uri` into `out_dir`, each checked against
    its schema before any replaces an earlier build's file; return the rows per table."""
    import tempfile

    import pyarrow.parquet as pq
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(uri)
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.fetch-", dir=out_dir.parent))
    try:
        rows = {}
        for spec in _tables(use_case):
            local = staging / spec.features_file
            fs.get_file(f"{root.rstrip('/')}/{spec.features_file}", str(local))
            rows[spec.name] = pq.ParquetFile(local).metadata.num_rows
            _check_output(local, spec.feature_schema, rows[spec.name])
        # Every file is fetched and checked before the first one replaces an earlier build's.
        out_dir.mkdir(parents=True, exist_ok=True)
        for spec in _tables(use_case):
            os.replace(staging / spec.features_file, out_dir / spec.features_file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rows


def submit_to_operator(
    lake_root: str, out_dir: Path, config, use_case, *, api=None
) -> tuple[int, dict[str, int]]:
    """Run the build as a SparkApplication (`spark.submit: operator`): create the
    application, wait for it (kubeloop.features.spark_app.run_application: a failed driver
    fails this call with its error), then copy the tables its driver published on the object
    store (`application.features_uri(name)`) into `out_dir`, where this step's Feast reads
    them. Returns (events, rows per entity). The driver validates the lake (its
    `build_features` does), so a bad lake fails the application with the LakeError."""
    import uuid

    from kubeloop.features.spark_app import render_application, run_application

    settings = config.spark.application
    name = f"kubeloop-features-{uuid.uuid4().hex[:12]}"
    # The driver builds with its own submitted session: the same config, run there, with
    # Spark's part files on storage every executor reaches.
    spark = config.spark.model_copy(
        update={"submit": "local", "scratch_uri": settings.parts_uri(name)}
    )
    driver_config = config.model_copy(update={"spark": spark}).model_dump_json()
    published = settings.features_uri(name)
    body = render_application(name, lake_root, published, use_case.name, driver_config, settings)
    run_application(api or _custom_objects_api(), body, settings)
    rows = fetch_tables(published, out_dir, use_case)
    events = _published_events(published)
    return events, rows


SUMMARY_FILE = "build-summary.json"


def _published_events(uri: str) -> int:
    import json

    from fsspec.core import url_to_fs

    fs, root = url_to_fs(uri)
    with fs.open(f"{root.rstrip('/')}/{SUMMARY_FILE}", "r") as handle:
        return int(json.load(handle)["events"])
