"""Offline evaluation of click probabilities on a holdout.

Definitions used throughout (they are also recorded in every report):

* log loss: mean binary cross-entropy in nats, predictions clipped to [1e-15, 1 - 1e-15].
* normalized entropy (NE): log loss divided by the entropy of the base rate, where the base
  rate is the mean label **of the evaluated set itself**. NE = 1 is what the best constant
  predictor for that set scores; lower is better. Because the base rate comes from the
  evaluated labels, NEs of different models are comparable only on the same set (the gate
  checks that with `holdout_digest`).
* calibration ratio: mean prediction / observed click rate (1 is perfectly calibrated on
  average; above 1 over-predicts).
* ECE: expected calibration error over equal-mass bins of the predictions (each bin holds
  about the same number of rows; tied predictions stay in one bin), the row-weighted mean
  of |mean prediction - observed rate| per bin. Equal-mass, because CTR predictions crowd
  near 0 and equal-width bins would leave most bins empty.
* PR-AUC: average precision (the mean of precision at each positive's rank), the summary
  of precision against recall that stays informative when positives are rare.
* decision figures (a use case with a `DecisionPolicy`): at a threshold chosen elsewhere
  (the validation split's score quantile for the alert budget), the alert rate, precision,
  recall and expected cost (the value of missed positives plus a review cost per alert),
  and the best recall at the policy's minimum precision.
* oracle metrics: the same scores for the use case's oracle column (a synthetic source's
  true probability), the best any model can do on this set.

A metric that is undefined for the data (AUC of a set with one class, NE with a base rate
of 0 or 1) is reported as null instead of raising.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from kubeloop.usecase import UseCase, resolve_use_case

EPS = 1e-15
DEFAULT_ECE_BINS = 10
MISSING_SLICE = "(missing)"


class ReliabilityBin(BaseModel):
    """One equal-mass bin of the reliability diagram."""

    model_config = ConfigDict(extra="forbid")

    lower: float
    upper: float
    n: int
    mean_prediction: float
    observed_rate: float


class SliceMetrics(BaseModel):
    """Scores on the rows of one slice value (e.g. device=mobile)."""

    model_config = ConfigDict(extra="forbid")

    n: int
    n_positive: int
    base_rate: float
    mean_prediction: float
    auc: float | None
    log_loss: float
    normalized_entropy: float | None
    calibration_ratio: float | None
    oracle_auc: float | None = None


class DecisionMetrics(BaseModel):
    """A decision threshold's figures on the evaluated set (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    threshold: float
    alert_budget: float
    alert_rate: float
    alerts: int
    precision: float | None
    recall: float | None
    min_precision: float
    recall_at_min_precision: float | None
    missed_value: float
    review_cost: float
    expected_cost: float
    expected_cost_per_row: float
    oracle_expected_cost: float | None = None


class EvaluationReport(BaseModel):
    """Every offline figure of one model on one evaluation set (JSON via model_dump)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    n: int
    n_positive: int
    holdout_digest: str
    base_rate: float
    base_rate_definition: str = "mean label of the evaluated set"
    mean_prediction: float
    auc: float | None
    log_loss: float
    normalized_entropy: float | None
    calibration_ratio: float | None
    ece: float
    ece_bins: int
    ece_binning: Literal["equal_mass"] = "equal_mass"
    reliability: list[ReliabilityBin]
    oracle_auc: float | None = None
    oracle_log_loss: float | None = None
    oracle_normalized_entropy: float | None = None
    pr_auc: float | None = None
    oracle_pr_auc: float | None = None
    decision: DecisionMetrics | None = None
    slices: dict[str, dict[str, SliceMetrics]] = {}


def _as_labels(y: object) -> np.ndarray:
    arr = np.asarray(y, dtype=np.float64).ravel()
    if not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return arr


def _as_probs(p: object, n: int, what: str) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64).ravel()
    if arr.shape[0] != n:
        raise ValueError(f"{what} has {arr.shape[0]} values for {n} labels")
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr > 1).any():
        raise ValueError(f"{what} must be finite probabilities in [0, 1]")
    return arr


def log_loss(y_true: object, p_pred: object) -> float:
    """Mean binary cross-entropy in nats (predictions clipped to [1e-15, 1 - 1e-15])."""
    y = _as_labels(y_true)
    p = np.clip(_as_probs(p_pred, len(y), "p_pred"), EPS, 1 - EPS)
    if len(y) == 0:
        raise ValueError("log loss of an empty set")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def binary_entropy(rate: float) -> float:
    """Entropy in nats of a Bernoulli(rate); 0 at rate 0 or 1."""
    if rate <= 0 or rate >= 1:
        return 0.0
    return float(-(rate * np.log(rate) + (1 - rate) * np.log1p(-rate)))


def roc_auc(y_true: object, p_pred: object) -> float | None:
    """ROC AUC, or None when the labels hold a single class."""
    from sklearn.metrics import roc_auc_score

    y = _as_labels(y_true)
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, _as_probs(p_pred, len(y), "p_pred")))


def pr_auc(y_true: object, p_pred: object) -> float | None:
    """Average precision (area under the precision-recall curve, step-wise), or None
    without a positive."""
    from sklearn.metrics import average_precision_score

    y = _as_labels(y_true)
    if y.sum() == 0:
        return None
    return float(average_precision_score(y, _as_probs(p_pred, len(y), "p_pred")))


def recall_at_precision(y_true: object, p_pred: object, min_precision: float) -> float | None:
    """The highest recall of any threshold whose precision is at least `min_precision`
    (0 when none reaches it), or None without a positive."""
    from sklearn.metrics import precision_recall_curve

    y = _as_labels(y_true)
    if y.sum() == 0:
        return None
    precision, recall, _ = precision_recall_curve(y, _as_probs(p_pred, len(y), "p_pred"))
    ok = precision >= min_precision
    return float(recall[ok].max()) if ok.any() else 0.0


def threshold_for_budget(p_pred: object, alert_budget: float) -> float:
    """The score at or above which a share `alert_budget` of `p_pred` falls (the decision
    threshold a fixed review capacity affords)."""
    p = np.asarray(p_pred, dtype=np.float64).ravel()
    if len(p) == 0:
        raise ValueError("a threshold needs scores")
    k = max(int(np.ceil(alert_budget * len(p))), 1)
    return float(np.partition(p, len(p) - k)[len(p) - k])


def decision_metrics(
    y_true: object,
    p_pred: object,
    threshold: float,
    policy: Any,
    values: object | None = None,
    oracle: object | None = None,
) -> DecisionMetrics:
    """Figures of alerting on `p_pred >= threshold` under `policy` (a
    `kubeloop.usecase.DecisionPolicy`); `values` are what each missed positive costs
    (1 each when None). `oracle` adds the oracle's expected cost at its own threshold for
    the same alert rate."""
    y = _as_labels(y_true)
    p = _as_probs(p_pred, len(y), "p_pred")
    v = np.ones(len(y)) if values is None else np.asarray(values, dtype=np.float64).ravel()

    def cost(alert: np.ndarray) -> float:
        return float((v * y * ~alert).sum() + policy.review_cost * alert.sum())

    alert = p >= threshold
    alerts, hits, positives = int(alert.sum()), float((y * alert).sum()), float(y.sum())
    total = cost(alert)
    oracle_cost = None
    if oracle is not None:
        o = _as_probs(oracle, len(y), "oracle")
        share = max(alerts / len(y), 1e-12)
        oracle_cost = cost(o >= threshold_for_budget(o, min(share, 1.0)))
    return DecisionMetrics(
        threshold=float(threshold),
        alert_budget=float(policy.alert_budget),
        alert_rate=alerts / len(y),
        alerts=alerts,
        precision=hits / alerts if alerts else None,
        recall=hits / positives if positives else None,
        min_precision=float(policy.min_precision),
        recall_at_min_precision=recall_at_precision(y, p, policy.min_precision),
        missed_value=float((v * y * ~alert).sum()),
        review_cost=float(policy.review_cost * alerts),
        expected_cost=total,
        expected_cost_per_row=total / len(y),
        oracle_expected_cost=oracle_cost,
    )


def _ne(loss: float, base_rate: float) -> float | None:
    h = binary_entropy(base_rate)
    return loss / h if h > 0 else None


def reliability_bins(
    y_true: object, p_pred: object, n_bins: int = DEFAULT_ECE_BINS
) -> list[ReliabilityBin]:
    """Equal-mass bins of the predictions (bin edges at prediction quantiles; equal
    predictions always share a bin, so there may be fewer than `n_bins`)."""
    y = _as_labels(y_true)
    p = _as_probs(p_pred, len(y), "p_pred")
    if len(y) == 0:
        return []
    inner = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)[1:-1]))
    which = np.searchsorted(inner, p, side="right")
    bins = []
    for b in range(len(inner) + 1):
        mask = which == b
        if not mask.any():
            continue
        bins.append(
            ReliabilityBin(
                lower=float(p[mask].min()),
                upper=float(p[mask].max()),
                n=int(mask.sum()),
                mean_prediction=float(p[mask].mean()),
                observed_rate=float(y[mask].mean()),
            )
        )
    return bins


def expected_calibration_error(
    y_true: object, p_pred: object, n_bins: int = DEFAULT_ECE_BINS
) -> float:
    """Row-weighted mean |mean prediction - observed rate| over equal-mass bins."""
    bins = reliability_bins(y_true, p_pred, n_bins)
    total = sum(b.n for b in bins)
    return float(sum(b.n * abs(b.mean_prediction - b.observed_rate) for b in bins) / total)


def holdout_digest(y_true: object) -> str:
    """Fingerprint of an evaluation set's labels, so reports can be checked to come from
    the same holdout before they are compared."""
    y = _as_labels(y_true).astype(np.int8)
    return hashlib.sha256(len(y).to_bytes(8, "little") + y.tobytes()).hexdigest()[:16]


def _scores(y: np.ndarray, p: np.ndarray) -> dict[str, float | int | None]:
    """The figures a report and each of its slices both carry (the fields of SliceMetrics
    but oracle_auc)."""
    rate = float(y.mean())
    loss = log_loss(y, p)
    return {
        "n": len(y),
        "n_positive": int(y.sum()),
        "base_rate": rate,
        "mean_prediction": float(p.mean()),
        "auc": roc_auc(y, p),
        "log_loss": loss,
        "normalized_entropy": _ne(loss, rate),
        "calibration_ratio": float(p.mean() / rate) if rate > 0 else None,
    }


def _slice_metrics(y: np.ndarray, p: np.ndarray, oracle: np.ndarray | None) -> SliceMetrics:
    return SliceMetrics(
        **_scores(y, p), oracle_auc=roc_auc(y, oracle) if oracle is not None else None
    )


def evaluate(
    y_true: object,
    p_pred: object,
    oracle: object | None = None,
    slices: Mapping[str, object] | None = None,
    *,
    n_bins: int = DEFAULT_ECE_BINS,
    name: str | None = None,
) -> EvaluationReport:
    """Score predicted click probabilities against labels (see the module docstring).

    `slices` maps a slice name (e.g. "device") to one value per row; each distinct value
    gets its own `SliceMetrics` (missing values are grouped as "(missing)"). `oracle`
    (true probabilities) adds the oracle's scores overall and per slice.
    """
    y = _as_labels(y_true)
    if len(y) == 0:
        raise ValueError("cannot evaluate an empty set")
    p = _as_probs(p_pred, len(y), "p_pred")
    oracle = _as_probs(oracle, len(y), "oracle") if oracle is not None else None
    scores = _scores(y, p)
    report = EvaluationReport(
        name=name,
        holdout_digest=holdout_digest(y),
        **scores,
        ece=expected_calibration_error(y, p, n_bins),
        ece_bins=n_bins,
        reliability=reliability_bins(y, p, n_bins),
    )
    report.pr_auc = pr_auc(y, p)
    if oracle is not None:
        oracle_loss = log_loss(y, oracle)
        report.oracle_pr_auc = pr_auc(y, oracle)
        report.oracle_auc = roc_auc(y, oracle)
        report.oracle_log_loss = oracle_loss
        report.oracle_normalized_entropy = _ne(oracle_loss, scores["base_rate"])
    for slice_name, values in (slices or {}).items():
        keys = pd.Series(np.asarray(values, dtype=object).ravel())
        if len(keys) != len(y):
            raise ValueError(f"slice {slice_name!r} has {len(keys)} values for {len(y)} labels")
        keys = keys.where(keys.notna(), MISSING_SLICE).astype(str).to_numpy()
        per_value = {}
        for value in sorted(set(keys)):
            mask = keys == value
            per_value[value] = _slice_metrics(
                y[mask], p[mask], oracle[mask] if oracle is not None else None
            )
        report.slices[slice_name] = per_value
    return report


def base_rate_report(
    train_labels: object,
    holdout_labels: object,
    oracle: object | None = None,
    slices: Mapping[str, object] | None = None,
) -> EvaluationReport:
    """Scores of the base-rate model: every holdout row predicted at the training label
    rate. The reference a first model must beat when nothing is in production."""
    train_rate = float(_as_labels(train_labels).mean())
    y = _as_labels(holdout_labels)
    return evaluate(y, np.full(len(y), train_rate), oracle, slices, name="base_rate")


def slice_columns(
    holdout: pd.DataFrame, train: pd.DataFrame, *, use_case: UseCase | str | None = None
) -> dict[str, np.ndarray]:
    """Slice values per holdout row: the use case's slice columns (`MetricsSpec.slices`),
    and for each of its `seen_entities` whether the entity appears in the training set
    ("seen") or not ("new")."""
    use_case = resolve_use_case(use_case)
    out: dict[str, np.ndarray] = {}
    for column in use_case.metrics.slices:
        if column in holdout.columns:
            out[column] = holdout[column].astype(object).to_numpy()
    for entity in use_case.metrics.seen_entities:
        key = use_case.entity(entity).join_key
        if key in holdout.columns and key in train.columns:
            seen = holdout[key].isin(set(train[key].dropna().unique())).to_numpy()
            out[entity] = np.where(seen, "seen", "new").astype(object)
    return out


def evaluate_frame(
    holdout: pd.DataFrame,
    p_pred: object,
    train: pd.DataFrame | None = None,
    *,
    n_bins: int = DEFAULT_ECE_BINS,
    name: str | None = None,
    use_case: UseCase | str | None = None,
    threshold: float | None = None,
) -> EvaluationReport:
    """`evaluate` on a holdout frame: labels from the use case's label column, the oracle
    from its oracle column when it has one and the frame holds it, and
    `slice_columns(holdout, train)` when `train` is given. With a `threshold` and a use
    case with a decision policy, the report's `decision` figures at that threshold."""
    use_case = resolve_use_case(use_case)
    column = use_case.events.oracle
    oracle = holdout[column].to_numpy() if column and column in holdout.columns else None
    slices = slice_columns(holdout, train, use_case=use_case) if train is not None else None
    label = holdout[use_case.events.label].to_numpy()
    report = evaluate(label, p_pred, oracle, slices, n_bins=n_bins, name=name)
    policy = use_case.metrics.decision
    if policy is not None and threshold is not None:
        values = holdout[policy.value_column].to_numpy() if policy.value_column else None
        report.decision = decision_metrics(label, p_pred, threshold, policy, values, oracle)
    return report


def write_metrics(
    report: EvaluationReport | Mapping[str, EvaluationReport], out_dir: str | Path
) -> Path:
    """Write `metrics.json` (one report, or several keyed by model name) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(report, EvaluationReport):
        data = report.model_dump(mode="json")
    else:
        data = {k: r.model_dump(mode="json") for k, r in report.items()}
    path = out / "metrics.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


__all__ = [
    "DecisionMetrics",
    "EvaluationReport",
    "ReliabilityBin",
    "SliceMetrics",
    "base_rate_report",
    "binary_entropy",
    "decision_metrics",
    "evaluate",
    "evaluate_frame",
    "expected_calibration_error",
    "holdout_digest",
    "log_loss",
    "pr_auc",
    "recall_at_precision",
    "reliability_bins",
    "roc_auc",
    "slice_columns",
    "threshold_for_budget",
    "write_metrics",
]
