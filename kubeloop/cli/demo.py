"""`kubeloop demo`: the whole local loop on embedded defaults."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console


def demo(
    workdir: Path = typer.Option(
        Path("runs/demo"), help="Run directory; report.json is written here."
    ),
    events: int | None = typer.Option(
        None, help="Events to generate (default: the generator's default)."
    ),
    scenario: str = typer.Option(
        "baseline", help="baseline | covariate_shift | concept_drift | new_ads"
    ),
    seed: int | None = typer.Option(None, help="Generator seed."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Run every stage of the local loop and write WORKDIR/report.json."""
    from kubeloop.data.generator import GeneratorConfig
    from kubeloop.demo import DemoConfig, run_demo
    from kubeloop.workdir import Workdir

    generator: dict = {"scenario": scenario}
    if events is not None:
        generator["events"] = events
    if seed is not None:
        generator["seed"] = seed
    config = DemoConfig(generator=GeneratorConfig(**generator), progress=progress)
    wd = Workdir.at(workdir)
    report = run_demo(config, wd)
    console = Console()
    console.rule("kubeloop demo")
    console.print_json(json.dumps(report, default=str))
    console.print(f"report: {wd.report}")
