"""bench/rollout_bench.py at tiny sizes: its vectorised policies decide exactly as
`kubeloop.serving.progressive.evaluate_step` and `kubeloop.serving.policy.decide` /
`conclude` do on the same draws, and its constructed candidates have the true gaps asked."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kubeloop.serving import ab
from kubeloop.serving.paired import HealthStats, ModelHealth
from kubeloop.serving.policy import RolloutPolicy, conclude, decide
from kubeloop.serving.progressive import ProgressivePolicy, evaluate_step, initial_state

BENCH = Path(__file__).resolve().parent.parent / "bench" / "rollout_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("rollout_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["rollout_bench"] = module
    spec.loader.exec_module(module)
    return module


def synthetic_models(n: int = 20_000, seed: int = 0):
    """An oracle q and two "models" of it: a good one and a noisier one."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-3.0, 0.9, n)
    q = 1 / (1 + np.exp(-logit))
    good = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.2, n))))
    noisy = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.5, n))))
    return q, {"good": good, "noisy": noisy}


def test_constructed_candidates_have_the_true_gaps_asked(bench):
    q, models = synthetic_models()
    shift = (q, {"production": models["noisy"], "retrained": models["good"]})
    conds = bench.conditions_of((q, models), shift)
    for name, _, target in bench.CONDITIONS:
        if target is not None:
            assert conds[name]["true_gap"] == pytest.approx(target, abs=2e-5), name
    assert conds["aa"]["models"] == {"best": "good", "runner_up": "noisy"}
    assert conds["covariate"]["true_gap"] < 0  # the retrained "good" model is better
    # a different model in "equal", the same one in "aa"
    assert not np.allclose(conds["equal"]["candidate"], conds["equal"]["production"])


def replay_progressive(policy, q, production, candidate, draws, requests):
    """evaluate_step itself on the draws a ProgressiveSim saw, for each experiment."""
    outcomes = []
    for e in range(draws[0]["idx"].shape[0]):
        state = initial_state(policy)
        frames, step_requests, step_candidate, outcome = [], 0, 0, ("hold", -1)
        n = 0
        for batch, (total, cand) in zip(draws, requests, strict=False):
            idx, y = batch["idx"][e], batch["y"][e]
            n += len(idx)
            frames.append(
                pd.DataFrame(
                    {
                        "label": y.astype(float),
                        "p_production": production[idx],
                        "p_candidate": candidate[idx],
                        "oracle": q[idx],
                    }
                )
            )
            step_requests += int(total[e])
            step_candidate += int(cand[e])
            health = HealthStats(
                production=ModelHealth(version="p", served=step_requests - step_candidate),
                candidate=ModelHealth(version="c", served=step_candidate),
            )
            decision = evaluate_step(state, pd.concat(frames, ignore_index=True), health, policy)
            if decision.state.step != state.step:
                step_requests = step_candidate = 0
            state = decision.state
            if decision.action not in ("hold", "advance"):
                outcome = (decision.action, n)
                break
        outcomes.append(outcome)
    return outcomes


def replay_fixed(policy, production, candidate, draws, budget):
    outcomes = []
    for e in range(draws[0]["idx"].shape[0]):
        frames, outcome, n = [], ("hold", -1), 0
        for batch in draws:
            idx, y, canary = batch["idx"][e], batch["y"][e], batch["canary"][e]
            n += len(idx)
            frames.append(
                pd.DataFrame(
                    {
                        "variant": np.where(canary, "canary", "primary"),
                        "prediction": np.where(canary, candidate[idx], production[idx]),
                        "label": y.astype(float),
                        "latency_ms": 5.0,
                        "error": False,
                    }
                )
            )
            result = ab.compare_variants(pd.concat(frames, ignore_index=True))
            decision = (conclude if n >= budget else decide)(result, policy)
            if decision.action != "wait":
                outcome = (decision.action, n)
                break
        outcomes.append(outcome)
    return outcomes


@pytest.mark.parametrize("candidate_kind", ["noisy", "good"])
def test_vectorised_policies_decide_as_the_real_ones(bench, candidate_kind):
    q, models = synthetic_models(seed=1)
    production = models["good"] if candidate_kind == "noisy" else models["noisy"]
    candidate = models[candidate_kind]
    cond = {"q": q, "production": production, "candidate": candidate}
    budget, batch = 8000, 500
    policy = ProgressivePolicy(budget_labelled=budget, min_labelled=500)
    fixed = RolloutPolicy(min_labelled=1000)
    out = bench.simulate(
        cond, 4, batch, budget, seed=3, progressive=policy, fixed=fixed, record=True
    )
    names = {v: k for k, v in bench.ACTIONS.items()}
    for key, requires in (("new_ni", "non_inferiority"), ("new_sup", "superiority")):
        real = replay_progressive(
            policy.model_copy(update={"requires": requires}),
            q,
            bench.Draws(q, production, candidate, 1, None).p["production"],
            bench.Draws(q, production, candidate, 1, None).p["candidate"],
            out["draws"],
            out["requests"][key],
        )
        sim = [(bench.ACTIONS[a], int(n)) for a, n in zip(out[key]["action"], out[key]["at"])]
        assert sim == real, key
    real = replay_fixed(fixed, production, candidate, out["draws"], budget)
    sim = [(bench.ACTIONS[a], int(n)) for a, n in zip(out["fixed"]["action"], out["fixed"]["at"])]
    assert sim == real
    assert names["promote"] == bench.PROMOTE
    if candidate_kind == "noisy":  # truly worse: never promoted by the new policy
        assert not (out["new_ni"]["action"] == bench.PROMOTE).any()


def test_score_counts_wrong_decisions_against_the_truth(bench):
    result = {
        "action": np.array([bench.PROMOTE, bench.ROLLBACK, bench.INCONCLUSIVE, bench.PROMOTE]),
        "at": np.array([5000, 3000, 24000, 7000]),
        "srm": np.zeros(4, bool),
    }
    worse = bench.score("new_ni", 0.005, result, 0.005)
    assert worse["false_promote"] == 0.5 and worse["false_rollback"] == 0.0
    within = bench.score("new_ni", 0.003, result, 0.005)  # inside the margin: allowed
    assert within["false_promote"] == 0.0
    assert bench.score("new_sup", 0.003, result, 0.005)["false_promote"] == 0.5
    better = bench.score("new_sup", -0.02, result, 0.005)
    assert better["false_rollback"] == 0.25 and better["median_labelled_to_decision"] == 5000
