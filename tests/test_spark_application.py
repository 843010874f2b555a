"""The feature job's SparkApplication: its template, its schema, its submission.

The template (manifests/spark/feature-job.yaml) is what `render_application` gives; it is
validated against the Spark Operator's CRD schema at the tag scripts/cluster-up pins (the
part of it the object uses, tests/fixtures/upstream/sparkapplication-schema.json, written by
scripts/spark-crd-schema), strictly: an unknown field fails, as the API server's strict
field validation would. Submission is checked against a stand-in for CustomObjectsApi that
plays the operator's status transitions.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeloop.features.spark_app import (
    TEMPLATE_FILE,
    SparkApplicationError,
    SparkApplicationSettings,
    example_application,
    render_application,
    run_application,
    template_text,
)

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "tests" / "fixtures" / "upstream" / "sparkapplication-schema.json"


def test_the_committed_template_is_what_the_step_renders() -> None:
    path = ROOT / TEMPLATE_FILE
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(template_text())
        (ROOT / "helm" / "kubeloop" / "files" / "spark-feature-job.yaml").write_text(template_text())
    assert path.read_text() == template_text(), "regenerate with UPDATE_GOLDEN=1"


def test_the_schema_fixture_follows_the_pinned_operator() -> None:
    fixture = json.loads(SCHEMA.read_text())
    pinned = re.search(
        r'^SPARK_OPERATOR_VERSION="([^"]+)"', (ROOT / "scripts" / "cluster-up").read_text(), re.MULTILINE
    )
    assert pinned and fixture["source"].startswith(f"kubeflow/spark-operator v{pinned.group(1)}:")
    assert (fixture["group"], fixture["version"], fixture["kind"]) == (
        "sparkoperator.k8s.io", "v1beta2", "SparkApplication"
    )


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The structural schema as JSON Schema with unknown fields refused at every level."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if schema.get("x-kubernetes-int-or-string"):
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(schema["additionalProperties"])
    if "items" in schema:
        out["items"] = _strict(schema["items"])
    return out


def crd_problems(obj: dict[str, Any]) -> list[str]:
    import jsonschema

    fixture = json.loads(SCHEMA.read_text())
    problems = []
    if obj.get("apiVersion") != f"{fixture['group']}/{fixture['version']}":
        problems.append(f"apiVersion {obj.get('apiVersion')}")
    if obj.get("kind") != fixture["kind"]:
        problems.append(f"kind {obj.get('kind')}")
    validator = jsonschema.Draft7Validator(_strict(fixture["spec"]))
    for err in validator.iter_errors(obj.get("spec")):
        problems.append(f"spec/{'/'.join(map(str, err.absolute_path))}: {err.message}")
    return problems


def test_the_template_validates_against_the_operators_crd() -> None:
    obj = yaml.safe_load((ROOT / TEMPLATE_FILE).read_text())
    assert crd_problems(obj) == []
    assert crd_problems(example_application()) == []


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda o: o["spec"]["driver"].update(coress=1), "Additional properties"),
        (lambda o: o["spec"].update(type="Pyhton"), "is not one of"),
        (lambda o: o["spec"]["executor"].update(instances="2"), "is not of type"),
        (lambda o: o["spec"].pop("sparkVersion"), "'sparkVersion' is a required property"),
        (lambda o: o["spec"]["restartPolicy"].update(type="Sometimes"), "is not one of"),
    ],
)
def test_a_broken_application_fails_the_schema(mutate, expected) -> None:
    obj = copy.deepcopy(example_application())
    mutate(obj)
    problems = crd_problems(obj)
    assert any(expected in p for p in problems), problems


def test_the_pods_meet_the_restricted_profile() -> None:
    spec = example_application()["spec"]
    for role in ("driver", "executor"):
        ctx = spec[role]["securityContext"]
        assert ctx["runAsNonRoot"] and not ctx["allowPrivilegeEscalation"]
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}


# --- submission -------------------------------------------------------------------------


class FakeCustomObjects:
    """CustomObjectsApi's two calls the step makes; `states` are what successive reads see."""

    def __init__(self, states: list[tuple[str, str]]) -> None:
        self.states = list(states)
        self.created: list[tuple[str, str, str, str, dict]] = []
        self.reads = 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        assert self.created and (namespace, name) == (
            self.created[0][2], self.created[0][4]["metadata"]["name"]
        )
        state, message = self.states[min(self.reads, len(self.states) - 1)]
        self.reads += 1
        status = {"applicationState": {"state": state, "errorMessage": message}} if state else {}
        return {**self.created[0][4], "status": status}


def _body(name: str = "kubeloop-features-run1") -> dict[str, Any]:
    return render_application(
        name, "s3://l", "s3://f", "ctr", "{}", SparkApplicationSettings(namespace="kubeflow")
    )


def test_it_creates_the_application_and_waits_for_completion() -> None:
    api = FakeCustomObjects([("", ""), ("SUBMITTED", ""), ("RUNNING", ""), ("COMPLETED", "")])
    sleeps: list[float] = []
    obj = run_application(api, _body(), SparkApplicationSettings(poll_s=2), sleep=sleeps.append)
    assert obj["status"]["applicationState"]["state"] == "COMPLETED"
    assert api.created[0][:4] == ("sparkoperator.k8s.io", "v1beta2", "kubeflow", "sparkapplications")
    assert sleeps == [2, 2, 2]


@pytest.mark.parametrize("state", ["FAILED", "SUBMISSION_FAILED"])
def test_a_failed_driver_fails_the_step_with_its_error(state) -> None:
    driver_error = (
        "driver container failed with ExitCode: 1, Reason: Error\nTraceback (most recent call "
        "last): ..."
    )
    api = FakeCustomObjects([("RUNNING", ""), (state, driver_error)])
    with pytest.raises(SparkApplicationError) as err:
        run_application(api, _body(), SparkApplicationSettings(), sleep=lambda s: None)
    message = str(err.value)
    assert "\n" not in message
    assert f"kubeflow/kubeloop-features-run1 {state}: driver container failed with ExitCode: 1" in message


def test_it_gives_up_after_the_timeout() -> None:
    api = FakeCustomObjects([("RUNNING", "")])
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(SparkApplicationError, match="still RUNNING after 30s"):
        run_application(
            api, _body(), SparkApplicationSettings(timeout_s=30, poll_s=10),
            sleep=sleep, clock=lambda: now[0],
        )
    assert api.reads == 4


# --- the build's operator path -------------------------------------------------------------


class DriverPlayingApi(FakeCustomObjects):
    """The operator and its driver in one: on the first status read the driver runs the
    application's own arguments as kubeloop.features.spark_driver does (the build on DuckDB
    here: which engine the driver uses is the parity tests' concern; then the tables and the
    summary are published to --out), then COMPLETED."""

    def __init__(self, fail_with: str = "") -> None:
        super().__init__([("COMPLETED", "")] if not fail_with else [("FAILED", fail_with)])
        self.fail_with = fail_with

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if self.reads == 0 and not self.fail_with:
            import tempfile

            from kubeloop.features.build import FeatureBuildConfig, build_features
            from kubeloop.features.spark_driver import publish

            body = self.created[0][4]
            args = body["spec"]["arguments"]
            opts = dict(zip(args[::2], args[1::2], strict=True))
            config = FeatureBuildConfig.model_validate_json(opts["--config-json"])
            assert config.spark.submit == "local"  # the driver must not submit again
            # Spark's parts go where every executor pod reaches, under this run's name.
            assert config.spark.scratch_uri == config.spark.application.parts_uri(
                body["metadata"]["name"]
            )
            with tempfile.TemporaryDirectory() as tmp:
                summary = build_features(
                    opts["--lake"], Path(tmp) / "features",
                    config.model_copy(update={"engine": "duckdb"}),
                    progress=False, use_case=opts["--use-case"],
                )
                publish(Path(tmp) / "features", opts["--out"], opts["--use-case"],
                        summary.model_dump_json())
        return super().get_namespaced_custom_object(group, version, namespace, plural, name)


def _operator_config():
    from kubeloop.features.build import FeatureBuildConfig

    # The object store is fsspec's in-memory one: the tables travel by URL, not by a path
    # the driver and the step would share.
    application = {"poll_s": 0.01, "work_uri": "memory://mlpipeline/kubeloop/spark"}
    return FeatureBuildConfig.model_validate(
        {"engine": "spark", "spark": {"submit": "operator", "application": application}}
    )


def test_the_build_submits_to_the_operator_and_reports_the_driver_tables(tmp_path, monkeypatch):
    from test_features_build import random_events, write_lake

    from kubeloop.features import spark_job
    from kubeloop.features.build import build_features

    lake = write_lake(tmp_path / "lake", random_events(seed=4, n=200))
    api = DriverPlayingApi()
    monkeypatch.setattr(spark_job, "_custom_objects_api", lambda: api)
    summary = build_features(str(lake), tmp_path / "features", _operator_config(), progress=False)
    assert summary.events == 200 and min(summary.rows.values()) > 0
    (_, _, namespace, _, body) = api.created[0]
    name = body["metadata"]["name"]
    assert namespace == "kubeflow" and name.startswith("kubeloop-features-")
    assert crd_problems(body) == []
    # The driver published to the object store, and the step's copy is what Feast reads.
    out = dict(zip(body["spec"]["arguments"][::2], body["spec"]["arguments"][1::2], strict=True))
    assert out["--out"] == f"memory://mlpipeline/kubeloop/spark/{name}/features"
    import fsspec

    store = fsspec.filesystem("memory")
    local = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len(local) == len(summary.rows)
    for file in local:
        published = store.cat_file(f"/mlpipeline/kubeloop/spark/{name}/features/{file}")
        assert published == (tmp_path / "features" / file).read_bytes()


def test_a_failed_driver_fails_the_build_with_its_error(tmp_path, monkeypatch):
    from test_features_build import random_events, write_lake

    from kubeloop.features import spark_job
    from kubeloop.features.build import build_features

    lake = write_lake(tmp_path / "lake", random_events(seed=4, n=50))
    api = DriverPlayingApi(fail_with="driver container failed with ExitCode: 1, Reason: Error")
    monkeypatch.setattr(spark_job, "_custom_objects_api", lambda: api)
    with pytest.raises(SparkApplicationError, match="FAILED: driver container failed"):
        build_features(str(lake), tmp_path / "features", _operator_config(), progress=False)
    assert not (tmp_path / "features").exists()


def test_the_chart_ships_the_same_template() -> None:
    # Packaged with the chart (files/, not rendered: the job is created per run), so a chart
    # user has the object the features step submits.
    chart_copy = ROOT / "helm" / "kubeloop" / "files" / "spark-feature-job.yaml"
    assert chart_copy.read_text() == (ROOT / TEMPLATE_FILE).read_text()
