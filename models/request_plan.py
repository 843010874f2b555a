"""The predictor's request plan: a fitted `FeatureTransform` applied to VALIDATED request
columns, without the per-value Python work of its general fast path.

`FeatureTransform.transform_columns` takes whatever a caller hands it (strings in a number
column, numpy arrays, mixed types) and so reads every categorical value through
`category_key` and a vocabulary lookup, and recomputes its output names, on every call. The
predictor's columns are narrower: `kubeloop.serving.protocol` has checked that a number or
integer field holds only ints, finite floats and None, and a string field only strings and
None. For such a column the category key of a value does not depend on the other values of
its column, so the vocabulary code of a value (or of a pair of values, for a crossed column)
is a function of that value alone. The plan memoizes it per categorical output column, and
fills the memo from the transform's own output: a batch holding a value not memoized yet
goes through `transform_columns` as before, and its codes are remembered. A later batch of
memoized values costs one C-level dict lookup per value. The numeric columns go through the
transform's own numeric plan (`raw_of_lists` + `apply_raw`, what `transform_columns` runs).

So `RequestPlan.transform(columns, n)` gives exactly what `transform_columns(columns, n)`
gives (tests/test_request_plan.py checks it against the training path `transform()` on
random rows with nulls, unseen categories and integer-valued floats), only faster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kubeloop.serving.protocol import FieldSet, number_fields
from kubeloop.training.transform import FeatureTransform, TransformedBatch, cross_name

# Entries kept per output column: a column with more distinct values (ids with no end)
# stops memoizing new ones; their batches take the transform's own path.
MAX_MEMO_ENTRIES = 100_000


class RequestPlan:
    """`transform` read for request columns validated against `fields` (see the module
    docstring). Build it with `RequestPlan.of(transform, fields)`."""

    def __init__(
        self,
        transform: FeatureTransform,
        numeric_plan: Any,
        outputs: Sequence[tuple[str, ...]],
        number_index: np.ndarray,
    ):
        self._transform = transform
        self._numeric = numeric_plan
        # Where the numeric plan's columns sit in a request's `numbers` matrix.
        self._number_index = number_index
        # Per categorical output column, in output order: the input column(s) it reads
        # (two for a cross) and the memo of their value (or value pair) -> code.
        self._outputs = tuple(outputs)
        self._memos: list[dict[Any, int]] = [{} for _ in self._outputs]
        self._numeric_names = tuple(transform.numeric_names)
        self._categorical_names = tuple(transform.categorical_names)

    @classmethod
    def of(cls, transform: FeatureTransform, fields: FieldSet) -> RequestPlan | None:
        """The plan of `transform` for requests of `fields`, or None when a column it reads
        is not a validated request field of the kind the memo relies on (the predictor
        then calls `transform_columns`)."""
        kinds = {spec.name: spec.kind for spec in fields.fields}
        numeric_plan = getattr(transform, "_plan", None)
        if numeric_plan is None or not hasattr(numeric_plan, "raw_of_lists"):
            return None
        if any(kinds.get(c) not in ("int", "number") for c in numeric_plan.columns):
            return None
        crosses = {cross_name(a, b): (a, b) for a, b in transform.config.crosses or []}
        outputs = [crosses.get(c, (c,)) for c in transform.categorical_names]
        if any(c not in kinds for inputs in outputs for c in inputs):
            return None
        where = {name: j for j, name in enumerate(number_fields(fields))}
        number_index = np.array([where[c] for c in numeric_plan.columns], dtype=np.intp)
        return cls(transform, numeric_plan, outputs, number_index)

    def transform(
        self, columns: Mapping[str, list[Any]], n: int, numbers: np.ndarray | None = None
    ) -> TransformedBatch:
        """`transform_columns(columns, n)` of validated request columns (lists, one value
        per row); `numbers`, the request's `ParsedColumns.numbers` when validation built
        it (its numeric columns as one float64 matrix, NaN for null), saves reading them
        again."""
        if numbers is not None:
            raw = numbers[:, self._number_index]
        else:
            # The numeric plan's `raw_of_lists` without its check of the value types,
            # which validation has made: ints, floats and None (NaN), one float64 matrix.
            try:
                raw = np.array([columns[c] for c in self._numeric.columns], dtype=np.float64).T
            except (TypeError, ValueError):  # not plain numbers: not what validation passes
                return self._transform.transform_columns(columns, n)
            raw[~np.isfinite(raw)] = np.nan
        keys = [
            columns[inputs[0]] if len(inputs) == 1 else list(zip(*(columns[c] for c in inputs)))
            for inputs in self._outputs
        ]
        try:
            codes = [list(map(memo.__getitem__, values)) for memo, values in zip(self._memos, keys)]
        except (KeyError, TypeError):  # a value not memoized yet (TypeError: unhashable)
            return self._learn(columns, n, keys)
        categorical = (
            np.array(codes, dtype=np.int64).T.copy() if codes else np.zeros((n, 0), dtype=np.int64)
        )
        return TransformedBatch(
            self._numeric.apply_raw(raw),
            categorical,
            self._numeric_names,
            self._categorical_names,
        )

    def _learn(
        self, columns: Mapping[str, list[Any]], n: int, keys: list[list[Any]]
    ) -> TransformedBatch:
        """The transform's own answer, whose codes fill the memos."""
        batch = self._transform.transform_columns(columns, n)
        for j, (memo, values) in enumerate(zip(self._memos, keys)):
            if len(memo) >= MAX_MEMO_ENTRIES:
                continue
            for value, code in zip(values, batch.categorical[:, j].tolist()):
                try:
                    memo.setdefault(value, code)
                except TypeError:  # unhashable: never memoized, always the slow path
                    break
        return batch

    @property
    def memo_sizes(self) -> dict[str, int]:
        """Entries memoized per categorical output column."""
        return dict(zip(self._categorical_names, map(len, self._memos)))
