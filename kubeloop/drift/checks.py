"""The three drift checks: traffic in, the matrices a `DriftDetector` tests, a `CheckResult` out.

The checks turn traffic into those matrices:

* `FeatureDriftCheck` — model inputs. Categorical columns (`kubeloop.schema.
  CATEGORICAL_FEATURES` + `advertiser_id`) are encoded with the reference's vocabulary:
  each category seen at least `min_category_count` times in the reference gets its own
  code; rarer and unseen categories share the reserved code 0 ("other"); a missing value
  is the category "<missing>". Missing numeric values are imputed with the reference
  median on both sides (the same fill for reference and window, so imputation cannot
  create drift by itself; a surge of missing values shows as a spike at the median).
* `PredictionDriftCheck` — KS on the model's scores against reference scores.
* `PerformanceCheck` — once labels arrive: calibration (mean prediction / observed CTR
  outside bounds, with a binomial z-test so a small window's noise does not alert) and
  normalized entropy (log loss divided by the entropy of the window's click rate, against
  the reference's). Raw log loss moves with the base rate, which varies through the day,
  so it is reported but the decision is on normalized entropy.

Context-matched reference (`stratify_by`, default "hour"). Ad traffic is not stationary
within a day: a window of 2,000 events covers about an hour, while the reference covers
whole days. Comparing an hour of traffic with a whole day flags every feature that moves
with the hour (hour itself, recency features, the score). So for every window the
reference rows are drawn to reproduce the window's mix of the stratification column (the
largest sample that fits), and that column is not tested itself. Measured on the demo
lake this removes the daily-cycle false alarms; `stratify_by=None` turns it off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kubeloop.drift.detectors.base import DriftDetector, DriftError
from kubeloop.training.transform import category_key as model_category_key

OTHER_CODE = 0
MISSING_CATEGORY = "<missing>"


def category_key(value: Any) -> str:
    """Canonical text of a category, exactly as the model's transform encodes it; missing
    values (None, NaN, pd.NA) are `MISSING_CATEGORY`."""
    key = model_category_key(value)
    return MISSING_CATEGORY if key is None else key


def _numeric(series: pd.Series) -> np.ndarray:
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    values = values.copy()
    values[~np.isfinite(values)] = np.nan
    return values


class FeatureEncoder:
    """Reference-fitted encoding of model inputs into a float matrix (see module doc)."""

    def __init__(
        self,
        reference: pd.DataFrame,
        columns: Sequence[str],
        categorical: Sequence[str],
        *,
        min_category_count: int = 5,
    ):
        missing = [c for c in columns if c not in reference.columns]
        if missing:
            raise DriftError(f"the reference sample lacks columns {missing}")
        self.columns = list(columns)
        self.categorical = [c for c in self.columns if c in set(categorical)]
        self.categorical_index = [self.columns.index(c) for c in self.categorical]
        self.fill: dict[str, float] = {}
        self.vocab: dict[str, dict[str, int]] = {}
        for col in self.columns:
            if col in self.categorical:
                counts = pd.Series(
                    [category_key(v) for v in reference[col].tolist()]
                ).value_counts()
                kept = sorted(
                    (k for k, n in counts.items() if n >= min_category_count),
                    key=lambda k: (-counts[k], k),
                )
                self.vocab[col] = {k: i + 1 for i, k in enumerate(kept)}
            else:
                values = _numeric(reference[col])
                finite = values[np.isfinite(values)]
                self.fill[col] = float(np.median(finite)) if finite.size else 0.0

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Rows of `frame` as a float matrix in `columns` order. A column the frame lacks
        counts as missing in every row."""
        out = np.empty((len(frame), len(self.columns)), dtype=np.float64)
        for j, col in enumerate(self.columns):
            present = col in frame.columns
            if col in self.vocab:
                index = self.vocab[col]
                if present:
                    out[:, j] = [
                        index.get(category_key(v), OTHER_CODE) for v in frame[col].tolist()
                    ]
                else:
                    out[:, j] = index.get(MISSING_CATEGORY, OTHER_CODE)
            else:
                values = _numeric(frame[col]) if present else np.full(len(frame), np.nan)
                out[:, j] = np.where(np.isnan(values), self.fill[col], values)
        return out


def strata_of(frame: pd.DataFrame, column: str | None) -> np.ndarray:
    """The stratum (text) of every row: the value of `column`, or one stratum for all."""
    if column is None or column not in frame.columns:
        return np.full(len(frame), "*", dtype=object)
    return np.array([category_key(v) for v in frame[column].tolist()], dtype=object)


def matched_sample(
    ref_strata: np.ndarray,
    window_strata: np.ndarray,
    rng: np.random.Generator,
    *,
    min_rows: int = 50,
) -> np.ndarray | None:
    """Indices of reference rows whose strata mix equals the window's.

    The largest sample that fits: with k = min over the window's strata of (reference rows
    of the stratum / window rows of the stratum), each stratum gets floor(k * its window
    count) rows drawn without replacement. None when a window stratum is absent from the
    reference or fewer than `min_rows` rows would remain.
    """
    ref_strata = np.asarray(ref_strata, dtype=object)
    values, counts = np.unique(np.asarray(window_strata, dtype=object), return_counts=True)
    groups = {s: np.nonzero(ref_strata == s)[0] for s in values}
    k = min(len(groups[s]) / c for s, c in zip(values, counts, strict=True))
    if k <= 0:
        return None
    parts = []
    for s, c in zip(values, counts, strict=True):
        take = math.floor(k * c + 1e-9)
        if take:
            parts.append(rng.choice(groups[s], size=take, replace=False))
    picked = np.sort(np.concatenate(parts)) if parts else np.array([], dtype=int)
    return picked if len(picked) >= min_rows else None


@dataclass
class CheckResult:
    """What one check found on one window (a detector-independent summary).

    `p_value`/`statistic` are those of the strongest finding (the smallest p-value);
    `features` lists what drifted (feature names or failed metrics). `skipped` says why
    no test ran (window too small, reference does not cover the window, ...).
    """

    detector: str
    is_drift: bool = False
    p_value: float = 1.0
    statistic: float = 0.0
    threshold: float = 0.0
    features: list[str] = field(default_factory=list)
    n: int = 0
    n_reference: int = 0
    skipped: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class FeatureDriftCheck:
    """Feature drift of model inputs against the reference sample."""

    def __init__(
        self,
        reference: pd.DataFrame,
        detector: DriftDetector,
        *,
        categorical: Sequence[str],
        exclude: Sequence[str] = (),
        stratify_by: str | None = "hour",
        min_category_count: int = 5,
        min_reference_rows: int = 50,
    ):
        self.stratify_by = stratify_by if stratify_by in reference.columns else None
        skip = set(exclude) | ({self.stratify_by} if self.stratify_by else set())
        columns = [c for c in reference.columns if c not in skip]
        if not columns:
            raise DriftError("no feature left to test after exclusions")
        self.detector = detector
        self.encoder = FeatureEncoder(
            reference, columns, categorical, min_category_count=min_category_count
        )
        self.reference = self.encoder.encode(reference)
        self.ref_strata = strata_of(reference, self.stratify_by)
        self.min_reference_rows = min_reference_rows
        self.min_category_count = min_category_count

    @property
    def columns(self) -> list[str]:
        return self.encoder.columns

    def _pool_sparse_categories(self, x_ref: np.ndarray, x: np.ndarray) -> None:
        """Fold categories seen fewer than `min_category_count` times in the matched
        reference into "other", in place, on both sides. A matched reference can be a few
        hundred rows (a night hour), and chi-square p-values are too small when expected
        counts fall below ~5 (Cochran's rule). Categories absent from the whole reference
        are "other" already, so a new category still shows."""
        for j in self.encoder.categorical_index:
            codes, counts = np.unique(x_ref[:, j], return_counts=True)
            sparse = codes[(counts < self.min_category_count) & (codes != OTHER_CODE)]
            if sparse.size:
                x_ref[np.isin(x_ref[:, j], sparse), j] = OTHER_CODE
                x[np.isin(x[:, j], sparse), j] = OTHER_CODE

    def run(self, window: pd.DataFrame, rng: np.random.Generator) -> CheckResult:
        result = CheckResult("feature", n=len(window))
        index = matched_sample(
            self.ref_strata,
            strata_of(window, self.stratify_by),
            rng,
            min_rows=self.min_reference_rows,
        )
        if index is None:
            result.skipped = (
                f"the reference does not cover this window's {self.stratify_by} mix"
                if self.stratify_by
                else "reference too small"
            )
            return result
        x_ref, x = self.reference[index], self.encoder.encode(window)
        self._pool_sparse_categories(x_ref, x)
        test = self.detector.test(x_ref, x, self.encoder.categorical_index)
        best = int(np.argmin(test.p_values))
        result.is_drift = test.is_drift
        result.p_value = float(test.p_values[best])
        result.statistic = float(test.statistics[best])
        result.threshold = float(test.threshold)
        order = np.argsort(test.p_values, kind="stable")
        result.features = [self.columns[i] for i in order if test.drifted[i]]
        result.n_reference = len(index)
        result.details = {
            "p_values": {c: float(p) for c, p in zip(self.columns, test.p_values, strict=True)},
            "statistics": {c: float(s) for c, s in zip(self.columns, test.statistics, strict=True)},
            "correction": self.detector.correction,
            "p_val": self.detector.p_val,
            "strongest": self.columns[best],
        }
        return result


class PredictionDriftCheck:
    """KS test of served scores against reference scores (context-matched)."""

    def __init__(self, detector: DriftDetector, *, min_reference_rows: int = 50):
        self.detector = detector
        self.min_reference_rows = min_reference_rows

    def run(
        self,
        ref_scores: np.ndarray,
        ref_strata: np.ndarray,
        scores: np.ndarray,
        strata: np.ndarray,
        rng: np.random.Generator,
    ) -> CheckResult:
        result = CheckResult("prediction", n=len(scores))
        index = matched_sample(ref_strata, strata, rng, min_rows=self.min_reference_rows)
        if index is None:
            result.skipped = "the reference predictions do not cover this window's mix"
            return result
        test = self.detector.test(
            np.asarray(ref_scores, dtype=np.float64)[index].reshape(-1, 1),
            np.asarray(scores, dtype=np.float64).reshape(-1, 1),
        )
        result.is_drift = test.is_drift
        result.p_value = float(test.p_values[0])
        result.statistic = float(test.statistics[0])
        result.threshold = float(test.threshold)
        result.features = ["prediction"] if test.is_drift else []
        result.n_reference = len(index)
        result.details = {
            "window_mean": float(np.mean(scores)),
            "reference_mean": float(np.mean(np.asarray(ref_scores)[index])),
        }
        return result


def _entropy(rate: float) -> float:
    if rate <= 0.0 or rate >= 1.0:
        return 0.0
    return -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


class PerformanceCheck:
    """Calibration and normalized entropy of labelled predictions (see module doc)."""

    def __init__(self, config: Any, metrics: Mapping[str, float | None]):
        self.config = config
        ne = metrics.get("normalized_entropy")
        if ne is None and metrics.get("log_loss") is not None and metrics.get("base_rate"):
            h = _entropy(float(metrics["base_rate"]))  # type: ignore[arg-type]
            ne = float(metrics["log_loss"]) / h if h > 0 else None  # type: ignore[arg-type]
        self.reference_ne = float(ne) if ne is not None else None
        self.reference_log_loss = metrics.get("log_loss")

    def run(self, predictions: np.ndarray, labels: np.ndarray) -> CheckResult:
        cfg = self.config
        p = np.clip(np.asarray(predictions, dtype=np.float64), 1e-7, 1 - 1e-7)
        y = np.asarray(labels, dtype=np.float64)
        n = len(p)
        result = CheckResult("performance", n=n, threshold=cfg.p_val)
        if n < cfg.min_events:
            result.skipped = f"{n} labelled events, fewer than {cfg.min_events}"
            return result
        clicks, expected = float(y.sum()), float(p.sum())
        ratio = expected / clicks if clicks > 0 else math.inf
        z_cal = (clicks - expected) / math.sqrt(max(float((p * (1 - p)).sum()), 1e-12))
        p_cal = min(1.0, 2 * _normal_sf(abs(z_cal)))
        row_loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        log_loss = float(row_loss.mean())
        h = _entropy(clicks / n)
        ne = log_loss / h if h > 0 else math.inf
        low, high = cfg.calibration_bounds
        details: dict[str, Any] = {
            "clicks": clicks,
            "expected_clicks": expected,
            "calibration_ratio": ratio,
            "calibration_p_value": p_cal,
            "calibration_bounds": [low, high],
            "log_loss": log_loss,
            "reference_log_loss": self.reference_log_loss,
            "normalized_entropy": ne,
            "reference_normalized_entropy": self.reference_ne,
            "max_ne_increase": cfg.max_ne_increase,
        }
        findings: list[tuple[str, float, float]] = []  # (metric, statistic, p-value)
        if not (low <= ratio <= high) and p_cal < cfg.p_val:
            findings.append(("calibration_ratio", ratio, p_cal))
        if self.reference_ne is not None and h > 0:
            expected_loss = self.reference_ne * h
            se = float(row_loss.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
            z_ne = (log_loss - expected_loss) / se if se > 0 else 0.0
            p_ne = _normal_sf(z_ne)  # one-sided: only a worse model is drift
            details["normalized_entropy_p_value"] = p_ne
            if ne - self.reference_ne > cfg.max_ne_increase and p_ne < cfg.p_val:
                findings.append(("normalized_entropy", ne, p_ne))
        result.details = details
        if findings:
            findings.sort(key=lambda f: f[2])
            result.is_drift = True
            result.features = [f[0] for f in findings]
            result.statistic, result.p_value = findings[0][1], findings[0][2]
        else:
            result.statistic = ratio
            result.p_value = p_cal
        return result
