"""The feature transform: the same arrays on the training path (a whole frame) and the
serving path (one JSON-like dict per request), and no crash on unseen or missing values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from _synthetic import make_training_frame

from kubeloop.training.transform import (
    UNKNOWN_INDEX,
    FeatureTransform,
    TransformConfig,
    TransformError,
    model_input_columns,
)
from usecases.ctr import schema


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_training_frame(3000, seed=3, days=4)


@pytest.fixture(scope="module")
def fitted(frame: pd.DataFrame) -> FeatureTransform:
    return FeatureTransform.fit(frame)


def _json_like(value):
    """What a value looks like after a JSON request and a Feast online lookup."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        # counts and ids come back as ints online; they are floats offline only because
        # the point-in-time join put NaN in the column
        return int(value) if float(value).is_integer() else float(value)
    return value


def _records(frame: pd.DataFrame) -> list[dict]:
    cols = model_input_columns()
    return [
        {c: _json_like(v) for c, v in zip(cols, row)}
        for row in frame[cols].astype(object).itertuples(index=False)
    ]


def test_model_inputs_are_features_only():
    cols = model_input_columns()
    forbidden = {"event_id", "event_timestamp", "user_id", "ad_id", schema.LABEL, schema.ORACLE}
    assert not forbidden & set(cols)
    assert set(cols) == set(
        schema.CONTEXT_NUMERIC
        + schema.CONTEXT_CATEGORICAL
        + schema.USER_FEATURES
        + schema.AD_FEATURES
        + schema.REQUEST_FEATURES
    )
    assert set(cols) <= set(schema.TRAINING_COLUMNS)


def test_output_shapes_types_and_names(frame, fitted):
    batch = fitted.transform(frame)
    assert batch.numeric.dtype == np.float32 and batch.categorical.dtype == np.int64
    assert batch.numeric.shape == (len(frame), len(batch.numeric_names))
    assert batch.categorical.shape == (len(frame), len(batch.categorical_names))
    assert np.isfinite(batch.numeric).all()
    assert len(set(batch.names)) == len(batch.names)
    assert (batch.categorical >= 0).all()
    assert (batch.categorical < np.array(fitted.cardinalities)).all()


def test_train_and_serve_paths_give_identical_arrays(frame, fitted):
    full = fitted.transform(frame)
    # rows with cold-start (missing) features and missing categories must be in the sample
    cold = np.flatnonzero(frame["user_ctr_7d"].isna().to_numpy())[:20]
    none_cat = np.flatnonzero(frame["device"].isna().to_numpy())[:10]
    rows = np.unique(np.concatenate([np.arange(0, len(frame), 37), cold, none_cat]))
    assert len(cold) and len(none_cat)
    records = _records(frame.iloc[rows])
    assert any(r["user_ctr_7d"] is None for r in records)
    assert any(isinstance(r["user_impressions_7d"], int) for r in records)

    one_by_one = [fitted.transform_records([r]) for r in records]
    numeric = np.vstack([b.numeric for b in one_by_one])
    categorical = np.vstack([b.categorical for b in one_by_one])
    assert np.array_equal(numeric, full.numeric[rows])
    assert np.array_equal(categorical, full.categorical[rows])
    assert one_by_one[0].names == full.names
    # the same rows as one request batch
    together = fitted.transform_records(records)
    assert np.array_equal(together.numeric, full.numeric[rows])
    assert np.array_equal(together.categorical, full.categorical[rows])


def test_unknown_and_missing_values_map_to_defaults(fitted):
    record = {c: None for c in model_input_columns()}
    record.update(device="smart-fridge", user_country="XX", advertiser_id=999_999, hour=25)
    batch = fitted.transform_records([record])
    assert (batch.categorical == UNKNOWN_INDEX).all()
    assert np.isfinite(batch.numeric).all()
    values = dict(zip(batch.numeric_names, batch.numeric[0]))
    assert values["user_ctr_7d_missing"] == 1.0
    assert values["user_ctr_7d"] == pytest.approx(fitted.base_rate)
    assert values["user_impressions_7d"] == 0.0  # log1p of "no history" = 0 impressions
    assert values["ad_hours_since_last_missing"] == 1.0
    assert values["ad_hours_since_last"] == pytest.approx(
        math.log1p(fitted.config.hours_since_default)
    )


def test_integer_ids_are_one_category_whatever_their_type(frame, fitted):
    known = fitted.vocabularies["advertiser_id"][0]
    rows = [
        {**{c: None for c in model_input_columns()}, "advertiser_id": v}
        for v in (int(known), float(known), str(known), np.int64(known))
    ]
    codes = fitted.transform_records(rows).categorical[
        :, fitted.categorical_names.index("advertiser_id")
    ]
    assert (codes == 1).all()


def test_rare_categories_map_to_unknown():
    df = make_training_frame(500, seed=1, days=2)
    df["device"] = ["rare" if i == 0 else "common" for i in range(len(df))]
    ft = FeatureTransform.fit(df, TransformConfig(min_count=2))
    assert ft.vocabularies["device"] == ["common"]
    codes = ft.transform(df.iloc[:2]).categorical[:, ft.categorical_names.index("device")]
    assert codes.tolist() == [UNKNOWN_INDEX, 1]


def test_save_load_roundtrip(tmp_path, frame, fitted):
    path = fitted.save(tmp_path / "transform.json")
    loaded = FeatureTransform.load(path)
    assert loaded == fitted
    a, b = fitted.transform(frame), loaded.transform(frame)
    assert np.array_equal(a.numeric, b.numeric) and np.array_equal(a.categorical, b.categorical)


def test_column_order_and_extra_columns_do_not_matter(frame, fitted):
    shuffled = frame[list(reversed(frame.columns))].assign(extra=1)
    a, b = fitted.transform(frame), fitted.transform(shuffled)
    assert np.array_equal(a.numeric, b.numeric) and np.array_equal(a.categorical, b.categorical)


def test_missing_column_is_a_clear_error(frame, fitted):
    with pytest.raises(TransformError, match="user_ctr_7d"):
        fitted.transform(frame.drop(columns=["user_ctr_7d"]))


def test_config_forbids_unknown_keys():
    with pytest.raises(ValueError):
        TransformConfig(min_cnt=3)


def test_nullable_and_arrow_dtypes_give_the_same_arrays(frame, fitted):
    # a frame read back from Parquet may carry pandas nullable or Arrow-backed dtypes
    a = fitted.transform(frame)
    for variant in (frame.convert_dtypes(), frame.convert_dtypes(dtype_backend="pyarrow")):
        b = fitted.transform(variant)
        assert np.array_equal(a.numeric, b.numeric)
        assert np.array_equal(a.categorical, b.categorical)


def test_crossed_columns(frame, fitted):
    name = "user_segment_x_ad_category"
    assert (
        name in fitted.categorical_names and "device_x_user_device_pref" in fitted.categorical_names
    )
    assert name not in fitted.input_columns and set(fitted.input_columns) == set(
        model_input_columns()
    )
    col = fitted.categorical_names.index(name)
    row = frame.iloc[[0]]
    expected = f"{row['user_segment'].iloc[0]}|{row['ad_category'].iloc[0]}"
    code = fitted.transform(row).categorical[0, col]
    assert fitted.vocabularies[name][code - 1] == expected
    # one missing side makes the cross unknown
    assert fitted.transform(row.assign(user_segment=None)).categorical[0, col] == UNKNOWN_INDEX
    # a cross must pair two of the use case's categorical inputs (an entity key is none)
    with pytest.raises(TransformError, match="user_id"):
        FeatureTransform.fit(frame, TransformConfig(crosses=[("user_segment", "user_id")]))
    plain = FeatureTransform.fit(frame, TransformConfig(crosses=[]))
    assert name not in plain.categorical_names


def _random_value(rng: np.random.Generator, column: str, frame: pd.DataFrame, categorical: bool):
    """A value a request could carry for `column`: a training value, null, NaN, an
    unseen category (string or id), an integer where training saw floats, or inf."""
    pick = rng.integers(0, 8)
    if pick == 0:
        return None
    if pick == 1:
        return float("nan")
    if pick == 2 and categorical:
        return f"unseen-{rng.integers(0, 10**6)}"
    if pick == 3:
        return int(rng.integers(-5, 10**7))
    if pick == 4 and not categorical:
        return float(rng.choice([np.inf, -np.inf, -1.5, 1e12]))
    return _json_like(frame[column].iloc[int(rng.integers(0, len(frame)))])


@pytest.mark.parametrize("seed", range(6))
def test_fast_path_equals_the_training_path_on_random_rows(frame, fitted, seed):
    """transform_records/transform_columns (the serving path, no DataFrame) give exactly
    the arrays of transform(DataFrame) for random batches: nulls, NaN, inf, unseen
    categories, ints where training saw floats, whole-null columns, 1 to 70 rows."""
    rng = np.random.default_rng(seed)
    categorical = set(fitted.vocabularies)
    cols = model_input_columns()
    for _ in range(15):
        n = int(rng.integers(1, 71))
        all_null = {c for c in cols if rng.random() < 0.1}
        records = [
            {
                c: None if c in all_null else _random_value(rng, c, frame, c in categorical)
                for c in cols
            }
            for _ in range(n)
        ]
        slow = fitted.transform(pd.DataFrame.from_records(records))
        fast = fitted.transform_records(records)
        columns = fitted.transform_columns({c: [r[c] for r in records] for c in cols})
        for got in (fast, columns):
            np.testing.assert_array_equal(got.numeric, slow.numeric)
            np.testing.assert_array_equal(got.categorical, slow.categorical)
            assert got.names == slow.names


def test_fast_path_takes_numpy_columns(frame, fitted):
    """v2 binary tensors arrive as numpy arrays: the same arrays as the frame path."""
    sample = frame.head(50)
    cols = model_input_columns()
    columns = {
        c: sample[c].to_numpy(dtype=np.float64)
        if pd.api.types.is_numeric_dtype(sample[c].dtype)
        else sample[c].astype(object).to_numpy()
        for c in cols
    }
    slow = fitted.transform(sample[cols])
    fast = fitted.transform_columns(columns)
    np.testing.assert_array_equal(fast.numeric, slow.numeric)
    np.testing.assert_array_equal(fast.categorical, slow.categorical)


def test_fast_path_missing_column_is_the_same_clear_error(fitted):
    columns = {c: [None] for c in model_input_columns()[1:]}
    with pytest.raises(TransformError, match=model_input_columns()[0]):
        fitted.transform_columns(columns)
