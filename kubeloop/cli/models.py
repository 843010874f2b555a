"""`kubeloop models ...`: list, show, promote and export registered model versions, and
list the registered model kinds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from kubeloop.cli.options import JsonOption
from kubeloop.registry.base import ModelRegistry
from kubeloop.registry.records import ModelVersion

app = typer.Typer(
    help="Inspect, promote and export versions in the model registry.", no_args_is_help=True
)

REGISTRY_ENV = "KUBELOOP_REGISTRY"
DEFAULT_REGISTRY = Path("runs/demo/registry")

# Metric keys shown as table columns, by the names evaluators commonly give them.
_AUC_KEYS = ("auc", "roc_auc")
_NE_KEYS = ("ne", "normalized_entropy")

# Parentheses, not brackets: typer renders help through rich, which reads [...] as markup.
_REGISTRY_HELP = f"Registry directory (default: ${REGISTRY_ENV}, else {DEFAULT_REGISTRY})."

RegistryOption = Annotated[Path | None, typer.Option("--registry", help=_REGISTRY_HELP)]
NameArgument = Annotated[str, typer.Argument(help="Model name.")]


def _open(registry: Path | None) -> ModelRegistry:
    # Resolved per call, not at import, so the environment of the invocation counts.
    from kubeloop.registry.backends import open_registry

    path = registry or Path(os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)
    return open_registry(path)


def _metric(v: ModelVersion, keys: tuple[str, ...]) -> str:
    lowered = {k.lower(): x for k, x in v.metrics.items()}
    for key in keys:
        if lowered.get(key) is not None:
            return f"{lowered[key]:.4f}"
    return "-"


def _echo_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2))


@app.command("list")
def list_(
    name: Annotated[str | None, typer.Option("--name", help="Only this model name.")] = None,
    as_json: JsonOption = False,
    registry: RegistryOption = None,
) -> None:
    """List registered versions with their stage and headline metrics."""
    reg = _open(registry)
    versions = reg.list(name)
    if as_json:
        _echo_json([v.model_dump(mode="json") for v in versions])
        return
    if not versions:
        typer.echo(f"no model versions registered in {getattr(reg, 'root', registry)}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "version", "kind", "stage", "AUC", "NE", "gate", "created")
    for v in versions:
        table.add_row(
            v.name,
            v.version,
            v.model_kind,
            v.stage.value,
            _metric(v, _AUC_KEYS),
            _metric(v, _NE_KEYS),
            "pass" if v.gate.passed else "FAIL",
            v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    Console().print(table)


@app.command()
def show(
    name: NameArgument,
    version: Annotated[
        str | None,
        typer.Argument(help="Version, or latest / production / canary (default: latest)."),
    ] = None,
    as_json: JsonOption = False,
    registry: RegistryOption = None,
) -> None:
    """Show every field of one version's record."""
    reg = _open(registry)
    v = reg.get(name, version)
    if as_json:
        _echo_json(v.model_dump(mode="json"))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("field", "value", show_header=False, title=f"{v.ref} ({v.stage.value})")
    window = v.training_window
    rows = {
        "kind": v.model_kind,
        "stage": v.stage.value,
        "created": v.created_at.isoformat(),
        "metrics": ", ".join(
            f"{k}={'-' if x is None else format(x, '.4g')}" for k, x in v.metrics.items()
        )
        or "-",
        "gate": ("passed" if v.gate.passed else "failed")
        + "".join(f"\n- {r}" for r in v.gate.reasons),
        "feature service": v.feature_service,
        "features": f"{len(v.features)}: {', '.join(v.features)}",
        "training window": f"{window.start.isoformat()} .. {window.end.isoformat()}",
        "data scenario": v.data_scenario,
        "code version": v.code_version,
        "pipeline run": v.pipeline_run_id or "-",
        "params": json.dumps(v.params) if v.params else "-",
        "model file": v.model_file or "-",
        "files": ", ".join(v.files),
        "reference rows": str(v.reference_rows),
        "path": str(reg.model_path(name, v.version)),
    }
    for key, value in rows.items():
        table.add_row(key, value)
    Console().print(table)


@app.command()
def promote(
    name: NameArgument,
    version: Annotated[str, typer.Argument(help="Version (or latest / canary).")],
    stage: Annotated[
        str, typer.Option("--stage", help="Target stage: canary, production or archived.")
    ] = "production",
    force: Annotated[
        bool, typer.Option("--force", help="Skip the gate check and the transition rules.")
    ] = False,
    registry: RegistryOption = None,
) -> None:
    """Move a version to a stage; the version it displaces is archived."""
    reg = _open(registry)
    before = {v.version: v.stage for v in reg.list(name)}
    moved = reg.set_stage(name, version, stage, force=force)
    after = {v.version: v.stage for v in reg.list(name)}
    changed = [ver for ver in after if before.get(ver) != after[ver]]
    if not changed:
        typer.echo(f"{moved.ref} is already {moved.stage.value}")
        return
    for ver in sorted(changed, key=lambda x: x != moved.version):
        typer.echo(f"{name}:{ver}: {before[ver].value} -> {after[ver].value}")


@app.command()
def export(
    name: NameArgument,
    version: Annotated[str, typer.Argument(help="Version (or latest / production / canary).")],
    dest: Annotated[str, typer.Argument(help="Local directory or fsspec URL (s3://...).")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a non-empty DEST.")
    ] = False,
    registry: RegistryOption = None,
) -> None:
    """Export a version as a KServe storageUri directory: model files, metadata.json, reference."""
    from kubeloop.registry.export import export as export_version_of

    written = export_version_of(_open(registry), name, version, dest, overwrite=overwrite)
    typer.echo(written)


@app.command()
def kinds(as_json: JsonOption = False) -> None:
    """List the registered model kinds (the plug-in table), simplest first: the ladder."""
    from kubeloop.training.model_kind import model_kinds

    rows = [
        {"kind": s.name, "rank": s.rank, "weights_file": s.weights_file, "about": s.description}
        for s in model_kinds()
    ]
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        typer.echo(f"{row['rank']}  {row['kind']:<10} {row['weights_file']:<14} {row['about']}")
