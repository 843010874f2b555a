"""The progressive rollout policy, Flagger-style: shadow -> 5% -> 25% -> 50% -> 100%.

One decision function, `evaluate_step`, called after every batch of labels (locally by the
demo, in the cluster by the rollout controller). It reads

  - the paired frame (`kubeloop.serving.paired.paired_frame`): every labelled impression
    scored by both versions since the rollout began; the non-serving version answers in
    shadow, so the comparison stays paired at every step and uses all the traffic;
  - the current step's health (`HealthStats`): served and shadow answers, errors, latency;
  - the `StepState` it returned last time,

and returns a `StepDecision`: the action, the percent to set next, the statistics and the
reasons. The rules, in order:

  1. Guardrails (each step): the candidate's error rate above production's by more than
     `max_error_rate_increase`, its p99 latency above `max_latency_p99_ratio` x
     production's, or the sequential SRM test rejecting the served split against the set
     percent -> rollback to canary 0 at once.
  2. Quality: the confidence sequence of the paired log-loss difference (candidate -
     production). Its lower end above 0 (candidate proven worse) -> rollback at once. Its
     upper end below the margin (non-inferiority: `ne_margin` x production's log loss) or
     below 0 (superiority) -> the quality test has passed, for good (a CS may be stopped
     at any time, so the first crossing is a valid conclusion).
  3. Budget: `budget_labelled` paired labelled impressions without a conclusion ->
     "inconclusive", keeping production (canary 0), naming the budget.
  4. Progress: only with the quality test passed, and once the step's dwell (requests and
     labelled impressions since the step began) is met, advance to the next percent; after
     the 100% step's dwell, promote.
  Otherwise hold.

Labels slower than the experiment (`label_timing="delayed"`): when a label is final only
days after its request, a step's traffic is over long before any of its labels
come, so waiting for the quality test at every step ends every rollout in shadow. Because
the quality statistic is paired over every served impression (both versions score each
request, whatever the percent), the percent changes how many users the candidate serves,
not the evidence. So in this mode, while the quality test is pending, a step advances on
health (guardrails judged on at least `min_requests_for_health` candidate answers) and on
"not proven worse" on the labels known so far (rule 2's rollback still fires the moment
the CS's lower end passes 0), with a dwell of requests only; it never goes above
`unproven_max_percent` and never promotes: the promotion waits at the last allowed step,
the candidate serving, until the labels matured enough for the quality test to pass (or to
prove it worse, or to spend the budget). `resolve_label_timing` picks the mode from how
late labels come against how long the experiment runs ("auto").
"""

from __future__ import annotations

import itertools
import math
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from kubeloop.serving.paired import HealthStats
from kubeloop.serving.sequential import (
    ConfidenceSequence,
    SRMResult,
    confidence_sequence,
    cs_radius,
    per_impression_logloss,
    srm_test,
)

if TYPE_CHECKING:
    import pandas as pd

Action = Literal["hold", "advance", "promote", "rollback", "inconclusive"]
Requirement = Literal["non_inferiority", "superiority"]
Quality = Literal["pending", "passed", "worse"]
LabelTiming = Literal["auto", "prompt", "delayed"]


class ProgressivePolicy(BaseModel):
    """Schedule, dwell, margin, requirement, budget and guardrails of a progressive rollout."""

    model_config = ConfigDict(extra="forbid")

    schedule: list[int] = Field(
        default_factory=lambda: [0, 5, 25, 50, 100],
        description="canary percent per step; 0 is the shadow step (candidate scores copies)",
    )
    min_requests: int = Field(100, ge=0, description="requests served per step before moving on")
    min_labelled: int = Field(
        1000, ge=0, description="paired labelled impressions per step before moving on"
    )
    ne_margin: float = Field(
        0.005,
        ge=0,
        lt=1,
        description="relative NE (= relative log loss on the same impressions) non-inferiority margin",
    )
    requires: Requirement = Field(
        "non_inferiority",
        description=(
            "non_inferiority for a candidate that already passed the offline gate (a retrained "
            "model); superiority for one without (a challenger)"
        ),
    )
    # 24k paired labelled impressions: the demo's traffic (3000 requests x 8 impressions),
    # and enough, measured in bench/rollout_bench.py, for >= 80% power at a 2% NE
    # difference and to show non-inferiority of an equal candidate at the 0.5% margin.
    budget_labelled: int = Field(
        24_000, ge=1, description="paired labelled impressions before giving up: inconclusive"
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="error rate of the confidence sequence")
    tuned_n: int = Field(
        8000, ge=1, description="labelled impressions where the confidence sequence is tightest"
    )
    min_paired: int = Field(200, ge=2, description="paired impressions before any quality call")
    max_error_rate_increase: float = Field(0.01, ge=0)
    max_latency_p99_ratio: float = Field(2.0, gt=1)
    # A p99 ratio between two small, fast samples is mostly scheduling noise: on 2 busy cores
    # a candidate's 16.6 ms against production's 7 ms (2.35x) rolled back a healthy model.
    # Flagger's request-duration check is an absolute bound; here the ratio guards only
    # above this floor, which the use cases' tens-of-milliseconds requirement sits within.
    latency_p99_floor_ms: float = Field(
        50.0,
        ge=0,
        description="a candidate whose p99 latency is at most this many ms passes the latency "
        "guardrail whatever its ratio to production's",
    )
    min_requests_for_health: int = Field(
        50, ge=1, description="candidate answers (served or shadow) before judging its health"
    )
    srm_alpha: float = Field(
        0.001, gt=0, lt=1, description="anytime error rate of the SRM test (per step)"
    )
    srm_concentration: float = Field(100.0, gt=0, description="Beta mixture concentration")
    label_timing: LabelTiming = Field(
        "auto",
        description=(
            "prompt: every step waits for the quality test (labels come while the step "
            "runs); delayed: labels come after the experiment's traffic, so steps advance on "
            "health and 'not proven worse', and only the promotion waits for the quality "
            "test (module docstring); auto: `resolve_label_timing` decides, prompt where "
            "nothing resolved it"
        ),
    )
    unproven_max_percent: int = Field(
        100,
        ge=0,
        le=100,
        description="delayed labels: the highest percent a candidate serves before its "
        "quality test passed",
    )

    @field_validator("schedule")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if not value or any(not 0 <= p <= 100 for p in value):
            raise ValueError("schedule: percents between 0 and 100, at least one")
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("schedule: percents must increase, e.g. [0, 5, 25, 50, 100]")
        if value[-1] != 100:
            raise ValueError("schedule: the last step must be 100 (then the candidate is promoted)")
        return value


def resolve_label_timing(
    policy: ProgressivePolicy, label_delay: timedelta | None, experiment: timedelta | None
) -> ProgressivePolicy:
    """`policy` with "auto" label timing made prompt or delayed: delayed when labels take at
    least as long as the experiment's traffic (`experiment`: its span; None: unknown, then
    any `label_delay` counts as slow), prompt when labels come at once (`label_delay` None)
    or well within it. A policy that names its timing is returned as it is."""
    if policy.label_timing != "auto":
        return policy
    slow = label_delay is not None and (experiment is None or label_delay >= experiment)
    return policy.model_copy(update={"label_timing": "delayed" if slow else "prompt"})


class StepState(BaseModel):
    """What `evaluate_step` remembers between calls (the controller stores it)."""

    model_config = ConfigDict(extra="forbid")

    step: int = Field(0, ge=0, description="index into the policy's schedule")
    percent: int = Field(0, ge=0, le=100)
    step_started_labelled: int = Field(0, ge=0, description="paired labelled when the step began")
    step_started_requests: int = Field(0, ge=0, description="total requests when the step began")
    quality: Quality = "pending"
    quality_concluded_at: int | None = Field(None, description="paired labelled at the conclusion")
    srm_max_log_bf: float = Field(0.0, description="running max log Bayes factor of this step")
    done: bool = False


class ModelQuality(BaseModel):
    """One version's quality on the paired impressions."""

    model_config = ConfigDict(extra="forbid")

    logloss: float | None
    ne: float | None = Field(description="log loss / entropy of the observed positive rate")
    calibration: float | None = Field(description="mean prediction / observed positive rate")
    expected_logloss: float | None = Field(
        None, description="true expected log loss from the oracle click probability"
    )


class StepStatistics(BaseModel):
    """Everything a decision rests on."""

    model_config = ConfigDict(extra="forbid")

    paired: int
    ctr: float | None
    delta_logloss: ConfidenceSequence = Field(description="candidate - production, per impression")
    margin_logloss: float | None = Field(description="ne_margin x production log loss")
    relative_delta: float | None = Field(description="delta / production log loss (= NE delta)")
    production: ModelQuality
    candidate: ModelQuality
    srm: SRMResult | None
    error_rate_increase: float | None
    latency_p99_ratio: float | None
    oracle_delta_logloss: float | None = Field(
        None, description="true expected log loss difference, when the oracle is known"
    )


class StepDecision(BaseModel):
    """The action, the percent to set now, the new state, the statistics and why."""

    model_config = ConfigDict(extra="forbid")

    action: Action
    percent: int
    state: StepState
    statistics: StepStatistics
    reasons: list[str]


def _entropy(ctr: float) -> float | None:
    if not 0 < ctr < 1:
        return None
    return -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))


def model_quality(y: np.ndarray, p: np.ndarray, q: np.ndarray | None) -> ModelQuality:
    """Log loss, NE, calibration (and the oracle's expected log loss) of one version."""
    from kubeloop.serving.sequential import expected_logloss

    if len(y) == 0:
        return ModelQuality(logloss=None, ne=None, calibration=None)
    ll = float(per_impression_logloss(y, p).mean())
    ctr = float(y.mean())
    entropy = _entropy(ctr)
    return ModelQuality(
        logloss=ll,
        ne=ll / entropy if entropy else None,
        calibration=float(p.mean()) / ctr if ctr > 0 else None,
        expected_logloss=float(expected_logloss(q, p).mean()) if q is not None else None,
    )


def paired_statistics(
    paired: pd.DataFrame, policy: ProgressivePolicy
) -> tuple[ConfidenceSequence, float | None, ModelQuality, ModelQuality, float | None]:
    """The CS of the paired log-loss difference, the margin in log loss, both versions'
    quality and the oracle's difference (None without an `oracle` column)."""
    y = paired["label"].to_numpy(dtype=np.float64)
    p_prod = paired["p_production"].to_numpy(dtype=np.float64)
    p_cand = paired["p_candidate"].to_numpy(dtype=np.float64)
    q = paired["oracle"].to_numpy(dtype=np.float64) if "oracle" in paired else None
    if q is not None and np.isnan(q).any():
        q = None
    diff = per_impression_logloss(y, p_cand) - per_impression_logloss(y, p_prod)
    cs = confidence_sequence(diff, policy.alpha, policy.tuned_n)
    production = model_quality(y, p_prod, q)
    candidate = model_quality(y, p_cand, q)
    margin = policy.ne_margin * production.logloss if production.logloss is not None else None
    oracle = (
        candidate.expected_logloss - production.expected_logloss
        if candidate.expected_logloss is not None and production.expected_logloss is not None
        else None
    )
    return cs, margin, production, candidate, oracle


def _fmt_cs(cs: ConfidenceSequence) -> str:
    return f"{cs.estimate:+.5f} (CS {cs.low:+.5f}..{cs.high:+.5f}, {cs.n} paired)"


def evaluate_step(
    state: StepState, paired: pd.DataFrame, health: HealthStats, policy: ProgressivePolicy
) -> StepDecision:
    """Decide the rollout's next move (see the module docstring). `paired` holds every
    paired labelled impression since the rollout began, `health` the current step's
    answers (since `state`'s step began)."""
    n = len(paired)
    cs, margin, prod_q, cand_q, oracle = paired_statistics(paired, policy)
    ctr = float(paired["label"].mean()) if n else None
    reasons: list[str] = []
    new = state.model_copy(deep=True)

    # Guardrails ---------------------------------------------------------------------------
    srm, new.srm_max_log_bf = (None, state.srm_max_log_bf)
    if health.served_total > 0:
        srm, new.srm_max_log_bf = srm_test(
            health.candidate.served,
            health.served_total,
            state.percent,
            policy.srm_alpha,
            state.srm_max_log_bf,
            policy.srm_concentration,
        )
    cand, prod = health.candidate, health.production
    answered = cand.served + cand.shadow
    increase = cand.error_rate - prod.error_rate if answered else None
    ratio = (
        cand.latency_p99_ms / prod.latency_p99_ms
        if cand.latency_p99_ms is not None and prod.latency_p99_ms
        else None
    )
    statistics = StepStatistics(
        paired=n,
        ctr=ctr,
        delta_logloss=cs,
        margin_logloss=margin,
        relative_delta=cs.estimate / prod_q.logloss
        if cs.estimate is not None and prod_q.logloss
        else None,
        production=prod_q,
        candidate=cand_q,
        srm=srm,
        error_rate_increase=increase,
        latency_p99_ratio=ratio,
        oracle_delta_logloss=oracle,
    )

    def decide(action: Action, percent: int, why: list[str]) -> StepDecision:
        if action in ("promote", "rollback", "inconclusive"):
            new.done = True
        return StepDecision(
            action=action, percent=percent, state=new, statistics=statistics, reasons=why
        )

    if state.done:
        return decide("hold", state.percent, ["the rollout is over"])
    if srm is not None and srm.mismatch:
        return decide(
            "rollback",
            0,
            [
                (
                    f"sample ratio mismatch at step {state.step} ({state.percent}%): the candidate served "
                    f"{srm.candidate} of {srm.total} requests ({srm.observed_share:.2%}), "
                    f"SRM p-value {srm.p_value:.2g} < {policy.srm_alpha}"
                )
            ],
        )
    if answered >= policy.min_requests_for_health:
        if increase is not None and increase > policy.max_error_rate_increase:
            return decide(
                "rollback",
                0,
                [
                    (
                        f"candidate error rate {cand.error_rate:.2%} exceeds production's "
                        f"{prod.error_rate:.2%} by more than {policy.max_error_rate_increase:.2%}"
                    )
                ],
            )
        if (
            ratio is not None
            and ratio > policy.max_latency_p99_ratio
            and cand.latency_p99_ms > policy.latency_p99_floor_ms
        ):
            return decide(
                "rollback",
                0,
                [
                    (
                        f"candidate p99 latency {cand.latency_p99_ms:.1f} ms is {ratio:.2f}x production's "
                        f"(limit {policy.max_latency_p99_ratio}x above "
                        f"{policy.latency_p99_floor_ms:g} ms)"
                    )
                ],
            )
        reasons.append(
            f"health ok over {answered} candidate answers (error rate {cand.error_rate:.2%}, "
            f"p99 ratio {ratio:.2f}x)"
            if ratio is not None
            else f"health ok over {answered} candidate answers (error rate {cand.error_rate:.2%})"
        )

    # Quality ------------------------------------------------------------------------------
    if n < policy.min_paired or cs.low is None or margin is None:
        reasons.append(f"{n} paired labelled impressions, waiting for {policy.min_paired}")
    elif state.quality == "pending":
        if cs.low > 0:
            new.quality, new.quality_concluded_at = "worse", n
            return decide(
                "rollback",
                0,
                [
                    *reasons,
                    (
                        f"candidate proven worse: delta log loss {_fmt_cs(cs)} is above 0 "
                        f"({statistics.relative_delta:+.2%} relative)"
                    ),
                ],
            )
        bound = margin if policy.requires == "non_inferiority" else 0.0
        if cs.high < bound:
            new.quality, new.quality_concluded_at = "passed", n
            what = (
                f"not worse than the {policy.ne_margin:.2%} NE margin ({margin:.5f} log loss)"
                if policy.requires == "non_inferiority"
                else "better than production (superiority)"
            )
            reasons.append(f"candidate proven {what}: delta log loss {_fmt_cs(cs)}")
        else:
            target = f"the margin ({bound:+.5f})" if policy.requires == "non_inferiority" else "0"
            reasons.append(
                f"delta log loss {_fmt_cs(cs)}: upper end not yet below {target}, "
                f"{policy.requires.replace('_', '-')} required"
            )
    else:
        reasons.append(
            f"quality test {state.quality} at {state.quality_concluded_at} paired; "
            f"now delta log loss {_fmt_cs(cs)}"
        )

    # Budget -------------------------------------------------------------------------------
    if new.quality == "pending" and n >= policy.budget_labelled:
        spent = (
            f"inconclusive, keeping production: the traffic budget of "
            f"{policy.budget_labelled} paired labelled impressions is spent ({n})"
        )
        why = undecided_reason(statistics, policy)
        # the conclusion last: callers read the final reason as the decision's headline
        return decide("inconclusive", 0, [*reasons, *([why] if why else []), spent])

    # Progress -----------------------------------------------------------------------------
    step_requests = health.served_total
    step_labelled = n - state.step_started_labelled
    delayed = policy.label_timing == "delayed"

    def advance(why: str) -> StepDecision:
        nxt = policy.schedule[state.step + 1]
        new.step, new.percent = state.step + 1, nxt
        new.step_started_labelled = n
        new.step_started_requests = state.step_started_requests + step_requests
        new.srm_max_log_bf = 0.0
        reasons.append(why.format(nxt=nxt))
        return decide("advance", nxt, reasons)

    if new.quality != "passed":
        if delayed and new.quality == "pending":
            return _unproven_step(
                state, answered, step_requests, n, policy, reasons, advance, decide
            )
        return decide("hold", state.percent, reasons)
    if step_requests < policy.min_requests or (not delayed and step_labelled < policy.min_labelled):
        labelled = "" if delayed else f", {step_labelled}/{policy.min_labelled} labelled"
        reasons.append(
            f"step {state.step} ({state.percent}%) dwell: {step_requests}/{policy.min_requests} "
            f"requests{labelled}"
        )
        return decide("hold", state.percent, reasons)
    if state.step + 1 >= len(policy.schedule):
        reasons.append(f"dwell at {state.percent}% met: promoting the candidate")
        return decide("promote", 100, reasons)
    return advance(f"dwell at {state.percent}% met: advancing to {{nxt}}%")


def _unproven_step(state, answered, step_requests, n, policy, reasons, advance, decide):
    """Delayed labels, quality test pending (module docstring): advance on health and a
    requests-only dwell, up to `unproven_max_percent`; hold there (the promotion, or the
    steps above the cap, wait for the quality test)."""
    where = f"step {state.step} ({state.percent}%)"
    if answered < policy.min_requests_for_health:
        reasons.append(
            f"labels lag the traffic: {where} waits for {policy.min_requests_for_health} "
            f"candidate answers to judge its health ({answered} so far)"
        )
        return decide("hold", state.percent, reasons)
    if step_requests < policy.min_requests:
        reasons.append(
            f"labels lag the traffic: {where} dwell {step_requests}/{policy.min_requests} requests"
        )
        return decide("hold", state.percent, reasons)
    test = policy.requires.replace("_", "-")
    last = state.step + 1 >= len(policy.schedule)
    if last or policy.schedule[state.step + 1] > policy.unproven_max_percent:
        what = (
            "the promotion"
            if last
            else f"{policy.schedule[state.step + 1]}% (above the unproven cap "
            f"{policy.unproven_max_percent}%)"
        )
        reasons.append(
            f"labels lag the traffic: {where} dwell met, {what} waits for the {test} test "
            f"on the labels as they mature ({n} paired so far)"
        )
        return decide("hold", state.percent, reasons)
    return advance(
        f"labels lag the traffic: {where} dwell met with health ok and the candidate not "
        f"proven worse on the {n} paired labels known, advancing to {{nxt}}%; the promotion "
        f"waits for the {test} test"
    )


def labelled_needed(
    cs: ConfidenceSequence, bound: float, policy: ProgressivePolicy, limit: int = 10**9
) -> int | None:
    """About how many paired labelled impressions the confidence sequence would need for its
    upper end to fall below `bound` if its estimate and standard deviation stayed as they
    are; None when the estimate is not below `bound` (no sample size would do) or the
    answer exceeds `limit`."""
    if cs.estimate is None or cs.sd is None or cs.estimate >= bound:
        return None
    gap = bound - cs.estimate

    def short(m: int) -> bool:
        return float(cs_radius(m, cs.sd, policy.alpha, policy.tuned_n)) >= gap

    low, high = 2, max(cs.n, 2)
    while short(high):  # the radius shrinks with n: double, then bisect
        low, high = high, high * 2
        if high > limit:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if short(mid) else (low, mid)
    return high


def undecided_reason(statistics: StepStatistics, policy: ProgressivePolicy) -> str | None:
    """Why the quality test could not conclude on the labels it had: the confidence
    sequence's half-width against the margin (the true relative gap the test could have
    shown at this sample size), and the labelled impressions the current estimate would
    need. None without a confidence sequence."""
    cs, production = statistics.delta_logloss, statistics.production.logloss
    if cs.estimate is None or cs.high is None or not production:
        return None
    half = cs.high - cs.estimate
    relative = policy.ne_margin if policy.requires == "non_inferiority" else 0.0
    reach = relative - half / production
    needed = labelled_needed(cs, relative * production, policy)
    estimate = f"the current estimate ({cs.estimate / production:+.2%})"
    then = (
        f"at {estimate} about {needed:,} paired labelled impressions would decide it"
        if needed is not None
        else f"at {estimate} no number of labels would show it"
    )
    return (
        f"at {cs.n} paired the CS half-width is {half:.5f} log loss ({half / production:.2%} of "
        f"production's against the {policy.ne_margin:.2%} margin): the "
        f"{policy.requires.replace('_', '-')} test could show only a candidate whose true "
        f"relative gap is below {reach:+.2%}; {then}"
    )


def initial_state(policy: ProgressivePolicy) -> StepState:
    """The state at the start of a rollout: the first step of the schedule (shadow)."""
    return StepState(step=0, percent=policy.schedule[0])


def end_of_traffic(decision: StepDecision, policy: ProgressivePolicy) -> StepDecision:
    """The decision when no more traffic will come (a replay that ran out before the
    budget): a rollout that has not ended is inconclusive and keeps production, with the
    reason naming what was missing. A finished decision is returned as it is."""
    if decision.state.done:
        return decision
    state = decision.state.model_copy(update={"done": True})
    n = decision.statistics.paired
    if decision.state.quality == "passed":
        missing = f"the dwell of step {decision.state.step} ({decision.state.percent}%)"
    else:
        missing = f"a conclusion of the {policy.requires.replace('_', '-')} test"
    reason = (
        f"inconclusive, keeping production: the traffic ran out at {n} paired labelled "
        f"impressions (budget {policy.budget_labelled}) before {missing}"
    )
    why = (
        undecided_reason(decision.statistics, policy)
        if decision.state.quality != "passed"
        else None
    )
    return decision.model_copy(
        update={
            "action": "inconclusive",
            "percent": 0,
            "state": state,
            "reasons": [*decision.reasons, *([why] if why else []), reason],
        }
    )
