"""`kubeloop features ...`: ETL, Feast apply, materialization, training set."""

from __future__ import annotations

import typer

app = typer.Typer(help="Build features, apply the Feast repo, materialize, build the training set.", no_args_is_help=True)
