"""The training path's category keys, computed once per distinct value, are exactly the
keys `category_key` gives row by row, and the fitted vocabularies and codes are the ones
the row-by-row algorithm gives (so trained models do not change)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _synthetic import make_training_frame

from kubeloop.training.key_codes import MISSING, column_key_codes
from kubeloop.training.transform import FeatureTransform, category_key


def row_keys(series: pd.Series) -> list[str | None]:
    """The row-by-row keys: the oracle (numeric columns are read as float64 first)."""
    dtype = series.dtype
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        return [category_key(float(v)) for v in series.to_numpy(np.float64, na_value=np.nan)]
    return [category_key(v) for v in series.astype(object).tolist()]


def decoded(series: pd.Series) -> list[str | None]:
    found = column_key_codes(series, category_key)
    assert len(set(found.keys)) == len(found.keys), "keys must be distinct"
    return [None if c == MISSING else found.keys[c] for c in found.codes.tolist()]


AWKWARD = {
    "floats with ids, inf, -0.0, NaN": pd.Series([17.0, 17, np.inf, -0.0, 0.0, np.nan, 2.5]),
    "nullable ints": pd.Series([1, None, 3, 1], dtype="Int64"),
    "strings with missing": pd.Series(["a", None, "b", np.nan, "a", pd.NA], dtype=object),
    "pandas string dtype": pd.Series(["x", None, "y"], dtype="string"),
    "arrow strings": pd.Series(["x", None, "y"], dtype="string[pyarrow]"),
    "True == 1 but keys differ": pd.Series([True, 1, 1.0, "1", None, False, 0], dtype=object),
    "NaT is no missing key": pd.Series(["a", pd.NaT, None], dtype=object),
    "booleans": pd.Series([True, False, True]),
    "categorical dtype": pd.Series(pd.Categorical(["u", "v", None, "u"])),
    "all missing": pd.Series([None, None], dtype=object),
    "empty": pd.Series([], dtype=object),
}


@pytest.mark.parametrize("name", list(AWKWARD))
def test_column_keys_equal_the_row_by_row_keys(name):
    series = AWKWARD[name]
    assert decoded(series) == row_keys(series)


def test_crossed_keys_equal_the_row_by_row_pairs():
    # "a|b" + "c" and "a" + "b|c" print alike: one key, as the row-by-row path has it.
    a = pd.Series(["a|b", "a", None, "a", "z"], dtype=object)
    b = pd.Series(["c", "b|c", "c", None, "c"], dtype=object)
    crossed = column_key_codes(a, category_key).crossed(column_key_codes(b, category_key))
    got = [None if c == MISSING else crossed.keys[c] for c in crossed.codes.tolist()]
    assert got == ["a|b|c", "a|b|c", None, None, "z|c"]
    assert crossed.counts().tolist() == [2 if k == "a|b|c" else 1 for k in crossed.keys]


def _row_by_row_vocabularies(frame: pd.DataFrame, fitted: FeatureTransform) -> dict:
    """The vocabularies the row-by-row algorithm fits with `fitted`'s config."""
    cfg = fitted.config
    crosses = {f"{a}_x_{b}": (a, b) for a, b in cfg.crosses or []}
    out = {}
    for col in fitted.vocabularies:
        if col in crosses:
            a, b = (row_keys(frame[c]) for c in crosses[col])
            keys = [f"{x}|{y}" if x is not None and y is not None else None for x, y in zip(a, b)]
        else:
            keys = row_keys(frame[col])
        counts = pd.Series(keys, dtype=object).dropna().value_counts()
        kept = sorted(
            ((k, int(n)) for k, n in counts.items() if n >= cfg.min_count),
            key=lambda kv: (-kv[1], kv[0]),
        )
        out[col] = [k for k, _ in kept[: cfg.max_vocab]]
    return out


def test_fit_and_transform_equal_the_row_by_row_algorithm():
    frame = make_training_frame(4000, seed=11, days=4)
    fitted = FeatureTransform.fit(frame)
    assert fitted.vocabularies == _row_by_row_vocabularies(frame, fitted)
    # The frame path's codes equal the serving path's, which keys row by row.
    records = frame.head(300).astype(object).where(frame.head(300).notna(), None)
    columns = {c: records[c].tolist() for c in fitted.input_columns}
    np.testing.assert_array_equal(
        fitted.transform(frame.head(300)).categorical,
        fitted.transform_columns(columns).categorical,
    )
