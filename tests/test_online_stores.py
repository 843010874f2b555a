"""The online store backends answer alike: SQLite (embedded) against Redis (cluster)."""

from __future__ import annotations

import uuid

import pandas as pd
import pytest
from test_feature_store import AD_ROWS, USER_ROWS, make_store

from kubeloop.features.online import online_features
from kubeloop.features.store import FeatureStoreSettings, RedisStoreConfig

pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

KEY_TTL_SECONDS = 3600


@pytest.fixture
def redis_store(redis_url, tmp_path):
    """A Redis-backed repository under a project name of its own, removed afterwards.

    Redis is shared by every test run on the machine; Feast suffixes each key with the
    project name, so a unique project keeps concurrent runs apart and lets teardown
    delete exactly this run's keys.
    """
    import redis

    project = f"kl_test_{uuid.uuid4().hex[:12]}"
    settings = FeatureStoreSettings(
        project=project,
        online_store=RedisStoreConfig(connection_string=redis_url, key_ttl_seconds=KEY_TTL_SECONDS),
    )
    client = redis.Redis.from_url(redis_url)
    pattern = f"*{project}"
    store = None
    try:
        store, summary = make_store(tmp_path / "redis", settings)
        yield store, summary, client, pattern
    finally:
        # a test may have torn the store down already, deleting its registry
        if store is not None and (tmp_path / "redis" / "repo" / "registry.db").exists():
            store.teardown()
        # teardown removes entity keys; this also catches anything a failed run left behind
        stale = list(client.scan_iter(match=pattern))
        if stale:
            client.delete(*stale)
        client.close()


@pytest.mark.redis
def test_sqlite_and_redis_give_the_same_answers(redis_store, tmp_path):
    store, redis_summary, client, pattern = redis_store
    sqlite, sqlite_summary = make_store(tmp_path / "sqlite")

    assert redis_summary.online_store == "redis" and sqlite_summary.online_store == "sqlite"
    assert redis_summary.rows_online == sqlite_summary.rows_online == 5

    rows = [{"user_id": u, "ad_id": a} for u in [*USER_ROWS, 404] for a in [*AD_ROWS, 505]]
    from_redis = online_features(store, rows)
    from_sqlite = online_features(sqlite, rows)
    pd.testing.assert_frame_equal(from_redis, from_sqlite)
    assert from_redis["user_segment"].notna().sum() == len(USER_ROWS) * (len(AD_ROWS) + 1)

    # One Redis hash per entity key, each expiring as configured.
    keys = list(client.scan_iter(match=pattern))
    assert len(keys) == redis_summary.rows_online
    assert all(0 < client.ttl(key) <= KEY_TTL_SECONDS for key in keys)


@pytest.mark.redis
def test_redis_teardown_leaves_no_keys(redis_store):
    store, _, client, pattern = redis_store
    assert list(client.scan_iter(match=pattern))
    store.teardown()
    assert not list(client.scan_iter(match=pattern))
