"""`kubeloop alerts`: list drift alerts from the alert store; `kubeloop alerts show ID`
prints one (window, detector, p-values, what moved with reference and window summaries)
and `--html FILE` writes its self-contained page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kubeloop.cli.options import JsonOption

DRIFT_DIR = "drift"
ALERTS_FILE = "alerts.db"
STATE_DIR = "state"

app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    help="List drift alerts (oldest first), or `show ID` one of them.",
)

# The options both commands take (one definition each).
StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store", help="sqlite:///path.db or postgresql://... (default: WORKDIR/drift/alerts.db)."
    ),
]
WorkdirOption = Annotated[
    Path, typer.Option("--workdir", help="Run directory whose alert store is read.")
]
DEFAULT_WORKDIR = Path("runs/demo")


def default_store(workdir: Path) -> str:
    """The alert store of a run directory: <workdir>/drift/alerts.db."""
    return f"sqlite:///{(Path(workdir).expanduser().resolve() / DRIFT_DIR / ALERTS_FILE)}"


@app.callback()
def alerts(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only alerts raised since: 30m, 1h, 2d or an ISO time."),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Only this model.")] = None,
    variant: Annotated[
        str | None, typer.Option("--variant", help="Only this variant (primary, canary).")
    ] = None,
    detector: Annotated[
        str | None, typer.Option("--detector", help="Only feature, prediction or performance.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="At most this many (the newest).")
    ] = None,
    as_json: JsonOption = False,
    store: StoreOption = None,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
) -> None:
    """List drift alerts (oldest first), as a table or JSON."""
    if ctx.invoked_subcommand is not None:
        return
    from kubeloop.drift.alerts import DETECTORS, AlertStoreError, open_alert_store, parse_since

    if detector is not None and detector not in DETECTORS:
        raise AlertStoreError(f"--detector {detector!r}: use one of {', '.join(DETECTORS)}")
    url = store or default_store(workdir)
    if store is None and not (Path(workdir) / DRIFT_DIR / ALERTS_FILE).exists():
        found: list = []
    else:
        cutoff = parse_since(since)
        with open_alert_store(url) as opened:
            found = opened.list(
                since=cutoff, model=model, variant=variant, detector=detector, limit=limit
            )
    if as_json:
        typer.echo(json.dumps([a.model_dump(mode="json") for a in found], indent=2))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not found:
        console.print(f"no drift alerts in {url}" + (f" since {since}" if since else ""))
        return
    if console.width < 110:
        # A table of ten columns is unreadable in a narrow terminal: one line per alert.
        console.print(f"drift alerts ({len(found)}, oldest first)", style="bold")
        for a in found:
            sev = "[red]CRIT[/red]" if a.severity == "critical" else "warn"
            hours = (a.window.end - a.window.start).total_seconds() / 3600
            console.print(
                f"{a.time:%m-%d %H:%M} {a.model}:{a.version} {a.variant} "
                f"{a.revision or '-'} {a.detector} {sev} "
                f"p={a.p_value:.2g}<{a.threshold:.2g} {','.join(a.features) or '-'} "
                f"[dim]window {a.window.start:%m-%d %H:%M} +{hours:.1f}h n={a.window.n}[/dim]",
                highlight=False,
            )
        return
    table = Table(title=f"drift alerts ({len(found)}, oldest first)", box=box.SIMPLE_HEAD)
    for name in (
        "raised (UTC)", "model", "variant", "revision", "detector", "sev", "p-value", "threshold"
    ):  # fmt: skip
        table.add_column(name)
    table.add_column("features", overflow="fold")
    table.add_column("window (event time)")
    table.add_column("n", justify="right")
    for a in found:
        shown = ", ".join(a.features[:4]) + (
            f" +{len(a.features) - 4}" if len(a.features) > 4 else ""
        )
        hours = (a.window.end - a.window.start).total_seconds() / 3600
        table.add_row(
            a.time.strftime("%m-%d %H:%M"),
            f"{a.model}:{a.version}",
            a.variant,
            a.revision or "-",
            a.detector,
            "[red]CRIT[/red]" if a.severity == "critical" else "warn",
            f"{a.p_value:.2g}",
            f"{a.threshold:.2g}",
            shown or "-",
            f"{a.window.start:%m-%d %H:%M} +{hours:.1f}h",
            str(a.window.n),
        )
    console.print(table)


@app.command("show")
def show(
    alert_id: Annotated[str, typer.Argument(help="The alert's id (or a unique prefix).")],
    html_file: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML page here.")
    ] = None,
    store: StoreOption = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="The monitor's state directory, for performance over time "
            "(default: WORKDIR/drift/state when present).",
        ),
    ] = None,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
) -> None:
    """Print one alert as a person reads it; with --html, write its page."""
    from kubeloop.drift.alert_report import alert_html, alert_text
    from kubeloop.drift.alerts import AlertStoreError, open_alert_store

    url = store or default_store(workdir)
    if store is None and not (Path(workdir) / DRIFT_DIR / ALERTS_FILE).exists():
        raise AlertStoreError(
            f"no alert store at {Path(workdir) / DRIFT_DIR / ALERTS_FILE}: pass --store or --workdir"
        )
    with open_alert_store(url) as opened:
        every = opened.list()
    found = [a for a in every if a.id == alert_id] or [
        a for a in every if a.id.startswith(alert_id)
    ]
    if len(found) != 1:
        what = "no alert" if not found else f"{len(found)} alerts"
        raise AlertStoreError(
            f"{what} with id {alert_id!r} in {url}: list them with `kubeloop alerts`"
        )
    alert = found[0]
    typer.echo(alert_text(alert))
    if html_file is None:
        return
    state = state_dir or Path(workdir) / DRIFT_DIR / STATE_DIR
    timeline = read_timeline(state)
    history = [
        a
        for a in every
        if (a.model, a.version, a.variant) == (alert.model, alert.version, alert.variant)
    ]
    html_file.parent.mkdir(parents=True, exist_ok=True)
    html_file.write_text(alert_html(alert, history, timeline), encoding="utf-8")
    typer.echo(f"wrote {html_file}")


def read_timeline(state_dir: Path) -> list[dict]:
    """The monitor's per-window records in `state_dir`, or [] when there is no state there
    (read-only: the file is opened as a SQLite URI in mode=ro)."""
    import json
    import sqlite3

    from kubeloop.drift.state import STATE_FILE

    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        try:
            rows = conn.execute(
                'SELECT key, detector, idx, start, "end", payload FROM timeline ORDER BY start'
            ).fetchall()
        except sqlite3.OperationalError:  # a state file from before the timeline
            return []
    return [
        {"key": json.loads(k), "detector": d, "index": i, "start": a, "end": b, **json.loads(p)}
        for k, d, i, a, b, p in rows
    ]
