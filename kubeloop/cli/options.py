"""Options every command that runs a stage shares (one definition, one default)."""

from __future__ import annotations

from typing import Annotated

import typer

from kubeloop.usecase import DEFAULT_USE_CASE

UseCaseOption = Annotated[
    str,
    typer.Option(
        "--use-case",
        envvar="KUBELOOP_USE_CASE",
        help="Use case to run (entry-point group kubeloop.usecases; "
        "`kubeloop usecases` lists them).",
    ),
]
"""`--use-case NAME` (or $KUBELOOP_USE_CASE); the default is `DEFAULT_USE_CASE`."""

__all__ = ["DEFAULT_USE_CASE", "UseCaseOption"]
