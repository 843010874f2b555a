"""The kind workflow's run of the training pipeline with engine=spark (.github/workflows/kind-e2e.yaml).

    kubeloop pipeline submit --engine spark --spark-submit operator ... > SUBMITTED.json
        (the workflow submits with the CLI: the features step creates a SparkApplication)
    python tests/e2e_spark_checks.py wait --host URL --submitted SUBMITTED.json [--timeout S] --out RUN.json
        wait for that run, write its final state
    python tests/e2e_spark_checks.py run RUN.json          the run SUCCEEDED
    python tests/e2e_spark_checks.py sparkapps APPS.json   a feature job's SparkApplication
                                                           (kubectl get -o json) COMPLETED

Like tests/e2e_checks.py, each check exits non-zero with a one-line reason, and
tests/test_spark_workflow.py shows each one failing on a wrong state.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


class CheckFailed(Exception):
    """The cluster is not in the expected state; the message says how."""


def submitted_run_id(submitted: dict[str, Any]) -> str:
    """The run id `kubeloop pipeline submit` printed (a one-off run, not a recurring one)."""
    run_id = submitted.get("run_id")
    if not run_id:
        raise CheckFailed(f"kubeloop pipeline submit created no run: {submitted}")
    return str(run_id)


def wait_for_run(host: str, run_id: str, timeout_s: int) -> dict[str, Any]:
    """Wait for the run; return {run_id, state, error}."""
    import kfp

    run = kfp.Client(host=host).wait_for_run_completion(run_id, timeout=timeout_s)
    error = getattr(run, "error", None)
    return {"run_id": run_id, "state": str(run.state), "error": str(error or "")}


def check_run(run: dict[str, Any]) -> str:
    """The pipeline run finished in state SUCCEEDED."""
    if run.get("state") != "SUCCEEDED":
        raise CheckFailed(
            f"pipeline run {run.get('run_id')} ended {run.get('state')}: {run.get('error') or '?'}"
        )
    return f"run {run['run_id']} SUCCEEDED"


def check_sparkapps(listing: dict[str, Any]) -> str:
    """At least one feature job's SparkApplication, and every one of them, COMPLETED."""
    apps = [
        a for a in listing.get("items", [])
        if (a.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/component")
        == "features"
    ]
    if not apps:
        raise CheckFailed("no SparkApplication labelled app.kubernetes.io/component=features")
    for app in apps:
        state = ((app.get("status") or {}).get("applicationState") or {})
        if state.get("state") != "COMPLETED":
            raise CheckFailed(
                f"SparkApplication {app['metadata']['name']} is {state.get('state') or 'not started'}: "
                f"{(state.get('errorMessage') or '').strip().splitlines()[:1]}"
            )
    return f"{len(apps)} feature SparkApplication(s) COMPLETED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="check", required=True)
    p = sub.add_parser("wait")
    p.add_argument("--host", required=True)
    p.add_argument("--submitted", type=Path, required=True)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--out", type=Path, required=True)
    sub.add_parser("run").add_argument("path")
    sub.add_parser("sparkapps").add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.check == "wait":
            run_id = submitted_run_id(json.loads(args.submitted.read_text()))
            run = wait_for_run(args.host, run_id, args.timeout)
            args.out.write_text(json.dumps(run))
            print(json.dumps(run))
            return 0
        doc = json.loads(Path(args.path).read_text())
        print(check_run(doc) if args.check == "run" else check_sparkapps(doc))
    except CheckFailed as err:
        print(f"check failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
