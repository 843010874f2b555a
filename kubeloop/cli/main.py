"""Entry point of the `kubeloop` command: registers each command group."""

from __future__ import annotations

import sys

import typer

from kubeloop.errors import KubeloopError

app = typer.Typer(
    help="kubeloop: data lake -> Feast -> Kubeflow training -> registry -> KServe canary -> drift.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported here, not at module top, so `kubeloop --help` stays fast and importing
    # this module has no side effects beyond building the command tree.
    from kubeloop.cli import alerts, canary, data, demo, features, models, pipeline, serve

    app.add_typer(data.app, name="data")
    app.add_typer(features.app, name="features")
    app.add_typer(models.app, name="models")
    app.add_typer(pipeline.app, name="pipeline")
    app.command(name="demo")(demo.demo)
    app.command(name="serve")(serve.serve)
    app.add_typer(canary.app, name="canary")
    app.command(name="alerts")(alerts.alerts)


_register()


def main() -> None:
    """Run the CLI, turning a KubeloopError into a one-line message and exit code 2."""
    try:
        app()
    except KubeloopError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
