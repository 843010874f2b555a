"""The kind workflow's run of the training pipeline with engine=spark (.github/workflows/kind-e2e.yaml).

    python tests/e2e_spark_checks.py submit --host URL --lake S3URI [--timeout S] --out RUN.json
        compile the training pipeline, submit it with engine=spark (the features step creates
        a SparkApplication for the Spark Operator), wait for the run, write its final state
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


def run_arguments(lake_uri: str) -> dict[str, Any]:
    """The pipeline's arguments: the demo's use case on the cluster's lake, the feature
    build on Spark, submitted to the operator (the components image has no Java, so
    engine=spark in the cluster means a SparkApplication, not a local session)."""
    from kubeloop.pipeline.params import TrainingRunParams

    params = TrainingRunParams(
        lake_uri=lake_uri,
        features_uri="/tmp/kubeloop/features",
        feature_repo="/tmp/kubeloop/feature_repo",
        registry_uri="/tmp/kubeloop/registry",
        feature_config={"build": {"engine": "spark", "spark": {"submit": "operator"}}},
    )
    arguments = params.arguments()
    if arguments["engine"] != "spark":
        raise CheckFailed(f"the run's engine parameter is {arguments['engine']!r}, not spark")
    return arguments


def submit_and_wait(host: str, lake_uri: str, timeout_s: int) -> dict[str, Any]:
    """Submit the run and wait for it; return {run_id, state, error}."""
    import kfp

    from kubeloop.pipeline.compile import compile_pipeline, package_path
    from kubeloop.pipeline.submit import SubmitOptions, submit

    package = package_path("training", Path("build/training_pipeline.yaml"))
    compile_pipeline("training", package)
    options = SubmitOptions(
        host=host, run_name="kind-e2e-engine-spark", service_account="kubeloop-pipeline-runner"
    )
    ids = submit(package, run_arguments(lake_uri), options)
    run = kfp.Client(host=host).wait_for_run_completion(ids["run_id"], timeout=timeout_s)
    error = getattr(run, "error", None)
    return {"run_id": ids["run_id"], "state": str(run.state), "error": str(error or "")}


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
    p = sub.add_parser("submit")
    p.add_argument("--host", required=True)
    p.add_argument("--lake", required=True)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--out", type=Path, required=True)
    sub.add_parser("run").add_argument("path")
    sub.add_parser("sparkapps").add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.check == "submit":
            run = submit_and_wait(args.host, args.lake, args.timeout)
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
