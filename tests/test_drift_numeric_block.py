"""The numeric columns of a window read as one block (encoding, data quality) give what
reading them column by column gives: non-finite values are missing for the encoder (and
imputed), an infinity is not missing for the data-quality null rate but is never out of
range, and a column that is not numbers (a string in it) takes the per-column path."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kubeloop.drift.checks import (
    FeatureEncoder,
    FrameKeys,
    distinct_rows,
    factorized_keys,
    numeric_block,
)
from kubeloop.drift.config import DataQualityConfig
from kubeloop.drift.quality import DataQualityCheck

REFERENCE = pd.DataFrame(
    {
        "a": [1.0, 2.0, 3.0, 4.0, 5.0],
        "b": [10, 20, 30, 40, 50],
        "c": [0.5, 0.5, 0.5, 0.5, 0.5],
        "k": ["x", "x", "x", "y", "y"],
    }
)
WINDOW = pd.DataFrame(
    {
        "a": [np.inf, np.nan, 2.0, 9.0, -np.inf, 1.0],
        "b": [10, 60, 5, 20, 30, 40],
        "c": pd.Series([0.5, "abc", None, 0.7, 0.1, 0.5], dtype=object),
        "k": ["x", "z", None, "y", "x", "x"],
    }
)


def test_numeric_block_takes_only_number_columns_and_marks_non_finite():
    at, block = numeric_block(WINDOW, ["a", "b", "c", "k", "absent"])
    assert at == {"a": 0, "b": 1}
    assert np.isnan(block[[0, 1, 4], 0]).all() and block[2, 0] == 2.0
    assert block[:, 1].tolist() == [10, 60, 5, 20, 30, 40]
    _, raw = numeric_block(WINDOW, ["a"], finite=False)
    assert np.isinf(raw[[0, 4], 0]).all()


def test_the_encoder_imputes_every_missing_or_non_finite_number_with_the_median():
    encoder = FeatureEncoder(REFERENCE, ["a", "b", "c", "k"], ["k"], min_category_count=1)
    x = encoder.encode(WINDOW)
    assert x[:, 0].tolist() == [3.0, 3.0, 2.0, 9.0, 3.0, 1.0]
    assert x[:, 1].tolist() == [10, 60, 5, 20, 30, 40]
    # "abc" and None are missing: the median 0.5.
    assert x[:, 2].tolist() == [0.5, 0.5, 0.5, 0.7, 0.1, 0.5]
    assert x[:, 3].tolist() == [1.0, 0.0, 0.0, 2.0, 1.0, 1.0]  # z and missing: "other"
    # Shared keys give the same matrix.
    assert np.array_equal(encoder.encode(WINDOW, FrameKeys(WINDOW)), x)


def test_data_quality_counts_missing_and_out_of_range_per_column():
    check = DataQualityCheck(REFERENCE, ["k"], DataQualityConfig())
    result = check.run(WINDOW)
    counts = {(c["feature"], c["check"]): c["count"] for c in result.details["checks"]}
    assert counts[("a", "null")] == 1  # NaN only: an infinity is a value
    assert counts[("a", "out_of_range")] == 1  # 9.0; infinities are not finite values
    assert counts[("b", "null")] == 0
    assert counts[("b", "out_of_range")] == 2  # 60 and 5
    assert counts[("c", "null")] == 1  # None ("abc" is present, just not a number)
    assert counts[("c", "out_of_range")] == 2  # 0.7 and 0.1 outside [0.5, 0.5]
    assert counts[("k", "unseen")] == 1  # z
    assert [c["feature"] for c in result.details["checks"]] == [
        "a", "a", "b", "b", "c", "c", "k", "k",
    ]  # fmt: skip
    shared = check.run(WINDOW, None, FrameKeys(WINDOW))
    assert shared.details == result.details


def test_frame_keys_factorize_each_column_once():
    keys = FrameKeys(WINDOW)
    first = keys("k")
    assert keys("k") is first
    codes, names = factorized_keys(WINDOW["k"])
    assert np.array_equal(first[0], codes) and first[1] == names


def _first_rows_pairwise(x: np.ndarray) -> list[int]:
    """The first occurrence of every distinct row, found by comparing rows pairwise."""
    seen: list[np.ndarray] = []
    first = []
    for i, row in enumerate(x):
        if not any(np.array_equal(row, s) for s in seen):
            seen.append(row)
            first.append(i)
    return first


def test_distinct_rows_merge_equal_rows_and_keep_nan_rows_apart():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, size=(300, 4)).astype(np.float64)
    assert distinct_rows(x).tolist() == _first_rows_pairwise(x)
    # -0.0 equals 0.0: one row.
    signed = np.array([[0.0, 1.0], [-0.0, 1.0], [2.0, 1.0]])
    assert distinct_rows(signed).tolist() == [0, 2]
    # NaN never equals itself: both NaN rows stay, as do the kept ones.
    nan = np.array([[np.nan, 1.0], [np.nan, 1.0], [3.0, 1.0], [3.0, 1.0]])
    assert distinct_rows(nan).tolist() == [0, 1, 2]
    assert distinct_rows(signed, keep=np.array([False, True, False])).tolist() == [0, 1, 2]


def test_distinct_rows_never_merge_rows_whose_hashes_collide(monkeypatch):
    from kubeloop.drift import checks

    rng = np.random.default_rng(6)
    x = rng.integers(0, 4, size=(200, 3)).astype(np.float64)
    expected = _first_rows_pairwise(x)
    # Every row hashes alike: the comparison with the first row of its hash finds it.
    monkeypatch.setattr(checks, "_row_hash_multipliers", lambda k: np.zeros(k, dtype=np.uint64))
    assert distinct_rows(x).tolist() == expected
