"""`kubeloop features ...`: ETL, Feast apply, materialization, training set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kubeloop.cli.options import DEFAULT_USE_CASE, LakeOption, UseCaseOption, lake_of

app = typer.Typer(
    help="Build features, apply the Feast repo, materialize, build the training set.",
    no_args_is_help=True,
)

FeastRepoOption = Annotated[
    Path, typer.Option("--repo", help="Feast repository directory written by `apply`.")
]
"""`--repo DIR` of the verbs that read the Feast repository `apply` wrote (required)."""


@app.command("build")
def build(
    lake: LakeOption = None,
    out: Path = typer.Option(
        ..., "--out", help="Directory for the offline tables (<feature view>.parquet each)."
    ),
    use_case: UseCaseOption = DEFAULT_USE_CASE,
    ctr_prior: float = typer.Option(
        0.04, "--ctr-prior", help="Prior rate of the label in the use case's smoothed rates."
    ),
    prior_strength: float = typer.Option(
        20.0, "--prior-strength", help="Weight of the prior, in events."
    ),
    memory_limit: str = typer.Option(
        "2GB", "--memory-limit", help="DuckDB memory limit; beyond it DuckDB spills to disk."
    ),
    threads: int = typer.Option(2, "--threads", help="DuckDB worker threads."),
    engine: str = typer.Option(
        "duckdb",
        "--engine",
        help="duckdb (in this process) or spark (PySpark in local mode: the same SQL, "
        "compiled by SQLGlot; needs Java 17+). Both write the same tables.",
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not show per-step progress."),
) -> None:
    """Build the use case's point-in-time feature tables (one per entity) from the lake."""
    # Imported here so that `kubeloop --help` does not pay for the ETL's imports.
    from rich.console import Console
    from rich.table import Table

    from kubeloop.features.build import FeatureBuildConfig, build_features

    config = FeatureBuildConfig(
        ctr_prior=ctr_prior,
        prior_strength=prior_strength,
        memory_limit=memory_limit,
        threads=threads,
        engine=engine,
    )
    summary = build_features(
        lake_of(lake, use_case), out, config, progress=not no_progress, use_case=use_case
    )

    table = Table(title=f"features written to {out}", show_header=False)
    table.add_row("events read", f"{summary.events:,}")
    for entity, rows in summary.rows.items():
        table.add_row(f"{entity} feature rows", f"{rows:,}")
    table.add_row("seconds", f"{summary.seconds:.2f}")
    table.add_row("events/s", f"{summary.events_per_second:,.0f}")
    Console().print(table)


# --- Feast repository: apply, materialize, training set, online lookup -----------------


@app.command("apply")
def apply(
    repo: Path = typer.Option(
        ..., "--repo", help="Feast repository directory (created if missing)."
    ),
    features: Path = typer.Option(
        ..., "--features", help="Directory holding the offline tables `features build` wrote."
    ),
    use_case: UseCaseOption = DEFAULT_USE_CASE,
    online_store: str = typer.Option(
        "sqlite", "--online-store", help="Online store: sqlite (embedded, default) or redis."
    ),
    redis_url: str | None = typer.Option(
        None,
        "--redis-url",
        "--redis_url",
        help="Redis of the online store, with --online-store redis: redis://host:port/db or "
        "Feast's host:port form (default 127.0.0.1:6379).",
    ),
    # The earlier spelling, kept for scripts (.github/workflows/kind-e2e.yaml passes it).
    redis: str | None = typer.Option(None, "--redis", hidden=True),
    offline_store: str = typer.Option(
        "file",
        "--offline-store",
        help="Historical retrieval engine over the Parquet tables: file (Feast's Dask store) "
        "or asof (same store, as-of merge: much faster training sets).",
    ),
    project: str = typer.Option("kubeloop", "--project", help="Feast project name."),
) -> None:
    """Write the Feast repository and register the feature definitions (feast apply).

    Writes --repo/feature_store.yaml and registers the use case's entities, one feature
    view per entity over the tables in --features, and its feature service.
    """
    # Feast is imported lazily by these modules: `kubeloop --help` stays fast.
    from kubeloop import plugins
    from kubeloop.errors import FeatureStoreError
    from kubeloop.features.store import (
        FeatureStoreSettings,
        apply_definitions,
        online_store_config,
        open_store,
        write_repo,
    )

    redis_url = redis_url if redis_url is not None else redis
    if redis_url is not None and online_store != "redis":
        raise FeatureStoreError("--redis-url is only used with --online-store redis")
    # Feast calls the same setting connection_string (feature_store.yaml's key).
    store_config = online_store_config(online_store, connection_string=redis_url)
    offline_stores = plugins.names(plugins.OFFLINE_STORES)
    if offline_store not in offline_stores:
        raise FeatureStoreError(
            f"--offline-store must be {' or '.join(offline_stores)}, got {offline_store!r}"
        )
    settings = FeatureStoreSettings(
        project=project, online_store=store_config, offline_store=offline_store
    )
    yaml_path = write_repo(repo, settings, features, use_case=use_case)
    store = open_store(repo)
    objects = apply_definitions(store, features, use_case=use_case)
    typer.echo(f"wrote {yaml_path}")
    typer.echo(
        f"applied {len(objects)} objects to project {project!r} "
        f"(online store: {online_store}, offline store: {offline_store}): "
        + ", ".join(o.name for o in objects)
    )


@app.command("materialize")
def materialize(
    repo: FeastRepoOption,
    end: str | None = typer.Option(
        None,
        "--end",
        help="Load rows strictly before this ISO time, UTC if no zone "
        "(default: just after the newest feature row).",
    ),
    no_progress: bool = typer.Option(
        False, "--no-progress", help="Silence Feast's progress output."
    ),
    use_case: UseCaseOption = DEFAULT_USE_CASE,
) -> None:
    """Load each entity's latest feature row into the online store.

    Every offline table is checked against the use case's feature schema first; a bad
    table is reported by file and column and the online store is left as it was.
    """
    from datetime import datetime

    from kubeloop.errors import FeatureStoreError
    from kubeloop.features.materialize import materialize as run_materialize
    from kubeloop.features.store import open_store

    end_at = None
    if end is not None:
        try:
            end_at = datetime.fromisoformat(end)
        except ValueError:
            raise FeatureStoreError(f"--end {end!r} is not an ISO date or time") from None
    summary = run_materialize(open_store(repo), end_at, progress=not no_progress, use_case=use_case)
    counts = " and ".join(f"{n:,} {entity} keys" for entity, n in summary.entities.items())
    typer.echo(
        f"materialized {counts} "
        f"({summary.rows_online:,} entity keys) into {summary.online_store} "
        f"up to {summary.end.isoformat()} in {summary.seconds:.2f}s"
    )


@app.command("training-set")
def training_set(
    repo: FeastRepoOption,
    lake: LakeOption = None,
    out: Path = typer.Option(..., "--out", help="Parquet file to write."),
    day: list[str] | None = typer.Option(
        None, "--day", help="Only this day (YYYY-MM-DD); repeat for several (default: every day)."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not show per-day progress."),
    use_case: UseCaseOption = DEFAULT_USE_CASE,
) -> None:
    """Write the training set: every event joined point-in-time with the features.

    The join is Feast's get_historical_features over the use case's feature service; the
    output has the use case's training columns, sorted by event time.
    """
    from datetime import date

    from kubeloop.errors import FeatureStoreError
    from kubeloop.features.store import open_store
    from kubeloop.features.training_set import build_training_set

    days = None
    if day:
        try:
            days = [date.fromisoformat(d) for d in day]
        except ValueError as exc:
            raise FeatureStoreError(f"--day: {exc}") from None
    summary = build_training_set(
        open_store(repo),
        lake_of(lake, use_case),
        out,
        days=days,
        progress=not no_progress,
        use_case=use_case,
    )
    typer.echo(
        f"wrote {summary.rows:,} rows x {len(summary.columns)} columns to {out} "
        f"in {summary.seconds:.2f}s (Feast join {summary.seconds_feast:.2f}s)"
    )


@app.command("online")
def online(
    repo: FeastRepoOption,
    key: list[str] = typer.Option(
        ...,
        "--key",
        help="An entity key as JOIN_KEY=ID; one per entity of the use case (e.g. "
        "--key user_id=1 --key <other key>=2).",
    ),
    use_case: UseCaseOption = DEFAULT_USE_CASE,
) -> None:
    """Print the online feature vector of one entity-key row, as serving would fetch it."""
    import pandas as pd

    from kubeloop.errors import FeatureStoreError
    from kubeloop.features.online import online_features
    from kubeloop.features.store import open_store
    from kubeloop.usecase import load_use_case

    join_keys = load_use_case(use_case).join_keys
    row: dict[str, int] = {}
    for item in key:
        name, sep, value = item.partition("=")
        if not sep or name not in join_keys or not value.lstrip("-").isdigit():
            raise FeatureStoreError(
                f"--key {item!r} must be JOIN_KEY=INTEGER with JOIN_KEY one of {join_keys}"
            )
        row[name] = int(value)
    missing = [k for k in join_keys if k not in row]
    if missing:
        raise FeatureStoreError(f"--key is missing {', '.join(missing)} (one --key per entity)")
    frame = online_features(open_store(repo), [row], use_case=use_case)

    found = frame.iloc[0]
    width = max(len(name) for name in frame.columns)
    for name in frame.columns:
        value = found[name]
        typer.echo(f"{name:<{width}}  {'null' if pd.isna(value) else value}")
