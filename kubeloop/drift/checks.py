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
* `PerformanceCheck` — once labels arrive: calibration (mean prediction / observed positive rate
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

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kubeloop.drift.detectors.base import DriftDetector, DriftError, corrected_threshold
from kubeloop.drift.estimate import binary_entropy, estimate, expected_auc, realized
from kubeloop.training.transform import category_key as model_category_key

OTHER_CODE = 0
MISSING_CATEGORY = "<missing>"


def category_key(value: Any) -> str:
    """Canonical text of a category, exactly as the model's transform encodes it; missing
    values (None, NaN, pd.NA) are `MISSING_CATEGORY`."""
    key = model_category_key(value)
    return MISSING_CATEGORY if key is None else key


def factorized_keys(values: pd.Series | Sequence[Any]) -> tuple[np.ndarray, list[str]]:
    """(codes, keys): `keys[codes[i]]` is `category_key(values[i])`, a missing value's code
    being -1 (its key, `MISSING_CATEGORY`, is the last of `keys`). Each distinct value is
    canonicalized once, not each row: a window repeats a few dozen hours and devices over
    thousands of rows."""
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    kinds = {type(u) for u in uniques}
    if len(kinds) > 1 and kinds & {bool, np.bool_}:
        # True == 1 in Python, so factorize merges them; category_key does not.
        keys = [category_key(v) for v in series.tolist()]
        return np.arange(len(keys)), [*keys, MISSING_CATEGORY]
    return np.asarray(codes), [*(category_key(u) for u in uniques), MISSING_CATEGORY]


class FrameKeys:
    """`factorized_keys` of a frame's columns, each computed once: one window's encoding
    and data-quality checks look at the same categorical columns. Call it with a column."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self._found: dict[str, tuple[np.ndarray, list[str]]] = {}

    def __call__(self, column: str) -> tuple[np.ndarray, list[str]]:
        found = self._found.get(column)
        if found is None:
            found = self._found[column] = factorized_keys(self.frame[column])
        return found


def category_keys(values: pd.Series | Sequence[Any]) -> np.ndarray:
    """`category_key` of every value, as an object array (see `factorized_keys`)."""
    codes, keys = factorized_keys(values)
    return np.array(keys, dtype=object)[codes]


def _numeric(series: pd.Series) -> np.ndarray:
    if series.dtype.kind in "fiu":  # numbers already: what to_numeric would return
        values = series.to_numpy(dtype=np.float64, copy=True)
        values[~np.isfinite(values)] = np.nan
        return values
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
                counts = pd.Series(category_keys(reference[col])).value_counts()
                kept = sorted(
                    (k for k, n in counts.items() if n >= min_category_count),
                    key=lambda k: (-counts[k], k),
                )
                self.vocab[col] = {k: i + 1 for i, k in enumerate(kept)}
            else:
                values = _numeric(reference[col])
                finite = values[np.isfinite(values)]
                self.fill[col] = float(np.median(finite)) if finite.size else 0.0

    def encode(self, frame: pd.DataFrame, factorized: FrameKeys | None = None) -> np.ndarray:
        """Rows of `frame` as a float matrix in `columns` order. A column the frame lacks
        counts as missing in every row. `factorized`: the frame's `FrameKeys`, when the
        caller shares them."""
        factorized = factorized if factorized is not None else FrameKeys(frame)
        out = np.empty((len(frame), len(self.columns)), dtype=np.float64)
        # The numeric columns that hold numbers already (the common window) as one block:
        # what `_numeric` and the fill do column by column, without a Series per column.
        at, block = numeric_block(frame, [c for c in self.columns if c not in self.vocab])
        done: set[str] = set()
        if at:
            names = list(at)
            fills = np.array([self.fill[c] for c in names], dtype=np.float64)
            out[:, [self.columns.index(c) for c in names]] = np.where(np.isnan(block), fills, block)
            done = set(names)
        for j, col in enumerate(self.columns):
            if col in done:
                continue
            present = col in frame.columns
            if col in self.vocab:
                index = self.vocab[col]
                if present:
                    codes, keys = factorized(col)
                    lookup = np.array([index.get(k, OTHER_CODE) for k in keys], dtype=np.float64)
                    out[:, j] = lookup[codes]
                else:
                    out[:, j] = index.get(MISSING_CATEGORY, OTHER_CODE)
            else:
                values = _numeric(frame[col]) if present else np.full(len(frame), np.nan)
                out[:, j] = np.where(np.isnan(values), self.fill[col], values)
        return out


def numeric_block(
    frame: pd.DataFrame, columns: Sequence[str], *, finite: bool = True
) -> tuple[dict[str, int], np.ndarray]:
    """({column: its position in the block}, the block): those of `columns` the frame has
    as numbers (numpy int, uint or float dtype) as one float64 matrix, in one copy; with
    `finite`, NaN where a value is not finite (`_numeric` of each of them)."""
    dtypes = frame.dtypes if frame.columns.is_unique else pd.Series(dtype=object)
    names = [
        c
        for c in columns
        if c in dtypes.index and isinstance(dtypes[c], np.dtype) and dtypes[c].kind in "fiu"
    ]
    if not names:
        return {}, np.empty((len(frame), 0), dtype=np.float64)
    # Column by column into one array: selecting the columns as a frame first costs
    # several times more (a new frame, then its blocks interleaved).
    block = np.empty((len(frame), len(names)), dtype=np.float64)
    for j, c in enumerate(names):
        block[:, j] = frame[c].to_numpy(dtype=np.float64)
    if finite:
        block[~np.isfinite(block)] = np.nan
    return {c: i for i, c in enumerate(names)}, block


def strata_of(
    frame: pd.DataFrame,
    column: str | None,
    season_by: str | None = None,
    weekend: Sequence[int] = (),
    factorized: FrameKeys | None = None,
) -> np.ndarray:
    """The stratum (text) of every row: the value of `column`, or one stratum for all; with
    `season_by` (a weekday column, 0 = Monday), the day type is appended ("|we" for the
    `weekend` days, "|wd" otherwise), so a Tuesday hour is matched with weekday rows.
    `factorized`: the frame's `FrameKeys`, when the caller shares them."""
    if column is None or column not in frame.columns:
        codes, keys = np.zeros(len(frame), dtype=np.int64), ["*"]
    else:
        codes, keys = (
            factorized(column) if factorized is not None else factorized_keys(frame[column])
        )
        codes = np.where(codes < 0, len(keys) - 1, codes)
    if season_by is not None and season_by in frame.columns:
        days = pd.to_numeric(frame[season_by], errors="coerce").to_numpy()
        weekend_row = np.isin(days, list(weekend)).astype(np.int64)
        # Texts are built for the distinct (key, day type) pairs only.
        pairs, inverse = np.unique(codes * 2 + weekend_row, return_inverse=True)
        texts = [f"{keys[c // 2]}{'|we' if c % 2 else '|wd'}" for c in pairs.tolist()]
        return np.array(texts, dtype=object)[inverse.reshape(-1)]
    return np.array(keys, dtype=object)[codes]


@dataclass(frozen=True)
class Season:
    """How windows are matched to the reference: by `stratify_by` (hour of day) and, when
    the reference holds rows of the window's day type, by weekday vs weekend too."""

    stratify_by: str | None = "hour"
    season_by: str | None = "weekday"
    weekend: tuple[int, ...] = (5, 6)

    def strata(
        self, frame: pd.DataFrame, seasonal: bool, factorized: FrameKeys | None = None
    ) -> np.ndarray:
        """Strata of `frame`'s rows, with the day type when `seasonal` (`factorized`: the
        frame's `FrameKeys`, when the caller shares them)."""
        if seasonal and self.season_by:
            return strata_of(frame, self.stratify_by, self.season_by, self.weekend, factorized)
        return strata_of(frame, self.stratify_by, factorized=factorized)


def season_matched_sample(
    season: Season,
    reference: pd.DataFrame,
    window: pd.DataFrame,
    rng: np.random.Generator,
    *,
    min_rows: int = 50,
    ref_strata: tuple[np.ndarray, np.ndarray] | None = None,
    window_strata: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray | None, bool]:
    """Reference rows matched to the window's hour (and day-type) mix; (indices, whether
    the day type was matched). Falls back to the hour alone when the reference holds no
    rows of a day type the window has (a weekday-only reference and a Sunday window).
    `ref_strata`/`window_strata`: (with day type, without), when already computed."""
    fine, coarse = ref_strata or (season.strata(reference, True), season.strata(reference, False))
    win_fine, win_coarse = window_strata or (None, None)
    if season.season_by:
        if win_fine is None:
            win_fine = season.strata(window, True)
        index = matched_sample(fine, win_fine, rng, min_rows=min_rows)
        if index is not None:
            return index, True
    if win_coarse is None:
        win_coarse = season.strata(window, False)
    return matched_sample(coarse, win_coarse, rng, min_rows=min_rows), False


def stratum_weights(ref_strata: np.ndarray, window_strata: np.ndarray) -> np.ndarray | None:
    """Weights that give the reference rows the window's stratum mix (every reference row
    kept: weight = window share / reference share of its stratum, 0 for strata the window
    lacks); None when a window stratum is absent from the reference."""
    groups, values, counts = _strata_groups(ref_strata, window_strata)
    weights = np.zeros(len(ref_strata), dtype=np.float64)
    for s, c in zip(values, counts, strict=True):
        rows = groups[s]
        if len(rows) == 0:
            return None
        weights[rows] = c / len(rows)
    return weights


def tolerance_p_value(distance: float, n: int, m: int, tolerance: float) -> float:
    """p-value of H0 "the two distributions differ by at most `tolerance` in KS distance"
    given an observed KS distance between samples of n and m rows: the Dvoretzky-Kiefer-
    Wolfowitz-Massart bound 2 exp(-2 nm/(n+m) (D - tolerance)^2), 1 when D <= tolerance.
    With tolerance 0 it is the first term of the asymptotic KS p-value."""
    excess = distance - tolerance
    if excess <= 0 or n <= 0 or m <= 0:
        return 1.0
    return float(min(1.0, 2.0 * math.exp(-2.0 * n * m / (n + m) * excess * excess)))


def distinct_rows(x: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Indices of the first occurrence of every distinct row of `x` (sorted), plus every
    row flagged in `keep` (kept as is, never merged)."""
    if len(x) == 0:
        return np.array([], dtype=int)
    keep = np.zeros(len(x), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    rest = np.nonzero(~keep)[0]
    first = rest[_first_of_each_row(x[rest])] if rest.size else rest
    return np.sort(np.concatenate([first, np.nonzero(keep)[0]]))


@functools.cache
def _row_hash_multipliers(k: int) -> np.ndarray:
    """k fixed odd 64-bit multipliers, one per column, for `_first_of_each_row`'s hash."""
    rng = np.random.default_rng(0x5EED)
    return rng.integers(0, 2**63, size=k, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def _first_of_each_row(x: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of every distinct row of a 2-D array (rows equal
    value by value, as `np.unique(x, axis=0, return_index=True)` finds them, in another
    order). A stable lexsort and one comparison of neighbours: `np.unique(axis=0)` sorts a
    structured view, several times slower on a window's entity columns."""
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if x.dtype == np.float64 and x.size and not np.isnan(x).any():
        # Without NaN (never equal to itself), rows are equal value by value exactly when
        # their bytes are, once -0.0 is made 0.0 (+ 0.0 does).
        rows = np.ascontiguousarray(x + 0.0)
        bits = rows.view(np.uint64)
        # A 64-bit hash of each row's bytes, then one sort of integers; each row is then
        # compared with the first row of its hash, so a collision (rows that differ, same
        # hash) is found, never merged: the exact sort of whole rows below decides then.
        mixed = (bits ^ (bits >> np.uint64(29))) * _row_hash_multipliers(bits.shape[1])
        hashes = np.bitwise_xor.reduce(mixed, axis=1) + mixed.sum(axis=1, dtype=np.uint64)
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        if (bits[first[inverse.reshape(-1)]] == bits).all():
            return first
        # np.unique's indices are those of first occurrences.
        whole = rows.view(np.dtype((np.void, rows.itemsize * rows.shape[1]))).ravel()
        return np.unique(whole, return_index=True)[1]
    order = np.lexsort(x.T[::-1])
    ordered = x[order]
    new = np.empty(len(order), dtype=bool)
    new[:1] = True
    new[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    return order[new]


def _lacks(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Rows of `frame` missing every one of `columns` present in it."""
    present = [c for c in columns if c in frame.columns]
    if not present:
        return np.ones(len(frame), dtype=bool)
    # Column by column: selecting a sub-frame would copy it.
    return np.logical_and.reduce([pd.isna(frame[c].to_numpy()) for c in present])


# The reference side of `_strata_groups` for the last few reference strata arrays seen
# (id -> (the array, its index)): a reference's strata never change, and every window's
# feature, prediction and estimate checks group the same ones.
_REFERENCE_STRATA: dict[int, tuple[Any, tuple[pd.Index, np.ndarray, np.ndarray]]] = {}


def _reference_strata_index(ref_strata: Any) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """(the distinct strata, the reference rows ordered by stratum, where each stratum's
    rows start in that order), cached while the same array object comes back."""
    cached = _REFERENCE_STRATA.get(id(ref_strata))
    if cached is not None and cached[0] is ref_strata:
        return cached[1]
    ref_codes, ref_values = pd.factorize(np.asarray(ref_strata, dtype=object))
    order = np.argsort(ref_codes, kind="stable")
    bounds = np.searchsorted(ref_codes[order], np.arange(len(ref_values) + 1))
    found = (pd.Index(ref_values), order, bounds)
    if isinstance(ref_strata, np.ndarray):  # a list could be changed in place: not kept
        if len(_REFERENCE_STRATA) >= 16:
            _REFERENCE_STRATA.pop(next(iter(_REFERENCE_STRATA)))
        _REFERENCE_STRATA[id(ref_strata)] = (ref_strata, found)
    return found


# The window side of `_strata_groups` for the last window strata array seen: one window's
# feature, prediction and estimate checks group the same array. One slot, replaced whole
# (a read and a write are each atomic, so threads of several monitors cannot mix entries).
_LAST_WINDOW_STRATA: list[tuple[Any, tuple[pd.Index, list[int]]] | None] = [None]


def _window_strata_counts(window_strata: Any) -> tuple[pd.Index, list[int]]:
    """(the window's distinct strata, the rows of each), cached while the same array
    object comes back."""
    last = _LAST_WINDOW_STRATA[0]
    if last is not None and last[0] is window_strata:
        return last[1]
    win_codes, win_values = pd.factorize(np.asarray(window_strata, dtype=object))
    found = (win_values, np.bincount(win_codes, minlength=len(win_values)).tolist())
    if isinstance(window_strata, np.ndarray):  # a list could be changed in place: not kept
        _LAST_WINDOW_STRATA[0] = (window_strata, found)
    return found


def _strata_groups(
    ref_strata: np.ndarray, window_strata: np.ndarray
) -> tuple[dict[Any, np.ndarray], list[Any], list[int]]:
    """({window stratum: indices of the reference rows in it}, the window's strata, their
    row counts). Strata are hashed, not compared row by row (they are Python strings)."""
    ref_index, order, bounds = _reference_strata_index(ref_strata)
    win_values, counts = _window_strata_counts(window_strata)
    at = ref_index.get_indexer(win_values)
    groups = {
        v: (order[bounds[i] : bounds[i + 1]] if i >= 0 else np.array([], dtype=np.int64))
        for v, i in zip(win_values.tolist(), at.tolist(), strict=True)
    }
    # Sorted, as np.unique gave them: the same seed draws the same sample.
    pairs = sorted(zip(win_values.tolist(), counts, strict=True))
    return groups, [v for v, _ in pairs], [c for _, c in pairs]


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
    groups, values, counts = _strata_groups(ref_strata, window_strata)
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


def linear_quantiles(ordered: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """`np.quantile(values, q)` (its default, linear method) of finite values given
    sorted (`ordered`, not empty), computed as numpy computes it, without its dispatch:
    a window's summaries take a dozen quantiles, each several times the cost of the
    arithmetic."""
    n = len(ordered)
    virtual = (n - 1) * np.asarray(q, dtype=np.float64)
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= n - 1
    previous[above] = -1
    following[above] = -1
    below = virtual < 0
    previous[below] = 0
    following[below] = 0
    previous_at, following_at = previous.astype(np.intp), following.astype(np.intp)
    gamma = virtual - previous_at
    a, b = ordered[previous_at], ordered[following_at]
    diff = b - a
    out = a + diff * gamma
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    return out


def histogram_counts(values: np.ndarray, edges: np.ndarray, *, ordered: bool = False) -> np.ndarray:
    """`np.histogram(values, edges)[0]` for explicit edges (values outside them, NaN
    included, are not counted; the last bin holds its right edge), computed as numpy does
    for explicit edges, without its dispatch. `ordered`: `values` are sorted already."""
    if len(values) > 65536:  # numpy sorts in blocks of that size: leave it to numpy
        return np.histogram(values, edges)[0]
    ordered_values = values if ordered else np.sort(values)
    cumulative = np.concatenate(
        (
            ordered_values.searchsorted(edges[:-1], "left"),
            ordered_values.searchsorted(edges[-1:], "right"),
        )
    )
    return np.diff(cumulative)


def _column_summary(values: np.ndarray, categorical: bool, vocab: Mapping[str, int] | None):
    """A small, JSON-able picture of one column for a person: a histogram on shared bins
    (numeric) or the category counts (categorical); the caller adds the other side."""
    finite = values[np.isfinite(values)]
    return _finite_summary(
        finite, np.sort(finite) if not categorical else finite, categorical, vocab
    )


def _finite_summary(
    finite: np.ndarray, ordered: np.ndarray, categorical: bool, vocab: Mapping[str, int] | None
) -> dict[str, Any]:
    """`_column_summary` of a column's finite values (`ordered`: the same sorted; unused
    when categorical)."""
    if categorical:
        names = {code: name for name, code in (vocab or {}).items()}
        codes, counts = np.unique(finite, return_counts=True)
        return {
            "kind": "categorical",
            "counts": {names.get(int(c), "other"): int(n) for c, n in zip(codes, counts)},
        }
    return {
        "kind": "numeric",
        "mean": float(finite.mean()) if finite.size else None,
        "quantiles": [float(q) for q in linear_quantiles(ordered, [0.05, 0.5, 0.95])]
        if finite.size
        else [],
    }


def _clipped_sorted(
    values: np.ndarray, ordered_finite: np.ndarray, lo: float, hi: float
) -> np.ndarray:
    """`np.sort(np.clip(values, lo, hi))` without NaN (which no histogram counts), from
    the column's sorted finite values: clipping keeps them sorted, and an infinity clips
    to the edge on its side."""
    clipped = np.clip(ordered_finite, lo, hi)
    if len(ordered_finite) == len(values):
        return clipped
    below = int(np.count_nonzero(values == -np.inf))
    above = int(np.count_nonzero(values == np.inf))
    if not below and not above:
        return clipped
    return np.concatenate([np.full(below, lo), clipped, np.full(above, hi)])


def compare_summary(
    ref: np.ndarray,
    win: np.ndarray,
    categorical: bool,
    vocab: Mapping[str, int] | None,
    bins: int = 20,
) -> dict[str, Any]:
    """Reference and window summaries of one column, on shared histogram bins when numeric
    (what `kubeloop alerts show` prints and the HTML report plots). Each side is sorted
    once, for its quantiles, the shared bins and its histogram."""
    ref_finite, win_finite = ref[np.isfinite(ref)], win[np.isfinite(win)]
    if categorical:
        return {
            "reference": _finite_summary(ref_finite, ref_finite, True, vocab),
            "window": _finite_summary(win_finite, win_finite, True, vocab),
        }
    ref_ordered, win_ordered = np.sort(ref_finite), np.sort(win_finite)
    out = {
        "reference": _finite_summary(ref_finite, ref_ordered, False, vocab),
        "window": _finite_summary(win_finite, win_ordered, False, vocab),
    }
    both = np.concatenate([ref_finite, win_finite])
    if both.size:
        lo, hi = linear_quantiles(
            np.sort(np.concatenate([ref_ordered, win_ordered])), [0.005, 0.995]
        )
        if hi <= lo:
            lo, hi = float(both.min()), float(both.max()) + 1e-9
        edges = np.linspace(lo, hi, bins + 1)
        out["bins"] = [float(e) for e in edges]
        for side, values, ordered in (
            ("reference", ref, ref_ordered),
            ("window", win, win_ordered),
        ):
            clipped = _clipped_sorted(values, ordered, lo, hi)
            out[side]["hist"] = histogram_counts(clipped, edges, ordered=True).tolist()
    return out


class FeatureDriftCheck:
    """Feature drift of model inputs against the reference sample.

    Per window: reference rows matched on the window's hour and day-type mix (`Season`);
    then, per group of columns, the detector's tests. Columns of an entity group (the
    features looked up for one user or one ad) are tested over the distinct rows of the
    group on each side: an ad shown 30 times in a window is one sample, not 30 (impressions
    cluster on entities, so their feature values are not independent draws). Numeric
    columns are then judged against `ks_tolerance`: a shift smaller than that KS distance
    (normal day-to-day and weekly variation) is not drift (`tolerance_p_value`). One
    correction over all columns decides.
    """

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
        season: Season | None = None,
        entity_groups: Mapping[str, Sequence[str]] | None = None,
        ks_tolerance: float = 0.0,
        summary_features: int = 6,
    ):
        season = season or Season(stratify_by=stratify_by, season_by=None)
        self.stratify_by = season.stratify_by if season.stratify_by in reference.columns else None
        self.season = Season(
            self.stratify_by,
            season.season_by if season.season_by in reference.columns else None,
            tuple(season.weekend),
        )
        skip = set(exclude) | ({self.stratify_by} if self.stratify_by else set())
        if self.season.season_by:
            skip.add(self.season.season_by)
        columns = [c for c in reference.columns if c not in skip]
        if not columns:
            raise DriftError("no feature left to test after exclusions")
        self.detector = detector
        self.encoder = FeatureEncoder(
            reference, columns, categorical, min_category_count=min_category_count
        )
        self.reference = self.encoder.encode(reference)
        self.ref_strata = (
            self.season.strata(reference, True),
            self.season.strata(reference, False),
        )
        self._ref_frame = reference
        self.min_reference_rows = min_reference_rows
        self.min_category_count = min_category_count
        self.ks_tolerance = float(ks_tolerance)
        self.summary_features = summary_features
        grouped: set[str] = set()
        self.groups: list[tuple[str, list[int]]] = []
        for name, cols in (entity_groups or {}).items():
            idx = [self.columns.index(c) for c in cols if c in self.columns and c not in grouped]
            grouped.update(self.columns[i] for i in idx)
            if idx:
                self.groups.append((name, idx))
        rest = [i for i, c in enumerate(self.columns) if c not in grouped]
        if rest:
            self.groups.append(("", rest))
        # Which reference rows have no features of an entity depends on the reference
        # alone: found once here, indexed by each window's matched sample.
        self._ref_lacks = {
            name: _lacks(reference, [self.columns[j] for j in cols])
            for name, cols in self.groups
            if name
        }

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

    def run(
        self,
        window: pd.DataFrame,
        rng: np.random.Generator,
        strata: tuple[np.ndarray, np.ndarray] | None = None,
        factorized: FrameKeys | None = None,
    ) -> CheckResult:
        """Test one window; `strata`: the window's (with day type, without) strata when the
        caller has them (they must come from the same `Season`); `factorized`: the window's
        `FrameKeys`, when the caller shares them."""
        result = CheckResult("feature", n=len(window))
        index, seasonal = season_matched_sample(
            self.season,
            self._ref_frame,
            window,
            rng,
            min_rows=self.min_reference_rows,
            ref_strata=self.ref_strata,
            window_strata=strata,
        )
        if index is None:
            result.skipped = (
                f"the reference does not cover this window's {self.stratify_by} mix"
                if self.stratify_by
                else "reference too small"
            )
            return result
        x_ref, x = self.reference[index], self.encoder.encode(window, factorized)
        x_ref_raw, raw_window = x_ref.copy(), x.copy()
        self._pool_sparse_categories(x_ref, x)
        k = len(self.columns)
        p, stat = np.ones(k), np.zeros(k)
        n_ref, n_win = np.zeros(k, dtype=int), np.zeros(k, dtype=int)
        cats = set(self.encoder.categorical_index)
        for name, cols in self.groups:
            if name:
                # Rows whose entity has no features (a never-seen ad) are not one entity:
                # each stays a sample of its own.
                names = [self.columns[j] for j in cols]
                ri = distinct_rows(x_ref[:, cols], self._ref_lacks[name][index])
                wi = distinct_rows(x[:, cols], _lacks(window, names))
            else:
                ri, wi = np.arange(len(x_ref)), np.arange(len(x))
            test = self.detector.test(
                x_ref[np.ix_(ri, cols)],
                x[np.ix_(wi, cols)],
                [j for j, c in enumerate(cols) if c in cats],
            )
            p[cols], stat[cols] = test.p_values, test.statistics
            n_ref[cols], n_win[cols] = len(ri), len(wi)
        if self.ks_tolerance > 0:
            for j in range(k):
                if j not in cats:
                    p[j] = tolerance_p_value(stat[j], n_ref[j], n_win[j], self.ks_tolerance)
        threshold = corrected_threshold(p, self.detector.p_val, self.detector.correction)
        drifted = p < threshold
        best = int(np.argmin(p))
        result.is_drift = bool(drifted.any())
        result.p_value = float(p[best])
        result.statistic = float(stat[best])
        result.threshold = float(threshold)
        order = np.argsort(p, kind="stable")
        result.features = [self.columns[i] for i in order if drifted[i]]
        result.n_reference = len(index)
        shown = [self.columns[i] for i in order[: max(self.summary_features, len(result.features))]]
        result.details = {
            "p_values": {c: float(v) for c, v in zip(self.columns, p, strict=True)},
            "statistics": {c: float(s) for c, s in zip(self.columns, stat, strict=True)},
            "distinct_rows": {
                c: [int(a), int(b)] for c, a, b in zip(self.columns, n_ref, n_win, strict=True)
            },
            "correction": self.detector.correction,
            "p_val": self.detector.p_val,
            "ks_tolerance": self.ks_tolerance,
            "strongest": self.columns[best],
            "season_matched": seasonal,
            "summaries": {
                c: compare_summary(
                    x_ref_raw[:, self.columns.index(c)],
                    raw_window[:, self.columns.index(c)],
                    self.columns.index(c) in cats,
                    self.encoder.vocab.get(c),
                )
                for c in shown
            },
        }
        return result


class PredictionDriftCheck:
    """KS test of served scores against reference scores (context-matched, with the same
    KS tolerance as the features)."""

    def __init__(
        self, detector: DriftDetector, *, min_reference_rows: int = 50, ks_tolerance: float = 0.0
    ):
        self.detector = detector
        self.min_reference_rows = min_reference_rows
        self.ks_tolerance = float(ks_tolerance)

    def run(
        self,
        ref_scores: np.ndarray,
        ref_strata: np.ndarray | tuple[np.ndarray, np.ndarray],
        scores: np.ndarray,
        strata: np.ndarray | tuple[np.ndarray, np.ndarray],
        rng: np.random.Generator,
    ) -> CheckResult:
        """`ref_strata`/`strata` are one array, or (with day type, without) to try both."""
        result = CheckResult("prediction", n=len(scores))
        pairs = (
            list(zip(ref_strata, strata, strict=True))
            if isinstance(ref_strata, tuple) and isinstance(strata, tuple)
            else [(ref_strata, strata)]
        )
        index, seasonal = None, False
        for level, (rs, ws) in enumerate(pairs):
            index = matched_sample(rs, ws, rng, min_rows=self.min_reference_rows)
            if index is not None:
                seasonal = level == 0 and len(pairs) > 1
                break
        if index is None:
            result.skipped = "the reference predictions do not cover this window's mix"
            return result
        ref = np.asarray(ref_scores, dtype=np.float64)[index]
        win = np.asarray(scores, dtype=np.float64)
        test = self.detector.test(ref.reshape(-1, 1), win.reshape(-1, 1))
        p = float(test.p_values[0])
        if self.ks_tolerance > 0:
            p = tolerance_p_value(float(test.statistics[0]), len(ref), len(win), self.ks_tolerance)
        threshold = corrected_threshold(
            np.array([p]), self.detector.p_val, self.detector.correction
        )
        result.is_drift = p < threshold
        result.p_value = p
        result.statistic = float(test.statistics[0])
        result.threshold = float(threshold)
        result.features = ["prediction"] if result.is_drift else []
        result.n_reference = len(index)
        result.details = {
            "window_mean": float(np.mean(win)),
            "reference_mean": float(np.mean(ref)),
            "ks_tolerance": self.ks_tolerance,
            "season_matched": seasonal,
            "summaries": {"prediction": compare_summary(ref, win, False, None)},
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
            # The standard error of NE itself (delta method on log loss / H(click rate)):
            # a window with more clicks has both a higher loss and a higher entropy, so the
            # ratio is far steadier than the loss alone.
            rate = clicks / n
            slope = math.log((1 - rate) / rate)
            psi = (row_loss - log_loss) / h - (log_loss / h**2) * slope * (y - rate)
            se = float(psi.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
            z_ne = (ne - self.reference_ne) / se if se > 0 else 0.0
            p_ne = _normal_sf(z_ne)  # one-sided: only a worse model is drift
            details["normalized_entropy_se"] = se
            details["normalized_entropy_p_value"] = p_ne
            if ne - self.reference_ne > cfg.max_ne_increase and p_ne < cfg.p_val:
                findings.append(("normalized_entropy", ne, p_ne))
        # What the label-free estimate said about these very rows, beside what the labels
        # say: its error is the price of assuming the scores are still calibrated.
        est = estimate(p)
        real = realized(p, y)
        details.update(
            estimated=est.as_dict(),
            realized=real.as_dict(),
            estimate_error_ne=real.normalized_entropy - est.normalized_entropy,
        )
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


class EstimatedPerformanceCheck:
    """Label-free performance of a serving window (`kubeloop.drift.estimate`): the
    expected normalized entropy and AUC of its scores against those of the reference
    scores reweighted to the window's hour (and day-type) mix. A rise of the expected NE
    or a fall of the expected AUC beyond the config's margins, significant at `p_val`,
    alerts before any label has arrived."""

    def __init__(self, config: Any):
        self.config = config

    def run(
        self,
        ref_scores: np.ndarray,
        ref_strata: tuple[np.ndarray, np.ndarray],
        scores: np.ndarray,
        strata: tuple[np.ndarray, np.ndarray],
    ) -> CheckResult:
        cfg = self.config
        result = CheckResult("estimated_performance", n=len(scores), threshold=cfg.p_val)
        weights, seasonal = stratum_weights(ref_strata[0], strata[0]), True
        if weights is None:
            weights, seasonal = stratum_weights(ref_strata[1], strata[1]), False
        if weights is None:
            result.skipped = "the reference predictions do not cover this window's mix"
            return result
        keep = weights > 0
        ref_p = np.asarray(ref_scores, dtype=np.float64)[keep]
        ref_w = weights[keep]
        ref = estimate(ref_p, ref_w)
        win = estimate(scores)
        ne_increase = win.normalized_entropy - ref.normalized_entropy
        auc_drop = (ref.auc - win.auc) if ref.auc is not None and win.auc is not None else 0.0
        # Standard error of the window's expected NE (a mean of H(p) over its rows) and of
        # the reweighted reference's (effective size (sum w)^2 / sum w^2).
        h_win = binary_entropy(np.clip(scores, 1e-7, 1 - 1e-7))
        h_ref = binary_entropy(np.clip(ref_p, 1e-7, 1 - 1e-7))
        n_eff_ref = float(ref_w.sum() ** 2 / (ref_w**2).sum())
        denom = float(binary_entropy(ref.base_rate)) or 1.0
        se = (
            math.sqrt(
                float(h_win.var(ddof=1)) / max(len(h_win), 1)
                + float(h_ref.var()) / max(n_eff_ref, 1)
            )
            / denom
        )
        z = (ne_increase - cfg.max_ne_increase) / se if se > 0 else 0.0
        p_ne = _normal_sf(z) if ne_increase > cfg.max_ne_increase else 1.0
        result.details = {
            "estimated": win.as_dict(),
            "reference_estimated": ref.as_dict(),
            "ne_increase": ne_increase,
            "auc_drop": auc_drop,
            "max_ne_increase": cfg.max_ne_increase,
            "max_auc_drop": cfg.max_auc_drop,
            "season_matched": seasonal,
        }
        findings = []
        if p_ne < cfg.p_val:
            findings.append(("estimated_normalized_entropy", ne_increase, p_ne))
        if auc_drop > cfg.max_auc_drop and win.auc is not None:
            # The expected AUC is a function of the window's scores, so its uncertainty is
            # that of the rows the window happened to draw: a small bootstrap (only run
            # when the margin is crossed), deterministic per window size.
            rng = np.random.default_rng(len(scores))
            n = len(scores)
            boot = [expected_auc(np.asarray(scores)[rng.integers(0, n, n)]) for _ in range(30)]
            boot = [b for b in boot if b is not None]
            se_auc = float(np.std(boot, ddof=1)) if len(boot) > 2 else 0.0
            z = (auc_drop - cfg.max_auc_drop) / se_auc if se_auc > 0 else math.inf
            p_auc = _normal_sf(z)
            result.details["auc_drop_p_value"] = p_auc
            if p_auc < cfg.p_val:
                findings.append(("estimated_auc", auc_drop, p_auc))
        result.n_reference = int(keep.sum())
        if findings:
            result.is_drift = True
            result.features = [f[0] for f in findings]
            result.statistic, result.p_value = findings[0][1], findings[0][2]
        else:
            result.statistic, result.p_value = ne_increase, p_ne
        return result
