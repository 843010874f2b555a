"""The ad-CTR use case's entities and features: the SQL of the point-in-time feature
build (the engine runs it, kubeloop/features/build.py), the entity specs with their Feast
feature views, and the request-time recency features.

Both hourly tables come from one template. Events are first summed into (entity, hour)
buckets; the row of bucket h is stamped T = h + 1 hour, and because buckets are whole UTC
hours, "every event strictly before T" is exactly "every bucket up to and including h".
The rolling windows are RANGE frames over the bucket start:

* 1 day  = [T - 24h, T)  = buckets h - 23h .. h  -> ``INTERVAL 23 HOURS PRECEDING``
* 7 days = [T - 168h, T) = buckets h - 167h .. h -> ``INTERVAL 167 HOURS PRECEDING``

Windows are exact at every hour boundary, not only at the entity's active hours: besides
each active bucket, the table has a row where a window's content changes (24 hours and 7
days after an active bucket, when it leaves the 1-day and the 7-day window). Feast's
point-in-time join takes the newest row at or before the lookup, so a lookup anywhere in
hour H sees the windows ending at H's start: a user quiet for two days has
`user_impressions_1d` = 0, not the count of its last active day.

Recency is measured to the request, not to the end of the entity's last active hour: a
state table per entity holds the instant of each of its impressions, and
`request_features` computes `<entity>_hours_since_last` from the newest instant strictly
before the request (the engine's request-time hook, kubeloop/features/request_time.py),
the same way for a training row (at its own time) and for a served request.

The query reads a view named ``events`` and two parameters, ``$prior_positives``
(prior_strength * ctr_prior) and ``$prior_strength``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from kubeloop.features.hourly_sql import edge_buckets, window_clause
from kubeloop.usecase import EntitySpec, RequestFeatures, StateSpec
from usecases.ctr import schema

HOUR_US = 3_600_000_000


@dataclass(frozen=True)
class EntitySql:
    """What differs between the user and the ad table: entity, key, column prefix, static
    attributes, Feast names and descriptions."""

    name: str
    key: str
    prefix: str
    # Static attributes, taken from the entity's latest event in the bucket.
    attributes: tuple[str, ...]
    view: str
    table_schema: pa.Schema
    description: str
    view_description: str
    # Ads also carry the creative's age, which keeps growing after the last event.
    creative_age: bool = False

    def spec(self) -> EntitySpec:
        """The entity's spec: its hourly table (`feature_query`) and Feast view."""
        return EntitySpec(
            name=self.name,
            join_key=self.key,
            feature_view=self.view,
            feature_schema=self.table_schema,
            query=feature_query(self),
            description=self.description,
            view_description=self.view_description,
        )

    def state(self, view: str, state_schema: pa.Schema) -> StateSpec:
        """The entity's state table: the instant of each of its impressions."""
        return StateSpec(
            name=view,
            entity=self.name,
            join_key=self.key,
            feature_view=view,
            feature_schema=state_schema,
            query=state_query(self),
            description=f"The {self.name}'s latest impression instant.",
            view_description="The instant of each impression, for recency at request time.",
        )


USER = EntitySql(
    name="user",
    key="user_id",
    prefix="user",
    attributes=("user_segment", "user_country", "user_device_pref"),
    view=schema.USER_FEATURE_VIEW,
    table_schema=schema.USER_FEATURE_SCHEMA,
    description="A user who is shown ads.",
    view_description="User profile and 1-day / 7-day impression, click and CTR history.",
)
AD = EntitySql(
    name="ad",
    key="ad_id",
    prefix="ad",
    attributes=("advertiser_id", "ad_category"),
    view=schema.AD_FEATURE_VIEW,
    table_schema=schema.AD_FEATURE_SCHEMA,
    description="An ad creative.",
    view_description="Ad attributes and 1-day / 7-day impression, click and CTR history.",
    creative_age=True,
)


def feature_query(spec: EntitySql) -> str:
    """The SELECT that yields one feature table, ordered by key and feature_timestamp.

    Output columns carry the final names; types are cast to the schema by the writer.
    """
    k, p = spec.key, spec.prefix
    # (event_timestamp, event_id) breaks ties between events of the same microsecond, so
    # the chosen attribute value does not depend on scan order.
    latest = "(event_timestamp, event_id)"
    attrs = list(spec.attributes)
    bucket_attrs = [f"arg_max({a}, {latest}) AS {a}" for a in attrs]
    carried = [f"last_value({a} IGNORE NULLS) OVER upto AS {a}" for a in attrs]
    out_attrs = list(attrs)
    if spec.creative_age:
        bucket_attrs += [
            f"arg_max(ad_creative_age_days, {latest}) AS age_at_last",
            "max(event_timestamp) AS last_event",
        ]
        carried += [
            "last_value(age_at_last IGNORE NULLS) OVER upto AS age_at_last",
            "last_value(last_event IGNORE NULLS) OVER upto AS last_event",
        ]
        since = f"(epoch_us(feature_timestamp) - epoch_us(last_event)) / {HOUR_US}.0"
        out_attrs.append(f"age_at_last + {since} / 24.0 AS ad_creative_age_days")
    grid_attrs = [f"b.{a}" for a in attrs] + (
        ["b.age_at_last", "b.last_event"] if spec.creative_age else []
    )

    return f"""
WITH buckets AS (
    SELECT
        {k},
        date_trunc('hour', event_timestamp) AS bucket,
        count(*) AS impressions,
        sum(click) AS clicks,
        {", ".join(bucket_attrs)}
    FROM events
    GROUP BY {k}, bucket
),
edges AS (
    {edge_buckets(k, [("buckets", 0), ("buckets", 24), ("buckets", 168)])}
),
grid AS (
    SELECT e.{k}, e.bucket,
           coalesce(b.impressions, 0) AS impressions, coalesce(b.clicks, 0) AS clicks,
           {", ".join(grid_attrs)}
    FROM edges e
    LEFT JOIN buckets b ON b.{k} = e.{k} AND b.bucket = e.bucket
    WHERE e.bucket <= (SELECT date_trunc('hour', max(event_timestamp)) FROM events)
),
windows AS (
    SELECT
        {k},
        bucket + INTERVAL 1 HOUR AS feature_timestamp,
        {", ".join(carried)},
        CAST(sum(impressions) OVER day AS BIGINT) AS impressions_1d,
        CAST(sum(clicks) OVER day AS BIGINT) AS clicks_1d,
        CAST(sum(impressions) OVER week AS BIGINT) AS impressions_7d,
        CAST(sum(clicks) OVER week AS BIGINT) AS clicks_7d
    FROM grid
    {window_clause(k)}
)
SELECT
    {k},
    feature_timestamp,
    {", ".join(out_attrs)},
    impressions_1d AS {p}_impressions_1d,
    clicks_1d AS {p}_clicks_1d,
    (clicks_1d + $prior_positives) / (impressions_1d + $prior_strength) AS {p}_ctr_1d,
    impressions_7d AS {p}_impressions_7d,
    clicks_7d AS {p}_clicks_7d,
    (clicks_7d + $prior_positives) / (impressions_7d + $prior_strength) AS {p}_ctr_7d
FROM windows
ORDER BY {k}, feature_timestamp
"""


def state_query(spec: EntitySql) -> str:
    """One row per (entity, instant of an impression), stamped with the instant."""
    return f"""
SELECT {spec.key}, event_timestamp AS feature_timestamp,
       epoch_us(event_timestamp) AS {spec.prefix}_state_last_us
FROM events
GROUP BY {spec.key}, event_timestamp
ORDER BY {spec.key}, feature_timestamp
"""


def request_features(inputs: Mapping[str, np.ndarray], now_us: np.ndarray) -> dict:
    """`<entity>_hours_since_last`: hours from the entity's newest impression strictly
    before the request to the request (NaN when it has none: a new user or ad)."""
    now = now_us.astype(np.float64)
    return {
        f"{e.prefix}_hours_since_last": np.maximum(now - inputs[f"{e.prefix}_state_last_us"], 0.0)
        / HOUR_US
        for e in (USER, AD)
    }


USER_ENTITY = USER.spec()
AD_ENTITY = AD.spec()
ENTITIES = (USER_ENTITY, AD_ENTITY)
REQUEST_FEATURES = RequestFeatures(
    states=(
        USER.state(schema.USER_STATE_VIEW, schema.USER_STATE_SCHEMA),
        AD.state(schema.AD_STATE_VIEW, schema.AD_STATE_SCHEMA),
    ),
    schema=schema.REQUEST_FEATURE_SCHEMA,
    compute=request_features,
    # The user and ad state is materialized hourly with the hourly views (the demo's feed,
    # the cluster's materialization job), so recency is measured from the newest
    # impression before the request's hour, to the request; training reads it the same
    # way. A streaming writer (0) would be fresher, but an hourly feed serving a model
    # trained on to-the-second recency skews it by up to an hour (the drift monitor saw
    # KS 0.52 on it).
    state_freshness_seconds=3600,
)
