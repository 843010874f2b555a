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

LakeOption = Annotated[
    str | None,
    typer.Option(
        "--lake",
        help="Lake root: a local path or an fsspec URL (default: the use case's lake, for a "
        "use case that reads one).",
    ),
]
"""`--lake ROOT`, optional where the use case names its lake (`LakeSource`)."""


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
"""`--json` of the commands that print a table by default."""


def lake_of(lake: str | None, use_case: str) -> str:
    """`lake` if given, else the lake the use case reads; a one-line error otherwise."""
    from kubeloop.usecase import LakeSource, UseCaseError, load_use_case

    if lake:
        return lake
    source = load_use_case(use_case).source
    if isinstance(source, LakeSource):
        return source.path
    raise UseCaseError(f"--lake is required: use case {use_case!r} generates its lake")


__all__ = ["DEFAULT_USE_CASE", "JsonOption", "LakeOption", "UseCaseOption", "lake_of"]
