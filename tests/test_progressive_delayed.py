"""The progressive rollout when labels are slower than the experiment (label_timing
"delayed"): on synthetic paired data whose labels become known only `lag` requests after
their request, a truly better candidate walks the schedule on health and is promoted once
the labels show it non-inferior; a truly worse one is rolled back as soon as the labels
known prove it; prompt labels (the default's behaviour) decide exactly as before; and the
demo's oracle verdict calls an inconclusive that the labels could not decide undecidable."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from test_progressive import healthy, run_rollout, simulated_pairs

from kubeloop.demo.serving import oracle_verdict
from kubeloop.serving.progressive import (
    ModelQuality,
    ProgressivePolicy,
    StepDecision,
    StepStatistics,
    evaluate_step,
    initial_state,
    labelled_needed,
    resolve_label_timing,
    undecided_reason,
)
from kubeloop.serving.rollout_loop import step_policy
from kubeloop.serving.sequential import ConfidenceSequence, cs_radius

DELAYED = ProgressivePolicy(requires="non_inferiority", label_timing="delayed")


def fraud_like_pairs(
    n: int, candidate_gain: float, seed: int, independent: bool = False
) -> pd.DataFrame:
    """Paired impressions at a ~2% positive rate. Production sees the true logit through
    noise; the candidate's noise is `candidate_gain` times smaller (> 1: truly better,
    < 1: truly worse), the same draw scaled or (`independent`) a draw of its own."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-4.5, 1.2, n)
    q = 1 / (1 + np.exp(-logit))
    noise = rng.normal(0, 1.0, n)
    production = 1 / (1 + np.exp(-(logit + noise)))
    own = rng.normal(0, 1.0, n) if independent else noise
    candidate = 1 / (1 + np.exp(-(logit + own / candidate_gain)))
    # test_progressive's frame (its ids and columns), with these draws in it
    return simulated_pairs(n, 0.0, seed).assign(
        label=(rng.random(n) < q).astype(float),
        p_production=production,
        p_candidate=candidate,
        oracle=q,
    )


def delayed_rollout(
    pairs: pd.DataFrame,
    policy: ProgressivePolicy,
    requests: int,
    lag: int,
    check: int = 100,
    **candidate,
) -> list[StepDecision]:
    """`requests` requests (one impression each) checked every `check` requests; a
    label is known `lag` requests after its request. After the traffic the labels keep
    maturing, `check` at a time, with no new requests (the step's answers stay as they
    were)."""
    state = initial_state(policy)
    decisions: list[StepDecision] = []
    step_start = 0
    for sent in [
        *range(check, requests + 1, check),
        *range(requests + check, requests + lag + 1, check),
    ]:
        now = min(sent, requests)
        known = max(0, min(sent - lag, requests))
        step_requests = now - step_start
        served = round(step_requests * state.percent / 100)
        health = healthy(served, step_requests, **dict(candidate))
        decision = evaluate_step(state, pairs.iloc[:known], health, policy)
        decisions.append(decision)
        if decision.state.step != state.step:
            step_start = now
        state = decision.state
        if state.done:
            break
    return decisions


def test_a_truly_better_candidate_with_delayed_labels_is_promoted_after_the_labels_mature():
    pairs = fraud_like_pairs(6000, 2.0, seed=1)
    # every label comes after the last request: the prompt policy never leaves shadow
    decisions = delayed_rollout(pairs, DELAYED, requests=6000, lag=6000)
    advances = [d for d in decisions if d.action == "advance"]
    assert [d.percent for d in advances] == [5, 25, 50, 100]
    # the steps moved on health alone, before any label was known
    assert all(d.statistics.paired == 0 and d.state.quality == "pending" for d in advances)
    assert all("labels lag the traffic" in d.reasons[-1] for d in advances)
    assert decisions[-1].action == "promote" and decisions[-1].percent == 100
    promote = decisions[-1]
    assert promote.statistics.delta_logloss.high < promote.statistics.margin_logloss
    assert promote.statistics.oracle_delta_logloss < 0  # truly better
    # at 100% it waited, serving, for the quality test: nothing promoted before it passed
    waits = [d for d in decisions if d.action == "hold" and d.state.percent == 100]
    assert waits and all(
        "promotion waits for the non-inferiority test" in d.reasons[-1] for d in waits
    )

    prompt = delayed_rollout(
        pairs, DELAYED.model_copy(update={"label_timing": "prompt"}), 6000, 6000
    )
    assert not any(d.action == "advance" and d.statistics.paired == 0 for d in prompt)


def test_a_truly_worse_candidate_is_rolled_back_as_soon_as_the_known_labels_prove_it():
    pairs = fraud_like_pairs(8000, 0.4, seed=2)
    # labels lag by 1500 requests: the candidate is past shadow before the first one
    decisions = delayed_rollout(pairs, DELAYED, requests=8000, lag=1500)
    last = decisions[-1]
    assert last.action == "rollback" and last.percent == 0 and last.state.done
    assert "proven worse" in last.reasons[-1]
    assert last.statistics.delta_logloss.low > 0
    assert last.statistics.oracle_delta_logloss > 0  # truly worse
    assert not any(d.action == "promote" for d in decisions)
    # rolled back at the first check whose labels proved it, during the traffic
    assert all(
        d.statistics.delta_logloss.low is None or d.statistics.delta_logloss.low <= 0
        for d in decisions[:-1]
    )
    assert last.statistics.paired < 8000 - 1500


def test_delayed_steps_still_roll_back_on_health_and_need_candidate_answers():
    state = initial_state(DELAYED).model_copy(update={"step": 1, "percent": 5})
    empty = fraud_like_pairs(10, 1.0, seed=3).iloc[:0]
    slow = evaluate_step(state, empty, healthy(10, 200, latency_p99_ms=100.0), DELAYED)
    assert slow.action == "rollback" and "p99 latency" in slow.reasons[0]
    # too few candidate answers to judge health: no advance on an unjudged step
    few = evaluate_step(state, empty, healthy(2, 40), DELAYED)
    assert few.action == "hold" and "to judge its health" in few.reasons[-1]


def test_the_unproven_cap_holds_the_candidate_below_it():
    capped = DELAYED.model_copy(update={"unproven_max_percent": 25})
    decisions = delayed_rollout(fraud_like_pairs(3000, 2.0, seed=4), capped, 3000, 3000)
    advances = [(d.percent, d.state.quality) for d in decisions if d.action == "advance"]
    # unproven up to the cap; past it only once the labels passed the quality test (here
    # after the traffic, so the 50% step's dwell never comes: the price of a cap)
    assert advances == [(5, "pending"), (25, "pending"), (50, "passed")]
    during = [d for d in decisions if d.state.quality == "pending"]
    assert max(d.state.percent for d in during) == 25
    assert any("above the unproven cap 25%" in d.reasons[-1] for d in during)


def test_kserve_without_shadow_at_full_keeps_an_unproven_candidate_below_100():
    assert step_policy(DELAYED, 50, shadow_at_full=False).unproven_max_percent == 50
    assert step_policy(DELAYED, 50, shadow_at_full=True) is DELAYED
    prompt = ProgressivePolicy()
    assert step_policy(prompt, 50, shadow_at_full=False) is prompt
    assert step_policy(prompt, 100, shadow_at_full=False).min_labelled == 0


def test_prompt_labels_decide_exactly_as_before():
    pairs = simulated_pairs(24_000, 0.05, seed=5)
    default = ProgressivePolicy(min_labelled=1000, min_requests=100)
    assert default.label_timing == "auto"  # unresolved "auto" is prompt
    prompt = default.model_copy(update={"label_timing": "prompt"})
    a, b = run_rollout(pairs, default), run_rollout(pairs, prompt)
    assert [(d.action, d.percent, d.reasons) for d in a] == [
        (d.action, d.percent, d.reasons) for d in b
    ]
    assert a[-1].action == "promote"


def test_label_timing_resolves_from_the_label_delay_against_the_experiment():
    auto = ProgressivePolicy()
    days = timedelta(days=1)
    assert resolve_label_timing(auto, None, 2 * days).label_timing == "prompt"
    assert resolve_label_timing(auto, timedelta(hours=1), 2 * days).label_timing == "prompt"
    assert resolve_label_timing(auto, 10 * days, 2 * days).label_timing == "delayed"
    assert resolve_label_timing(auto, 10 * days, None).label_timing == "delayed"
    fixed = ProgressivePolicy(label_timing="prompt")
    assert resolve_label_timing(fixed, 10 * days, 2 * days) is fixed


def cs_of(n: int, estimate: float, sd: float, policy: ProgressivePolicy) -> ConfidenceSequence:
    half = float(cs_radius(n, sd, policy.alpha, policy.tuned_n))
    return ConfidenceSequence(
        n=n, estimate=estimate, low=estimate - half, high=estimate + half, sd=sd,
        alpha=policy.alpha, tuned_n=policy.tuned_n,
    )  # fmt: skip


def test_labelled_needed_is_where_the_upper_end_first_clears_the_bound():
    policy = ProgressivePolicy()
    cs = cs_of(24_000, -0.00103, 0.0919, policy)
    bound = 0.005 * 0.03536
    needed = labelled_needed(cs, bound, policy)
    assert needed is not None and needed > 24_000
    radius = lambda m: float(cs_radius(m, cs.sd, policy.alpha, policy.tuned_n))
    assert cs.estimate + radius(needed) < bound <= cs.estimate + radius(needed - 1)
    assert labelled_needed(cs_of(1000, 0.01, 0.1, policy), bound, policy) is None


def merchant_mix_like(action_gap: float) -> StepStatistics:
    """The merchant_mix_shift run's final statistics (24,000 paired at ~1% positives,
    estimate -2.9%, CS half-width ~5.2% of production's log loss), with the oracle's
    relative gap `action_gap`."""
    policy = ProgressivePolicy()
    production_ll = 0.035359
    return StepStatistics(
        paired=24_000,
        ctr=0.01,
        delta_logloss=cs_of(24_000, -0.0010318, 0.0918858, policy),
        margin_logloss=0.005 * production_ll,
        relative_delta=-0.0292,
        production=ModelQuality(logloss=production_ll, ne=0.63, calibration=1.4, expected_logloss=0.036678),
        candidate=ModelQuality(logloss=0.034327, ne=0.61, calibration=1.1, expected_logloss=None),
        srm=None,
        error_rate_increase=0.0,
        latency_p99_ratio=1.4,
        oracle_delta_logloss=action_gap * 0.036678,
    )  # fmt: skip


def test_an_undecidable_gap_is_said_so_not_claimed():
    policy = ProgressivePolicy(requires="non_inferiority")
    stats = merchant_mix_like(-0.0317)
    reason = undecided_reason(stats, policy)
    assert "CS half-width is 0.00184 log loss (5.19% of production's" in reason
    assert "true relative gap is below -4.69%" in reason
    assert "at the current estimate (-2.92%) about 59,269 paired" in reason
    verdict = oracle_verdict("inconclusive", stats, policy)
    assert verdict["agrees"] is None and verdict["verdict"].startswith("undecidable with 24000")
    # a gap the same labels could decide, kept anyway: a wrong decision
    assert oracle_verdict("inconclusive", merchant_mix_like(-0.20), policy)["agrees"] is False
    # a rollback of a truly better candidate is never excused
    assert oracle_verdict("rollback", stats, policy)["agrees"] is False
    assert oracle_verdict("promote", stats, policy)["agrees"] is True
    assert oracle_verdict("promote", merchant_mix_like(0.02), policy)["agrees"] is False


@pytest.mark.parametrize("requires", ["non_inferiority", "superiority"])
def test_an_inconclusive_at_the_budget_names_what_would_decide_it(requires):
    policy = ProgressivePolicy(requires=requires, budget_labelled=2000, label_timing="delayed")
    pairs = fraud_like_pairs(4000, 1.0, seed=6, independent=True)  # equal, not the same
    decisions = delayed_rollout(pairs, policy, requests=4000, lag=1000)
    last = decisions[-1]
    assert last.action == "inconclusive"
    assert "budget of 2000" in last.reasons[-1]
    assert "CS half-width" in last.reasons[-2]


def test_warmup_leaves_each_versions_first_answers_out_of_health():
    from test_progressive import event

    from kubeloop.cloudevents import REQUEST_TYPE, RESPONSE_TYPE
    from kubeloop.demo.serving import warmup_ids

    events = [event(REQUEST_TYPE, "r0", "primary", "v1", {"instances": [{}]})]
    # production answers r0..r5; the candidate, in shadow, answers r2..r5 (a mirror that
    # started late), in the order written
    events += [
        event(RESPONSE_TYPE, f"r{i}", "primary", "v1", {"predictions": [0.1]}) for i in range(6)
    ]
    events += [
        event(RESPONSE_TYPE, f"r{i}", "shadow", "v2", {"predictions": [0.1]}) for i in (3, 2, 4, 5)
    ]
    assert warmup_ids(events, 2) == {"r0", "r1", "r3", "r2"}
    assert warmup_ids(events, 0) == set()
