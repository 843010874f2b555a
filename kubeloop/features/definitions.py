"""The Feast objects of the project: two entities, two feature views and one service.

They are built by a function, not declared at module level, because the offline tables'
location is only known at run time (a workdir, a pipeline artifact), and a module-level
FileSource would freeze one path at import.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow as pa

from kubeloop import schema

USER_ENTITY = "user"
AD_ENTITY = "ad"

# A feature row summarises up to 7 days of history and the ETL writes one row per
# entity per day, so a row older than 8 days is stale; the extra day covers an event
# late on the day after the last snapshot. The point-in-time join returns nulls past it.
DEFAULT_TTL = timedelta(days=8)


def _feast_dtype(arrow_type: pa.DataType):
    from feast.types import Float64, Int64, String

    if pa.types.is_int64(arrow_type):
        return Int64
    if pa.types.is_float64(arrow_type):
        return Float64
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return String
    raise TypeError(f"no Feast type for Arrow type {arrow_type}")


def _fields(table_schema: pa.Schema) -> list:
    from feast import Field

    # The join key is listed too: Feast then records it as the entity column instead of
    # inferring it by reading the file at apply time.
    return [
        Field(name=f.name, dtype=_feast_dtype(f.type))
        for f in table_schema
        if f.name != schema.FEATURE_TIMESTAMP
    ]


def build_definitions(features_dir: str | Path, ttl: timedelta = DEFAULT_TTL) -> list:
    """Build the Feast objects over the offline tables in `features_dir`.

    Returns, in this order: the `user` entity (join key `user_id`), the `ad` entity
    (join key `ad_id`), the feature views `schema.USER_FEATURE_VIEW` and
    `schema.AD_FEATURE_VIEW` over `user_features.parquet` / `ad_features.parquet`
    (timestamp field `schema.FEATURE_TIMESTAMP`), and the feature service
    `schema.FEATURE_SERVICE` with every feature of both views. Paths are stored
    absolute, so the registry works from any current directory.
    """
    from feast import Entity, FeatureService, FeatureView, FileSource, ValueType

    if ttl < timedelta(days=8):
        raise ValueError(f"ttl must be at least 8 days (a 7-day window plus a day), got {ttl}")
    root = Path(features_dir).expanduser().resolve()

    user = Entity(
        name=USER_ENTITY,
        join_keys=["user_id"],
        value_type=ValueType.INT64,
        description="A user who is shown ads.",
    )
    ad = Entity(
        name=AD_ENTITY,
        join_keys=["ad_id"],
        value_type=ValueType.INT64,
        description="An ad creative.",
    )
    user_source = FileSource(
        name=f"{schema.USER_FEATURE_VIEW}_source",
        path=str(root / schema.USER_FEATURES_FILE),
        timestamp_field=schema.FEATURE_TIMESTAMP,
    )
    ad_source = FileSource(
        name=f"{schema.AD_FEATURE_VIEW}_source",
        path=str(root / schema.AD_FEATURES_FILE),
        timestamp_field=schema.FEATURE_TIMESTAMP,
    )
    user_view = FeatureView(
        name=schema.USER_FEATURE_VIEW,
        entities=[user],
        ttl=ttl,
        schema=_fields(schema.USER_FEATURE_SCHEMA),
        source=user_source,
        online=True,
        description="User profile and 1-day / 7-day impression, click and CTR history.",
    )
    ad_view = FeatureView(
        name=schema.AD_FEATURE_VIEW,
        entities=[ad],
        ttl=ttl,
        schema=_fields(schema.AD_FEATURE_SCHEMA),
        source=ad_source,
        online=True,
        description="Ad attributes and 1-day / 7-day impression, click and CTR history.",
    )
    service = FeatureService(
        name=schema.FEATURE_SERVICE,
        features=[user_view, ad_view],
        description="Every feature the CTR model reads.",
    )
    return [user, ad, user_view, ad_view, service]
