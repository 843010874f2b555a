"""``kubectl kubeloop``: the kubectl plugin for kubeloop's canary rollout and drift alerts.

kubectl runs any executable named ``kubectl-<name>`` on PATH as ``kubectl <name>``; installing
kubeloop puts the console script ``kubectl-kubeloop`` into the environment's bin directory::

    kubectl kubeloop canary status ctr                 # traffic split, revisions, readiness
    kubectl kubeloop canary set ctr 20 --storage-uri s3://mlpipeline/kubeloop/models/ctr/v2
    kubectl kubeloop canary promote ctr                # latest revision gets 100%
    kubectl kubeloop canary rollback ctr               # previous rolled-out revision gets 100%
    kubectl kubeloop status ctr                        # = canary status
    kubectl kubeloop alerts [ctr] [--since 1h]         # DriftDetected Events
    kubectl kubeloop rollout status ctr                # the progressive rollout: step,
                                                       # statistics, reasons
    kubectl kubeloop rollout abort ctr                 # roll back now and end the rollout

Options valid anywhere on the line: ``--context``, ``--kubeconfig``, ``-n/--namespace``
(default ``kubeloop``, not the context's namespace), ``-o/--output json|table``. kubectl passes
everything after ``kubectl kubeloop`` to the plugin, so they are the plugin's own.

``main(argv, api=..., core_api=...)`` takes injected CustomObjectsApi/CoreV1Api objects (tests).
The patches each verb sends and the KServe docs they follow: see kubeloop.cluster.isvc.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from kubeloop import duration
from kubeloop.cluster.isvc import (
    DEFAULT_NAMESPACE,
    RESOURCE,
    CanaryStatus,
    InferenceServiceClient,
    PatchResult,
    validate_percent,
)
from kubeloop.errors import KubeloopError

PROG = "kubectl kubeloop"

# --- argument types --------------------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """`--since` as argparse reads it: `kubeloop.duration.parse_duration` (30s, 2h30m, 1d)."""
    try:
        return duration.parse_duration(text)
    except duration.DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _percent(text: str) -> int:
    try:
        return validate_percent(text)
    except KubeloopError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- parser ----------------------------------------------------------------------------------


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """The options accepted before or after any command. Only the top-level parser sets
    defaults; subcommands use SUPPRESS so that an option given earlier is not reset."""
    p = argparse.ArgumentParser(add_help=False)

    def dflt(value):
        return value if defaults else argparse.SUPPRESS

    g = p.add_argument_group("global options")
    g.add_argument(
        "--context", default=dflt(None), help="kubeconfig context (default: the current context)"
    )
    g.add_argument(
        "--kubeconfig",
        default=dflt(None),
        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)",
    )
    g.add_argument(
        "-n",
        "--namespace",
        default=dflt(DEFAULT_NAMESPACE),
        help=f"namespace of the InferenceService (default: {DEFAULT_NAMESPACE})",
    )
    g.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default=dflt("table"),
        help="output format (default: table)",
    )
    return p


NAME_HELP = "InferenceService name"


def build_parser() -> argparse.ArgumentParser:
    sub_globals = _global_options(defaults=False)
    fmt = argparse.RawDescriptionHelpFormatter

    root = argparse.ArgumentParser(
        prog=PROG,
        parents=[_global_options(defaults=True)],
        formatter_class=fmt,
        description="kubeloop's kubectl plugin: canary rollout of the KServe InferenceService "
        "and its drift alerts.",
        epilog="examples:\n"
        "  kubectl kubeloop canary status ctr\n"
        "  kubectl kubeloop canary set ctr 20 --storage-uri s3://mlpipeline/kubeloop/models/ctr/v2\n"
        "  kubectl kubeloop canary promote ctr\n"
        "  kubectl kubeloop canary rollback ctr\n"
        "  kubectl kubeloop alerts ctr --since 1h\n"
        "  kubectl kubeloop rollout status ctr\n"
        "  kubectl kubeloop rollout abort ctr\n",
    )
    commands = root.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        parent, name, help_, description, epilog="", *, target=None, dry_run=None, **target_options
    ):
        # `target`: the help of the InferenceService NAME argument that every verb takes
        # (None for a group of verbs); `dry_run`: the help of the verb's --dry-run flag, for
        # a verb that patches (None: it has none).
        p = parent.add_parser(
            name,
            parents=[sub_globals],
            help=help_,
            description=description,
            epilog=epilog,
            formatter_class=fmt,
        )
        if target is not None:
            p.add_argument("name", metavar="NAME", help=target, **target_options)
        if dry_run is not None:
            p.add_argument("--dry-run", action="store_true", help=dry_run)
        return p

    canary = add(
        commands,
        "canary",
        "canary rollout verbs: status, set, promote, rollback",
        "Canary rollout of an InferenceService (KServe Knative mode): KServe sends "
        "canaryTrafficPercent of the traffic to the latest revision and the rest to the last "
        "rolled-out revision.",
    )
    verbs = canary.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = add(
        verbs,
        "status",
        "show the traffic split, revisions and readiness",
        "Show spec.predictor (storageUri, canaryTrafficPercent) and "
        "status.components.predictor (traffic per revision, rolled-out revisions, Ready).",
        "example:\n  kubectl kubeloop canary status ctr -o json\n",
        target="InferenceService name, e.g. ctr",
    )

    p = add(
        verbs,
        "set",
        "send PERCENT of the traffic to the latest revision",
        "Merge-patch spec.predictor.canaryTrafficPercent (and spec.predictor.model.storageUri "
        "with --storage-uri, which rolls out that model version as a new revision).",
        "examples:\n"
        "  kubectl kubeloop canary set ctr 10 --storage-uri s3://mlpipeline/kubeloop/models/ctr/v2\n"
        "  kubectl kubeloop canary set ctr 50\n",
        target=NAME_HELP,
        dry_run="let the API server validate without persisting",
    )
    p.add_argument("percent", metavar="PERCENT", type=_percent, help="0..100")
    p.add_argument("--storage-uri", help="model version to roll out, e.g. s3://bucket/model/v2")

    p = add(
        verbs,
        "promote",
        "give the latest revision 100%%",
        "Remove spec.predictor.canaryTrafficPercent (merge patch with null): the latest ready "
        "revision gets all traffic and becomes the latest rolled-out revision.",
        "example:\n  kubectl kubeloop canary promote ctr\n",
        target=NAME_HELP,
        dry_run="server-side dry run",
    )

    p = add(
        verbs,
        "rollback",
        "pin 100%% to the previous rolled-out revision",
        "Set spec.predictor.canaryTrafficPercent to 0: the latest rolled-out revision keeps "
        "all traffic (after a promote, KServe first moves that pointer back to the previous "
        "rolled-out revision). The spec still names the rejected model version; give "
        "--storage-uri with the version to go back to (a new revision of it starts at 0%), "
        "then `canary promote` once it is Ready. After a promote, --storage-uri must be a "
        "second step: in the same patch KServe would keep the rejected revision at 100%, so "
        "that is refused.",
        "examples (during a canary):\n"
        "  kubectl kubeloop canary rollback ctr --storage-uri s3://mlpipeline/kubeloop/models/ctr/v1\n"
        "  kubectl kubeloop canary promote ctr   # after the reverted revision is Ready\n"
        "examples (after a promote):\n"
        "  kubectl kubeloop canary rollback ctr\n"
        "  kubectl kubeloop canary status ctr    # until the previous revision has 100%\n"
        "  kubectl kubeloop canary rollback ctr --storage-uri s3://mlpipeline/kubeloop/models/ctr/v1\n"
        "  kubectl kubeloop canary promote ctr   # after the reverted revision is Ready\n",
        target=NAME_HELP,
        dry_run="server-side dry run",
    )
    p.add_argument("--storage-uri", help="also revert spec.predictor.model.storageUri to this")

    rollout = add(
        commands,
        "rollout",
        "the rollout controller's progressive rollout: status, abort",
        "The progressive rollout the rollout controller drives (shadow -> 5% -> 25% -> 50% -> "
        "100%), from its record in a ConfigMap.",
    )
    steps = rollout.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, help_, description in (
        (
            "status",
            "show the step, the statistics and the reasons",
            (
                "Show the rollout's step and percent, the last decision's paired statistics "
                "(delta log loss and its confidence sequence, NE, SRM, guardrails) and its reasons."
            ),
        ),
        (
            "abort",
            "roll back now (canaryTrafficPercent 0) and end the rollout",
            (
                "Merge-patch canaryTrafficPercent 0 (the rolled-out revision gets all traffic), "
                "mark the rollout aborted so the controller leaves it, and record an Event."
            ),
        ),
    ):
        p = add(
            steps,
            verb,
            help_,
            description,
            f"example:\n  kubectl kubeloop rollout {verb} ctr\n",
            target=NAME_HELP,
        )
        p.add_argument(
            "--state-configmap",
            default=None,
            help="ConfigMap holding the rollout record (default: kubeloop-rollout-NAME)",
        )
        if verb == "abort":
            p.add_argument("--reason", default=None, help="why (in the Event and the record)")

    p = add(
        commands,
        "status",
        "same as `canary status`",
        "Show the traffic split, revisions and readiness of an InferenceService.",
        "example:\n  kubectl kubeloop status ctr\n",
        target=NAME_HELP,
    )

    p = add(
        commands,
        "alerts",
        "list drift alerts (DriftDetected Events)",
        "List the DriftDetected Events the drift detector posted on InferenceServices, oldest "
        "first.",
        "examples:\n  kubectl kubeloop alerts\n  kubectl kubeloop alerts ctr --since 1h -o json\n",
        target="InferenceService (default: all)",
        nargs="?",
    )
    p.add_argument(
        "--since", type=parse_duration, help="only alerts seen within this long, e.g. 1h, 30m"
    )
    return root


# --- output ----------------------------------------------------------------------------------


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns padded like kubectl's (left-aligned, three spaces between)."""
    cells = [[str(h) for h in headers]] + [
        ["-" if c in (None, "") else str(c) for c in r] for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def human_age(delta: timedelta) -> str:
    """kubectl's short age: 45s, 3m20s, 12m, 5h4m, 30h, 3d2h, 12d, ..."""
    s = max(int(delta.total_seconds()), 0)
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y"


def render_status(st: CanaryStatus) -> str:
    ready = "Unknown" if st.ready is None else str(st.ready)
    canary = "-" if st.canary_percent is None else f"{st.canary_percent}%"
    head = format_table(
        ["NAME", "READY", "PHASE", "CANARY", "URL", "STORAGEURI"],
        [[st.name, ready, st.phase, canary, st.url, st.storage_uri]],
    )
    if st.traffic:
        rows = [
            [
                t.revision,
                f"{t.percent}%",
                str(t.latest).lower(),
                t.tag,
                ", ".join(st.roles(t.revision)),
            ]
            for t in st.traffic
        ]
        body = format_table(["REVISION", "TRAFFIC", "LATEST", "TAG", "ROLLOUT"], rows)
    else:
        body = "No traffic targets in status yet (KServe has not reconciled the predictor)."
    lines = [head, "", body]
    expected = st.expected_pinned_revision
    if expected and st.traffic and expected != st.pinned_revision:
        # Between two reconciles (e.g. a rollback after a promote): say where traffic goes.
        share = 100 - (st.canary_percent or 0)
        source = st.pinned_revision or "the latest revision"
        lines += [
            "",
            f"Pending: KServe moves the pinned {share}% from {source} to {expected} at its "
            + "next reconcile.",
        ]
    if st.ready is False:
        reason = f" {st.ready_reason}" if st.ready_reason else ""
        message = f": {st.ready_message}" if st.ready_message else ""
        lines += ["", f"Ready=False{reason}{message}"]
    return "\n".join(lines)


def render_alerts(summaries: list[dict], now: datetime) -> str:
    rows = []
    for a in summaries:
        last = a.get("lastSeen")
        age = human_age(now - datetime.fromisoformat(last)) if last else None
        p = a.get("pValue")
        rows.append(
            [
                age,
                a.get("inferenceService"),
                a.get("variant"),
                a.get("revision"),
                a.get("detector"),
                None if p is None else f"{p:.3g}",
                ",".join(a.get("features") or []),
                a.get("windowSize"),
                a.get("count"),
            ]
        )
    return format_table(
        [
            "LAST SEEN",
            "INFERENCESERVICE",
            "VARIANT",
            "REVISION",
            "DETECTOR",
            "P-VALUE",
            "FEATURES",
            "REQUESTS",
            "COUNT",
        ],
        rows,
    )


# --- commands --------------------------------------------------------------------------------


def _print_result(result: PatchResult, output: str, out: TextIO, err: TextIO) -> None:
    for warning in result.warnings:
        print(f"Warning: {warning}", file=err)
    if output == "json":
        print(json.dumps(result.model_dump(mode="json"), indent=2), file=out)
    else:
        print(result.summary(), file=out)


def run(
    args: argparse.Namespace,
    client: InferenceServiceClient,
    out: TextIO,
    err: TextIO,
    now: datetime,
) -> int:
    command = args.command
    verb = getattr(args, "verb", None)
    if command == "status" or (command == "canary" and verb == "status"):
        st = client.status(args.name)
        if not st.up_to_date:
            print(
                f"Warning: status is for generation {st.observed_generation}; KServe has not yet "
                f"reconciled generation {st.generation}",
                file=err,
            )
        if args.output == "json":
            print(json.dumps(st.model_dump(mode="json"), indent=2), file=out)
        else:
            print(render_status(st), file=out)
        return 0
    if command == "canary":
        if verb == "set":
            result = client.set_canary(
                args.name, args.percent, args.storage_uri, dry_run=args.dry_run
            )
        elif verb == "promote":
            result = client.promote(args.name, dry_run=args.dry_run)
        else:
            result = client.rollback(args.name, args.storage_uri, dry_run=args.dry_run)
        _print_result(result, args.output, out, err)
        return 0
    if command == "rollout":
        from kubeloop.cluster.canary import ClusterCanary

        target = ClusterCanary(
            client.context or "",
            client.namespace,
            args.name,
            client=client,
            state_configmap=args.state_configmap or f"kubeloop-rollout-{args.name}",
        )
        result = target.progress() if verb == "status" else target.abort(reason=args.reason)
        if args.output == "json":
            print(json.dumps(result.data, indent=2, default=str), file=out)
        else:
            print(result.text, file=out)
        return 0
    if command == "alerts":
        from kubeloop.cluster.events import list_alert_events, summarize_alert_event

        events = list_alert_events(
            client.core_api,
            client.namespace,
            args.name,
            since=args.since,
            now=now,
            context=client.context,
        )
        summaries = [summarize_alert_event(ev) for ev in events]
        if args.output == "json":
            print(json.dumps(summaries, indent=2), file=out)
        elif not summaries:
            target = f" for {RESOURCE}/{args.name}" if args.name else ""
            print(f"No drift alerts found{target} in {client.namespace} namespace.", file=err)
        else:
            print(render_alerts(summaries, now), file=out)
        return 0
    raise AssertionError(f"unhandled command {command!r}")  # argparse makes this unreachable


def main(
    argv: list[str] | None = None,
    *,
    api: Any = None,
    core_api: Any = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    now: datetime | None = None,
) -> int:
    """Entry point of ``kubectl-kubeloop``; returns the exit status (1 on a cluster error)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        client = InferenceServiceClient(
            namespace=args.namespace,
            context=args.context,
            api=api,
            core_api=core_api,
            kubeconfig=args.kubeconfig,
        )
        return run(args, client, out, err, now or datetime.now(UTC))
    except KubeloopError as exc:
        print(f"error: {exc}", file=err)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
