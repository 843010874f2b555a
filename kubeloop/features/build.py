"""`kubeloop features build`: the ETL from the event lake to the offline feature tables.

A row of a feature table for entity E at feature_timestamp T summarises only events of E
with event_timestamp < T. Rows are emitted at the end of every hour in which E had an
event, so Feast's point-in-time join (latest row with T <= t) never lets an event see
itself or anything after it. The queries are the use case's (`EntitySpec.query`, e.g.
usecases/ctr/features.py); this module runs them, one offline table per entity.

The build is all-or-nothing: the lake is validated before anything is written, both tables
are written into a staging directory next to the output, checked against the schemas, and
only then moved into place; any failure leaves the previous tables as they were.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from kubeloop.data.reads import lake_reads
from kubeloop.data.validate import LakeManifest, validate_lake
from kubeloop.features import spark_job
from kubeloop.features.spark_job import SparkSettings
from kubeloop.usecase import EntitySpec, UseCase, resolve_use_case

# Rows per Arrow batch (and Parquet row group): bounds the Python side's memory whatever
# the table size, while DuckDB spills its own state under memory_limit.
BATCH_ROWS = 131_072


class FeatureBuildConfig(BaseModel):
    """Settings of the feature build.

    A use case's SQL may smooth a rate of the label with this prior, as
    ``(positives + $prior_positives) / (events + $prior_strength)`` where
    ``$prior_positives = prior_strength * ctr_prior``. The prior is a fixed setting rather
    than a rate estimated from the data, so no information from after a row's timestamp
    can reach it.
    """

    model_config = ConfigDict(extra="forbid")

    ctr_prior: float = Field(0.04, ge=0.0, le=1.0, description="prior rate of the label")
    prior_strength: float = Field(20.0, ge=0.0, description="weight of the prior, in impressions")
    memory_limit: str = Field(
        "2GB", description="DuckDB memory_limit; beyond it DuckDB spills to disk"
    )
    threads: int = Field(2, ge=1, description="DuckDB worker threads")
    engine: Literal["duckdb", "spark"] = Field(
        "duckdb",
        description="who runs the use case's SQL: DuckDB in this process, or Spark (the same "
        "SQL compiled by SQLGlot, kubeloop.features.spark_job); both write the same tables",
    )
    spark: SparkSettings = Field(default_factory=SparkSettings, description="engine spark only")


class FeatureBuildSummary(BaseModel):
    """What a build read and wrote."""

    model_config = ConfigDict(extra="forbid")

    events: int
    rows: dict[str, int] = Field(
        description="rows written per table, by entity (or request-time state table) name"
    )
    seconds: float

    @property
    def total_rows(self) -> int:
        """Rows of every offline table together."""
        return sum(self.rows.values())

    @property
    def events_per_second(self) -> float:
        """Throughput of the whole build, validation and writing included."""
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def _connect(manifest: LakeManifest, config: FeatureBuildConfig, spill_dir: Path):
    import duckdb

    con = duckdb.connect(
        config={
            "memory_limit": config.memory_limit,
            "threads": config.threads,
            "temp_directory": str(spill_dir),
            # Ordering comes from the queries' ORDER BY; not preserving scan order lets
            # DuckDB stream and spill with less memory.
            "preserve_insertion_order": False,
        }
    )
    # DuckDB's own bar would interleave with the per-step one.
    con.execute("SET enable_progress_bar = false")
    # Hour buckets are truncated in the session time zone and TIMESTAMPTZ values are
    # handed to Arrow in it: UTC keeps both equal to the lake's UTC instants.
    con.execute("SET TimeZone = 'UTC'")
    if not manifest.local:
        from fsspec.core import url_to_fs

        fs, _ = url_to_fs(manifest.lake_root)
        con.register_filesystem(fs)
    return con


def _steps(use_case: UseCase) -> tuple[str, ...]:
    return ("validate", "read", *(f"aggregate {e.name}" for e in use_case.tables), "write")


def _create_events_view(con, manifest: LakeManifest, schema: pa.Schema) -> int:
    columns = ", ".join(f.name for f in schema)
    # The validated file list is read, not a glob, so files that validation skipped
    # (hidden, not .parquet) cannot slip in; the day column is not needed.
    con.read_parquet(manifest.files, hive_partitioning=False).select(columns).create_view("events")
    # fetchall drains the streamed result, which would otherwise hold the connection.
    return con.execute("SELECT count(*) FROM events").fetchall()[0][0]


def _query_params(query: str, params: dict) -> dict:
    # DuckDB refuses named parameters the query does not use.
    return {k: v for k, v in params.items() if f"${k}" in query}


def _write_query(con, spec: EntitySpec, params: dict, path: Path) -> int:
    """Stream one entity's query into a Parquet file with exactly its feature schema;
    return its rows."""
    schema = spec.feature_schema
    query = spec.query
    reader = con.sql(query, params=_query_params(query, params)).to_arrow_reader(BATCH_ROWS)
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for batch in reader:
            table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
            writer.write_table(table)
            rows += table.num_rows
    return rows


def _check_output(path: Path, schema: pa.Schema, rows: int) -> None:
    found = pq.read_schema(path).remove_metadata()
    if not found.equals(schema):
        raise RuntimeError(f"{path} has schema {found}, expected {schema}")
    if pq.ParquetFile(path).metadata.num_rows != rows:
        raise RuntimeError(f"{path} holds a different number of rows than were written")


def _publish(staging: Path, out_dir: Path, names: list[str]) -> None:
    """Move the staged files into out_dir; if any move fails, put the previous ones back.

    Each os.replace is atomic; the rollback covers a failure between them, so a failed
    build never leaves one entity's new table next to another's old one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    backups: dict[str, Path] = {}
    for name in names:
        target = out_dir / name
        if target.exists():
            backup = staging / f"{name}.previous"
            try:
                os.link(target, backup)
            except OSError:
                shutil.copy2(target, backup)
            backups[name] = backup
    moved: list[str] = []
    try:
        for name in names:
            os.replace(staging / name, out_dir / name)
            moved.append(name)
    except BaseException:
        for name in moved:
            if name in backups:
                os.replace(backups[name], out_dir / name)
            else:
                (out_dir / name).unlink(missing_ok=True)
        raise


def _run_queries(
    con,
    manifest: LakeManifest,
    config: FeatureBuildConfig,
    staging: Path,
    step,
    use_case: UseCase,
) -> tuple[int, dict[str, int]]:
    """Read the lake and write every entity's feature query into `staging`."""
    step("read")
    events = _create_events_view(con, manifest, use_case.events.columns)
    if events != manifest.rows:
        raise RuntimeError(f"read {events} events but the lake's footers count {manifest.rows}")
    params = {
        "prior_positives": config.prior_strength * config.ctr_prior,
        "prior_strength": config.prior_strength,
    }
    rows: dict[str, int] = {}
    for spec in use_case.tables:
        step(f"aggregate {spec.name}")
        rows[spec.name] = _write_query(con, spec, params, staging / spec.features_file)
    return events, rows


def _stage_tables(
    manifest: LakeManifest, config: FeatureBuildConfig, staging: Path, step, use_case: UseCase
) -> tuple[int, dict[str, int]]:
    """Write every table into `staging` and check them; return (events, rows per entity)."""
    spill = staging / "duckdb_tmp"
    spill.mkdir()
    con = _connect(manifest, config, spill)
    try:
        # The lake was validated, but a file can still fail under DuckDB (replaced since,
        # or damaged in a way only DuckDB trips on): lake_reads turns that into the
        # LakeError naming the file and column. Nothing is published: staging is discarded.
        with lake_reads(manifest.files, manifest.lake_root):
            events, rows = _run_queries(con, manifest, config, staging, step, use_case)
    finally:
        con.close()
    step("write")
    for spec in use_case.tables:
        _check_output(staging / spec.features_file, spec.feature_schema, rows[spec.name])
    return events, rows


def build_features(
    lake_root: str,
    out_dir: Path,
    config: FeatureBuildConfig,
    progress: bool = True,
    *,
    use_case: UseCase | str | None = None,
) -> FeatureBuildSummary:
    """Build the use case's offline feature tables from the lake at `lake_root`.

    Writes ``out_dir/<feature view>.parquet`` for every entity of `use_case` (a spec, a
    registered name, or None for the default), with exactly the entity's feature schema,
    replacing earlier ones only if the whole build succeeds. `lake_root` is a local path or
    an fsspec URL. What a row holds is the entity's query's (see `EntitySpec.query`: a row
    at T summarises only events strictly before T).

    Raises LakeError (nothing written) when the lake fails :func:`validate_lake` or a
    file cannot be read by DuckDB (naming the file and column, see kubeloop.data.reads).
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    use_case = resolve_use_case(use_case)
    if config.engine == "spark" and config.spark.submit == "operator":
        events, rows = spark_job.submit_to_operator(lake_root, Path(out_dir), config, use_case)
        return FeatureBuildSummary(events=events, rows=rows, seconds=time.perf_counter() - started)
    steps = _steps(use_case)
    out_dir = Path(out_dir).expanduser().resolve()
    bar = tqdm(total=len(steps), unit="step", disable=not progress)

    def step(name: str) -> None:
        # A step starting means the one before it is done.
        if steps.index(name) > 0:
            bar.update()
        bar.set_description(f"features: {name}")

    try:
        step("validate")
        manifest = validate_lake(lake_root, use_case=use_case)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
        try:
            stage = _stage_tables if config.engine == "duckdb" else spark_job.stage_tables
            events, rows = stage(manifest, config, staging, step, use_case)
            _publish(staging, out_dir, [e.features_file for e in use_case.tables])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        bar.update()
    except BaseException:
        # Wipe the bar so that the error the CLI prints is the only line left.
        bar.leave = False
        raise
    finally:
        bar.close()

    return FeatureBuildSummary(
        events=events,
        rows=rows,
        seconds=time.perf_counter() - started,
    )
