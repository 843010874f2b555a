"""The demo's serving stage end to end on a small lake: real KServe predictor and
transformer processes, the canary router, replayed traffic moving through time, delayed
labels, and a policy decision that changes the registry's stages."""

from __future__ import annotations

import pytest

from kubeloop.demo import DemoConfig, run_demo
from kubeloop.demo.serving import ServingStageConfig
from kubeloop.registry import open_registry
from kubeloop.serving.policy import RolloutPolicy
from kubeloop.serving.replay import ReplayConfig
from kubeloop.serving.request_log.reader import exchanges_frame
from kubeloop.workdir import Workdir
from usecases.ctr.generator import GeneratorConfig


@pytest.mark.slow
def test_demo_serves_replays_and_decides_on_the_canary(tmp_path):
    workdir = Workdir.at(tmp_path / "run")
    config = DemoConfig(
        generator=GeneratorConfig(events=40_000, days=6, users=800, ads=150, seed=3),
        train_config={"torch": {"importance_rows": 500}},
        # a 6-day lake moves the daily CTR more than the default calibration bounds allow;
        # this test is about serving, so the gate is loosened rather than the data enlarged
        gate_config={"calibration_bounds": [0.8, 1.25]},
        serving=ServingStageConfig(
            canary_percent=50,
            replay=ReplayConfig(requests=600, batch_size=4, concurrency=4),
            policy=RolloutPolicy(min_labelled=100, min_requests_for_health=50),
            replay_last_days=2,
        ),
        progress=False,
        monitor=False,
    )
    report = run_demo(config, workdir)
    serving = report["serving"]

    assert serving["primary_version"] == "v0001" and serving["canary_version"] == "v0002"
    requests = serving["requests"]
    assert requests["errors"] == 0
    total = requests["primary"] + requests["canary"]
    assert 600 <= total <= 600 + 48  # batches restart at each replayed hour (2 days)
    # a 50% split: within 4.5 sigma (sigma ~12)
    assert abs(requests["canary"] - total / 2) < 55
    assert serving["latency_ms"]["p50"] > 0
    assert serving["ab"]["variants"]["canary"]["labelled"] == serving["impressions"]["canary"]
    assert sum(serving["impressions"].values()) == 2400
    assert serving["decision"]["action"] in {"promote", "rollback", "wait"}
    assert serving["decision"]["reasons"]

    stages = {v.version: v.stage.value for v in open_registry(str(workdir.registry)).list("ctr")}
    expected = {
        "promote": {"v0001": "archived", "v0002": "production"},
        "rollback": {"v0001": "production", "v0002": "archived"},
        "wait": {"v0001": "production", "v0002": "canary"},
    }[serving["decision"]["action"]]
    assert stages == expected == serving["stages_after"]

    logged = exchanges_frame(serving["request_log"])
    assert set(logged["variant"]) == {"primary", "canary"}
    assert logged["request_id"].nunique() == total
