"""`kubeloop report`: render the README's results and benchmark sections from result files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from kubeloop.errors import KubeloopError


def report(
    readme: Annotated[Path, typer.Option(help="The README whose sections to render.")] = Path(
        "README.md"
    ),
    from_run: Annotated[
        Path | None,
        typer.Option(
            "--from-run",
            help="A demo's report.json to copy to bench/results/demo_report.json first (it must "
            "be complete); without it, the committed bench/results/demo_report.json is rendered.",
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(help="Change nothing; exit 1 when the README differs from the result files."),
    ] = False,
) -> None:
    """Render the README's sections between `<!-- BEGIN kubeloop:NAME -->` markers from
    bench/results/demo_report.json and the benches' bench/results/*_bench.json (paths relative
    to the README)."""
    from kubeloop import report_render

    root = readme.resolve().parent
    if not readme.exists():
        raise KubeloopError(
            f"{readme} does not exist: run from the checkout's root or pass --readme"
        )
    if from_run is not None:
        _adopt_run(from_run, root)
    if not (root / report_render.REPORT_PATH).exists():
        raise KubeloopError(
            f"{root / report_render.REPORT_PATH} is missing: run `make demo`, then "
            "`kubeloop report --from-run runs/demo/report.json`"
        )
    text = readme.read_text()
    sections = report_render.render_sections(root)
    try:
        rendered = report_render.render_readme(text, sections)
    except ValueError as exc:
        raise KubeloopError(f"{readme}: {exc}") from None
    if check:
        stale = report_render.stale_sections(text, sections)
        if stale:
            typer.echo(
                f"{readme} is out of date in: {', '.join(stale)}; run `make report`", err=True
            )
            raise typer.Exit(1)
        typer.echo(f"{readme} matches its result files")
        return
    readme.write_text(rendered)
    typer.echo(f"rendered {len(sections)} sections of {readme}")


def _adopt_run(source: Path, root: Path) -> None:
    """Copy a finished demo's report.json to its committed place under `root`: the default
    use case's baseline to REPORT_PATH, another use case's or a scenario's beside it
    (report_render.report_target), so one use case's run never overwrites another's report."""
    from kubeloop import report_render
    from kubeloop.usecase import DEFAULT_USE_CASE

    try:
        report = json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        raise KubeloopError(f"cannot read {source}: {exc}") from None
    run = report.get("run") or {}
    if not run.get("complete"):
        raise KubeloopError(
            f"{source} is not a complete demo run (no run.complete): run `make demo` to the end"
        )
    target = root / report_render.report_target(report, DEFAULT_USE_CASE)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    typer.echo(f"copied {source} to {target}")
