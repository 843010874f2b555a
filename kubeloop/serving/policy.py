"""The automatic rollout policy: promote the canary when, after enough labelled requests,
it is not worse than the primary beyond a margin; roll it back as soon as its error rate
or latency regresses. Every decision carries its reasons."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.serving.ab import ABResult


class RolloutPolicy(BaseModel):
    """Thresholds of `decide`. Log loss is compared with the upper end of the canary-minus-
    primary interval, so "not worse beyond the margin" must hold with 95% confidence."""

    model_config = ConfigDict(extra="forbid")

    min_labelled: int = Field(2000, ge=1, description="labelled canary requests before promoting")
    # Per-row log loss is noisy (sd ~0.5 at a 5% CTR): at 10k requests per variant the 95%
    # interval of the difference is about +-0.014, so a tighter margin rarely concludes at
    # the traffic a local replay can send; 0.02 is ~10% of the log loss at a 5% CTR.
    logloss_margin: float = Field(
        0.02, ge=0, description="tolerated log-loss increase of the canary"
    )
    calibration_bounds: tuple[float, float] = (0.8, 1.25)
    max_error_rate_increase: float = Field(0.01, ge=0)
    max_latency_p99_ratio: float = Field(2.0, gt=1)
    min_requests_for_health: int = Field(
        200, ge=1, description="canary requests before judging errors/latency"
    )


def conclude(result: ABResult, policy: RolloutPolicy) -> RolloutDecision:
    """The decision at the end of an experiment (no more traffic coming): as `decide`, but
    a canary that had its labelled impressions and still did not prove itself not worse is
    rolled back, because production is the version with the evidence behind it."""
    decision = decide(result, policy)
    canary = result.variants.get("canary")
    if decision.action == "wait" and canary is not None and canary.labelled >= policy.min_labelled:
        return RolloutDecision(
            action="rollback",
            reasons=[*decision.reasons, "experiment over without a conclusion: keeping production"],
        )
    return decision


class RolloutDecision(BaseModel):
    """promote, rollback or wait, and why."""

    action: Literal["promote", "rollback", "wait"]
    reasons: list[str]


def decide(result: ABResult, policy: RolloutPolicy) -> RolloutDecision:
    """Apply the policy to an A/B result (see RolloutPolicy)."""
    canary = result.variants.get("canary")
    primary = result.variants.get("primary")
    if canary is None or primary is None:
        return RolloutDecision(action="wait", reasons=["no traffic yet on both variants"])
    reasons: list[str] = []

    # Health first: errors and latency can condemn a canary before any label arrives.
    if canary.requests >= policy.min_requests_for_health:
        increase = canary.error_rate - primary.error_rate
        if increase > policy.max_error_rate_increase:
            return RolloutDecision(
                action="rollback",
                reasons=[
                    (
                        f"canary error rate {canary.error_rate:.2%} exceeds primary's {primary.error_rate:.2%} "
                        f"by more than {policy.max_error_rate_increase:.2%}"
                    )
                ],
            )
        ratio = result.deltas.get("latency_p99_ratio")
        if (
            ratio is not None
            and ratio.estimate is not None
            and ratio.estimate > policy.max_latency_p99_ratio
        ):
            return RolloutDecision(
                action="rollback",
                reasons=[
                    f"canary p99 latency is {ratio.estimate:.2f}x the primary's (limit {policy.max_latency_p99_ratio}x)"
                ],
            )
        reasons.append(
            f"canary health ok over {canary.requests} served impressions "
            f"(error rate {canary.error_rate:.2%}, primary {primary.error_rate:.2%})"
        )

    if canary.labelled < policy.min_labelled:
        reasons.append(
            f"{canary.labelled} labelled canary impressions, waiting for {policy.min_labelled}"
        )
        return RolloutDecision(action="wait", reasons=reasons)

    delta = result.deltas["logloss"]
    if delta.high is None:
        return RolloutDecision(
            action="wait", reasons=[*reasons, "log loss undefined on one variant"]
        )
    if delta.low is not None and delta.low > policy.logloss_margin:
        return RolloutDecision(
            action="rollback",
            reasons=[
                *reasons,
                (
                    f"canary log loss is worse by {delta.estimate:+.4f} (95% CI {delta.low:+.4f}..{delta.high:+.4f}), "
                    f"beyond the {policy.logloss_margin} margin"
                ),
            ],
        )
    calibration = canary.calibration.estimate
    low, high = policy.calibration_bounds
    if calibration is not None and not low <= calibration <= high:
        return RolloutDecision(
            action="rollback",
            reasons=[*reasons, f"canary calibration {calibration:.3f} outside [{low}, {high}]"],
        )
    if delta.high <= policy.logloss_margin:
        return RolloutDecision(
            action="promote",
            reasons=[
                *reasons,
                (
                    f"canary log loss delta {delta.estimate:+.4f} (95% CI {delta.low:+.4f}..{delta.high:+.4f}) "
                    f"is within the {policy.logloss_margin} margin over {canary.labelled} labelled impressions"
                ),
            ],
        )
    return RolloutDecision(
        action="wait",
        reasons=[
            *reasons,
            f"log loss delta {delta.estimate:+.4f} (95% CI {delta.low:+.4f}..{delta.high:+.4f}) not yet conclusive",
        ],
    )
