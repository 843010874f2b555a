"""The predictor's request plan gives exactly the arrays of the training transform for
validated request columns, from its memo of category codes once it has seen the values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _synthetic import make_training_frame

from kubeloop.serving.protocol import MODEL_FIELDS, parse_columns
from kubeloop.training.transform import FeatureTransform, model_input_columns
from models import request_plan
from models.request_plan import RequestPlan


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_training_frame(3000, seed=5, days=4)


@pytest.fixture(scope="module")
def fitted(frame: pd.DataFrame) -> FeatureTransform:
    return FeatureTransform.fit(frame)


def _valid_value(rng: np.random.Generator, column: str, frame: pd.DataFrame) -> object:
    """A value the predictor's validation passes for `column`: a training value (an
    integer-valued one as int or float), null, an unseen category, a big integer."""
    spec = MODEL_FIELDS[column]
    pick = rng.integers(0, 7)
    if pick == 0 and spec.nullable:
        return None
    if spec.kind == "string":
        if pick == 1:
            return f"unseen-{rng.integers(0, 50)}"
        value = frame[column].iloc[int(rng.integers(0, len(frame)))]
        return None if pd.isna(value) else str(value)
    if spec.kind == "int":
        lo = 0 if spec.minimum is None else spec.minimum
        hi = 10**6 if spec.maximum is None else spec.maximum
        return int(rng.integers(lo, hi + 1))
    if pick == 1:
        return int(rng.integers(-(2**62), 2**62))
    value = frame[column].iloc[int(rng.integers(0, len(frame)))]
    if pd.isna(value):
        return None
    value = float(value)
    if value.is_integer() and pick == 2:
        return int(value)  # 17 where training saw 17.0: the same category
    return value


def _batch(rng, frame, n: int) -> list[dict]:
    return [{c: _valid_value(rng, c, frame) for c in model_input_columns()} for _ in range(n)]


def _assert_same(got, want) -> None:
    np.testing.assert_array_equal(got.numeric, want.numeric)
    np.testing.assert_array_equal(got.categorical, want.categorical)
    np.testing.assert_array_equal(got.matrix(), want.matrix())
    assert got.names == want.names


@pytest.mark.parametrize("seed", range(4))
def test_plan_equals_the_training_transform_on_random_validated_rows(frame, fitted, seed):
    rng = np.random.default_rng(seed)
    plan = RequestPlan.of(fitted, MODEL_FIELDS)
    assert plan is not None
    for _ in range(12):
        records = _batch(rng, frame, int(rng.integers(1, 70)))
        parsed = parse_columns({"instances": records}, MODEL_FIELDS)
        want = fitted.transform(pd.DataFrame.from_records(records))
        # The first sight of a value fills the memo; the second answer comes from it.
        _assert_same(plan.transform(parsed.columns, parsed.n), want)
        _assert_same(plan.transform(parsed.columns, parsed.n), want)
        # With the matrix validation built (batches of 4 rows and more).
        _assert_same(plan.transform(parsed.columns, parsed.n, parsed.numbers), want)
        _assert_same(fitted.transform_columns(parsed.columns, parsed.n), want)
    assert all(size > 0 for size in plan.memo_sizes.values())


def test_memoized_values_skip_the_general_path(frame, fitted, monkeypatch):
    rng = np.random.default_rng(9)
    records = _batch(rng, frame, 40)
    parsed = parse_columns({"instances": records}, MODEL_FIELDS)
    plan = RequestPlan.of(fitted, MODEL_FIELDS)
    want = plan.transform(parsed.columns, parsed.n)
    calls = []
    real = FeatureTransform.transform_columns
    monkeypatch.setattr(
        FeatureTransform,
        "transform_columns",
        lambda self, *a, **k: calls.append(1) or real(self, *a, **k),
    )
    _assert_same(plan.transform(parsed.columns, parsed.n), want)
    assert not calls
    # One row of one row's values, reordered: still memoized.
    one = parse_columns({"instances": records[-1:]}, MODEL_FIELDS)
    _assert_same(plan.transform(one.columns, 1), want.take(np.array([39])))
    assert not calls
    # A category never seen goes through the transform itself.
    fresh = dict(records[0], device="never-seen-device")
    parsed = parse_columns({"instances": [fresh]}, MODEL_FIELDS)
    _assert_same(plan.transform(parsed.columns, 1), real(fitted, parsed.columns, 1))
    assert calls


def test_a_full_memo_still_answers_exactly(frame, fitted, monkeypatch):
    monkeypatch.setattr(request_plan, "MAX_MEMO_ENTRIES", 3)
    rng = np.random.default_rng(4)
    plan = RequestPlan.of(fitted, MODEL_FIELDS)
    for _ in range(5):
        records = _batch(rng, frame, 30)
        parsed = parse_columns({"instances": records}, MODEL_FIELDS)
        want = fitted.transform(pd.DataFrame.from_records(records))
        _assert_same(plan.transform(parsed.columns, parsed.n), want)
    assert max(plan.memo_sizes.values()) <= 3 + 30  # the cap stops growth after a batch
