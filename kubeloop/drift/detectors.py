"""Statistical drift detectors and the three checks built on them.

The interface, `DriftDetector`, is deliberately small: given a reference matrix, a window
matrix and which columns are categorical, run one univariate two-sample test per column
(Kolmogorov-Smirnov for numeric columns, chi-square on the contingency table for
categorical ones) and correct for testing several columns at once (Bonferroni, or the
Benjamini-Hochberg false discovery rate). Two implementations:

* `AlibiDriftDetector` (`type: alibi`, the default): alibi-detect's `TabularDrift`
  (`KSDrift` for a single numeric column). alibi-detect is under the Business Source
  License 1.1 since 0.11.5, so it is imported only when this detector is built, and a
  user who cannot accept that licence swaps it for
* `ScipyDriftDetector` (`type: scipy`): the same tests straight from scipy, with the same
  corrections and the same decision rule; the tests check that both agree.

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

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from kubeloop.errors import KubeloopError, MissingExtraError
from kubeloop.training.transform import category_key as model_category_key

log = logging.getLogger(__name__)

OTHER_CODE = 0
MISSING_CATEGORY = "<missing>"


class DriftError(KubeloopError):
    """A drift check cannot run: bad reference, missing columns, unusable configuration."""


# -- the detector interface ---------------------------------------------------------------


@dataclass(frozen=True)
class TestResult:
    """Outcome of one batch of univariate tests.

    `p_values[i]` and `statistics[i]` belong to column i (KS distance for numeric columns,
    the chi-square statistic for categorical ones). `threshold` is the corrected bar: a
    column drifted when its p-value is below it (`drifted`); `is_drift` when any did.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class

    p_values: np.ndarray
    statistics: np.ndarray
    threshold: float
    drifted: np.ndarray
    is_drift: bool


def corrected_threshold(p_values: np.ndarray, p_val: float, correction: str) -> float:
    """The per-column p-value bar of a batch of tests.

    bonferroni: `p_val / n`. fdr (Benjamini-Hochberg, strict inequality as alibi-detect):
    `p_val * k / n` for the largest k whose k-th smallest p-value is below it, else
    `p_val / n` (the bar the smallest p-value missed).
    """
    p = np.asarray(p_values, dtype=float)
    n = max(len(p), 1)
    if correction == "bonferroni" or n == 1:
        return p_val / n
    if correction != "fdr":
        raise DriftError(f"unknown correction {correction!r}: use bonferroni or fdr")
    ranks = np.arange(1, n + 1)
    bars = p_val * ranks / n
    below = np.sort(p) < bars
    return float(bars[np.nonzero(below)[0].max()]) if below.any() else p_val / n


class DriftDetector(ABC):
    """Univariate two-sample tests per column with a multiple-testing correction.

    Subclasses take their pydantic config (`kubeloop.drift.backends`) and implement
    `_scores`; the correction and the decision are shared, so every implementation
    decides the same way on the same p-values.
    """

    name: ClassVar[str] = "abstract"

    def __init__(self, config: Any = None):
        from kubeloop.drift.backends import parse_detector_config

        if config is None:
            config = {"type": self.name}
        self.config = parse_detector_config(config)
        self.p_val = float(self.config.p_val)
        self.correction = str(self.config.correction)

    @abstractmethod
    def _scores(
        self, x_ref: np.ndarray, x: np.ndarray, categorical: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """p-values and statistics per column."""

    def test(self, x_ref: np.ndarray, x: np.ndarray, categorical: Sequence[int] = ()) -> TestResult:
        """Test every column of `x` (window) against the same column of `x_ref`.

        Both are 2-D float arrays with the same columns; categorical columns hold integer
        codes. Raises DriftError on empty input or mismatched shapes.
        """
        x_ref = np.asarray(x_ref, dtype=np.float64)
        x = np.asarray(x, dtype=np.float64)
        if x_ref.ndim == 1:
            x_ref = x_ref.reshape(-1, 1)
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        if x_ref.shape[1] != x.shape[1]:
            raise DriftError(f"reference has {x_ref.shape[1]} columns, window {x.shape[1]}")
        if len(x_ref) == 0 or len(x) == 0:
            raise DriftError("cannot test an empty reference or window")
        p, stat = self._scores(x_ref, x, list(categorical))
        p = np.asarray(p, dtype=np.float64)
        threshold = corrected_threshold(p, self.p_val, self.correction)
        drifted = p < threshold
        return TestResult(
            p, np.asarray(stat, dtype=np.float64), threshold, drifted, bool(drifted.any())
        )


def _alibi_cd():
    try:
        from alibi_detect import cd
    except ImportError as exc:
        raise MissingExtraError(
            "alibi_detect",
            "the alibi drift detector (or choose the scipy detector: type: scipy)",
            "alibi-detect==0.13.0",
        ) from exc
    return cd


class AlibiDriftDetector(DriftDetector):
    """alibi-detect TabularDrift / KSDrift behind the `DriftDetector` interface."""

    name = "alibi"

    def __init__(self, config: Any = None):
        super().__init__(config)
        self._cd = _alibi_cd()  # fail at construction, not at the first window

    def _scores(self, x_ref, x, categorical):
        if x_ref.shape[1] == 1 and not categorical:
            det = self._cd.KSDrift(
                x_ref, p_val=self.p_val, correction=self.correction, x_ref_preprocessed=True
            )
        else:
            # {column: None}: the categories are those present in the (matched) reference;
            # alibi adds the window's own categories to the contingency table itself.
            det = self._cd.TabularDrift(
                x_ref,
                p_val=self.p_val,
                categories_per_feature={int(i): None for i in categorical},
                correction=self.correction,
                x_ref_preprocessed=True,
            )
        out = det.predict(x, drift_type="batch", return_p_val=True, return_distance=True)
        return out["data"]["p_val"], out["data"]["distance"]


class ScipyDriftDetector(DriftDetector):
    """The same tests with scipy only (no alibi-detect)."""

    name = "scipy"

    def _scores(self, x_ref, x, categorical):
        from scipy.stats import chi2_contingency, ks_2samp

        cats = set(categorical)
        p = np.ones(x.shape[1])
        stat = np.zeros(x.shape[1])
        for j in range(x.shape[1]):
            if j in cats:
                values = np.union1d(np.unique(x_ref[:, j]), np.unique(x[:, j]))
                table = np.vstack(
                    [
                        [(x_ref[:, j] == v).sum() for v in values],
                        [(x[:, j] == v).sum() for v in values],
                    ]
                )
                stat[j], p[j] = chi2_contingency(table)[:2]
            else:
                res = ks_2samp(x_ref[:, j], x[:, j], alternative="two-sided", method="asymp")
                stat[j], p[j] = res.statistic, res.pvalue
        return p, stat


# -- the reference ------------------------------------------------------------------------


@dataclass
class Reference:
    """What one model version's traffic is compared with.

    `features` is the registered reference sample (model input columns), `predictions`
    the model's scores on it (None when the model could not be loaded: the monitor then
    learns reference scores from the first served windows), `metrics` the version's
    evaluation metrics (log_loss, normalized_entropy, calibration_ratio, base_rate, ...).
    """

    model: str
    version: str
    features: pd.DataFrame
    predictions: np.ndarray | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.features) == 0:
            raise DriftError(f"the reference sample of {self.model}:{self.version} is empty")
        if self.predictions is not None:
            self.predictions = np.asarray(self.predictions, dtype=np.float64).reshape(-1)
            if len(self.predictions) != len(self.features):
                raise DriftError(
                    f"{len(self.predictions)} reference predictions for "
                    f"{len(self.features)} reference rows"
                )

    @classmethod
    def from_dir(cls, path: str | Path, *, score: bool = True) -> Reference:
        """Read an exported version directory (kubeloop.registry.export): metadata.json
        and reference.parquet; with `score`, load the model files beside them and score
        the reference sample (falling back to no predictions, with a warning)."""
        from kubeloop.registry.base import ModelVersion
        from kubeloop.registry.export import METADATA_FILE, REFERENCE_FILE

        root = Path(path)
        meta_path, ref_path = root / METADATA_FILE, root / REFERENCE_FILE
        for needed in (meta_path, ref_path):
            if not needed.is_file():
                raise DriftError(
                    f"{needed} is missing: the reference directory must be an exported model "
                    "version (kubeloop models export) with a reference sample"
                )
        try:
            record = ModelVersion.model_validate_json(meta_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DriftError(f"{meta_path} is not a model version record: {exc}") from exc
        features = pd.read_parquet(ref_path)
        missing = [c for c in record.features if c not in features.columns]
        if missing:
            raise DriftError(f"{ref_path} lacks the model's features {missing}")
        features = features[list(record.features)]
        predictions = score_reference(features, root) if score else None
        return cls(record.name, record.version, features, predictions, dict(record.metrics))

    @classmethod
    def from_registry(
        cls, registry: Any, name: str, version: str | None = None, *, score: bool = True
    ) -> Reference:
        """The reference of a registered version (`registry` is a `ModelRegistry`)."""
        record = registry.get(name, version)
        features = registry.reference(name, record.version)
        features = features[[c for c in record.features if c in features.columns]]
        model_dir = registry.model_path(name, record.version)
        predictions = score_reference(features, model_dir) if score else None
        return cls(record.name, record.version, features, predictions, dict(record.metrics))


def score_reference(features: pd.DataFrame, model_dir: str | Path) -> np.ndarray | None:
    """The model's scores on the reference sample, or None (logged) when the model in
    `model_dir` cannot be loaded or scored."""
    try:
        from kubeloop.training.artifacts import load_model

        model = load_model(model_dir)
        scores = np.asarray(model.predict_proba(features), dtype=np.float64).reshape(-1)
    except Exception as exc:  # noqa: BLE001 - any failure means: learn the reference online
        log.warning(
            "cannot score the reference sample with the model in %s (%s); reference "
            "predictions will be learned from the first served windows",
            model_dir,
            exc,
        )
        return None
    return scores


# -- encoding and matching ----------------------------------------------------------------


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


# -- the checks ---------------------------------------------------------------------------


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
