"""`kubeloop demo`: the whole local loop on embedded defaults."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    workdir: Path = typer.Option(Path("runs/demo"), help="Run directory; report.json is written here."),
) -> None:
    """Run every stage of the local loop and write WORKDIR/report.json."""
    raise NotImplementedError
