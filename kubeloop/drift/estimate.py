"""Label-free performance estimation from the model's own calibrated scores (CBPE-like).

If the scores are calibrated, P(y=1 | score p) = p, so every figure that depends only on
the labels' distribution given the scores has an expectation computed from the scores
alone (NannyML's confidence-based performance estimation makes the same assumption):

* expected log loss  = mean over rows of the binary entropy H(p) = -[p log p + (1-p) log(1-p)];
* expected base rate = mean p, so expected normalized entropy = expected log loss / H(mean p);
* expected AUC       = the expected number of correctly ordered (clicked, not clicked) pairs
  over the expected number of such pairs: sum_{i != j} p_i (1-p_j) [s_i > s_j] (ties half)
  / sum_{i != j} p_i (1-p_j), computed in O(n log n) from cumulative sums over the sorted
  scores (a ratio of expectations, the analytic form of sampling labels from p).

Rows may carry weights (the reference is reweighted to a window's hour mix rather than
subsampled, so every reference row counts).

Where it cannot work: the estimate sees only P(score). Covariate shift moves the scores
and the estimate follows; concept drift changes P(y | x) while the scores stay calibrated
to the old world, so the estimate does not move while the realized loss does. The
performance check on delayed labels (`kubeloop.drift.checks.PerformanceCheck`) is the
detector for that, and the bench shows the gap per scenario.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

EPS = 1e-7


def binary_entropy(p: np.ndarray | float) -> np.ndarray:
    """H(p) in nats, elementwise (0 at p in {0, 1})."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return -(q * np.log(q) + (1 - q) * np.log(1 - q))


@dataclass(frozen=True)
class PerformanceFigures:
    """Log loss, base rate, normalized entropy and AUC of one window (estimated or realized)."""

    n: int
    log_loss: float
    base_rate: float
    normalized_entropy: float
    auc: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _weights(n: int, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != n:
        raise ValueError(f"{len(w)} weights for {n} scores")
    return w


def expected_auc(scores: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    """Expected AUC of calibrated scores with labels y ~ Bernoulli(score) (see module doc);
    None when fewer than two rows or no expected positive or negative pair."""
    p = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if len(p) < 2:
        return None
    w = _weights(len(p), weights)
    order = np.argsort(p, kind="stable")
    p, w = p[order], w[order]
    pos, neg = w * p, w * (1 - p)
    # Group equal scores: pairs within a group count one half.
    values, start = np.unique(p, return_index=True)
    pos_g = np.add.reduceat(pos, start)
    neg_g = np.add.reduceat(neg, start)
    neg_below = np.concatenate([[0.0], np.cumsum(neg_g)[:-1]])
    ties = pos_g * neg_g - np.add.reduceat(pos * (1 - p) * w, start)  # i != j within a group
    correct = float((pos_g * neg_below).sum() + 0.5 * ties.sum())
    total = float(pos.sum() * neg.sum() - (w * w * p * (1 - p)).sum())
    if total <= 0 or len(values) < 1:
        return None
    return correct / total


def estimate(scores: np.ndarray, weights: np.ndarray | None = None) -> PerformanceFigures:
    """Expected figures of a window from its scores alone (calibration assumed)."""
    p = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), EPS, 1 - EPS)
    w = _weights(len(p), weights)
    total = float(w.sum())
    loss = float((w * binary_entropy(p)).sum() / total) if total > 0 else math.nan
    rate = float((w * p).sum() / total) if total > 0 else math.nan
    h = float(binary_entropy(rate)) if total > 0 else math.nan
    return _figures(len(p), loss, rate, h, expected_auc(p, w))


def _figures(n: int, loss: float, rate: float, h: float, auc: float | None) -> PerformanceFigures:
    """The figures of `n` rows with log loss `loss`, click rate `rate` (entropy `h`)."""
    return PerformanceFigures(
        n=n,
        log_loss=loss,
        base_rate=rate,
        normalized_entropy=loss / h if h > 0 else math.nan,
        auc=auc,
    )


def realized_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """The AUC of scores against 0/1 labels (Mann-Whitney with midranks); None without
    both classes."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    n1 = float(y.sum())
    n0 = float(len(y) - n1)
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def realized(scores: np.ndarray, labels: np.ndarray) -> PerformanceFigures:
    """The same figures measured against the labels."""
    p = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    loss = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(p) else math.nan
    rate = float(y.mean()) if len(y) else math.nan
    h = float(binary_entropy(rate)) if len(y) and 0 < rate < 1 else 0.0
    return _figures(len(p), loss, rate, h, realized_auc(p, y))


def excess_loss_z(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(realized - expected log loss, its z-score) under the scores' own calibration.

    Given calibrated scores, each row's loss is -log p with probability p and -log(1-p)
    otherwise: mean H(p), variance p(1-p) log(p/(1-p))^2. Labels that do not follow the
    scores any more (concept drift) make the realized loss exceed that expectation."""
    p = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    expected = binary_entropy(p)
    var = p * (1 - p) * np.log(p / (1 - p)) ** 2
    n = len(p)
    if n == 0:
        return 0.0, 0.0
    excess = float((loss - expected).mean())
    se = math.sqrt(float(var.sum())) / n
    return excess, excess / se if se > 0 else 0.0
