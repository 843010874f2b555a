"""The progressive rollout policy: pairing from the request log, each guardrail rolling
back, a proven-worse candidate rolled back, a non-inferior one walked through the
schedule to promotion, and an unproven one ending "inconclusive" at its budget."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from kubeloop.cloudevents import REQUEST_TYPE, RESPONSE_TYPE
from kubeloop.serving.paired import HealthStats, ModelHealth, health_stats, paired_frame
from kubeloop.serving.progressive import (
    ProgressivePolicy,
    StepDecision,
    StepState,
    evaluate_step,
    initial_state,
)
from kubeloop.serving.request_log.events import LoggedEvent


def event(kind, request_id, variant, version, body, status=200, latency=5.0):
    return LoggedEvent(
        attributes={"id": request_id, "type": kind, "time": "2026-01-01T00:00:00+00:00"},
        data=json.dumps(body).encode(),
        variant=variant,
        model_version=version,
        latency_ms=latency if kind == RESPONSE_TYPE else None,
        status_code=status if kind == RESPONSE_TYPE else None,
    )


def test_paired_frame_pairs_served_and_shadow_answers_by_request_id():
    events = [
        # r1: batched (2 impressions), served by production, candidate in shadow
        event(REQUEST_TYPE, "r1", "primary", "v1", {"instances": [{}, {}]}),
        event(REQUEST_TYPE, "r1", "shadow", "v2", {"instances": [{}, {}]}),
        event(RESPONSE_TYPE, "r1", "shadow", "v2", {"predictions": [0.2, 0.3]}),
        event(RESPONSE_TYPE, "r1", "primary", "v1", {"predictions": [0.1, 0.4]}),
        # r2: single impression served by the candidate (canary), production in shadow
        event(RESPONSE_TYPE, "r2", "canary", "v2", {"predictions": [0.6]}),
        event(RESPONSE_TYPE, "r2", "shadow", "v1", {"predictions": [0.5]}),
        # r3: the shadow copy failed -> not paired
        event(RESPONSE_TYPE, "r3", "primary", "v1", {"predictions": [0.5]}),
        event(RESPONSE_TYPE, "r3", "shadow", "v2", {"error": "boom"}, status=500),
        # r4: paired but never labelled
        event(RESPONSE_TYPE, "r4", "primary", "v1", {"predictions": [0.5]}),
        event(RESPONSE_TYPE, "r4", "shadow", "v2", {"predictions": [0.5]}),
    ]
    labels = pd.DataFrame(
        {
            "request_id": ["r1/0", "r1/1", "r2", "r3"],
            "label": [0, 1, 1, 0],
            "oracle": [0.1, 0.3, 0.5, 0.4],
        }
    )
    frame = paired_frame(events, labels, "v1", "v2")
    assert list(frame.columns) == [
        "request_id",
        "label",
        "p_production",
        "p_candidate",
        "served",
        "oracle",
    ]
    rows = frame.set_index("request_id")
    assert list(rows.index) == ["r1/0", "r1/1", "r2"]
    assert rows.loc["r1/1", ["p_production", "p_candidate"]].tolist() == [0.4, 0.3]
    assert rows.loc["r2", ["p_production", "p_candidate"]].tolist() == [0.5, 0.6]
    assert rows["served"].tolist() == ["production", "production", "candidate"]

    health = health_stats(events, "v1", "v2")
    assert (health.production.served, health.production.shadow) == (3, 1)
    assert (health.candidate.served, health.candidate.shadow, health.candidate.errors) == (1, 3, 1)
    assert health.served_total == 4


def simulated_pairs(n: int, candidate_shift: float, seed: int = 0) -> pd.DataFrame:
    """Paired impressions at a ~5% CTR; the candidate's logit is production's plus
    `candidate_shift` noise (small: about production's quality; large: worse)."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-3.2, 0.9, n)
    q = 1 / (1 + np.exp(-logit))
    production = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.3, n))))
    candidate = production / (
        production + (1 - production) * np.exp(-rng.normal(0, candidate_shift, n))
    )
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "label": (rng.random(n) < q).astype(float),
            "p_production": production,
            "p_candidate": candidate,
            "served": "production",
            "oracle": q,
        }
    )


def healthy(
    candidate_served: int, total: int, production_p99_ms: float = 40.0, **candidate
) -> HealthStats:
    return HealthStats(
        production=ModelHealth(
            version="v1",
            served=total - candidate_served,
            shadow=candidate_served,
            latency_p99_ms=production_p99_ms,
        ),
        candidate=ModelHealth(
            version="v2",
            served=candidate_served,
            shadow=total - candidate_served,
            latency_p99_ms=candidate.pop("latency_p99_ms", 44.0),
            **candidate,
        ),
    )


def run_rollout(pairs: pd.DataFrame, policy: ProgressivePolicy, batch: int = 500):
    """Replay `pairs` batch by batch through evaluate_step, a fair split at each step."""
    state = initial_state(policy)
    decisions: list[StepDecision] = []
    step_start = 0
    for end in range(batch, len(pairs) + 1, batch):
        requests = end - step_start
        served = round(requests * state.percent / 100)
        decision = evaluate_step(state, pairs.iloc[:end], healthy(served, requests), policy)
        decisions.append(decision)
        if decision.state.step != state.step:
            step_start = end
        state = decision.state
        if state.done:
            break
    return decisions


def test_non_inferior_candidate_walks_the_schedule_and_is_promoted():
    policy = ProgressivePolicy(min_labelled=1000, min_requests=100)
    decisions = run_rollout(simulated_pairs(24_000, 0.05, seed=5), policy)
    advanced = [d.percent for d in decisions if d.action == "advance"]
    assert advanced == [5, 25, 50, 100]
    assert decisions[-1].action == "promote"
    first_advance = next(d for d in decisions if d.action == "advance")
    assert first_advance.statistics.delta_logloss.high < first_advance.statistics.margin_logloss
    assert any("not worse than the 0.50% NE margin" in r for r in first_advance.reasons)
    # each step dwelt at least its labelled minimum
    assert all(d.statistics.paired >= 1000 for d in decisions if d.action == "advance")
    json.dumps(decisions[-1].model_dump(mode="json"))  # the controller's Events


def test_worse_candidate_is_rolled_back_at_once():
    decisions = run_rollout(simulated_pairs(24_000, 1.0, seed=6), ProgressivePolicy())
    last = decisions[-1]
    assert last.action == "rollback" and last.percent == 0
    assert last.statistics.delta_logloss.low > 0
    assert "proven worse" in last.reasons[-1]
    assert all(d.action == "hold" for d in decisions[:-1])
    assert last.statistics.oracle_delta_logloss > 0


def test_equal_candidate_needing_superiority_is_inconclusive_at_the_budget():
    policy = ProgressivePolicy(requires="superiority", budget_labelled=6000)
    decisions = run_rollout(simulated_pairs(24_000, 0.05, seed=7), policy)
    last = decisions[-1]
    assert last.action == "inconclusive" and last.percent == 0
    assert last.statistics.paired == 6000
    assert "budget of 6000 paired labelled impressions" in last.reasons[-1]
    assert all(d.action == "hold" for d in decisions[:-1])


@pytest.mark.parametrize(
    "candidate, reason",
    [
        ({"errors": 30, "error_rate": 0.03}, "error rate"),
        ({"latency_p99_ms": 100.0}, "p99 latency"),
    ],
)
def test_health_guardrails_roll_back(candidate, reason):
    policy = ProgressivePolicy()
    state = StepState(step=1, percent=5, quality="passed", quality_concluded_at=1000)
    pairs = simulated_pairs(2000, 0.05)
    decision = evaluate_step(state, pairs, healthy(50, 1000, **candidate), policy)
    assert decision.action == "rollback" and decision.percent == 0
    assert reason in decision.reasons[0]
    fine = evaluate_step(state, pairs, healthy(50, 1000), policy)
    assert fine.action != "rollback"


def test_latency_ratio_under_the_floor_is_not_a_rollback():
    """Two fast small samples: 2.35x production's p99 but 16.6 ms, under the 50 ms floor
    (the spurious rollback a busy machine produced); the same ratio above it rolls back."""
    policy = ProgressivePolicy()
    state = StepState(step=1, percent=5, quality="passed", quality_concluded_at=1000)
    pairs = simulated_pairs(2000, 0.05)
    fast = healthy(50, 1000, production_p99_ms=7.06, latency_p99_ms=16.6)
    assert fast.candidate.latency_p99_ms / fast.production.latency_p99_ms > 2
    assert evaluate_step(state, pairs, fast, policy).action != "rollback"
    slow = healthy(50, 1000, production_p99_ms=30.0, latency_p99_ms=70.5)
    decision = evaluate_step(state, pairs, slow, policy)
    assert decision.action == "rollback" and "above 50 ms" in decision.reasons[0]
    strict = ProgressivePolicy(latency_p99_floor_ms=0)
    assert evaluate_step(state, pairs, fast, strict).action == "rollback"


def test_srm_guardrail_rolls_back_a_broken_split():
    policy = ProgressivePolicy()
    state = StepState(step=3, percent=50, quality="passed", quality_concluded_at=1000)
    pairs = simulated_pairs(2000, 0.05)
    decision = evaluate_step(state, pairs, healthy(400, 1000), policy)
    assert decision.action == "rollback"
    assert decision.statistics.srm.p_value < policy.srm_alpha
    assert "sample ratio mismatch" in decision.reasons[0]
    # in shadow the candidate must serve nobody
    shadow = evaluate_step(StepState(), pairs, healthy(3, 1000), policy)
    assert shadow.action == "rollback" and "sample ratio mismatch" in shadow.reasons[0]


def test_policy_is_typed():
    with pytest.raises(ValidationError):
        ProgressivePolicy(schedule=[0, 50, 25, 100])
    with pytest.raises(ValidationError):
        ProgressivePolicy(schedule=[0, 5, 50])
    with pytest.raises(ValidationError):
        ProgressivePolicy(margin=0.01)


def test_traffic_running_out_is_inconclusive_and_keeps_production():
    from kubeloop.serving.progressive import end_of_traffic

    policy = ProgressivePolicy(requires="superiority")
    decisions = run_rollout(simulated_pairs(3000, 0.05, seed=8), policy)
    assert decisions[-1].action == "hold"
    ended = end_of_traffic(decisions[-1], policy)
    assert ended.action == "inconclusive" and ended.percent == 0 and ended.state.done
    assert "traffic ran out at 3000 paired" in ended.reasons[-1]
    assert "superiority test" in ended.reasons[-1]
    assert end_of_traffic(ended, policy) is ended
