"""The anytime-valid statistics: the confidence sequence keeps its coverage when checked
after every batch (optional stopping), where the fixed-horizon interval does not; the
sequential SRM test catches a broken split and stays quiet on a fair one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kubeloop.serving.sequential import (
    confidence_sequence,
    cs_radius,
    expected_logloss,
    fixed_radius,
    per_impression_logloss,
    srm_log_bayes_factor,
    srm_test,
)

ALPHA = 0.05
SEQUENCES = 500


def paired_differences(sequences: int, n: int, seed: int):
    """Per-impression log-loss differences of two models of a ~5% CTR on the same
    impressions, and their true mean (from the click probabilities)."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-3.2, 0.9, (sequences, n))
    q = 1 / (1 + np.exp(-logit))
    production = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.3, (sequences, n)))))
    candidate = 1 / (1 + np.exp(-(1.1 * logit + rng.normal(0, 0.3, (sequences, n)))))
    truth = float((expected_logloss(q, candidate) - expected_logloss(q, production)).mean())
    y = (rng.random((sequences, n)) < q).astype(np.float64)
    return per_impression_logloss(y, candidate) - per_impression_logloss(y, production), truth


def running_bounds(d: np.ndarray, batch: int, first: int):
    n = np.arange(batch, d.shape[1] + 1, batch)
    n = n[n >= first]
    total = np.cumsum(d, axis=1)[:, n - 1]
    squares = np.cumsum(d * d, axis=1)[:, n - 1]
    mean = total / n
    sd = np.sqrt((squares - n * mean**2) / (n - 1))
    return n, mean, sd


def test_confidence_sequence_covers_under_optional_stopping():
    # 500 sequences of 10k paired impressions, checked after every batch of 100: the share
    # of sequences whose CS ever excludes the true mean stays within alpha + 3 MC sigmas.
    d, truth = paired_differences(SEQUENCES, 10_000, seed=1)
    n, mean, sd = running_bounds(d, batch=100, first=200)
    radius = cs_radius(n, sd, ALPHA, tuned_n=8000)
    ever_missed = (np.abs(mean - truth) > radius).any(axis=1).mean()
    mc = 3 * math.sqrt(ALPHA * (1 - ALPHA) / SEQUENCES)
    assert ever_missed <= ALPHA + mc

    # The fixed-horizon 95% interval re-checked the same way misses far more often (peeking)
    fixed = fixed_radius(n, sd, ALPHA)
    peeking = (np.abs(mean - truth) > fixed).any(axis=1).mean()
    assert peeking > 3 * ALPHA
    # ... while it is right at its one pre-set horizon
    assert (np.abs(mean[:, -1] - truth) > fixed[:, -1]).mean() <= ALPHA + mc


def test_confidence_sequence_matches_vectorised_radius_and_narrows():
    rng = np.random.default_rng(2)
    values = rng.normal(0.01, 0.1, 5000)
    cs = confidence_sequence(values, ALPHA, tuned_n=2000)
    radius = float(cs_radius(5000, values.std(ddof=1), ALPHA, 2000))
    assert cs.low == pytest.approx(values.mean() - radius)
    assert cs.high == pytest.approx(values.mean() + radius)
    # wider than the fixed interval at the same n (the price of anytime validity) ...
    assert radius > float(fixed_radius(5000, values.std(ddof=1), ALPHA))
    # ... and shrinking with n
    assert cs_radius(20_000, 0.1, ALPHA, 2000) < cs_radius(5000, 0.1, ALPHA, 2000)
    assert confidence_sequence(values[:1], ALPHA, 2000).low is None


def test_logloss_is_clipped_so_differences_are_bounded():
    worst = per_impression_logloss(np.array([1.0]), np.array([0.0]))[0]
    assert worst == pytest.approx(-math.log(1e-4))


def cumulative_srm_p(candidate_served: np.ndarray, share: float) -> np.ndarray:
    """Anytime p-value after each request, for sequences of 0/1 "served by the candidate"."""
    k = np.cumsum(candidate_served, axis=1)
    n = np.arange(1, candidate_served.shape[1] + 1)
    log_bf = srm_log_bayes_factor(k, n, share)
    return np.exp(-np.maximum.accumulate(np.maximum(log_bf, 0), axis=1))


@pytest.mark.parametrize("share", [0.05, 0.5])
def test_srm_quiet_on_a_fair_split(share):
    rng = np.random.default_rng(3)
    served = rng.random((SEQUENCES, 5000)) < share
    p = cumulative_srm_p(served, share)
    alpha = 0.01
    assert (p.min(axis=1) < alpha).mean() <= alpha + 3 * math.sqrt(alpha / SEQUENCES)


@pytest.mark.parametrize("share, actual", [(0.5, 0.45), (0.25, 0.2), (0.05, 0.08)])
def test_srm_catches_a_broken_split(share, actual):
    rng = np.random.default_rng(4)
    served = rng.random((200, 5000)) < actual
    p = cumulative_srm_p(served, share)
    assert (p.min(axis=1) < 0.001).mean() >= 0.9


def test_srm_test_carries_its_running_maximum_and_handles_fixed_splits():
    first, running = srm_test(420, 1000, 50, alpha=0.001)
    assert first.mismatch and first.p_value < 0.001
    # a later, fair-looking check of the same step keeps the earlier evidence
    later, _ = srm_test(5000, 10_000, 50, alpha=0.001, previous_max_log_bf=running)
    assert later.mismatch and later.p_value == pytest.approx(first.p_value)
    fair, _ = srm_test(502, 1000, 50, alpha=0.001)
    assert not fair.mismatch and fair.p_value == 1.0
    # shadow: the candidate must serve nothing; 100%: everything
    assert not srm_test(0, 500, 0, 0.001)[0].mismatch
    assert srm_test(1, 500, 0, 0.001)[0].mismatch
    assert srm_test(499, 500, 100, 0.001)[0].mismatch
