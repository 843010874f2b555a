"""The kind workflow runs the training pipeline with engine=spark and fails when it does not
finish: the step is there, after the images (the Spark one included) are loaded and the
Spark Operator is installed, it submits with `kubeloop pipeline submit --engine spark` and
waits, and its checks
(tests/e2e_spark_checks.py) reject a failed run and a failed or missing SparkApplication."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests import e2e_spark_checks
from tests.e2e_spark_checks import CheckFailed

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "kind-e2e.yaml"
STEP = "Training pipeline with engine=spark (Spark Operator)"


def _steps() -> list[dict]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["e2e"]["steps"]


def test_the_e2e_job_runs_the_pipeline_with_engine_spark() -> None:
    steps = _steps()
    names = [s.get("name", "") for s in steps]
    assert STEP in names
    at = names.index(STEP)
    # After the cluster (cluster-up installs the Spark Operator), the images and the lake's
    # source (make demo); before the always-run diagnostics.
    for before in ("Create the cluster and install the platform", "Load images into kind",
                   "Train two model versions locally and publish them to the cluster's object store"):
        assert names.index(before) < at, before
    assert names.index("Cluster state") > at
    step = steps[at]
    run = step["run"]
    assert "if" not in step, "the step must run (and fail the job) on every push"
    assert 0 < step["timeout-minutes"] <= 60
    submit, wait, apps, outcome = (
        run.index("kubeloop pipeline submit"),
        run.index("e2e_spark_checks.py wait"),
        run.index("e2e_spark_checks.py sparkapps"),
        run.index("e2e_spark_checks.py run "),
    )
    assert submit < wait < apps and wait < outcome
    assert "--timeout" in run[wait:apps]
    assert "get sparkapplications -o json" in run[wait:apps]
    # The wait reads the run id the submit printed.
    printed = run[submit:wait].split("> ", 1)[1].split()[0]
    assert f"--submitted {printed}" in run[wait:apps]
    # The lake the run reads is the one the step uploads.
    lake = run[submit:].split("--lake-uri ", 1)[1].split()[0]
    assert f"s3 cp --recursive runs/demo/lake {lake.replace('s3://', 's3://', 1)}/" in run
    job_minutes = yaml.safe_load(WORKFLOW.read_text())["jobs"]["e2e"]["timeout-minutes"]
    assert job_minutes > step["timeout-minutes"] + 60, "the rest of the job keeps its time"


def test_the_cluster_up_step_installs_the_operator_the_run_needs() -> None:
    text = (ROOT / "scripts" / "cluster-up").read_text()
    assert "helm upgrade --install spark-operator spark-operator" in text
    assert '--set "spark.jobNamespaces={kubeflow}"' in text


def _workflow_submit_args() -> list[str]:
    """The arguments of the step's `kubeloop pipeline submit`, as the shell passes them."""
    run = next(s for s in _steps() if s.get("name") == STEP)["run"]
    command = run.split(".venv/bin/kubeloop pipeline submit", 1)[1].split(">", 1)[0]
    return shlex.split(command.replace("\\\n", " "))


def test_the_workflows_submit_runs_engine_spark_on_the_operator(tmp_path, monkeypatch) -> None:
    """The step's own command line, through the CLI, against a recording stand-in for
    kfp.Client: the run it creates has engine=spark on the Spark Operator, on the lake the
    step uploads, and prints the run id the wait reads."""
    import kfp
    from typer.testing import CliRunner

    from kubeloop.cli.pipeline import app
    from kubeloop.pipeline.compile import compile_pipeline

    calls = []

    class Recording:
        def create_run_from_pipeline_package(self, pipeline_file, **kwargs):
            calls.append(kwargs)
            return SimpleNamespace(run_id="run-7")

    monkeypatch.setattr(kfp, "Client", lambda **kwargs: Recording())
    args = _workflow_submit_args()
    # the package the step compiles just before, here in a temporary folder
    package = compile_pipeline("training", tmp_path / "training_pipeline.yaml")
    args[args.index("--package") + 1] = str(package)
    result = CliRunner().invoke(app, ["submit", *args])
    assert result.exit_code == 0, result.output
    (kwargs,) = calls
    arguments = kwargs["arguments"]
    assert arguments["engine"] == "spark"
    build = json.loads(arguments["feature_config_json"])["build"]
    assert build == {"engine": "spark", "spark": {"submit": "operator"}}
    assert arguments["lake_uri"] == "s3://mlpipeline/kubeloop/lake"
    assert kwargs["service_account"] == "kubeloop-pipeline-runner"
    assert e2e_spark_checks.submitted_run_id(json.loads(result.output)) == "run-7"


def test_the_wait_needs_a_run_id_from_the_submit() -> None:
    assert e2e_spark_checks.submitted_run_id({"run_id": "r1"}) == "r1"
    with pytest.raises(CheckFailed, match="created no run"):
        e2e_spark_checks.submitted_run_id({"recurring_run_id": "rr", "experiment_id": "e"})


def test_the_run_check_needs_succeeded() -> None:
    assert "SUCCEEDED" in e2e_spark_checks.check_run({"run_id": "r1", "state": "SUCCEEDED"})
    for state in ("FAILED", "RUNNING", "CANCELED", None):
        with pytest.raises(CheckFailed, match="ended"):
            e2e_spark_checks.check_run({"run_id": "r1", "state": state, "error": "boom"})


def _app(name: str, state: str | None, component: str = "features") -> dict:
    status = {"applicationState": {"state": state, "errorMessage": "driver failed\ntrace"}}
    return {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": component}},
        "status": status if state else {},
    }


def test_the_sparkapps_check_needs_every_feature_job_completed() -> None:
    done = {"items": [_app("kubeloop-features-a", "COMPLETED"), _app("other", "FAILED", "x")]}
    assert e2e_spark_checks.check_sparkapps(done) == "1 feature SparkApplication(s) COMPLETED"
    with pytest.raises(CheckFailed, match="no SparkApplication"):
        e2e_spark_checks.check_sparkapps({"items": [_app("other", "COMPLETED", "x")]})
    failed = {"items": [_app("kubeloop-features-a", "COMPLETED"), _app("kubeloop-features-b", "FAILED")]}
    with pytest.raises(CheckFailed, match="kubeloop-features-b is FAILED"):
        e2e_spark_checks.check_sparkapps(failed)
    with pytest.raises(CheckFailed, match="not started"):
        e2e_spark_checks.check_sparkapps({"items": [_app("kubeloop-features-c", None)]})


def test_the_checks_exit_non_zero_from_the_command_line(tmp_path: Path) -> None:
    bad = tmp_path / "run.json"
    bad.write_text(json.dumps({"run_id": "r1", "state": "FAILED", "error": "features step"}))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "e2e_spark_checks.py"), "run", str(bad)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    assert proc.returncode == 1 and "ended FAILED: features step" in proc.stderr
