"""`kubeloop serve`: the online loop on this machine (transformer, canary router, one
KServe predictor per served version), until Ctrl+C."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated

import typer

from kubeloop.cli.options import DEFAULT_USE_CASE, UseCaseOption
from kubeloop.serving.edge import DEFAULT_HOST, DEFAULT_MAX_BODY_BYTES

WORKDIR_ENV = "KUBELOOP_WORKDIR"
DEFAULT_WORKDIR = Path("runs/demo")

WorkdirOption = Annotated[
    Path,
    typer.Option(
        "--workdir",
        envvar=WORKDIR_ENV,
        help=f"Run directory (default: ${WORKDIR_ENV}, else runs/demo).",
    ),
]


def example_body(transformer: bool = True, use_case: str | None = None) -> str:
    """A valid v1 body for the endpoint: the use case's client fields for the transformer,
    its model columns for the router (--no-transformer)."""
    from kubeloop.serving.protocol import client_fields, example_row, model_fields

    fields = client_fields(use_case) if transformer else model_fields(use_case)
    return json.dumps({"instances": [example_row(fields)]})


def serve(
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    use_case: UseCaseOption = DEFAULT_USE_CASE,
    model: Annotated[
        str, typer.Option("--model", help="Model name (default: the use case's).")
    ] = "",
    port: Annotated[
        int, typer.Option("--port", help="Port of the endpoint (the transformer; 0: a free one).")
    ] = 8080,
    primary: Annotated[
        str | None,
        typer.Option(
            "--primary", help="Primary version (default: the saved rollout, else production)."
        ),
    ] = None,
    canary: Annotated[
        str | None, typer.Option("--canary", help="Canary version (e.g. v0002, or latest).")
    ] = None,
    percent: Annotated[
        int | None,
        typer.Option(
            "--percent", min=0, max=100, help="Canary traffic percent (default 10 with --canary)."
        ),
    ] = None,
    sticky: Annotated[
        bool, typer.Option("--sticky", help="Route by request id instead of at random.")
    ] = False,
    router_port: Annotated[
        int | None, typer.Option("--router-port", help="Port of the router (default: a free one).")
    ] = None,
    no_transformer: Annotated[
        bool,
        typer.Option(
            "--no-transformer", help="No transformer: clients call the router with features."
        ),
    ] = False,
    log_url: Annotated[
        list[str] | None,
        typer.Option(
            "--log-url", help="Also POST the request log as CloudEvents here (repeatable)."
        ),
    ] = None,
    ready_timeout: Annotated[
        float, typer.Option("--ready-timeout", help="Seconds to wait for each server.")
    ] = 120.0,
    force: Annotated[
        bool, typer.Option("--force", help="Serve versions whose gate failed.")
    ] = False,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address the endpoint listens on (default 127.0.0.1: this machine only; "
            "0.0.0.0: every interface). The other servers always listen on 127.0.0.1.",
        ),
    ] = DEFAULT_HOST,
    max_body_bytes: Annotated[
        int,
        typer.Option(
            "--max-body-bytes",
            min=1,
            help="Largest request body any server accepts; larger ones get HTTP 413.",
        ),
    ] = DEFAULT_MAX_BODY_BYTES,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Worker processes of each predictor and of the transformer (KServe's "
            "--workers; every worker keeps kubeloop's status codes and limits).",
        ),
    ] = 1,
) -> None:
    """Start the local serving stack and block until Ctrl+C; prints the URLs and a curl example."""
    from kubeloop.registry.backends import open_registry
    from kubeloop.serving.local_servers import DEFAULT_SERVER_ARGS, LocalStack
    from kubeloop.serving.rollout import RolloutError, load_state, rollout_path
    from kubeloop.usecase import load_use_case
    from kubeloop.workdir import Workdir

    model = model or load_use_case(use_case).defaults.model_name
    wd = Workdir.at(workdir)
    registry = open_registry(wd.registry)
    saved = load_state(rollout_path(wd))
    if saved is not None and saved.model_name != model:
        saved = None

    def resolve(ref: str) -> str:
        return registry.get(model, ref).version

    if primary is None and canary is None and saved is not None:
        primary_version, canary_version = saved.primary_version, saved.canary_version
        canary_percent = saved.canary_percent if percent is None else percent
        sticky = sticky or saved.sticky
    else:
        if primary is not None:
            primary_version = resolve(primary)
        elif saved is not None:
            primary_version = saved.primary_version
        else:
            production = registry.production(model)
            if production is None:
                raise RolloutError(
                    f"{model} has no production version to serve: pass --primary VERSION, or"
                    f" promote one with `kubeloop models promote {model} VERSION`"
                )
            primary_version = production.version
        canary_version = resolve(canary) if canary is not None else None
        if canary_version is None and percent:
            raise RolloutError("--percent needs --canary VERSION")
        canary_percent = (10 if percent is None else percent) if canary_version else 0

    # SIGTERM (e.g. from a supervisor) stops the stack as Ctrl+C does.
    def _terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    typer.echo(
        f"starting {model}: primary {primary_version}"
        + (f", canary {canary_version} at {canary_percent}%" if canary_version else "")
    )
    try:
        with LocalStack.start(
            registry,
            model,
            wd,
            primary_version,
            canary_version,
            canary_percent,
            port=port,
            # Without a transformer the router is the endpoint: it gets --port.
            router_port=router_port or (port if no_transformer else None),
            transformer=not no_transformer,
            sticky=sticky,
            logger_urls=log_url or (),
            ready_timeout=ready_timeout,
            force=force,
            host=host,
            max_body_bytes=max_body_bytes,
            # Both servers read the use case's request fields (and the transformer its
            # feature service) by name.
            server_args=[*DEFAULT_SERVER_ARGS, "--use_case", use_case, "--workers", str(workers)],
        ) as stack:
            state = stack.state()
            split = state.split
            endpoint = f"{stack.url}/v1/models/{model}:predict"
            typer.echo(f"  endpoint    {endpoint}")
            typer.echo(f"  router      {stack.router_url}  (rollout: GET/POST /kubeloop/rollout)")
            for version, url in stack.predictor_urls.items():
                role = "primary" if version == state.primary_version else "canary"
                typer.echo(f"  predictor   {version} {url}  ({role}, {split[role]}%)")
            typer.echo(f"  logs        {stack.log_dir}")
            typer.echo(f"  request log {stack.request_log_path}")
            typer.echo("try:")
            typer.echo(
                f"  curl -s -H 'content-type: application/json' {endpoint} "
                f"-d '{example_body(transformer=not no_transformer, use_case=use_case)}'"
            )
            typer.echo(f"change the split: kubeloop canary set 50 --workdir {wd.root}")
            typer.echo("Ctrl+C to stop.")
            stack.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped.")
    finally:
        signal.signal(signal.SIGTERM, previous)
