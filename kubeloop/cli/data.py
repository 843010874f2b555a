"""`kubeloop data ...`: generate and inspect the data lake."""

from __future__ import annotations

import typer

app = typer.Typer(help="Generate and inspect the impression data lake.", no_args_is_help=True)
