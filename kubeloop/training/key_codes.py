"""Category keys of a whole column, computed once per distinct value.

The feature transform keys every categorical value by its canonical text
(`transform.category_key`). On the training path a column holds millions of rows but a
few thousand distinct values, so `KeyCodes` holds the keys once (`keys`) and one integer
per row (`codes`, -1 where the key is None, i.e. missing): pandas factorizes the column
in C and `category_key` runs on the distinct values only. The result is exactly what
`category_key` gives row by row (the transform's tests compare both paths), including
the cases where Python equality and the key disagree (`True == 1`, but their keys are
"True" and "1"), which take the row-by-row path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MISSING = -1


@dataclass(frozen=True)
class KeyCodes:
    """`keys[codes[i]]` is row i's key, `codes[i] == MISSING` where it has none; `keys`
    are distinct."""

    codes: np.ndarray
    keys: list[str]

    @classmethod
    def canonical(cls, codes: np.ndarray, keys: Sequence[str | None]) -> KeyCodes:
        """From `codes` into `keys` that may repeat or be None: equal keys share one code,
        None becomes MISSING."""
        key_codes, distinct = pd.factorize(np.array(keys, dtype=object), use_na_sentinel=True)
        remap = np.append(key_codes.astype(np.int64), MISSING)  # codes of -1 stay -1
        return cls(remap[codes], [str(k) for k in distinct])

    def counts(self) -> np.ndarray:
        """Rows per key, in the order of `keys`."""
        return np.bincount(self.codes[self.codes != MISSING], minlength=len(self.keys))

    def lookup(self, index: dict[str, int], default: int) -> np.ndarray:
        """`index[key]` of every row (int64), `default` for a missing row or an absent key."""
        table = np.array([index.get(k, default) for k in self.keys] + [default], dtype=np.int64)
        return table[self.codes]

    def crossed(self, other: KeyCodes) -> KeyCodes:
        """The keys f"{a}|{b}" of each row's pair, missing when either side is."""
        width = len(other.keys)
        present = (self.codes != MISSING) & (other.codes != MISSING)
        pairs = self.codes.astype(np.int64) * width + other.codes
        pair_codes, distinct = pd.factorize(pairs[present])
        codes = np.full(len(pairs), MISSING, dtype=np.int64)
        codes[present] = pair_codes
        keys = [f"{self.keys[p // width]}|{other.keys[p % width]}" for p in distinct.tolist()]
        # Two pairs can print alike when a key holds "|": canonical() merges them, as the
        # row-by-row keys would.
        return KeyCodes.canonical(codes, keys)


def _is_text(series: pd.Series) -> bool:
    """Strings and missing values only (factorize and category_key then agree)."""
    return pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty")


def column_key_codes(series: pd.Series, key: Callable[[Any], str | None]) -> KeyCodes:
    """`key` (the transform's `category_key`) of every value of `series`, as KeyCodes.

    A numeric column is read as float64 first, as the row-by-row path reads it."""
    dtype = series.dtype
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        return KeyCodes.canonical(codes, [key(float(u)) for u in uniques.tolist()])
    if not isinstance(dtype, pd.CategoricalDtype) and _is_text(series):
        values = series.astype(object).to_numpy()
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        # factorize's missing values (None, NaN, pd.NA, NaT) must be category_key's too;
        # one of each type tells (NaN objects are not equal, so a set would keep them all).
        missing = {type(v): v for v in values[codes == MISSING].tolist()}
        if all(key(v) is None for v in missing.values()):
            return KeyCodes.canonical(codes, [key(u) for u in uniques.tolist()])
    keys = [key(v) for v in series.astype(object).tolist()]
    return KeyCodes.canonical(np.arange(len(keys), dtype=np.int64), keys)
