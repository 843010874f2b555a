"""The ad-CTR use case's column contracts: the lake's events, the offline feature tables
and the model's inputs. One place, so that generator, ETL, Feast, trainers and servers
cannot disagree on a name or a type. The engine reads them only through the use case
spec (`usecases.ctr.usecase.USE_CASE`)."""

from __future__ import annotations

import pyarrow as pa

from kubeloop.usecase import EVENTS_DIR, FEATURE_TIMESTAMP, PARTITION_KEY, TIMESTAMP

__all__ = ["EVENTS_DIR", "FEATURE_TIMESTAMP", "PARTITION_KEY", "TIMESTAMP"]

# One row per ad impression, as written to the lake (Parquet, hive-partitioned by `day`).
EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("event_timestamp", TIMESTAMP),
        ("user_id", pa.int64()),
        ("ad_id", pa.int64()),
        # static user attributes, denormalised into the log as a real impression log would
        ("user_segment", pa.string()),
        ("user_country", pa.string()),
        ("user_device_pref", pa.string()),
        # static ad attributes
        ("advertiser_id", pa.int64()),
        ("ad_category", pa.string()),
        ("ad_creative_age_days", pa.float64()),
        # request context
        ("hour", pa.int64()),
        ("weekday", pa.int64()),
        ("device", pa.string()),
        ("slot_position", pa.int64()),
        # label, and the generator's true click probability (oracle only, never a feature)
        ("click", pa.int64()),
        ("true_ctr", pa.float64()),
    ]
)

LABEL = "click"
ORACLE = "true_ctr"

# Context that arrives with a request and is never looked up.
CONTEXT_NUMERIC = ["hour", "weekday", "slot_position"]
CONTEXT_CATEGORICAL = ["device"]
# Ranges a request's context may carry (the generator draws slots 1..5; a page may have
# more slots, so the limit only rejects nonsense).
CONTEXT_RANGES = {"hour": (0, 23), "weekday": (0, 6), "slot_position": (1, 100)}

# Offline feature tables: one row per entity per feature timestamp (FEATURE_TIMESTAMP).
# A row at time T aggregates only events with event_timestamp < T (strictly before).

USER_FEATURE_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        (FEATURE_TIMESTAMP, TIMESTAMP),
        ("user_segment", pa.string()),
        ("user_country", pa.string()),
        ("user_device_pref", pa.string()),
        ("user_impressions_1d", pa.int64()),
        ("user_clicks_1d", pa.int64()),
        ("user_ctr_1d", pa.float64()),
        ("user_impressions_7d", pa.int64()),
        ("user_clicks_7d", pa.int64()),
        ("user_ctr_7d", pa.float64()),
        ("user_hours_since_last", pa.float64()),
    ]
)

AD_FEATURE_SCHEMA = pa.schema(
    [
        ("ad_id", pa.int64()),
        (FEATURE_TIMESTAMP, TIMESTAMP),
        ("advertiser_id", pa.int64()),
        ("ad_category", pa.string()),
        ("ad_creative_age_days", pa.float64()),
        ("ad_impressions_1d", pa.int64()),
        ("ad_clicks_1d", pa.int64()),
        ("ad_ctr_1d", pa.float64()),
        ("ad_impressions_7d", pa.int64()),
        ("ad_clicks_7d", pa.int64()),
        ("ad_ctr_7d", pa.float64()),
        ("ad_hours_since_last", pa.float64()),
    ]
)

USER_FEATURES_FILE = "user_features.parquet"
AD_FEATURES_FILE = "ad_features.parquet"

USER_FEATURE_VIEW = "user_features"
AD_FEATURE_VIEW = "ad_features"
FEATURE_SERVICE = "ctr_model"


def feature_names(schema: pa.Schema, key: str) -> list[str]:
    """Feature columns of an offline table: everything but the join key and timestamp."""
    return [f.name for f in schema if f.name not in (key, FEATURE_TIMESTAMP)]


USER_FEATURES = feature_names(USER_FEATURE_SCHEMA, "user_id")
AD_FEATURES = feature_names(AD_FEATURE_SCHEMA, "ad_id")

# Columns of the training set (the Feast point-in-time join of the event log with both
# feature views): the entity dataframe's columns plus every feature.
ENTITY_COLUMNS = [
    "event_id",
    "event_timestamp",
    "user_id",
    "ad_id",
    *CONTEXT_NUMERIC,
    *CONTEXT_CATEGORICAL,
    LABEL,
    ORACLE,
]
TRAINING_COLUMNS = [*ENTITY_COLUMNS, *USER_FEATURES, *AD_FEATURES]

CATEGORICAL_FEATURES = [
    "device",
    "user_segment",
    "user_country",
    "user_device_pref",
    "ad_category",
]
# advertiser_id is an attribute of the ad (few values, shared by many ads), unlike the
# user_id/ad_id entity keys which are never model inputs.
CATEGORICAL_INPUTS = [*CATEGORICAL_FEATURES, "advertiser_id"]
