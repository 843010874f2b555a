"""`kubeloop data ...`: generate and inspect the data lake."""

from __future__ import annotations

import typer
from pydantic import ValidationError

from kubeloop.cli.options import DEFAULT_USE_CASE, LakeOption, UseCaseOption, lake_of

app = typer.Typer(help="Generate and inspect the event data lake.", no_args_is_help=True)


@app.command()
def generate(
    lake: str = typer.Option(
        ...,
        "--lake",
        help="Lake root: a local path or an fsspec URL (e.g. memory://lake, s3://bucket/lake).",
    ),
    use_case: UseCaseOption = DEFAULT_USE_CASE,
    events: int | None = typer.Option(None, help="Total events over all days."),
    days: int | None = typer.Option(None, help="Number of daily partitions."),
    users: int | None = typer.Option(None, help="Size of the user population (ctr)."),
    ads: int | None = typer.Option(None, help="Number of ads running from the first day (ctr)."),
    seed: int | None = typer.Option(
        None, help="Seed: the same seed and options give identical data."
    ),
    scenario: str | None = typer.Option(
        None, help="Change applied from --change-day on (one of the use case's scenarios)."
    ),
    change_day: int | None = typer.Option(
        None, help="0-based index of the first changed day (0 < K < days)."
    ),
    new_ads: int | None = typer.Option(None, help="Size of the new-ads wave (ctr, new_ads)."),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Show a progress bar on stderr."
    ),
) -> None:
    """Generate a seeded lake with the use case's generator, partitioned by day (replaces
    LAKE/events/). Options left out take the generator's defaults."""
    from rich.console import Console
    from rich.table import Table

    from kubeloop.usecase import load_use_case

    spec = load_use_case(use_case)
    source = spec.synthetic
    given = {
        "events": events,
        "days": days,
        "users": users,
        "ads": ads,
        "seed": seed,
        "scenario": scenario,
        "change_day": change_day,
        "new_ads": new_ads,
    }
    try:
        config = spec.generator_config({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise typer.BadParameter(_validation_message(exc)) from None
    summary = source.generate(config, lake, progress)

    table = Table(title="kubeloop data generate", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("lake", summary.lake)
    table.add_row(
        "scenario",
        summary.scenario + (f" from day {summary.change_day}" if summary.change_day else ""),
    )
    table.add_row("events", f"{summary.events:,}")
    table.add_row("partitions", str(summary.partitions))
    for name, value in summary.label_stats().items():
        table.add_row(name.replace("_", " "), f"{value:.4f}")
    table.add_row("seconds", f"{summary.seconds:.2f} ({summary.events_per_second:,.0f} events/s)")
    Console().print(table)


@app.command()
def describe(
    lake: LakeOption = None,
    use_case: UseCaseOption = DEFAULT_USE_CASE,
) -> None:
    """Print each day partition's row count, positive labels, label rate and (when the use
    case has an oracle column) its mean."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from fsspec.core import url_to_fs
    from rich.console import Console
    from rich.table import Table

    from kubeloop.data.lake import list_partitions
    from kubeloop.data.reads import VERIFYING_OPEN, lake_reads
    from kubeloop.errors import LakeError
    from kubeloop.usecase import load_use_case

    lake = lake_of(lake, use_case)
    events = load_use_case(use_case).events
    label, oracle = events.label, events.oracle
    columns = [label, *([oracle] if oracle else [])]
    partitions = list_partitions(lake)
    if not partitions:
        raise LakeError("the lake has no day partitions", path=lake)
    table = Table(title=f"lake {lake}")
    names = ["day", "rows", f"{label} = 1", f"{label} rate"]
    for name in [*names, *([f"mean {oracle}"] if oracle else [])]:
        table.add_column(name, justify="left" if name == "day" else "right")
    total_rows = total_clicks = 0
    for part in partitions:
        rows = clicks = 0
        true_sum = 0.0
        for path in part.files:
            fs, inner = url_to_fs(path)
            with lake_reads([path], lake), fs.open(inner, "rb") as fh:
                pf = pq.ParquetFile(fh, **VERIFYING_OPEN)
                # Row group by row group, and only the two columns needed: a day of any
                # size is described in bounded memory.
                for i in range(pf.num_row_groups):
                    rg = pf.read_row_group(i, columns=columns, use_threads=False)
                    rows += rg.num_rows
                    clicks += pc.sum(rg[label]).as_py() or 0
                    if oracle:
                        true_sum += pc.sum(rg[oracle]).as_py() or 0.0
        total_rows += rows
        total_clicks += clicks
        rate = f"{clicks / rows:.4f}" if rows else "-"
        cells = [part.day.isoformat(), f"{rows:,}", f"{clicks:,}", rate]
        if oracle:
            cells.append(f"{true_sum / rows:.4f}" if rows else "-")
        table.add_row(*cells)
    overall = f"{total_clicks / total_rows:.4f}" if total_rows else "-"
    totals = ["total", f"{total_rows:,}", f"{total_clicks:,}", overall, *([""] if oracle else [])]
    table.add_row(*totals, style="bold")
    Console().print(table)


@app.command()
def validate(
    lake: LakeOption = None,
    footers_only: bool = typer.Option(
        False, "--footers-only", help="Check layout and footers only; do not decode the pages."
    ),
    use_case: UseCaseOption = DEFAULT_USE_CASE,
) -> None:
    """Check the lake's layout, every file's schema and every data page; print what it holds.

    A problem ends the command with one line naming the file, the column and the fix.
    """
    from kubeloop.data.validate import validate_lake

    lake = lake_of(lake, use_case)
    manifest = validate_lake(lake, pages=not footers_only, use_case=use_case)
    days = manifest.days
    typer.echo(
        f"lake {lake} is valid: {manifest.rows:,} events in {len(manifest.partitions)} files, "
        f"{len(days)} days ({days[0].isoformat()} to {days[-1].isoformat()})"
    )


def _validation_message(exc: ValidationError) -> str:
    # One line per problem, naming the option the user typed rather than pydantic's loc.
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        option = f"--{field.replace('_', '-')}" if field else "options"
        lines.append(f"{option}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)
