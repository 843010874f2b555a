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

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, TypeVar

import typer

from kubeloop.cli.serve import DEFAULT_WORKDIR, WorkdirOption
from kubeloop.usecase import DEFAULT_MODEL_NAME

if TYPE_CHECKING:
    from kubeloop.serving.canary import CanaryResult, CanaryTarget

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
StorageUriOption = Annotated[
    str | None,
    typer.Option(
        "--storage-uri",
        help="With --context: the storageUri to put in the spec (overrides --version).",
    ),
]
StoragePrefixOption = Annotated[
    str,
    typer.Option(
        "--storage-prefix",
        help="With --context and --version: versions live at PREFIX/MODEL/VERSION.",
    ),
]

DEFAULT_NAMESPACE = "kubeloop"
# The same default as kubeloop.cluster.canary (not imported: the local path needs none of it).
DEFAULT_STORAGE_PREFIX = "s3://mlpipeline/kubeloop/models"


class SharedOption(NamedTuple):
    """One option the verbs share: its typer annotation and its default."""

    annotation: Any
    default: Any


# The options the verbs share, by parameter name. A verb names
# one as a bare keyword-only parameter and `_shared_options` fills it in, so each option is
# written once; the help lists them in the verb's own parameter order.
SHARED_OPTIONS: dict[str, SharedOption] = {
    "workdir": SharedOption(WorkdirOption, DEFAULT_WORKDIR),
    "model": SharedOption(ModelOption, DEFAULT_MODEL_NAME),
    "context": SharedOption(ContextOption, None),
    "namespace": SharedOption(NamespaceOption, DEFAULT_NAMESPACE),
    "storage_uri": SharedOption(StorageUriOption, None),
    "storage_prefix": SharedOption(StoragePrefixOption, DEFAULT_STORAGE_PREFIX),
    "dry_run": SharedOption(DryRunOption, False),
    "reason": SharedOption(ReasonOption, None),
    "no_registry": SharedOption(NoRegistryOption, False),
    "force": SharedOption(ForceOption, False),
    "as_json": SharedOption(JsonOption, False),
}

# What a verb that changes the spec declares as one bare `target` parameter: it gets these
# options (`_target`'s parameters) in its place and is called with the CanaryTarget they pick.
TARGET_OPTIONS = (
    "workdir",
    "model",
    "context",
    "namespace",
    "storage_uri",
    "storage_prefix",
    "dry_run",
    "no_registry",
    "force",
)

_F = TypeVar("_F", bound=Callable[..., Any])


def _shared_options(command: _F) -> _F:
    """Give each bare parameter of `command` named in SHARED_OPTIONS that option and default,
    and a bare `target` the TARGET_OPTIONS, from which the call builds `_target(...)` (typer
    reads `__signature__` and `__annotations__`)."""
    signature = inspect.signature(command, eval_str=True)
    bare = [
        p.name for p in signature.parameters.values() if p.annotation is inspect.Parameter.empty
    ]
    params = []
    for param in signature.parameters.values():
        names = TARGET_OPTIONS if param.name == "target" else (param.name,)
        if param.name not in bare or not set(names) <= SHARED_OPTIONS.keys():
            params.append(param)
            continue
        for name in names:
            annotation, default = SHARED_OPTIONS[name]
            params.append(
                inspect.Parameter(name, param.KEYWORD_ONLY, annotation=annotation, default=default)
            )
    if "target" not in bare:
        verb = command
    else:

        @functools.wraps(command)
        def verb(**options: Any) -> Any:
            where = {name: options.pop(name) for name in TARGET_OPTIONS}
            return command(target=_target(**where), **options)

    verb.__annotations__ = {p.name: p.annotation for p in params}
    verb.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return verb  # type: ignore[return-value]


def _target(
    workdir: Path,
    model: str,
    context: str | None,
    namespace: str = DEFAULT_NAMESPACE,
    *,
    no_registry: bool = True,
    force: bool = False,
    storage_uri: str | None = None,
    storage_prefix: str = DEFAULT_STORAGE_PREFIX,
    dry_run: bool = False,
) -> CanaryTarget:
    """The one place that picks where the canary is: the cluster with --context, else the
    workdir's local rollout."""
    if context:
        from kubeloop.cluster.canary import ClusterCanary

        return ClusterCanary(
            context, namespace, model, client=_cluster(context, namespace),
            storage_uri=storage_uri, storage_prefix=storage_prefix, dry_run=dry_run,
        )  # fmt: skip
    from kubeloop.serving.canary import LocalCanary

    return LocalCanary(workdir, model, registry=not no_registry, force=force)


def _cluster(context: str, namespace: str) -> Any:
    """The InferenceService client of a kube context (imported only here: the local path
    needs neither the cluster module nor the kubernetes client)."""
    from kubeloop.cluster.isvc import InferenceServiceClient

    return InferenceServiceClient(namespace, context=context)


def _echo(result: CanaryResult, as_json: bool = False) -> None:
    """Print a verb's result: its text (or JSON), then its warnings on stderr."""
    from kubeloop.serving.canary import result_json

    typer.echo(result_json(result) if as_json else result.text)
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


@app.command()
@_shared_options
def status(*, workdir, model, context, namespace, as_json) -> None:
    """Show the traffic split (and whether a local stack is serving it)."""
    _echo(_target(workdir, model, context, namespace).status(), as_json)


@app.command("set")
@_shared_options
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
    *,
    target,
    reason,
) -> None:
    """Send PERCENT of the traffic to the canary (a new one with --version)."""
    _echo(target.set(percent, version=version, reason=reason))


@app.command()
@_shared_options
def promote(*, workdir, model, context, namespace, dry_run, reason, no_registry, force) -> None:
    """Make the canary the primary with all of the traffic."""
    target = _target(
        workdir, model, context, namespace, no_registry=no_registry, force=force, dry_run=dry_run
    )
    _echo(target.promote(reason=reason))


@app.command()
@_shared_options
def rollback(
    *,
    target,
    version: Annotated[
        str | None,
        typer.Option("--version", help="With --context: the version to go back to in the spec."),
    ] = None,
    reason,
) -> None:
    """Remove the canary; all traffic back to the primary.

    With --context: canaryTrafficPercent 0, so KServe pins the rolled-out revision (after a
    promote, the previous one). --version/--storage-uri also reverts the spec; after a promote
    that must be a second step, once `status --context` shows the previous revision at 100%.
    """
    _echo(target.rollback(version=version, reason=reason))


@app.command()
@_shared_options
def progress(*, workdir, model, context, namespace, as_json) -> None:
    """Show the progressive rollout: its step, the statistics and the reasons.

    Locally from <workdir>/serving/progressive.json; with --context from the rollout
    controller's ConfigMap (as `kubectl kubeloop rollout status`).
    """
    _echo(_target(workdir, model, context, namespace).progress(), as_json)


@app.command()
@_shared_options
def abort(*, workdir, model, context, namespace, reason, no_registry, force) -> None:
    """Roll the progressive rollout back now and end it (the controller leaves it alone)."""
    target = _target(workdir, model, context, namespace, no_registry=no_registry, force=force)
    _echo(target.abort(reason=reason))


@app.command()
@_shared_options
def controller(
    *,
    workdir,
    model,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between passes.")
    ] = 5.0,
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
    policy: Annotated[
        Path | None, typer.Option("--policy", help="ProgressivePolicy as a JSON or YAML file.")
    ] = None,
    no_registry,
) -> None:
    """Run the progressive rollout over the local stack (what the cluster's controller does):
    shadow -> 5% -> 25% -> 50% -> 100% -> promote, or back at once, on the request log's
    paired answers and the labels posted to the stack's /kubeloop/feedback."""
    import time

    from kubeloop.cluster.controller_cli import load_policy
    from kubeloop.serving.canary import LocalCanary
    from kubeloop.serving.rollout_loop import render_record

    loop = LocalCanary(workdir, model, registry=not no_registry).loop(
        policy=load_policy(str(policy) if policy else None)
    )
    if loop.source is None:
        from kubeloop.errors import KubeloopError

        raise KubeloopError(
            f"no request log in {workdir}/serving: start the stack with `kubeloop serve`"
        )
    while True:
        record = loop.reconcile_once()
        typer.echo(render_record(record) if once else _one_line(record))
        if once or (record is not None and record.done):
            return
        time.sleep(interval)


def _one_line(record: Any) -> str:
    if record is None:
        return "no canary to roll out"
    last = record.last
    why = f": {last.reasons[-1]}" if last is not None and last.reasons else ""
    return f"{record.phase} step {record.state.step} at {record.state.percent}%{why}"
