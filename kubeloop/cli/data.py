"""`kubeloop data ...`: generate and inspect the data lake."""

from __future__ import annotations

import typer
from pydantic import ValidationError

app = typer.Typer(help="Generate and inspect the impression data lake.", no_args_is_help=True)

_SCENARIOS = ("baseline", "covariate_shift", "concept_drift", "new_ads")


@app.command()
def generate(
    lake: str = typer.Option(
        ...,
        "--lake",
        help="Lake root: a local path or an fsspec URL (e.g. memory://lake, s3://bucket/lake).",
    ),
    events: int = typer.Option(600_000, help="Total impressions over all days."),
    days: int = typer.Option(14, help="Number of daily partitions."),
    users: int = typer.Option(4_000, help="Size of the user population."),
    ads: int = typer.Option(600, help="Number of ads running from the first day."),
    seed: int = typer.Option(7, help="Seed: the same seed and options give identical data."),
    scenario: str = typer.Option(
        "baseline",
        help="Change applied from --change-day on: " + ", ".join(_SCENARIOS) + ".",
    ),
    change_day: int = typer.Option(
        10, help="0-based index of the first changed day (0 < K < days)."
    ),
    new_ads: int = typer.Option(150, help="Size of the new-ads wave (scenario new_ads)."),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", help="Show a progress bar on stderr."
    ),
) -> None:
    """Generate a seeded lake of ad impressions, partitioned by day (replaces LAKE/events/)."""
    from rich.console import Console
    from rich.table import Table

    from kubeloop.data.generator import GeneratorConfig, generate_lake

    try:
        config = GeneratorConfig(
            events=events,
            days=days,
            users=users,
            ads=ads,
            seed=seed,
            scenario=scenario,
            change_day=change_day,
            new_ads=new_ads,
        )
    except ValidationError as exc:
        raise typer.BadParameter(_validation_message(exc)) from None
    summary = generate_lake(config, lake, progress=progress)

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
    table.add_row("click rate", f"{summary.click_rate:.4f}")
    table.add_row("mean true_ctr", f"{summary.mean_true_ctr:.4f}")
    table.add_row("seconds", f"{summary.seconds:.2f} ({summary.events_per_second:,.0f} events/s)")
    Console().print(table)


@app.command()
def describe(
    lake: str = typer.Option(..., "--lake", help="Lake root: a local path or an fsspec URL."),
) -> None:
    """Print each day partition's row count, clicks, click rate and mean true_ctr."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from fsspec.core import url_to_fs
    from rich.console import Console
    from rich.table import Table

    from kubeloop.data.lake import list_partitions
    from kubeloop.data.reads import VERIFYING_OPEN, lake_reads
    from kubeloop.errors import LakeError

    partitions = list_partitions(lake)
    if not partitions:
        raise LakeError("the lake has no day partitions", path=lake)
    table = Table(title=f"lake {lake}")
    for name in ("day", "rows", "clicks", "CTR", "mean true_ctr"):
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
                    rg = pf.read_row_group(i, columns=["click", "true_ctr"], use_threads=False)
                    rows += rg.num_rows
                    clicks += pc.sum(rg["click"]).as_py() or 0
                    true_sum += pc.sum(rg["true_ctr"]).as_py() or 0.0
        total_rows += rows
        total_clicks += clicks
        ctr = f"{clicks / rows:.4f}" if rows else "-"
        mean_true = f"{true_sum / rows:.4f}" if rows else "-"
        table.add_row(part.day.isoformat(), f"{rows:,}", f"{clicks:,}", ctr, mean_true)
    overall = f"{total_clicks / total_rows:.4f}" if total_rows else "-"
    table.add_row("total", f"{total_rows:,}", f"{total_clicks:,}", overall, "", style="bold")
    Console().print(table)


@app.command()
def validate(
    lake: str = typer.Option(..., "--lake", help="Lake root: a local path or an fsspec URL."),
    footers_only: bool = typer.Option(
        False, "--footers-only", help="Check layout and footers only; do not decode the pages."
    ),
) -> None:
    """Check the lake's layout, every file's schema and every data page; print what it holds.

    A problem ends the command with one line naming the file, the column and the fix.
    """
    from kubeloop.data.validate import validate_lake

    manifest = validate_lake(lake, pages=not footers_only)
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
