"""The assertions of the kind end-to-end workflow (.github/workflows/kind-e2e.yaml).

Each check reads what kubectl printed (JSON) and exits non-zero with a one-line reason when
the cluster is not in the state the step expects. They live here, not inline in the
workflow, so that tests/test_kind_workflow.py can show each one fails on a wrong state.

    python tests/e2e_checks.py versions DIR1 DIR2              two different exported models
    python tests/e2e_checks.py traffic ISVC.json --percent P   the split KServe reports is P%
    python tests/e2e_checks.py alerts ALERTS.json --revision R an alert names revision R
    python tests/e2e_checks.py paired RECORDS.json --min N     N request ids answered by two
                                                               versions, one of them in shadow
    python tests/e2e_checks.py rollout STATUS.json --phase P [--percent N]
                                                               `rollout status -o json` says so
    python tests/e2e_checks.py events EVENTS.json --reason R   an Event of reason R on the ISVC
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any


class CheckFailed(Exception):
    """The cluster is not in the expected state; the message says how."""


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(path.relative_to(directory).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def check_versions(first: Path, second: Path) -> str:
    """The two exported model directories hold different models (a canary of the primary's
    own files would prove nothing). Returns the two registry versions."""
    metas = []
    for d in (first, second):
        meta = d / "metadata.json"
        if not meta.is_file():
            raise CheckFailed(f"{d}: no metadata.json (not a `kubeloop models export` directory)")
        metas.append(json.loads(meta.read_text()))
    if _digest(first) == _digest(second):
        raise CheckFailed(f"{first} and {second} hold identical files: the canary is the primary")
    v1, v2 = (m.get("version") for m in metas)
    if v1 is not None and v1 == v2:
        raise CheckFailed(f"{first} and {second} are both registry version {v1}")
    return f"{v1} -> {v2}"


def canary_revision(isvc: dict[str, Any], percent: int) -> str:
    """The revision KServe reports at `percent`% as the latest, with the rest on the previous
    rolled-out revision (status.components.predictor.traffic)."""
    predictor = (isvc.get("status", {}).get("components", {}) or {}).get("predictor") or {}
    traffic = predictor.get("traffic") or []
    if not traffic:
        raise CheckFailed("status.components.predictor.traffic is empty")
    latest = [t for t in traffic if t.get("latestRevision")]
    others = [t for t in traffic if not t.get("latestRevision")]
    if len(latest) != 1:
        raise CheckFailed(f"expected one latestRevision traffic target, got {traffic}")
    if latest[0].get("percent", 0) != percent:
        raise CheckFailed(f"latest revision has {latest[0].get('percent')}%, expected {percent}%")
    if sum(t.get("percent", 0) for t in others) != 100 - percent:
        raise CheckFailed(
            f"previous revisions carry {[t.get('percent') for t in others]}, expected {100 - percent}%"
        )
    spec_percent = isvc.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent")
    if spec_percent != percent:
        raise CheckFailed(
            f"spec.predictor.canaryTrafficPercent is {spec_percent}, expected {percent}"
        )
    return latest[0]["revisionName"]


def check_alerts(alerts: list[dict[str, Any]], revision: str) -> str:
    """At least one drift alert was raised for `revision`, as the canary."""
    mine = [a for a in alerts if a.get("revision") == revision]
    if not mine:
        seen = sorted({str(a.get("revision")) for a in alerts})
        raise CheckFailed(f"no alert for revision {revision}; alerts name {seen or 'nothing'}")
    if not any(a.get("variant") == "canary" for a in mine):
        raise CheckFailed(
            f"alerts for {revision} are not filed as canary: {[a.get('variant') for a in mine]}"
        )
    return f"{len(mine)} alert(s) for {revision}"


def check_paired(body: dict[str, Any], minimum: int) -> str:
    """At least `minimum` request ids of the request log's records were answered twice: once
    by the served model (primary/canary) and once in shadow by another version."""
    served: dict[str, str] = {}
    shadow: dict[str, str] = {}
    for row in body.get("records") or []:
        if row.get("status_code") != 200 or not row.get("predictions"):
            continue
        target = shadow if row.get("variant") == "shadow" else served
        target.setdefault(str(row.get("request_id")), str(row.get("version")))
    both = [rid for rid in served if rid in shadow and shadow[rid] != served[rid]]
    same = [rid for rid in served if rid in shadow and shadow[rid] == served[rid]]
    if same:
        raise CheckFailed(
            f"{len(same)} request(s) shadowed by the version that served them, e.g. {same[0]}"
        )
    if len(both) < minimum:
        raise CheckFailed(
            f"{len(both)} request id(s) have a served and a shadow answer, expected at least {minimum} "
            f"({len(served)} served, {len(shadow)} shadow)"
        )
    return f"{len(both)} paired request ids"


def check_rollout(status: dict[str, Any], phase: str, percent: int | None) -> str:
    """`kubectl kubeloop rollout status -o json` shows the rollout in `phase` (at `percent`)."""
    if status.get("phase") != phase:
        raise CheckFailed(f"rollout phase is {status.get('phase')!r}, expected {phase!r}")
    if percent is not None and status.get("percent") != percent:
        raise CheckFailed(f"rollout is at {status.get('percent')}%, expected {percent}%")
    if phase == "running" and not (status.get("history") or []):
        raise CheckFailed("a running rollout without any recorded step")
    return f"rollout {phase} at step {status.get('step')} ({status.get('percent')}%)"


def check_events(events: list[dict[str, Any]], reason: str) -> str:
    """An Event of `reason` on an InferenceService, reported by the rollout controller."""
    mine = [
        e
        for e in events
        if e.get("reason") == reason
        and (e.get("involvedObject") or {}).get("kind") == "InferenceService"
    ]
    if not mine:
        seen = sorted({str(e.get("reason")) for e in events})
        raise CheckFailed(
            f"no {reason} Event on the InferenceService; reasons seen: {seen or 'none'}"
        )
    return f"{len(mine)} {reason} Event(s)"


def _load(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="check", required=True)
    p = sub.add_parser("versions")
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p = sub.add_parser("traffic")
    p.add_argument("isvc", help="kubectl get isvc -o json output, or - for stdin")
    p.add_argument("--percent", type=int, required=True)
    p = sub.add_parser("alerts")
    p.add_argument("alerts", help="kubectl kubeloop alerts -o json output, or - for stdin")
    p.add_argument("--revision", required=True)
    p = sub.add_parser("paired")
    p.add_argument("records", help="GET /requestlog/records output, or - for stdin")
    p.add_argument("--min", type=int, required=True, dest="minimum")
    p = sub.add_parser("rollout")
    p.add_argument("status", help="kubectl kubeloop rollout status -o json output, or -")
    p.add_argument("--phase", required=True)
    p.add_argument("--percent", type=int, default=None)
    p = sub.add_parser("events")
    p.add_argument("events", help="kubectl get events -o json output, or - for stdin")
    p.add_argument("--reason", required=True)
    args = parser.parse_args(argv)
    try:
        if args.check == "versions":
            print(check_versions(args.first, args.second))
        elif args.check == "traffic":
            print(canary_revision(_load(args.isvc), args.percent))
        elif args.check == "paired":
            print(check_paired(_load(args.records), args.minimum))
        elif args.check == "rollout":
            print(check_rollout(_load(args.status), args.phase, args.percent))
        elif args.check == "events":
            data = _load(args.events)
            print(
                check_events(data if isinstance(data, list) else data.get("items", []), args.reason)
            )
        else:
            data = _load(args.alerts)
            print(
                check_alerts(
                    data if isinstance(data, list) else data.get("items", []), args.revision
                )
            )
    except CheckFailed as exc:
        print(f"e2e check {args.check} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
