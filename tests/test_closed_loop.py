"""The closed loop end to end on a small covariate-shift lake: traffic replayed across the
day of change through the served model, the drift service fed by the router's CloudEvents,
an alert naming the features that changed, a retraining run, and a recorded canary
decision. Slow: two pipeline runs and three sets of KServe servers."""

from __future__ import annotations

import pytest

from kubeloop.data.generator import GeneratorConfig
from kubeloop.demo import DemoConfig, run_demo
from kubeloop.drift.stage import DriftStageConfig
from kubeloop.registry import open_registry
from kubeloop.serving.policy import RolloutPolicy
from kubeloop.serving.replay import ReplayConfig
from kubeloop.serving.stage import ServingStageConfig
from kubeloop.workdir import Workdir


@pytest.mark.slow
def test_covariate_shift_is_detected_and_retraining_follows(tmp_path):
    workdir = Workdir.at(tmp_path / "run")
    small_replay = ReplayConfig(requests=150, batch_size=8, concurrency=4)
    config = DemoConfig(
        generator=GeneratorConfig(
            events=120_000,
            days=12,
            users=1500,
            ads=300,
            seed=5,
            scenario="covariate_shift",
            change_day=9,
        ),
        train_until_day=8,
        train_config={"torch": {"importance_rows": 500}},
        gate_config={"calibration_bounds": [0.8, 1.25]},
        serving=ServingStageConfig(
            replay=small_replay, policy=RolloutPolicy(min_labelled=200), replay_last_days=1
        ),
        drift=DriftStageConfig(
            impressions_per_day=2500,
            canary_replay=small_replay,
            canary_policy=RolloutPolicy(min_labelled=200),
            retrain_window_days=6,
        ),
        progress=False,
    )
    report = run_demo(config, workdir)
    drift = report["drift"]

    assert drift["false_alarms_before_change"] == 0
    assert drift["first_alert_delay_events"] is not None
    assert drift["first_alert_delay_events"] <= 4 * 2000  # within a few windows of the change
    assert {"device", "user_country"} <= set(drift["drifted_features"])
    first = min(
        (a for a in drift["alerts"] if a["after_change"]),
        key=lambda a: a["served_impressions_at_window_end"],
    )
    assert first["detector"] == "feature" and first["variant"] == "primary"

    retrain = drift["retrain"]
    assert retrain["triggered"] is True and retrain["gate"]["reasons"]
    versions = {v.version: v for v in open_registry(str(workdir.registry)).list("ctr")}
    if retrain["new_version"]:
        assert versions[retrain["new_version"]].data_scenario == "covariate_shift"
        assert drift["rollout"]["decision"] in {"promote", "rollback", "wait"}
        assert drift["rollout"]["reasons"]
    else:
        assert retrain["gate"]["passed"] is False
