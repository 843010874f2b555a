"""Data-quality checks of one serving window, per feature, against the reference sample.

Four kinds of finding, each a rate over the window's rows with its own tolerance:

* `unseen`       categorical values never seen in the reference (a new country, a broken
                 upstream enum), beyond the rate the tolerance allows;
* `null`         missing values, beyond the reference's own missing rate + tolerance;
* `out_of_range` numeric values outside the reference's [min, max];
* `schema`       request-schema violations recorded when the rows came in (a model input
                 absent from the request, a number that is not a number).

A finding needs its rate above the tolerance and a one-sided binomial test (is the true
rate above the tolerance?) below `p_val`, so a few odd rows in a small window are not
an alert. The alert is of kind `data_quality`; the retrain policy ignores it by default
(broken data is fixed upstream, not learnt).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kubeloop.drift.checks import (
    MISSING_CATEGORY,
    CheckResult,
    FrameKeys,
    factorized_keys,
    numeric_block,
)
from kubeloop.drift.config import DataQualityConfig

KINDS = ("unseen", "null", "out_of_range", "schema")


def _binomial_sf(k: int, n: int, rate: float) -> float:
    """P(X >= k) for X ~ Binomial(n, rate)."""
    if k <= 0:
        return 1.0
    if rate <= 0:
        return 0.0
    from scipy.stats import binom

    return float(binom.sf(k - 1, n, rate))


def _numeric(values: pd.Series) -> np.ndarray:
    if values.dtype.kind in "fiu":  # numbers already: what to_numeric would return
        out = values.to_numpy(dtype=np.float64)
        return np.where(np.isfinite(out), out, np.nan)
    out = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isfinite(out), out, np.nan)


def schema_violations(
    instance: Mapping[str, Any], columns: Sequence[str], numeric: set[str]
) -> list[str]:
    """The model inputs `instance` lacks or carries with the wrong type (a numeric input
    that is not a number, a categorical one that is a list or a mapping)."""
    bad = []
    for col in columns:
        if col not in instance:
            bad.append(col)
            continue
        value = instance[col]
        if value is None:
            continue
        if col in numeric:
            if isinstance(value, bool) or not isinstance(value, int | float):
                try:
                    float(value)
                except (TypeError, ValueError):
                    bad.append(col)
        elif isinstance(value, list | dict):
            bad.append(col)
    return bad


class DataQualityCheck:
    """Per-feature rates of one window against the reference (see module doc)."""

    def __init__(
        self,
        reference: pd.DataFrame,
        categorical: Sequence[str],
        config: DataQualityConfig,
        exclude: Sequence[str] = (),
    ):
        self.config = config
        self.columns = [c for c in reference.columns if c not in set(exclude)]
        self.categorical = [c for c in self.columns if c in set(categorical)]
        self.numeric = [c for c in self.columns if c not in set(self.categorical)]
        self.vocab = {
            c: set(factorized_keys(reference[c])[1]) - {MISSING_CATEGORY} for c in self.categorical
        }
        self.null_rate = {c: float(reference[c].isna().mean()) for c in self.columns}
        self.bounds: dict[str, tuple[float, float]] = {}
        for c in self.numeric:
            values = _numeric(reference[c])
            finite = values[np.isfinite(values)]
            if finite.size:
                self.bounds[c] = (float(finite.min()), float(finite.max()))

    def run(
        self,
        window: pd.DataFrame,
        violations: Mapping[str, int] | None = None,
        factorized: FrameKeys | None = None,
    ) -> CheckResult:
        """Check the window's rows; `violations` counts schema violations per column;
        `factorized`: the window's `FrameKeys`, when the caller shares them."""
        factorized = factorized if factorized is not None else FrameKeys(window)
        cfg = self.config
        n = len(window)
        result = CheckResult("data_quality", n=n, threshold=cfg.p_val)
        checks: list[dict[str, Any]] = []

        def add(feature: str, kind: str, count: int, tolerance: float, base: float = 0.0):
            rate = count / n if n else 0.0
            bar = min(1.0, base + tolerance)
            p = _binomial_sf(count, n, bar) if rate > bar else 1.0
            checks.append(
                {
                    "feature": feature,
                    "check": kind,
                    "count": int(count),
                    "rate": rate,
                    "reference_rate": base,
                    "tolerance": tolerance,
                    "p_value": p,
                    "failed": bool(rate > bar and p < cfg.p_val),
                }
            )

        present_columns = set(window.columns)
        # The numeric columns that hold numbers (the common window), counted as one block:
        # missing (NaN; an infinity is not missing) and finite values out of range.
        at, raw = numeric_block(window, self.numeric, finite=False)
        lows = np.array([self.bounds.get(c, (np.nan, np.nan))[0] for c in at], dtype=np.float64)
        highs = np.array([self.bounds.get(c, (np.nan, np.nan))[1] for c in at], dtype=np.float64)
        block_nulls = np.isnan(raw).sum(axis=0).tolist()
        with np.errstate(invalid="ignore"):
            block_outside = (np.isfinite(raw) & ((raw < lows) | (raw > highs))).sum(axis=0).tolist()
        for c in self.columns:
            present = c in present_columns
            if c in at:
                add(c, "null", int(block_nulls[at[c]]), cfg.max_null_increase, self.null_rate[c])
                if c in self.bounds:
                    add(c, "out_of_range", int(block_outside[at[c]]), cfg.max_out_of_range_rate)
                continue
            series = window[c] if present else None
            # pd.isna of the column's values: what Series.isna does, without a Series.
            nulls = int(pd.isna(series.to_numpy()).sum()) if series is not None else n
            add(c, "null", nulls, cfg.max_null_increase, self.null_rate[c])
            if series is None:
                continue
            if c in self.vocab:
                codes, keys = factorized(c)
                new = np.array([k not in self.vocab[c] for k in keys[:-1]] + [False])
                unseen = int(new[codes].sum())
                add(c, "unseen", unseen, cfg.max_unseen_rate)
            elif c in self.bounds:
                lo, hi = self.bounds[c]
                values = _numeric(series)
                finite = values[np.isfinite(values)]
                outside = int(((finite < lo) | (finite > hi)).sum())
                add(c, "out_of_range", outside, cfg.max_out_of_range_rate)
        for c, count in sorted((violations or {}).items()):
            add(c, "schema", int(count), cfg.max_schema_violation_rate)
        failed = [c for c in checks if c["failed"]]
        failed.sort(key=lambda c: (c["p_value"], -c["rate"]))
        result.details = {
            "checks": checks,
            "failed": failed,
            "reference_bounds": {c: list(b) for c, b in self.bounds.items()},
        }
        if failed:
            result.is_drift = True
            result.features = list(dict.fromkeys(f"{c['feature']}:{c['check']}" for c in failed))
            result.p_value = failed[0]["p_value"]
            result.statistic = failed[0]["rate"]
        else:
            worst = min(checks, key=lambda c: c["p_value"], default=None)
            result.p_value = worst["p_value"] if worst else 1.0
            result.statistic = worst["rate"] if worst else 0.0
        if not math.isfinite(result.p_value):
            result.p_value = 1.0
        return result
