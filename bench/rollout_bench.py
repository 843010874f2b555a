"""Benchmark of rollout decisions: how often the progressive policy (paired, anytime-valid,
kubeloop.serving.progressive) and today's fixed-horizon policy (unpaired, re-checked,
kubeloop.serving.policy) decide wrongly, on the generator's data with real trained models.

    .venv/bin/python bench/rollout_bench.py                    # the full run (see README)
    .venv/bin/python bench/rollout_bench.py --quick            # a smoke run
    .venv/bin/python bench/rollout_bench.py --seeds 5 --experiments 500

Per seed, trained once: a baseline lake (`generate_lake(GeneratorConfig(seed, events))`,
`run_features`, `train_step` of lightgbm and logistic on days before day 9, as the demo's
first training) and a covariate_shift lake (change on day 9): lightgbm before the change
(production) and lightgbm retrained on the 8 days before day 12 (`window_days` 8 as the
drift stage retrains: 3 of them after the change). Each model scores a pool of impressions it never saw (the training set's
point-in-time rows of days 9..13, resp. 12..13), whose oracle click probability `q` is
known, so every model's true expected log loss on the pool is known:
E[ll] = -[q log p + (1 - q) log(1 - p)].

Conditions (candidate vs production, true relative gap = E[ll_c]/E[ll_p] - 1 on the pool):
  aa            the same model on both sides (gap 0)
  equal         a different model with the same true loss (the runner-up's logits moved
                toward the oracle's until the gap is 0)
  worse_0.5/2   candidate = the best model's logits blended with (extrapolated toward) the
                runner-up's, the weight solved so the gap is +0.5% / +2% exactly
  better_0.5/2  candidate = the best model, production = such a blend at -0.5% / -2%
  challenger    the runner-up against the best model, as trained (the demo's challenger)
  covariate     the retrained model against the pre-change production, as trained
Each experiment draws impressions from the pool with replacement and a fresh click
~ Bernoulli(q) for each, in batches of --batch labelled impressions, and replays:
  new/NI, new/sup   kubeloop.serving.progressive's rule, vectorised over experiments
                    (`ProgressivePolicy()` defaults, requires non_inferiority resp.
                    superiority): paired per-impression differences (both models score
                    every impression, the non-serving one in shadow), the SRM test on a
                    simulated fair split of 8-impression requests, dwell per step, budget;
                    tests/test_rollout_bench.py checks it against `evaluate_step` itself;
  fixed             kubeloop.serving.policy's `decide` after every batch (50% canary,
                    unpaired: each model scored on the impressions it served), `conclude`
                    at the budget; checked against `decide`/`conclude` the same way.
Both see the same traffic budget (24k labelled impressions, the demo's traffic).

Scoring: a promote is false when the candidate is truly worse (gap > 0; for non-inferiority
gap >= the 0.5% margin); a rollback is false when it is truly not worse (gap <= 0).
Power needed: the labelled impressions by which 80% of experiments at -0.5% promoted, with
the budget lifted (up to --power-max).

Health guardrails (errors, latency) are not simulated: the models never fail here.
Everything under one temporary directory, removed at the end. Markdown to stdout and --out.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _util import (
    RunClock,
    add_output_arguments,
    build_training_set,
    exit_on_sigterm,
    log,
    measure_or_load,
    publish,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "rollout_bench.md"
DEFAULT_JSON = DEFAULT_OUT.with_suffix(".json")
PACKAGES = ["numpy", "scipy", "lightgbm", "scikit-learn", "pandas"]
DEFAULTS = {"seeds": 3, "experiments": 200, "events": 300_000, "power_max": 400_000}
QUICK = {"seeds": 1, "experiments": 40, "events": 120_000, "power_max": 100_000}
REQUEST_SIZE = 8  # impressions per request, as the demo's replayer batches them
TRAIN_UNTIL_DAY = 9
SHIFT_CHANGE_DAY = 9
RETRAIN_UNTIL_DAY = 12
RETRAIN_WINDOW_DAYS = 8  # the drift stage's retraining window (DriftStageConfig)
# The two lakes each seed trains on: world -> (scenario, trainings, first day of the pool).
# baseline: the challenger pair on an unchanged lake; covariate: production (trained before
# the change) against a model retrained on a window after it.
WORLDS: dict[str, tuple[str, dict[str, dict[str, Any]], int]] = {
    "baseline": (
        "baseline",
        {
            "lightgbm": {"kind": "lightgbm", "until_day": TRAIN_UNTIL_DAY},
            "logistic": {"kind": "logistic", "until_day": TRAIN_UNTIL_DAY},
        },
        TRAIN_UNTIL_DAY,
    ),
    "covariate": (
        "covariate_shift",
        {
            "production": {"kind": "lightgbm", "until_day": SHIFT_CHANGE_DAY},
            "retrained": {
                "kind": "lightgbm",
                "until_day": RETRAIN_UNTIL_DAY,
                "window_days": RETRAIN_WINDOW_DAYS,
            },
        },
        RETRAIN_UNTIL_DAY,
    ),
}

HOLD, PROMOTE, ROLLBACK, INCONCLUSIVE = 0, 1, 2, 3
ACTIONS = {HOLD: "hold", PROMOTE: "promote", ROLLBACK: "rollback", INCONCLUSIVE: "inconclusive"}
CONDITIONS = [
    ("aa", "A/A: same model", 0.0),
    ("equal", "equal true loss, different model", 0.0),
    ("worse_0.5", "candidate worse by 0.5% NE", 0.005),
    ("worse_2", "candidate worse by 2% NE", 0.02),
    ("better_0.5", "candidate better by 0.5% NE", -0.005),
    ("better_2", "candidate better by 2% NE", -0.02),
    ("challenger", "runner-up vs best model, as trained", None),
    ("covariate", "covariate shift: retrained vs production", None),
]
POLICIES = ("new_ni", "new_sup", "fixed")
POLICY_LABELS = {
    "new_ni": "progressive, non-inferiority",
    "new_sup": "progressive, superiority",
    "fixed": "fixed-horizon (today)",
}


# --- models and pools -----------------------------------------------------------------------


def _generator():
    """The CTR use case's generator config and writer."""
    from usecases.ctr.generator import GeneratorConfig, generate_lake

    return GeneratorConfig, generate_lake


def _day(gen, day: int):
    import pandas as pd

    return pd.Timestamp(gen.start_date, tz="UTC") + pd.Timedelta(days=day)


def train_pool(
    work: Path, seed: int, events: int, scenario: str, trainings: dict[str, dict], pool_from: int
):
    """Generate a lake, build its training set, train each `trainings` entry (name ->
    {"kind", "until_day", "window_days"}), and score the pool (training-set rows from day
    `pool_from` on). Returns (q, {name: predictions}, seconds)."""
    import pandas as pd

    from kubeloop.pipeline.steps import train_step
    from kubeloop.training.artifacts import load_model

    GeneratorConfig, generate_lake = _generator()
    started = time.perf_counter()
    extra = {"change_day": SHIFT_CHANGE_DAY} if scenario != "baseline" else {}
    gen = GeneratorConfig(seed=seed, events=events, scenario=scenario, **extra)
    generate_lake(gen, str(work / "lake"), progress=False)
    training_set = build_training_set(work)
    frame = pd.read_parquet(training_set)
    ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    pool = frame[ts >= _day(gen, pool_from)]
    predictions = {}
    for name, spec in trainings.items():
        config = {"until": _day(gen, spec["until_day"]).isoformat()}
        if spec.get("window_days"):
            config["window_days"] = spec["window_days"]
        train_step(spec["kind"], str(training_set), json.dumps(config), str(work / name))
        predictions[name] = np.asarray(load_model(work / name).predict_proba(pool), np.float64)
    from kubeloop.usecase import resolve_use_case

    q = pool[resolve_use_case("ctr").events.oracle].to_numpy(dtype=np.float64)
    shutil.rmtree(work, ignore_errors=True)
    return q, predictions, time.perf_counter() - started


def _logit(p: np.ndarray) -> np.ndarray:
    from kubeloop.serving.sequential import clip_probability

    p = clip_probability(p)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def true_logloss(q: np.ndarray, p: np.ndarray) -> float:
    """The true expected log loss of predictions p on the pool (oracle q)."""
    from kubeloop.serving.sequential import expected_logloss

    return float(expected_logloss(q, p).mean())


def solve_path(q: np.ndarray, path, target: float, lo: float, hi: float) -> float:
    """The parameter t in [lo, hi] where true_logloss(q, path(t)) == target (bisection on
    a bracket; the loss is continuous in t)."""
    from scipy.optimize import brentq

    return float(brentq(lambda t: true_logloss(q, path(t)) - target, lo, hi, xtol=1e-6))


def blend_to(q: np.ndarray, best: np.ndarray, other: np.ndarray, target: float) -> np.ndarray:
    """Predictions on the line best + w (other - best) in logit space (w > 0, extrapolated
    past `other` if need be) whose true loss is `target` (> the best model's)."""
    lb, lo = _logit(best), _logit(other)

    def path(w: float) -> np.ndarray:
        return _sigmoid(lb + w * (lo - lb))

    hi = 1.0
    while true_logloss(q, path(hi)) < target and hi < 64:
        hi *= 2
    if true_logloss(q, path(hi)) < target:  # the two models agree almost everywhere
        return _sigmoid(solve_path(q, lambda t: _sigmoid(t * lb), target, 1.0, 8.0) * lb)
    return path(solve_path(q, path, target, 0.0, hi))


def conditions_of(baseline: tuple, shift: tuple) -> dict[str, dict[str, Any]]:
    """Each condition's (q, p_production, p_candidate) and its true gap."""
    q, models = baseline
    ll = {k: true_logloss(q, p) for k, p in models.items()}
    best, other = sorted(models, key=ll.get)
    b, o = models[best], models[other]
    lq = _logit(q)
    lo = _logit(o)
    equal = _sigmoid(
        lo + solve_path(q, lambda v: _sigmoid(lo + v * (lq - lo)), ll[best], 0.0, 1.0) * (lq - lo)
    )
    out = {
        "aa": (q, b, b),
        "equal": (q, b, equal),
        "worse_0.5": (q, b, blend_to(q, b, o, ll[best] * 1.005)),
        "worse_2": (q, b, blend_to(q, b, o, ll[best] * 1.02)),
        "better_0.5": (q, blend_to(q, b, o, ll[best] / 0.995), b),
        "better_2": (q, blend_to(q, b, o, ll[best] / 0.98), b),
        "challenger": (q, b, o),
        "covariate": (shift[0], shift[1]["production"], shift[1]["retrained"]),
    }
    result = {}
    for name, (qq, prod, cand) in out.items():
        lp, lc = true_logloss(qq, prod), true_logloss(qq, cand)
        result[name] = {
            "q": qq,
            "production": prod,
            "candidate": cand,
            "true_logloss": {"production": lp, "candidate": lc},
            "true_gap": lc / lp - 1,
            "models": {"best": best, "runner_up": other}
            if name != "covariate"
            else {"production": "lightgbm before the change", "candidate": "lightgbm retrained"},
        }
    return result


# --- the vectorised policies ----------------------------------------------------------------


class Draws:
    """Batches of impressions for `experiments` parallel experiments: pool indices, clicks
    ~ Bernoulli(q) and the per-impression losses of both models."""

    def __init__(self, q, production, candidate, experiments: int, rng, record: bool = False):
        from kubeloop.serving.sequential import clip_probability

        self.q = q
        self.p = {
            "production": clip_probability(production),
            "candidate": clip_probability(candidate),
        }
        self.ll1 = {k: -np.log(v) for k, v in self.p.items()}
        self.ll0 = {k: -np.log1p(-v) for k, v in self.p.items()}
        self.experiments = experiments
        self.rng = rng
        self.recorded: list[dict[str, np.ndarray]] | None = [] if record else None

    def batch(self, size: int) -> dict[str, np.ndarray]:
        idx = self.rng.integers(0, len(self.q), (self.experiments, size))
        y = self.rng.random((self.experiments, size)) < self.q[idx]
        out = {"idx": idx, "y": y}
        for k in self.p:
            out[f"ll_{k}"] = np.where(y, self.ll1[k][idx], self.ll0[k][idx])
            out[f"p_{k}"] = self.p[k][idx]
        # which variant served each impression in the fixed-horizon (50%) experiment
        out["canary"] = self.rng.random((self.experiments, size)) < 0.5
        if self.recorded is not None:
            self.recorded.append({"idx": idx, "y": y, "canary": out["canary"]})
        return out


class ProgressiveSim:
    """`kubeloop.serving.progressive.evaluate_step`'s rules on arrays of experiments (one
    state per experiment); requests are labelled impressions / REQUEST_SIZE, split at
    random by the step's percent (a fair router)."""

    def __init__(self, policy, experiments: int, rng, record: bool = False):
        self.policy = policy
        self.rng = rng
        e = experiments
        self.step = np.zeros(e, int)
        self.step_start = np.zeros(e, int)
        self.step_requests = np.zeros(e, int)
        self.step_candidate = np.zeros(e, int)
        self.srm_max = np.zeros(e)
        self.quality = np.zeros(e, int)  # 0 pending, 1 passed
        self.action = np.full(e, HOLD)
        self.at = np.full(e, -1)
        self.srm_rollbacks = np.zeros(e, bool)
        self.sum = np.zeros(e)
        self.sum2 = np.zeros(e)
        self.sum_prod = np.zeros(e)
        self.schedule = np.asarray(policy.schedule)
        self.recorded: list[tuple[np.ndarray, np.ndarray]] | None = [] if record else None

    def update(self, batch: dict[str, np.ndarray], n: int) -> None:
        from kubeloop.serving.sequential import cs_radius, srm_log_bayes_factor

        p = self.policy
        d = batch["ll_candidate"] - batch["ll_production"]
        self.sum += d.sum(1)
        self.sum2 += (d * d).sum(1)
        self.sum_prod += batch["ll_production"].sum(1)
        active = self.action == HOLD

        requests = d.shape[1] // REQUEST_SIZE
        percent = self.schedule[self.step]
        candidate = self.rng.binomial(requests, percent / 100)
        if self.recorded is not None:
            self.recorded.append((np.full(len(d), requests), candidate))
        self.step_requests += requests
        self.step_candidate += candidate
        share = percent / 100
        inner = (share > 0) & (share < 1)
        log_bf = np.zeros(len(d))
        log_bf[inner] = srm_log_bayes_factor(
            self.step_candidate[inner], self.step_requests[inner], share[inner], p.srm_concentration
        )
        self.srm_max = np.maximum(self.srm_max, log_bf)
        wrong = np.where(share <= 0, self.step_candidate, self.step_requests - self.step_candidate)
        mismatch = np.where(inner, np.exp(-self.srm_max) < p.srm_alpha, wrong > 0)
        self._end(active & mismatch, ROLLBACK, n)
        self.srm_rollbacks |= active & mismatch
        active &= ~mismatch

        if n >= p.min_paired:
            mean = self.sum / n
            sd = np.sqrt(np.maximum(self.sum2 - n * mean**2, 0) / (n - 1))
            radius = cs_radius(n, sd, p.alpha, p.tuned_n)
            low, high = mean - radius, mean + radius
            margin = p.ne_margin * self.sum_prod / n
            pending = active & (self.quality == 0)
            worse = pending & (low > 0)
            self._end(worse, ROLLBACK, n)
            active &= ~worse
            bound = margin if p.requires == "non_inferiority" else 0.0
            self.quality[pending & ~worse & (high < bound)] = 1
        out = active & (self.quality == 0) & (n >= p.budget_labelled)
        self._end(out, INCONCLUSIVE, n)
        active &= ~out

        dwell = (
            active
            & (self.quality == 1)
            & (self.step_requests >= p.min_requests)
            & (n - self.step_start >= p.min_labelled)
        )
        last = self.step + 1 >= len(self.schedule)
        self._end(dwell & last, PROMOTE, n)
        move = dwell & ~last
        self.step[move] += 1
        self.step_start[move] = n
        self.step_requests[move] = 0
        self.step_candidate[move] = 0
        self.srm_max[move] = 0.0

    def _end(self, mask: np.ndarray, action: int, n: int) -> None:
        self.action[mask] = action
        self.at[mask] = n


class FixedSim:
    """`kubeloop.serving.policy.decide` re-checked after every batch, `conclude` at the
    budget: a 50% canary, each model scored on the impressions it served."""

    def __init__(self, policy, experiments: int):
        from kubeloop.serving.ab import Z_95

        self.policy = policy
        self.z = Z_95
        e = experiments
        self.action = np.full(e, HOLD)
        self.at = np.full(e, -1)
        self.s = {v: {k: np.zeros(e) for k in ("n", "ll", "ll2", "y", "p")} for v in ("c", "p")}

    def update(self, batch: dict[str, np.ndarray], n: int, final: bool) -> None:
        pol = self.policy
        canary = batch["canary"]
        for v, mask, model in (("c", canary, "candidate"), ("p", ~canary, "production")):
            s, ll = self.s[v], batch[f"ll_{model}"]
            s["n"] += mask.sum(1)
            s["ll"] += np.where(mask, ll, 0).sum(1)
            s["ll2"] += np.where(mask, ll * ll, 0).sum(1)
            s["y"] += np.where(mask, batch["y"], 0).sum(1)
            s["p"] += np.where(mask, batch[f"p_{model}"], 0).sum(1)
        c, p = self.s["c"], self.s["p"]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_c, mean_p = c["ll"] / c["n"], p["ll"] / p["n"]
            var_c = (c["ll2"] - c["n"] * mean_c**2) / (c["n"] - 1)
            var_p = (p["ll2"] - p["n"] * mean_p**2) / (p["n"] - 1)
            half = np.hypot(
                self.z * np.sqrt(np.maximum(var_c, 0) / c["n"]),
                self.z * np.sqrt(np.maximum(var_p, 0) / p["n"]),
            )
            calibration = np.where(c["y"] > 0, (c["p"] / c["n"]) / (c["y"] / c["n"]), np.nan)
        delta = mean_c - mean_p
        low, high = delta - half, delta + half
        ready = (self.action == HOLD) & (c["n"] >= pol.min_labelled)
        lo_b, hi_b = pol.calibration_bounds
        off = ~np.isnan(calibration) & ((calibration < lo_b) | (calibration > hi_b))
        rollback = ready & ((low > pol.logloss_margin) | off)
        promote = ready & ~rollback & (high <= pol.logloss_margin)
        self.action[rollback], self.at[rollback] = ROLLBACK, n
        self.action[promote], self.at[promote] = PROMOTE, n
        if final:
            left = ready & ~rollback & ~promote
            self.action[left], self.at[left] = ROLLBACK, n  # conclude: keeping production


def simulate(
    cond: dict[str, Any],
    experiments: int,
    batch: int,
    budget: int,
    seed: int,
    progressive=None,
    fixed=None,
    record: bool = False,
) -> dict[str, Any]:
    """Replay `experiments` experiments of one condition through each policy."""
    from kubeloop.serving.policy import RolloutPolicy
    from kubeloop.serving.progressive import ProgressivePolicy

    rng = np.random.default_rng(seed)
    draws = Draws(cond["q"], cond["production"], cond["candidate"], experiments, rng, record)
    base = progressive or ProgressivePolicy(budget_labelled=budget)
    sims = {
        "new_ni": ProgressiveSim(
            base.model_copy(update={"requires": "non_inferiority"}), experiments, rng, record
        ),
        "new_sup": ProgressiveSim(
            base.model_copy(update={"requires": "superiority"}), experiments, rng, record
        ),
    }
    fixed_sim = FixedSim(fixed or RolloutPolicy(), experiments)
    # A candidate whose quality test passed near the budget still walks its remaining
    # steps (their dwell needs traffic, not evidence), so the progressive sims may run past it.
    limit = budget + len(base.schedule) * base.min_labelled
    n = 0
    while n < limit:
        size = min(batch, budget - n) if n < budget else batch
        b = draws.batch(size)
        n += size
        for sim in sims.values():
            sim.update(b, n)
        if n <= budget:
            fixed_sim.update(b, n, final=n >= budget)
        if (
            all((s.action != HOLD).all() for s in sims.values())
            and (fixed_sim.action != HOLD).all()
        ):
            break
    out = {k: {"action": s.action, "at": s.at, "srm": s.srm_rollbacks} for k, s in sims.items()}
    out["fixed"] = {"action": fixed_sim.action, "at": fixed_sim.at}
    if record:
        out["draws"] = draws.recorded
        out["requests"] = {k: s.recorded for k, s in sims.items()}
    return out


def power_needed(
    cond: dict[str, Any], experiments: int, batch: int, max_n: int, seed: int, requires: str
) -> dict[str, Any]:
    """Labelled impressions by which 80% of experiments promoted, budget lifted to max_n."""
    from kubeloop.serving.progressive import ProgressivePolicy

    rng = np.random.default_rng(seed)
    draws = Draws(cond["q"], cond["production"], cond["candidate"], experiments, rng)
    sim = ProgressiveSim(
        ProgressivePolicy(budget_labelled=max_n, requires=requires), experiments, rng
    )
    n = 0
    while n < max_n and (sim.action == HOLD).any():
        b = draws.batch(batch)
        n += batch
        sim.update(b, n)
    promoted = np.sort(np.where(sim.action == PROMOTE, sim.at, np.inf))
    k = math.ceil(0.8 * experiments) - 1
    return {
        "requires": requires,
        "n_80": None if not np.isfinite(promoted[k]) else int(promoted[k]),
        "promoted_by_max": float((sim.action == PROMOTE).mean()),
        "max_n": max_n,
    }


# --- scoring --------------------------------------------------------------------------------


def score(policy: str, gap: float, result: dict[str, np.ndarray], margin: float) -> dict[str, Any]:
    """Rates of each outcome and of the wrong ones (see the module docstring)."""
    action, at = result["action"], result["at"]
    worse_line = margin if policy == "new_ni" else 0.0
    truly_worse = gap >= worse_line - 1e-9 and gap > 0
    truly_not_worse = gap <= 1e-12
    rates = {ACTIONS[a]: float((action == a).mean()) for a in (PROMOTE, ROLLBACK, INCONCLUSIVE)}
    decided = at[(action == PROMOTE) | (action == ROLLBACK)]
    return {
        **rates,
        "undecided": float((action == HOLD).mean()),
        "false_promote": rates["promote"] if truly_worse else 0.0,
        "false_rollback": rates["rollback"] if truly_not_worse else 0.0,
        "median_labelled_to_decision": float(np.median(decided)) if len(decided) else None,
        "srm_rollback": float(result["srm"].mean()) if "srm" in result else None,
    }


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the seeds: rates averaged over all experiments, gaps listed per seed."""
    out = {}
    for name, label, target in CONDITIONS:
        rows = [s[name] for s in per_seed]
        entry = {
            "label": label,
            "target_gap": target,
            "true_gap": [r["true_gap"] for r in rows],
            "policies": {},
        }
        for pol in POLICIES:
            scored = [r["scores"][pol] for r in rows]
            keys = ["promote", "rollback", "inconclusive", "false_promote", "false_rollback"]
            agg = {k: float(np.mean([s[k] for s in scored])) for k in keys}
            medians = [
                s["median_labelled_to_decision"] for s in scored if s["median_labelled_to_decision"]
            ]
            agg["median_labelled_to_decision"] = float(np.median(medians)) if medians else None
            srm = [s["srm_rollback"] for s in scored if s["srm_rollback"] is not None]
            agg["srm_rollback"] = float(np.mean(srm)) if srm else None
            entry["policies"][pol] = agg
        out[name] = entry
    return out


def targets(summary: dict[str, Any], power: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and whether it is met."""
    s = summary
    checks = []
    for cond in ("worse_0.5", "worse_2"):
        for pol in ("new_ni", "new_sup"):
            value = s[cond]["policies"][pol]["false_promote"]
            checks.append(
                {
                    "target": f"false-promote <= 5% at {cond} ({POLICY_LABELS[pol]})",
                    "value": value,
                    "met": value <= 0.05,
                }
            )
    for pol in ("new_ni", "new_sup"):
        value = s["aa"]["policies"][pol]["rollback"]
        checks.append(
            {
                "target": f"rollback <= 5% in A/A ({POLICY_LABELS[pol]})",
                "value": value,
                "met": value <= 0.05,
            }
        )
        value = s["better_2"]["policies"][pol]["promote"]
        checks.append(
            {
                "target": f"power >= 80% at -2% NE within the 24k budget ({POLICY_LABELS[pol]})",
                "value": value,
                "met": value >= 0.8,
            }
        )
    return checks


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from kubeloop.serving.policy import RolloutPolicy
    from kubeloop.serving.progressive import ProgressivePolicy

    clock = RunClock()
    sizes = QUICK if args.quick else DEFAULTS
    seeds = args.seeds or sizes["seeds"]
    experiments = args.experiments or sizes["experiments"]
    events = args.events or sizes["events"]
    power_max = args.power_max or sizes["power_max"]
    policy = ProgressivePolicy()
    budget = policy.budget_labelled
    per_seed, power, worlds = [], [], []
    with tempfile.TemporaryDirectory(prefix="kubeloop-rolloutbench-", dir=args.tmp_dir) as tmp:
        for seed in range(seeds):
            pools = {}
            for world, (scenario, trainings, pool_from) in WORLDS.items():
                log(f"seed {seed}: training on a {scenario} lake of {events:,} events")
                pools[world] = train_pool(
                    Path(tmp) / f"{world}-{seed}", seed, events, scenario, trainings, pool_from
                )
                log(f"  {pools[world][2]:.0f}s")
            conds = conditions_of(pools["baseline"][:2], pools["covariate"][:2])
            worlds.append(
                {
                    "seed": seed,
                    "pool": {world: len(pool[0]) for world, pool in pools.items()},
                    "train_seconds": {world: pool[2] for world, pool in pools.items()},
                    "models": conds["aa"]["models"],
                }
            )
            log("  simulating")
            started = time.perf_counter()
            seed_result = {}
            for i, (name, _, _) in enumerate(CONDITIONS):
                cond = conds[name]
                result = simulate(cond, experiments, args.batch, budget, 1000 * seed + i)
                seed_result[name] = {
                    "true_gap": cond["true_gap"],
                    "true_logloss": cond["true_logloss"],
                    "scores": {
                        pol: score(pol, cond["true_gap"], result[pol], policy.ne_margin)
                        for pol in POLICIES
                    },
                }
            per_seed.append(seed_result)
            for requires in ("non_inferiority", "superiority"):
                power.append(
                    {
                        "seed": seed,
                        **power_needed(
                            conds["better_0.5"],
                            experiments,
                            4 * args.batch,
                            power_max,
                            7000 + seed,
                            requires,
                        ),
                    }
                )
            log(f"  simulated in {time.perf_counter() - started:.1f}s")
    summary = summarize(per_seed)
    power_summary = {}
    for requires in ("non_inferiority", "superiority"):
        rows = [p for p in power if p["requires"] == requires]
        values = [p["n_80"] for p in rows]
        power_summary[requires] = {
            "n_80_per_seed": values,
            "n_80_median": float(np.median(values)) if None not in values else None,
            "max_n": power_max,
        }
    mode = "quick" if args.quick else "full"
    if not args.quick and (
        seeds < DEFAULTS["seeds"]
        or experiments < DEFAULTS["experiments"]
        or events < DEFAULTS["events"]
    ):
        mode = "reduced"
    return {
        "conditions": clock.conditions("rollout", mode, PACKAGES),
        "setup": {
            "seeds": seeds,
            "experiments_per_condition_per_seed": experiments,
            "events": events,
            "batch_labelled": args.batch,
            "budget_labelled": budget,
            "progressive_policy": policy.model_dump(mode="json"),
            "fixed_policy": RolloutPolicy().model_dump(mode="json"),
            "worlds": worlds,
        },
        "summary": summary,
        "power_at_minus_0.5": power_summary,
        "targets": targets(summary, power_summary),
        "per_seed": per_seed,
    }


def render(doc: dict[str, Any]) -> str:
    """The markdown report (the README's section is `kubeloop.report_render.render_rollout`)."""
    from kubeloop.report_render import render_rollout

    return "# Rollout decision bench\n\n" + render_rollout(doc)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--seeds", type=int, default=None, help=f"worlds (default {DEFAULTS['seeds']})")
    p.add_argument(
        "--experiments",
        type=int,
        default=None,
        help=f"experiments per condition per seed (default {DEFAULTS['experiments']})",
    )
    p.add_argument("--events", type=int, default=None, help="lake size per world")
    p.add_argument("--batch", type=int, default=250, help="labelled impressions per check")
    p.add_argument("--power-max", type=int, default=None, help="budget lifted to this for power")
    add_output_arguments(p, DEFAULT_JSON, DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    doc = measure_or_load(args, measure)
    publish(render(doc), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
