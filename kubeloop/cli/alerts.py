"""`kubeloop alerts`: list drift alerts from the alert store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

DRIFT_DIR = "drift"
ALERTS_FILE = "alerts.db"


def default_store(workdir: Path) -> str:
    """The alert store of a run directory: <workdir>/drift/alerts.db."""
    return f"sqlite:///{(Path(workdir).expanduser().resolve() / DRIFT_DIR / ALERTS_FILE)}"


def alerts(
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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="sqlite:///path.db or postgresql://... (default: WORKDIR/drift/alerts.db).",
        ),
    ] = None,
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Run directory whose alert store is read.")
    ] = Path("runs/demo"),
) -> None:
    """List drift alerts (oldest first), as a table or JSON."""
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
