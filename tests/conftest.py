"""Shared fixtures: the services integration tests need.

A test that needs Redis or PostgreSQL skips, with the reason, when the service is not
reachable on a developer's machine; under CI (CI=true) the service must be there, so the
same situation fails instead of silently skipping.
"""

from __future__ import annotations

import os

import pytest

REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: integration services are required)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the Redis server at 127.0.0.1:6379; skips (fails under CI=true) if unreachable."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        _skip_or_fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of PostgreSQL at 127.0.0.1:5432 (user postgres, database test); skips (fails
    under CI=true) if unreachable."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        _skip_or_fail(f"PostgreSQL is not reachable at {POSTGRES_DSN}: {exc}")
    return POSTGRES_DSN


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession for the whole test session (a JVM start costs many seconds);
    skips (fails under CI=true) when no Java runtime is installed. The feature build's Spark
    engine reuses it as the active session."""
    from kubeloop.features.spark_job import SparkSettings, java_available, session_builder

    if not java_available():
        _skip_or_fail("engine spark needs a Java runtime (java on PATH or JAVA_HOME); none found")
    session = session_builder(SparkSettings(master="local[2]", shuffle_partitions=2)).getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
