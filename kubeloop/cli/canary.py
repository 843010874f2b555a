"""`kubeloop canary ...`: inspect and change the canary rollout.

Without --context the verbs change the local rollout (`<workdir>/serving/rollout.json` and
the registry's stages); a running `kubeloop serve` follows within a fraction of a second.
With --context they patch the InferenceService in that Kubernetes context through
`kubeloop.cluster.isvc.InferenceServiceClient` (status, set_canary, promote, rollback), with
KServe's semantics: `rollback` sets canaryTrafficPercent 0 (the rolled-out revision keeps
100%); after a promote, `rollback --version OLD` in one step is refused (KServe would keep
the rejected revision at 100%): run `rollback`, wait for `status`, then
`rollback --version OLD`, then `promote` once its revision is Ready. `promote` is refused
while it would send 100% to a revision that was never rolled out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from kubeloop.cli.serve import DEFAULT_WORKDIR, WorkdirOption

app = typer.Typer(
    help="Canary rollout: status, set PERCENT, promote, rollback (local, or a cluster with --context).",
    no_args_is_help=True,
)

ModelOption = Annotated[str, typer.Option("--model", help="Model (InferenceService) name.")]
ContextOption = Annotated[
    str | None,
    typer.Option("--context", help="Kubernetes context: act on the cluster, not the workdir."),
]
NamespaceOption = Annotated[
    str,
    typer.Option("--namespace", "-n", help="Namespace of the InferenceService (with --context)."),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="With --context: server-side dry run, nothing changes.")
]
ReasonOption = Annotated[
    str | None, typer.Option("--reason", help="Why: kept in the rollout history.")
]
NoRegistryOption = Annotated[
    bool,
    typer.Option("--no-registry", help="Change the rollout only, not the registry's stages."),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Allow versions whose evaluation gate failed.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
StoragePrefixOption = Annotated[
    str,
    typer.Option(
        "--storage-prefix",
        help="With --context and --version: versions live at PREFIX/MODEL/VERSION.",
    ),
]

DEFAULT_NAMESPACE = "kubeloop"
DEFAULT_STORAGE_PREFIX = "s3://mlpipeline/kubeloop/models"


def _local(workdir: Path, model: str, no_registry: bool, force: bool) -> Any:
    from kubeloop.serving.rollout import LocalRollout
    from kubeloop.workdir import Workdir

    wd = Workdir.at(workdir)
    registry = None
    if not no_registry:
        from kubeloop.registry.backends import open_registry

        registry = open_registry(wd.registry)
    return LocalRollout(wd, model, registry, force=force)


def _cluster(context: str, namespace: str) -> Any:
    # Imported only here: the cluster module and the kubernetes client are not needed for
    # the local rollout.
    from kubeloop.cluster.isvc import InferenceServiceClient

    return InferenceServiceClient(namespace, context=context)


def _storage_uri(
    storage_uri: str | None, version: str | None, prefix: str, model: str
) -> str | None:
    if storage_uri is None and version is not None:
        return f"{prefix.rstrip('/')}/{model}/{version}"
    return storage_uri


def _echo_cluster(result: Any, as_json: bool = False) -> None:
    """Print what the cluster client returned (pydantic models: a status or a patch)."""
    if result is None:
        return
    data = result.model_dump(mode="json") if hasattr(result, "model_dump") else result
    if as_json or not hasattr(result, "summary"):
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    typer.echo(result.summary())
    for warning in getattr(result, "warnings", None) or []:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


def _print_state(rollout: Any, as_json: bool) -> None:
    from kubeloop.serving.local_servers import read_stack_file
    from kubeloop.serving.rollout import state_summary

    state = rollout.state()
    stack = read_stack_file(rollout.workdir)
    if as_json:
        typer.echo(json.dumps({"rollout": state_summary(state), "stack": stack}, indent=2))
        return
    split = state.split
    typer.echo(f"model    {state.model_name}")
    typer.echo(f"primary  {state.primary_version}  {split['primary']}%")
    if state.canary_version:
        pinned = "  (pinned)" if not state.canary_percent else ""
        typer.echo(f"canary   {state.canary_version}  {split['canary']}%{pinned}")
    else:
        typer.echo("canary   -")
    typer.echo(f"routing  {'sticky by request id' if state.sticky else 'random'}")
    typer.echo(f"updated  {state.updated_at.isoformat()}")
    if stack:
        typer.echo(f"serving  {stack.get('url')} (router {stack.get('router_url')})")
    else:
        typer.echo("serving  not running (start it with `kubeloop serve`)")
    for d in state.history[-5:]:
        typer.echo(f"  {d.at.isoformat(timespec='seconds')} {d.action}: {d.reason}")


def _echo_change(state: Any) -> None:
    split = state.split
    canary = f", canary {state.canary_version} {split['canary']}%" if state.canary_version else ""
    typer.echo(f"{state.model_name}: primary {state.primary_version} {split['primary']}%{canary}")


@app.command()
def status(
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    model: ModelOption = "ctr",
    context: ContextOption = None,
    namespace: NamespaceOption = DEFAULT_NAMESPACE,
    as_json: JsonOption = False,
) -> None:
    """Show the traffic split (and whether a local stack is serving it)."""
    if context:
        _echo_cluster(_cluster(context, namespace).status(model), as_json=True)
        return
    _print_state(_local(workdir, model, True, False), as_json)


@app.command("set")
def set_(
    percent: Annotated[
        int, typer.Argument(min=0, max=100, help="Canary traffic percent (0 pins to the primary).")
    ],
    version: Annotated[
        str | None,
        typer.Option(
            "--version", help="Deploy this version as the canary (else: keep the current canary)."
        ),
    ] = None,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    model: ModelOption = "ctr",
    context: ContextOption = None,
    namespace: NamespaceOption = DEFAULT_NAMESPACE,
    storage_uri: Annotated[
        str | None,
        typer.Option(
            "--storage-uri", help="With --context: the canary's storageUri (overrides --version)."
        ),
    ] = None,
    storage_prefix: StoragePrefixOption = DEFAULT_STORAGE_PREFIX,
    dry_run: DryRunOption = False,
    reason: ReasonOption = None,
    no_registry: NoRegistryOption = False,
    force: ForceOption = False,
) -> None:
    """Send PERCENT of the traffic to the canary (a new one with --version)."""
    if context:
        uri = _storage_uri(storage_uri, version, storage_prefix, model)
        client = _cluster(context, namespace)
        _echo_cluster(client.set_canary(model, percent, storage_uri=uri, dry_run=dry_run))
        return
    rollout = _local(workdir, model, no_registry, force)
    if version is not None:
        if rollout.registry is not None:
            version = rollout.registry.get(model, version).version  # "3", "latest", ...
        state = rollout.set_canary(version, percent, reason=reason)
    else:
        state = rollout.set_percent(percent, reason=reason)
    _echo_change(state)


@app.command()
def promote(
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    model: ModelOption = "ctr",
    context: ContextOption = None,
    namespace: NamespaceOption = DEFAULT_NAMESPACE,
    dry_run: DryRunOption = False,
    reason: ReasonOption = None,
    no_registry: NoRegistryOption = False,
    force: ForceOption = False,
) -> None:
    """Make the canary the primary with all of the traffic."""
    if context:
        _echo_cluster(_cluster(context, namespace).promote(model, dry_run=dry_run))
        return
    _echo_change(_local(workdir, model, no_registry, force).promote(reason=reason))


@app.command()
def rollback(
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    model: ModelOption = "ctr",
    context: ContextOption = None,
    namespace: NamespaceOption = DEFAULT_NAMESPACE,
    version: Annotated[
        str | None,
        typer.Option("--version", help="With --context: the version to go back to in the spec."),
    ] = None,
    storage_uri: Annotated[
        str | None,
        typer.Option("--storage-uri", help="With --context: storageUri to revert the spec to."),
    ] = None,
    storage_prefix: StoragePrefixOption = DEFAULT_STORAGE_PREFIX,
    dry_run: DryRunOption = False,
    reason: ReasonOption = None,
    no_registry: NoRegistryOption = False,
    force: ForceOption = False,
) -> None:
    """Remove the canary; all traffic back to the primary.

    With --context: canaryTrafficPercent 0, so KServe pins the rolled-out revision (after a
    promote, the previous one). --version/--storage-uri also reverts the spec; after a promote
    that must be a second step, once `status --context` shows the previous revision at 100%.
    """
    if context:
        uri = _storage_uri(storage_uri, version, storage_prefix, model)
        client = _cluster(context, namespace)
        _echo_cluster(client.rollback(model, storage_uri=uri, dry_run=dry_run))
        return
    _echo_change(_local(workdir, model, no_registry, force).rollback(reason=reason))
