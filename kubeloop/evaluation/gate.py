"""The offline gate: which candidate becomes the champion, and whether it may replace the
model in production.

Both decisions compare normalized entropy (NE, lower is better) on one holdout. NE
divides log loss by the entropy of the holdout's own click rate, so on one holdout an NE
difference is a log-loss difference in units of that entropy; the margins below are
absolute NE differences (0.002 = 0.2 % of the base-rate model's loss). Decisions carry
human-readable reasons with the numbers, and are JSON-serialisable (`model_dump`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kubeloop.evaluation.metrics import EvaluationReport


class GateConfig(BaseModel):
    """Thresholds of `choose_champion` and `gate`."""

    model_config = ConfigDict(extra="forbid")

    ne_margin: float = Field(
        0.002,
        ge=0,
        description="absolute NE decrease a candidate needs over the model it would replace",
    )
    calibration_bounds: tuple[float, float] = Field(
        (0.9, 1.1), description="allowed range of mean prediction / observed click rate"
    )
    max_ece: float | None = Field(None, gt=0, description="optional ceiling on the ECE")
    ladder_margin: float = Field(
        0.005,
        ge=0,
        description=(
            "absolute NE decrease a model needs over the simpler champion below it on the "
            "ladder (simplicity rank) to replace it"
        ),
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> GateConfig:
        low, high = self.calibration_bounds
        if not 0 < low <= 1 <= high:
            raise ValueError("calibration_bounds must satisfy 0 < low <= 1 <= high")
        return self


class ChampionDecision(BaseModel):
    """The candidate chosen to go through the gate, and why."""

    model_config = ConfigDict(extra="forbid")

    champion: str
    reasons: list[str]
    normalized_entropy: dict[str, float | None]


class GateDecision(BaseModel):
    """Whether the candidate may be registered and deployed, and why."""

    model_config = ConfigDict(extra="forbid")

    passed: bool
    reasons: list[str]
    compared_against: Literal["production", "base_rate"]
    candidate_ne: float | None
    reference_ne: float | None


def _calibrated(report: EvaluationReport, config: GateConfig) -> bool:
    low, high = config.calibration_bounds
    ratio = report.calibration_ratio
    return ratio is not None and low <= ratio <= high


def simplicity_ranks() -> dict[str, int]:
    """Each registered model kind's rung on the ladder (0 = simplest), from its spec."""
    from kubeloop.training.model_kind import model_kinds

    return {spec.name: spec.rank for spec in model_kinds()}


def choose_champion(
    candidates: Mapping[str, EvaluationReport],
    config: GateConfig | None = None,
    ranks: Mapping[str, int] | None = None,
) -> ChampionDecision:
    """Pick the champion among candidates scored on the same holdout: the model ladder.

    Candidates climb the ladder from the simplest to the most complex by simplicity rank
    (`ranks`, default: each kind's spec; kinds without a rank come last, by name); one
    replaces the current champion only if its NE is lower by at least `ladder_margin`,
    so the simplest model not beaten by the margin wins. Candidates whose calibration
    ratio is outside `calibration_bounds` are considered only when no candidate is within
    them, since they would fail the gate anyway. Each reason names the rungs it compares.
    """
    cfg = config or GateConfig()
    if not candidates:
        raise ValueError("choose_champion needs at least one candidate")
    digests = {r.holdout_digest for r in candidates.values()}
    if len(digests) > 1:
        raise ValueError("candidates were evaluated on different holdouts; NE is not comparable")
    undefined = [k for k, r in candidates.items() if r.normalized_entropy is None]
    if undefined:
        raise ValueError(f"NE is undefined for {undefined} (holdout with a single class)")

    rank_of = dict(simplicity_ranks() if ranks is None else ranks)
    unranked = len(rank_of) + max(rank_of.values(), default=0)
    kinds = sorted(candidates, key=lambda k: (rank_of.get(k, unranked), k))

    def rung(kind: str) -> str:
        rank = rank_of.get(kind)
        return f"{kind} (rank {rank})" if rank is not None else f"{kind} (unranked)"

    reasons: list[str] = [
        "Ladder, simplest first: " + " -> ".join(rung(k) for k in kinds)
        + f"; a model must beat the champion below it by NE margin {cfg.ladder_margin}."
    ]
    eligible = [k for k in kinds if _calibrated(candidates[k], cfg)]
    if not eligible:
        eligible = kinds
        reasons.append(
            "No candidate has a calibration ratio within "
            f"{cfg.calibration_bounds}; choosing on NE alone."
        )
    for kind in kinds:
        if kind not in eligible:
            reasons.append(
                f"{rung(kind)} is not considered: calibration ratio "
                f"{_ratio_text(candidates[kind].calibration_ratio)} is outside "
                f"{cfg.calibration_bounds}."
            )
    champion = eligible[0]
    for kind in eligible[1:]:
        ne_champ = candidates[champion].normalized_entropy
        ne_kind = candidates[kind].normalized_entropy
        gain = ne_champ - ne_kind
        if gain >= cfg.ladder_margin:
            reasons.append(
                f"{rung(kind)} replaces {rung(champion)}: it beats it by {gain:.5f} NE "
                f">= margin {cfg.ladder_margin} (NE {ne_kind:.5f} vs {ne_champ:.5f})."
            )
            champion = kind
        elif gain > 0:
            reasons.append(
                f"{rung(champion)} kept: {kind} beats it by {gain:.5f} NE < margin "
                f"{cfg.ladder_margin} (NE {ne_kind:.5f} vs {ne_champ:.5f})."
            )
        else:
            reasons.append(
                f"{rung(champion)} kept: {kind} does not beat it "
                f"(NE {ne_kind:.5f} vs {ne_champ:.5f})."
            )
    if len(eligible) == 1:
        reasons.append(f"{rung(champion)} is the only eligible candidate.")
    return ChampionDecision(
        champion=champion,
        reasons=reasons,
        normalized_entropy={k: r.normalized_entropy for k, r in candidates.items()},
    )


def gate(
    candidate: EvaluationReport,
    production: EvaluationReport | None,
    base_rate_report: EvaluationReport,
    config: GateConfig | None = None,
) -> GateDecision:
    """Decide whether `candidate` may replace the production model.

    The reference is the production model's report when there is one (it must be scored
    on the same holdout as the candidate: evaluate the current production model on the
    new holdout), otherwise the base-rate model's report (`base_rate_report`). The
    candidate passes only if every rule holds:

    1. its report and the reference's come from the same holdout (`holdout_digest`);
    2. its NE is at least `ne_margin` below the reference's NE;
    3. its calibration ratio is within `calibration_bounds`;
    4. its ECE is at most `max_ece`, when set.

    Every rule adds one reason, passed or not, so the decision reads as a full audit.
    """
    cfg = config or GateConfig()
    reference, against = (
        (production, "production") if production is not None else (base_rate_report, "base_rate")
    )
    label = "the production model" if against == "production" else "the base-rate model"
    reasons: list[str] = []
    passed = True

    if candidate.holdout_digest != reference.holdout_digest:
        passed = False
        reasons.append(
            f"The candidate ({candidate.n} rows) and {label} ({reference.n} rows) were not "
            "evaluated on the same holdout, so their NE cannot be compared."
        )

    ne_c, ne_r = candidate.normalized_entropy, reference.normalized_entropy
    if ne_c is None or ne_r is None:
        passed = False
        reasons.append("NE is undefined on this holdout (a single class); cannot gate.")
    else:
        improvement = ne_r - ne_c
        if improvement >= cfg.ne_margin:
            reasons.append(
                f"NE {ne_c:.5f} improves on {label}'s {ne_r:.5f} by {improvement:.5f}, "
                f"at least the required {cfg.ne_margin}."
            )
        else:
            passed = False
            reasons.append(
                f"NE {ne_c:.5f} does not improve on {label}'s {ne_r:.5f} by the required "
                f"{cfg.ne_margin} (improvement {improvement:.5f})."
            )

    low, high = cfg.calibration_bounds
    ratio = candidate.calibration_ratio
    if ratio is not None and low <= ratio <= high:
        reasons.append(
            f"Calibration ratio (mean prediction / observed positive rate) {ratio:.4f} is within "
            f"[{low}, {high}]."
        )
    else:
        passed = False
        shown = "undefined (no clicks in the holdout)" if ratio is None else f"{ratio:.4f}"
        reasons.append(
            f"Calibration ratio (mean prediction / observed positive rate) {shown} is outside "
            f"[{low}, {high}]."
        )

    if cfg.max_ece is not None:
        if candidate.ece <= cfg.max_ece:
            reasons.append(f"ECE {candidate.ece:.5f} is at most {cfg.max_ece}.")
        else:
            passed = False
            reasons.append(f"ECE {candidate.ece:.5f} exceeds the maximum {cfg.max_ece}.")

    return GateDecision(
        passed=passed,
        reasons=reasons,
        compared_against=against,
        candidate_ne=ne_c,
        reference_ne=ne_r,
    )


def _ratio_text(ratio: float | None) -> str:
    """A calibration ratio as a reader wants it in a reason: four decimals, or why not."""
    return "undefined (no positives in the holdout)" if ratio is None else f"{ratio:.4f}"
