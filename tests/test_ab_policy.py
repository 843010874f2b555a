"""Online A/B statistics and the automatic rollout policy, on simulated served traffic
whose true click probabilities are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kubeloop.serving.ab import auc_interval, calibration_interval, compare_variants
from kubeloop.serving.policy import RolloutPolicy, conclude, decide


def traffic(
    n: int,
    canary_share: float,
    canary_noise: float,
    seed: int = 0,
    canary_latency: float = 5.0,
    canary_errors: float = 0.0,
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    truth = 1 / (1 + np.exp(-rng.normal(-3, 0.8, n)))
    labels = (rng.random(n) < truth).astype(float)
    variant = np.where(rng.random(n) < canary_share, "canary", "primary")
    noise = np.where(variant == "canary", canary_noise, 0.05)
    logit = np.log(truth / (1 - truth)) + rng.normal(0, 1, n) * noise
    prediction = 1 / (1 + np.exp(-logit))
    latency = np.where(variant == "canary", canary_latency, 5.0) * rng.lognormal(0, 0.1, n)
    error = (variant == "canary") & (rng.random(n) < canary_errors)
    return pd.DataFrame(
        {
            "variant": variant,
            "prediction": prediction,
            "label": labels,
            "latency_ms": latency,
            "error": error,
        }
    )


def test_intervals_cover_known_values():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.01, 0.2, 20000)
    y = (rng.random(20000) < p).astype(float)
    cal = calibration_interval(y, p)
    assert cal.low < 1.0 < cal.high  # perfectly calibrated by construction
    auc = auc_interval(y, p)
    assert auc.low < auc.estimate < auc.high and 0.5 < auc.estimate < 1


def test_equal_models_are_promoted_after_enough_labels():
    result = compare_variants(traffic(60000, 0.5, 0.05))
    decision = decide(result, RolloutPolicy(min_labelled=5000))
    assert decision.action == "promote", decision.reasons
    delta = result.deltas["logloss"]
    assert delta.low < 0 < delta.high


def test_worse_canary_is_rolled_back():
    result = compare_variants(traffic(60000, 0.5, 1.5))  # a much noisier canary
    decision = decide(result, RolloutPolicy(min_labelled=5000))
    assert decision.action == "rollback" and "log loss" in decision.reasons[-1]


def test_waits_until_enough_labels():
    frame = traffic(4000, 0.1, 0.05)
    decision = decide(compare_variants(frame), RolloutPolicy(min_labelled=2000))
    assert decision.action == "wait" and "waiting for 2000" in " ".join(decision.reasons)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"canary_errors": 0.2}, "error rate"), ({"canary_latency": 50.0}, "latency")],
)
def test_health_regressions_roll_back_before_labels(kwargs, word):
    frame = traffic(4000, 0.5, 0.05, **kwargs)
    frame["label"] = np.nan  # no feedback has arrived yet
    decision = decide(compare_variants(frame), RolloutPolicy())
    assert decision.action == "rollback" and word in decision.reasons[0]


def test_no_canary_traffic_waits():
    frame = traffic(1000, 0.0, 0.05)
    assert decide(compare_variants(frame), RolloutPolicy()).action == "wait"


def test_an_experiment_that_ends_inconclusive_keeps_production():
    frame = traffic(6000, 0.5, 0.05)
    policy = RolloutPolicy(min_labelled=1000, logloss_margin=0.001)
    assert decide(compare_variants(frame), policy).action == "wait"
    final = conclude(compare_variants(frame), policy)
    assert final.action == "rollback" and "keeping production" in final.reasons[-1]
    # too few labels to judge: still waiting, not a verdict
    assert conclude(compare_variants(frame), RolloutPolicy(min_labelled=10_000)).action == "wait"
