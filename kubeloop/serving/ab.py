"""Online A/B evaluation of the canary against the primary on served, labelled traffic.

Input: one row per served impression with its variant, prediction, delayed label, latency
and whether the request failed. Output: per-variant figures and canary-minus-primary
deltas, each with a confidence interval, so a rollout decision rests on evidence rather
than on a point estimate."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

Z_95 = 1.959963984540054


class Interval(BaseModel):
    """A point estimate with a two-sided confidence interval."""

    estimate: float | None
    low: float | None
    high: float | None


class VariantStats(BaseModel):
    """What one variant did on the labelled requests it served."""

    requests: int
    labelled: int
    errors: int
    error_rate: float
    ctr: float | None
    mean_prediction: float | None
    calibration: Interval = Field(description="mean prediction / observed positive rate")
    logloss: Interval
    auc: Interval
    latency_ms: dict[str, float | None]


class ABResult(BaseModel):
    """Per-variant figures and the canary - primary deltas (negative logloss delta = canary better)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    variants: dict[str, VariantStats]
    deltas: dict[str, Interval]
    confidence: float = 0.95


def _clip(p: np.ndarray) -> np.ndarray:
    return np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)


def row_logloss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-row log loss; its mean is the log loss and its spread gives the interval."""
    p = _clip(p)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _mean_interval(values: np.ndarray) -> Interval:
    if len(values) == 0:
        return Interval(estimate=None, low=None, high=None)
    mean = float(values.mean())
    half = (
        Z_95 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else math.inf
    )
    return Interval(estimate=mean, low=mean - half, high=mean + half)


def auc_interval(y: np.ndarray, p: np.ndarray) -> Interval:
    """ROC AUC with the Hanley-McNeil standard error (no resampling, fine at these sizes)."""
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return Interval(estimate=None, low=None, high=None)
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y, p))
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (
        n_pos * n_neg
    )
    half = Z_95 * math.sqrt(max(var, 0.0))
    return Interval(estimate=auc, low=max(0.0, auc - half), high=min(1.0, auc + half))


def calibration_interval(y: np.ndarray, p: np.ndarray) -> Interval:
    """Mean prediction / observed positive rate, with a delta-method interval on the observed positive rate."""
    if len(y) == 0 or y.sum() == 0:
        return Interval(estimate=None, low=None, high=None)
    ctr, mean_p = float(y.mean()), float(p.mean())
    se_ctr = math.sqrt(ctr * (1 - ctr) / len(y))
    low_ctr, high_ctr = max(ctr - Z_95 * se_ctr, 1e-9), ctr + Z_95 * se_ctr
    return Interval(estimate=mean_p / ctr, low=mean_p / high_ctr, high=mean_p / low_ctr)


def _latency(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"p50": None, "p99": None, "mean": None}
    return {
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(values.mean()),
    }


def variant_stats(frame: pd.DataFrame) -> VariantStats:
    """Figures for one variant's rows (columns: prediction, label (NaN until it arrives),
    latency_ms, error)."""
    errors = (
        frame["error"].astype(bool).to_numpy() if "error" in frame else np.zeros(len(frame), bool)
    )
    ok = frame[~errors]
    labelled = ok[ok["label"].notna()]
    y = labelled["label"].to_numpy(dtype=np.float64)
    p = labelled["prediction"].to_numpy(dtype=np.float64)
    return VariantStats(
        requests=len(frame),
        labelled=len(labelled),
        errors=int(errors.sum()),
        error_rate=float(errors.mean()) if len(frame) else 0.0,
        ctr=float(y.mean()) if len(y) else None,
        mean_prediction=float(p.mean()) if len(p) else None,
        calibration=calibration_interval(y, p),
        logloss=_mean_interval(row_logloss(y, p)),
        auc=auc_interval(y, p),
        latency_ms=_latency(frame["latency_ms"].dropna().to_numpy(dtype=np.float64)),
    )


def _difference(a: Interval, b: Interval) -> Interval:
    """canary - primary for two independent estimates with symmetric normal intervals."""
    if a.estimate is None or b.estimate is None or None in (a.low, a.high, b.low, b.high):
        return Interval(estimate=None, low=None, high=None)
    half = math.hypot((a.high - a.low) / 2, (b.high - b.low) / 2)
    estimate = a.estimate - b.estimate
    return Interval(estimate=estimate, low=estimate - half, high=estimate + half)


def compare_variants(frame: pd.DataFrame) -> ABResult:
    """Per-variant stats for every variant in `frame["variant"]`, and canary - primary deltas
    of log loss, AUC, calibration, error rate and p99 latency ratio when both exist."""
    variants = {name: variant_stats(group) for name, group in frame.groupby("variant", sort=True)}
    deltas: dict[str, Interval] = {}
    if {"primary", "canary"} <= set(variants):
        canary, primary = variants["canary"], variants["primary"]
        deltas["logloss"] = _difference(canary.logloss, primary.logloss)
        deltas["auc"] = _difference(canary.auc, primary.auc)
        deltas["calibration"] = _difference(canary.calibration, primary.calibration)
        deltas["error_rate"] = _rate_difference(canary, primary)
        p99_c, p99_p = canary.latency_ms["p99"], primary.latency_ms["p99"]
        ratio = p99_c / p99_p if p99_c is not None and p99_p else None
        deltas["latency_p99_ratio"] = Interval(estimate=ratio, low=None, high=None)
    return ABResult(variants=variants, deltas=deltas)


def _rate_difference(a: VariantStats, b: VariantStats) -> Interval:
    if not a.requests or not b.requests:
        return Interval(estimate=None, low=None, high=None)
    ra, rb = a.error_rate, b.error_rate
    half = Z_95 * math.sqrt(ra * (1 - ra) / a.requests + rb * (1 - rb) / b.requests)
    return Interval(estimate=ra - rb, low=ra - rb - half, high=ra - rb + half)


def summary(result: ABResult) -> dict[str, Any]:
    """Compact JSON for the report's `serving.ab` section."""
    return {
        "deltas": {k: v.model_dump() for k, v in result.deltas.items()},
        "variants": {
            k: {
                "requests": v.requests,
                "labelled": v.labelled,
                "ctr": v.ctr,
                "calibration": v.calibration.model_dump(),
                "logloss": v.logloss.model_dump(),
                "auc": v.auc.model_dump(),
                "error_rate": v.error_rate,
                "latency_ms": v.latency_ms,
            }
            for k, v in result.variants.items()
        },
    }
