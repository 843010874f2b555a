"""OnlineReader (kubeloop.features.online): the transformer's lookup through Feast's
online-store read API gives exactly the values of Feast's `get_online_features`
(`online_features`), for known and unknown entities, on SQLite and Redis."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from test_feature_store import AD_ROWS, USER_ROWS, store, store_and_summary  # noqa: F401
from test_online_stores import redis_store  # noqa: F401

from kubeloop.errors import FeatureStoreError
from kubeloop.features.online import OnlineReader, online_columns, online_features

pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def _plain(value):
    """A DataFrame cell as the reader's Python value (None for every kind of missing)."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _rows():
    pairs = [(u, a) for u in [*USER_ROWS, 404] for a in [*AD_ROWS, 999]]
    return [{"user_id": u, "ad_id": a} for u, a in pairs]


def _assert_reader_equals_feast(feast_store):
    rows = _rows()
    # One request time for both: the request-time recency is measured to it.
    now = 1_800_000_000_000_000
    got = OnlineReader(feast_store).read(rows, now)
    expected = online_features(feast_store, rows, now=now)
    assert list(got) == online_columns()
    for name in online_columns():
        want = [_plain(v) for v in expected[name].tolist()]
        assert got[name] == want, name
        assert [type(v) for v in got[name]] == [type(v) for v in want], name


def test_reader_equals_get_online_features_on_sqlite(store):  # noqa: F811
    _assert_reader_equals_feast(store)


def test_reader_batch_of_none_and_missing_keys(store):  # noqa: F811
    reader = OnlineReader(store)
    assert reader.read([]) == {name: [] for name in online_columns()}
    with pytest.raises(FeatureStoreError, match="no ad_id"):
        reader.read([{"user_id": 1}])


@pytest.mark.redis
def test_reader_equals_get_online_features_on_redis(redis_store):  # noqa: F811
    _assert_reader_equals_feast(redis_store[0])
