"""`kubeloop-rollout-controller` (also `python -m kubeloop.cluster.controller_cli`): the rollout
controller's process, one `kubeloop.cluster.controller` loop every `--interval` seconds."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from typing import Any

from kubeloop.cluster.controller import (
    DEFAULT_RECORDS_URL,
    DEFAULT_STATE_CONFIGMAP,
    ControllerError,
    HTTPRecords,
    build_loop,
)
from kubeloop.cluster.isvc import DEFAULT_NAMESPACE
from kubeloop.errors import KubeloopError
from kubeloop.usecase import DEFAULT_MODEL_NAME

log = logging.getLogger("kubeloop.cluster.controller")


def beat(path: str | None) -> None:
    """Touch the heartbeat file: the pod's exec probes check its age (the controller serves
    no HTTP, and its NetworkPolicy admits no ingress)."""
    if path:
        from pathlib import Path

        Path(path).touch()


def run_forever(
    loop: Any, interval: float, stop: threading.Event, heartbeat: str | None = None
) -> None:
    """Reconcile every `interval` seconds until `stop`; a failed pass is logged and retried
    at the next interval (the API or the request log may be briefly away). The heartbeat is
    touched after every pass that ended, even with a reported error (a one-line
    KubeloopError); an unexpected exception leaves it alone, so a controller that keeps
    crashing in its pass goes stale and the liveness probe restarts it."""
    while not stop.is_set():
        try:
            record = loop.reconcile_once()
            if record is not None:
                last = record.last
                log.info(
                    "rollout %s: %s, step %d at %d%%%s",
                    record.candidate, record.phase, record.state.step, record.state.percent,
                    f", {last.action}: {last.reasons[-1]}" if last and last.reasons else "",
                )  # fmt: skip
            beat(heartbeat)
        except KubeloopError as exc:
            log.warning("rollout: %s", exc)
            beat(heartbeat)
        except Exception:  # the controller must keep running
            log.exception("rollout: reconcile failed")
        stop.wait(interval)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubeloop-rollout-controller",
        description="Progressive rollout of one InferenceService: shadow -> 5% -> 25% -> 50% -> "
        "100%, decided on paired, anytime-valid statistics from the request log.",
    )
    p.add_argument(
        "--name",
        default=DEFAULT_MODEL_NAME,
        help=f"InferenceService (default {DEFAULT_MODEL_NAME})",
    )
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: the pod's)")
    p.add_argument("--context", default=None, help="kubeconfig context (outside a pod)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (outside a pod)")
    p.add_argument("--records-url", default=DEFAULT_RECORDS_URL, help="GET /requestlog/records")
    p.add_argument("--state-configmap", default=DEFAULT_STATE_CONFIGMAP)
    p.add_argument("--interval", type=float, default=30.0, help="seconds between passes")
    p.add_argument("--policy", default=None, help="ProgressivePolicy as a JSON or YAML file")
    p.add_argument("--production-version", default=None, help="default: read off the log")
    p.add_argument("--candidate-version", default=None, help="default: read off the log")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument(
        "--heartbeat",
        default=None,
        help="file touched after every pass (the Deployment's exec probes check its age)",
    )
    p.add_argument("--log-level", default="info")
    return p


def load_policy(path: str | None) -> Any:
    """The ProgressivePolicy of a JSON/YAML file (None: the defaults)."""
    from kubeloop.serving.progressive import ProgressivePolicy

    if path is None:
        return ProgressivePolicy()
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    try:
        return ProgressivePolicy.model_validate(data)
    except ValueError as exc:
        raise ControllerError(f"{path}: not a rollout policy: {str(exc).splitlines()[0]}") from None


def main(argv: list[str] | None = None, *, api: Any = None, core_api: Any = None) -> int:
    """Entry point of `kubeloop-rollout-controller`; returns the exit status."""
    import os

    from kubeloop.cluster.canary import ClusterCanary
    from kubeloop.cluster.isvc import InferenceServiceClient

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    namespace = args.namespace or os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE
    try:
        policy = load_policy(args.policy)
        client = InferenceServiceClient(
            namespace, context=args.context, api=api, core_api=core_api, kubeconfig=args.kubeconfig
        )
        target = ClusterCanary(client.context or "", namespace, args.name, client=client)
        loop = build_loop(
            client,
            args.name,
            target,
            records=HTTPRecords(args.records_url),
            state_configmap=args.state_configmap,
            policy=policy,
            instance=os.environ.get("POD_NAME"),
            production_version=args.production_version,
            candidate_version=args.candidate_version,
        )
        if args.once:
            loop.reconcile_once()
            return 0
    except KubeloopError as exc:
        log.error("%s", exc)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_forever(loop, args.interval, stop, args.heartbeat)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
