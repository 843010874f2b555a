"""Anytime-valid statistics for rollout decisions: they stay valid when checked after every
batch of labels ("peeking"), which a fixed-horizon 95% interval does not.

Quality: a confidence sequence (CS) on the mean of the paired per-impression log-loss
difference d_i = ll_i(candidate) - ll_i(production), both models scored on the same
impression (the non-serving one in shadow). We use the two-sided *asymptotic* confidence
sequence of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central limit
theory and asymptotic confidence sequences" (2021, arXiv:2103.06476, eq. 9), the one
GrowthBook's gbstats uses for its sequential tests:

    mean_t +- sd_t * sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) )

a normal mixture (Robbins) boundary with the running sample standard deviation `sd_t`.
`rho` sets where the boundary is tightest: rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / t*
makes it tightest near t* labelled impressions (`tuned_n`). The sequence holds
*simultaneously for all t* with probability >= 1 - alpha asymptotically; its coverage under
optional stopping is checked by simulation in tests/test_sequential.py.

Why not a library: `confseq` (Howard & Ramdas) ships no wheel on PyPI (a C++/Boost build);
GrowthBook's `gbstats` 0.8.0 has this very boundary (frequentist/tests.py,
SequentialTwoSidedTTest, "eq 9 in Waudby-Smith et al.") but only for two independent
samples, not for paired differences, its SRM check is a fixed-horizon chi-squared test, and
it pins numpy<2 and pandas<2. The formula is a few lines; tests/test_sequential.py checks
its coverage under optional stopping by simulation.

Predictions are clipped to [1e-4, 1 - 1e-4] before the log, so one per-impression loss is
at most -log(1e-4) ~= 9.2 and the difference is bounded by +-9.2: a single confident miss
cannot dominate the variance estimate (models here predict within [1e-3, 0.5] anyway, so
the clip changes no per-impression loss of the demo's models).

Margins are relative: on the same impressions both models' normalized entropy (NE) share
one denominator (the entropy of the observed positive rate), so a relative NE margin m is the same
relative log-loss margin, and "candidate NE at most (1 + m) x production NE" reads as
mean(d) <= m x mean(ll production). The margin in log-loss units is estimated from the
paired production losses (a relative error of ~1% of a 0.5% margin at these sizes).

Split: a sequential sample-ratio-mismatch (SRM) test of the candidate's served share
against the set percent: a Beta-binomial mixture likelihood ratio (a mixture SPRT). Under
H0 (share = percent) the ratio is a nonnegative martingale, so by Ville's inequality
P(sup_t BF_t >= 1/alpha) <= alpha and p_t = min(1, 1/max_{s<=t} BF_s) is an anytime-valid
p-value (Statsig and GrowthBook use mixture tests of this kind for SRM).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

LOGLOSS_CLIP = 1e-4


def clip_probability(p: Any, eps: float = LOGLOSS_CLIP) -> np.ndarray:
    """Predictions as float64 clipped to [eps, 1 - eps] (see the module docstring)."""
    return np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)


def per_impression_logloss(y: Any, p: Any) -> np.ndarray:
    """-[y log p + (1 - y) log(1 - p)] per impression, with p clipped."""
    y = np.asarray(y, dtype=np.float64)
    p = clip_probability(p)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def expected_logloss(q: Any, p: Any) -> np.ndarray:
    """The true expected log loss of predicting p where the click probability is q:
    -[q log p + (1 - q) log(1 - p)] (the oracle's view of a model)."""
    q = np.asarray(q, dtype=np.float64)
    p = clip_probability(p)
    return -(q * np.log(p) + (1 - q) * np.log1p(-p))


def mixture_rho(alpha: float, tuned_n: float) -> float:
    """The mixture's rho that makes the boundary tightest near `tuned_n` observations."""
    log_a = -2 * math.log(alpha)
    return math.sqrt((log_a + math.log(log_a + 1)) / tuned_n)


def cs_radius(n: Any, sd: Any, alpha: float, tuned_n: float) -> np.ndarray:
    """Half-width of the asymptotic confidence sequence after `n` observations with running
    standard deviation `sd` (vectorised over arrays of n and sd; inf where n < 2)."""
    n = np.asarray(n, dtype=np.float64)
    sd = np.asarray(sd, dtype=np.float64)
    rho2 = mixture_rho(alpha, tuned_n) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t_rho2 = n * rho2
        radius = sd * np.sqrt(
            2 * (t_rho2 + 1) / (n * n * rho2) * np.log(np.sqrt(t_rho2 + 1) / alpha)
        )
    return np.where(n >= 2, radius, np.inf)


def fixed_radius(n: Any, sd: Any, alpha: float) -> np.ndarray:
    """Half-width of the fixed-horizon normal interval (valid at one pre-set n only), for
    comparison."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - alpha / 2)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n >= 2, z * np.asarray(sd, dtype=np.float64) / np.sqrt(n), np.inf)


class ConfidenceSequence(BaseModel):
    """The confidence sequence of a mean at its current sample size."""

    model_config = ConfigDict(extra="forbid")

    n: int
    estimate: float | None
    low: float | None
    high: float | None
    sd: float | None
    alpha: float
    tuned_n: int
    method: str = "asymptotic normal-mixture CS (Waudby-Smith et al. 2021)"


def confidence_sequence(values: Any, alpha: float, tuned_n: int) -> ConfidenceSequence:
    """The (1 - alpha) asymptotic confidence sequence of the mean of `values`, valid
    simultaneously over every prefix length (so it may be checked after every batch)."""
    values = np.asarray(values, dtype=np.float64)
    n = int(values.size)
    if n < 2:
        mean = float(values.mean()) if n else None
        return ConfidenceSequence(
            n=n, estimate=mean, low=None, high=None, sd=None, alpha=alpha, tuned_n=tuned_n
        )
    mean = float(values.mean())
    sd = float(values.std(ddof=1))
    radius = float(cs_radius(n, sd, alpha, tuned_n))
    return ConfidenceSequence(
        n=n,
        estimate=mean,
        low=mean - radius,
        high=mean + radius,
        sd=sd,
        alpha=alpha,
        tuned_n=tuned_n,
    )


class SRMResult(BaseModel):
    """The sequential sample-ratio-mismatch test of one step's observed split."""

    model_config = ConfigDict(extra="forbid")

    candidate: int = Field(description="requests the candidate served in this step")
    total: int = Field(description="requests served in this step")
    expected_share: float
    observed_share: float | None
    bayes_factor: float
    p_value: float = Field(description="anytime-valid: 1 / the largest Bayes factor so far")
    mismatch: bool
    method: str = "Beta-binomial mixture SPRT (Ville's inequality)"


def srm_log_bayes_factor(
    candidate: Any, total: Any, share: Any, concentration: float = 100.0
) -> np.ndarray:
    """log BF of "share != `share`" (a Beta(c*share, c*(1-share)) mixture over the share)
    against "share == `share`" after `candidate` of `total` requests went to the candidate.
    Vectorised (also over `share`, for 0 < share < 1). `concentration` c sets the mixture's
    spread: at c = 100 its prior sd of the share is ~0.05 at an even split, so it is most
    sensitive to mismatches of a few points, the size a broken router or a crashing
    variant produces."""
    from scipy.special import betaln

    k = np.asarray(candidate, dtype=np.float64)
    n = np.asarray(total, dtype=np.float64)
    share = np.asarray(share, dtype=np.float64)
    a, b = concentration * share, concentration * (1 - share)
    log_mixture = betaln(a + k, b + n - k) - betaln(a, b)
    log_null = k * np.log(share) + (n - k) * np.log1p(-share)
    return log_mixture - log_null


def srm_test(
    candidate: int,
    total: int,
    percent: float,
    alpha: float,
    previous_max_log_bf: float = 0.0,
    concentration: float = 100.0,
) -> tuple[SRMResult, float]:
    """Test the served split of a step against the set `percent`; returns the result and the
    running maximum of log BF to carry into the next check of the same step.

    At 0% (shadow) or 100% the split is deterministic: any request on the wrong side is a
    mismatch (p-value 0)."""
    observed = candidate / total if total else None
    share = percent / 100
    if share <= 0 or share >= 1:
        wrong = candidate if share <= 0 else total - candidate
        mismatch = wrong > 0
        result = SRMResult(
            candidate=candidate,
            total=total,
            expected_share=share,
            observed_share=observed,
            bayes_factor=math.inf if mismatch else 1.0,
            p_value=0.0 if mismatch else 1.0,
            mismatch=mismatch,
        )
        return result, math.inf if mismatch else previous_max_log_bf
    log_bf = float(srm_log_bayes_factor(candidate, total, share, concentration))
    running = max(previous_max_log_bf, log_bf)
    p_value = min(1.0, math.exp(-running))
    result = SRMResult(
        candidate=candidate,
        total=total,
        expected_share=share,
        observed_share=observed,
        bayes_factor=math.exp(min(log_bf, 700.0)),
        p_value=p_value,
        mismatch=p_value < alpha,
    )
    return result, running
