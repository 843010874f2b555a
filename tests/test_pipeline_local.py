"""The training pipeline run end to end by kfp.local's SubprocessRunner on a small lake,
through the same `run_demo` that `make demo` uses."""

from __future__ import annotations

import json

import pytest

from kubeloop.demo import DemoConfig, run_demo
from kubeloop.registry import open_registry
from kubeloop.workdir import Workdir
from usecases.ctr.generator import GeneratorConfig

SMALL = GeneratorConfig(events=40_000, days=6, users=800, ads=150, seed=3)
FAST_TRAINING = {"torch": {"max_epochs": 2, "importance_rows": 500}, "lightgbm": {"max_rounds": 60}}


@pytest.mark.slow
def test_demo_runs_pipeline_and_registers_a_model(tmp_path):
    workdir = Workdir.at(tmp_path / "run")
    config = DemoConfig(generator=SMALL, train_config=FAST_TRAINING, progress=False, serve=False)
    report = run_demo(config, workdir)

    assert json.loads(workdir.report.read_text()) == report
    assert report["data"]["events"] == 40_000 and report["data"]["partitions"] == 6
    # The hourly views, and the state views the request-time recency reads.
    assert report["features"]["feature_views"] == [
        "ad_features",
        "ad_state",
        "user_features",
        "user_state",
    ]
    assert report["features"]["training_rows"] == 40_000
    assert report["features"]["rows_online"] > 0
    training = report["training"]
    # every registered kind is trained and scored: the ladder starts at logistic regression
    assert set(training["models"]) == {"logistic", "lightgbm", "torch"}
    for figures in training["models"].values():
        assert 0.5 < figures["auc"] <= 1 and figures["oracle_auc"] > figures["auc"] - 0.05
        assert {"auc", "logloss", "ne", "oracle_auc", "calibration", "train_seconds"} <= set(
            figures
        )
    assert training["champion"] in training["models"]
    assert training["champion_reasons"][0].startswith(
        "Ladder, simplest first: logistic (rank 0) -> lightgbm (rank 1) -> torch (rank 2)"
    )
    assert (
        training["gate"]["passed"] is True and training["gate"]["compared_against"] == "base_rate"
    )

    registry = open_registry(str(workdir.registry))
    versions = registry.list("ctr")
    assert [v.version for v in versions] == [report["registry"]["version"]] == ["v0001"]
    version = versions[0]
    assert version.model_kind == training["champion"]
    assert version.gate.passed and version.pipeline_run_id
    assert version.feature_service == "ctr_model" and "user_ctr_7d" in version.features
    assert set(registry.reference("ctr", "v0001").columns) == set(version.features)
    assert (workdir.root / "kfp_local").is_dir()


@pytest.mark.slow
def test_failing_gate_skips_registration(tmp_path):
    """The dsl.If really gates: with an impossible NE margin nothing is registered."""
    workdir = Workdir.at(tmp_path / "run")
    config = DemoConfig(
        generator=SMALL,
        train_config=FAST_TRAINING,
        gate_config={"ne_margin": 0.9},
        progress=False,
        serve=False,
    )
    report = run_demo(config, workdir)
    assert report["training"]["gate"]["passed"] is False
    assert any("0.9" in reason for reason in report["training"]["gate"]["reasons"])
    assert report["registry"]["version"] is None
    assert (
        not (workdir.registry / "stages").exists()
        or open_registry(str(workdir.registry)).list("ctr") == []
    )
