"""The ad-CTR use case's column contracts: the lake's events, the offline feature tables
and the model's inputs. One place, so that generator, ETL, Feast, trainers and servers
cannot disagree on a name or a type. The engine reads them only through the use case
spec (`usecases.ctr.usecase.USE_CASE`)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from kubeloop.event_schema_file import load_event_schema
from kubeloop.usecase import EVENTS_DIR, FEATURE_TIMESTAMP, PARTITION_KEY, TIMESTAMP, table_schema

__all__ = ["EVENTS_DIR", "FEATURE_TIMESTAMP", "PARTITION_KEY", "TIMESTAMP"]

# One row per ad impression, as written to the lake: its columns and the role of each
# (entity keys, label, oracle, request context and its ranges), declared in events.yaml.
EVENTS = load_event_schema(Path(__file__).with_name("events.yaml"))
EVENT_SCHEMA = EVENTS.columns
LABEL = EVENTS.label
ORACLE = EVENTS.oracle
CONTEXT_NUMERIC = list(EVENTS.context_numeric)
CONTEXT_CATEGORICAL = list(EVENTS.context_categorical)

# Offline feature tables: one row per entity per feature timestamp (FEATURE_TIMESTAMP).
# A row at time T aggregates only events with event_timestamp < T (strictly before).


def history_schema(key: str, prefix: str, attributes: list[str]) -> pa.Schema:
    """The hourly table of one entity (user or ad): its static `attributes` (typed as in
    EVENT_SCHEMA, which carries them denormalised), then 1-day and 7-day impressions,
    clicks and smoothed CTR."""
    static = [(name, EVENT_SCHEMA.field(name).type) for name in attributes]
    windows = [
        (f"{prefix}_{name}_{w}", kind)
        for w in ("1d", "7d")
        for name, kind in (
            ("impressions", pa.int64()),
            ("clicks", pa.int64()),
            ("ctr", pa.float64()),
        )
    ]
    return table_schema(key, [*static, *windows])


USER_FEATURE_SCHEMA = history_schema(
    "user_id", "user", ["user_segment", "user_country", "user_device_pref"]
)
AD_FEATURE_SCHEMA = history_schema(
    "ad_id", "ad", ["advertiser_id", "ad_category", "ad_creative_age_days"]
)

# The latest state of a user and of an ad after each instant it had an impression at: the
# instant itself. Recency is measured from it to the request (usecases/ctr/features.py).
USER_STATE_SCHEMA = table_schema("user_id", [("user_state_last_us", pa.int64())])
AD_STATE_SCHEMA = table_schema("ad_id", [("ad_state_last_us", pa.int64())])
USER_STATE_VIEW = "user_state"
AD_STATE_VIEW = "ad_state"
REQUEST_FEATURE_SCHEMA = pa.schema(
    [("user_hours_since_last", pa.float64()), ("ad_hours_since_last", pa.float64())]
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
REQUEST_FEATURES = list(REQUEST_FEATURE_SCHEMA.names)
TRAINING_COLUMNS = [*ENTITY_COLUMNS, *USER_FEATURES, *AD_FEATURES, *REQUEST_FEATURES]

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
