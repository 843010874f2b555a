"""`kubeloop pipeline submit` logic against a recording stand-in for kfp.Client (no KFP
API can run here; the stand-in records the calls kfp.Client would receive)."""

from __future__ import annotations

from types import SimpleNamespace

from kubeloop.pipeline.compile import compile_pipeline
from kubeloop.pipeline.kfp_local_compat import cel_to_python
from kubeloop.pipeline.params import TrainingRunParams
from kubeloop.pipeline.submit import SubmitOptions, submit


class RecordingClient:
    def __init__(self):
        self.calls = []

    def create_run_from_pipeline_package(self, pipeline_file, **kwargs):
        self.calls.append(("run", pipeline_file, kwargs))
        return SimpleNamespace(run_id="run-123")

    def create_experiment(self, name, namespace=None):
        self.calls.append(("experiment", name, namespace))
        return SimpleNamespace(experiment_id="exp-9")

    def create_recurring_run(self, **kwargs):
        self.calls.append(("recurring", kwargs))
        return SimpleNamespace(recurring_run_id="rr-1")


def _params():
    return TrainingRunParams(lake_uri="s3://b/lake", features_uri="/f", feature_repo="/r", registry_uri="/reg")


def test_submit_creates_a_run_in_the_namespace_and_experiment(tmp_path):
    package = compile_pipeline("training", tmp_path / "p.yaml")
    client = RecordingClient()
    ids = submit(package, _params().arguments(), SubmitOptions(host="http://kfp", namespace="team", experiment="ctr"), client)
    assert ids == {"run_id": "run-123"}
    kind, path, kwargs = client.calls[0]
    assert kind == "run" and path == str(package)
    assert kwargs["namespace"] == "team" and kwargs["experiment_name"] == "ctr"
    assert kwargs["arguments"]["lake_uri"] == "s3://b/lake"


def test_schedule_makes_a_recurring_run(tmp_path):
    package = compile_pipeline("training", tmp_path / "p.yaml")
    client = RecordingClient()
    ids = submit(package, _params().arguments(),
                 SubmitOptions(host="http://kfp", schedule="0 0 3 * * *"), client)
    assert ids == {"recurring_run_id": "rr-1", "experiment_id": "exp-9"}
    recurring = client.calls[1][1]
    assert recurring["cron_expression"] == "0 0 3 * * *"
    assert recurring["pipeline_package_path"] == str(package)
    assert recurring["experiment_id"] == "exp-9"


def test_cel_conditions_become_python():
    cel = "inputs.parameter_values['pipelinechannel--gate-Output'] == true"
    assert cel_to_python(cel) == "pipelinechannel--gate-Output == True"
    assert cel_to_python("a == false && b == true").split() == ["a", "==", "False", "and", "b", "==", "True"]


def _submit_cli(tmp_path, monkeypatch, *args):
    """`kubeloop pipeline submit ARGS` against the recording stand-in for kfp.Client;
    returns (exit code, output, the recorded calls)."""
    import kfp
    from typer.testing import CliRunner

    from kubeloop.cli.pipeline import app

    client = RecordingClient()
    monkeypatch.setattr(kfp, "Client", lambda **kwargs: client)
    package = compile_pipeline("training", tmp_path / "p.yaml")
    result = CliRunner().invoke(
        app, ["submit", "--host", "http://kfp", "--package", str(package), *args]
    )
    return result.exit_code, result.output, client.calls


def test_submit_engine_spark_goes_to_the_spark_operator(tmp_path, monkeypatch):
    import json

    code, output, calls = _submit_cli(tmp_path, monkeypatch, "--engine", "spark")
    assert code == 0, output
    arguments = calls[0][2]["arguments"]
    assert arguments["engine"] == "spark"
    # the components image has no Java: a submitted Spark build is a SparkApplication
    assert json.loads(arguments["feature_config_json"]) == {
        "build": {"engine": "spark", "spark": {"submit": "operator"}}
    }
    assert json.loads(output) == {"run_id": "run-123"}


def test_submit_without_engine_keeps_the_step_defaults(tmp_path, monkeypatch):
    code, output, calls = _submit_cli(tmp_path, monkeypatch)
    assert code == 0, output
    arguments = calls[0][2]["arguments"]
    assert arguments["engine"] == "duckdb" and arguments["feature_config_json"] == "{}"
    code, output, calls = _submit_cli(tmp_path, monkeypatch, "--engine", "duckdb")
    assert code == 0, output
    assert calls[0][2]["arguments"]["engine"] == "duckdb"


def test_submit_rejects_an_unknown_engine_or_submit_mode_before_sending(tmp_path, monkeypatch):
    code, output, calls = _submit_cli(tmp_path, monkeypatch, "--engine", "flink")
    assert code != 0 and "engine" in output and calls == []
    code, output, calls = _submit_cli(
        tmp_path, monkeypatch, "--engine", "spark", "--spark-submit", "yarn"
    )
    assert code != 0 and "submit" in output and calls == []
