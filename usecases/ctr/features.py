"""The ad-CTR use case's entities and features: the SQL of the point-in-time feature
build (the engine runs it, kubeloop/features/build.py) and the entity specs with their
Feast feature views.

Both tables come from one template. Events are first summed into (entity, hour) buckets;
the row of bucket h is stamped T = h + 1 hour, and because buckets are whole UTC hours,
"every event strictly before T" is exactly "every bucket up to and including h". The
rolling windows are then RANGE frames over the bucket start:

* 1 day  = [T - 24h, T)  = buckets h - 23h .. h  -> ``INTERVAL 23 HOURS PRECEDING``
* 7 days = [T - 168h, T) = buckets h - 167h .. h -> ``INTERVAL 167 HOURS PRECEDING``

The query reads a view named ``events`` and two parameters, ``$prior_positives``
(prior_strength * ctr_prior) and ``$prior_strength``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubeloop.usecase import EntitySpec
from usecases.ctr import schema

HOUR_US = 3_600_000_000


@dataclass(frozen=True)
class EntitySql:
    """What differs between the user and the ad table: key, column prefix, static attributes."""

    key: str
    prefix: str
    # Static attributes, taken from the entity's latest event in the bucket.
    attributes: tuple[str, ...]
    # Ads also carry the creative's age, which keeps growing after the last event.
    creative_age: bool = False


USER = EntitySql(
    key="user_id",
    prefix="user",
    attributes=("user_segment", "user_country", "user_device_pref"),
)
AD = EntitySql(
    key="ad_id",
    prefix="ad",
    attributes=("advertiser_id", "ad_category"),
    creative_age=True,
)


def feature_query(spec: EntitySql) -> str:
    """The SELECT that yields one feature table, ordered by key and feature_timestamp.

    Output columns carry the final names; types are cast to the schema by the writer.
    """
    # (event_timestamp, event_id) breaks ties between events of the same microsecond, so
    # the chosen attribute value does not depend on scan order.
    latest = "(event_timestamp, event_id)"
    bucket_attrs = [f"arg_max({a}, {latest}) AS {a}" for a in spec.attributes]
    if spec.creative_age:
        bucket_attrs.append(f"arg_max(ad_creative_age_days, {latest}) AS age_at_last")
    p = spec.prefix
    hours_since_last = f"(epoch_us(feature_timestamp) - epoch_us(last_event)) / {HOUR_US}.0"
    out_attrs = list(spec.attributes)
    if spec.creative_age:
        out_attrs.append(f"age_at_last + {hours_since_last} / 24.0 AS ad_creative_age_days")

    return f"""
WITH buckets AS (
    SELECT
        {spec.key},
        date_trunc('hour', event_timestamp) AS bucket,
        count(*) AS impressions,
        sum(click) AS clicks,
        max(event_timestamp) AS last_event,
        {", ".join(bucket_attrs)}
    FROM events
    GROUP BY {spec.key}, bucket
),
windows AS (
    SELECT
        *,
        bucket + INTERVAL 1 HOUR AS feature_timestamp,
        CAST(sum(impressions) OVER day AS BIGINT) AS impressions_1d,
        CAST(sum(clicks) OVER day AS BIGINT) AS clicks_1d,
        CAST(sum(impressions) OVER week AS BIGINT) AS impressions_7d,
        CAST(sum(clicks) OVER week AS BIGINT) AS clicks_7d
    FROM buckets
    WINDOW
        day AS (PARTITION BY {spec.key} ORDER BY bucket
                RANGE BETWEEN INTERVAL 23 HOURS PRECEDING AND CURRENT ROW),
        week AS (PARTITION BY {spec.key} ORDER BY bucket
                 RANGE BETWEEN INTERVAL 167 HOURS PRECEDING AND CURRENT ROW)
)
SELECT
    {spec.key},
    feature_timestamp,
    {", ".join(out_attrs)},
    impressions_1d AS {p}_impressions_1d,
    clicks_1d AS {p}_clicks_1d,
    (clicks_1d + $prior_positives) / (impressions_1d + $prior_strength) AS {p}_ctr_1d,
    impressions_7d AS {p}_impressions_7d,
    clicks_7d AS {p}_clicks_7d,
    (clicks_7d + $prior_positives) / (impressions_7d + $prior_strength) AS {p}_ctr_7d,
    {hours_since_last} AS {p}_hours_since_last
FROM windows
ORDER BY {spec.key}, feature_timestamp
"""


USER_ENTITY = EntitySpec(
    name="user",
    join_key=USER.key,
    feature_view=schema.USER_FEATURE_VIEW,
    feature_schema=schema.USER_FEATURE_SCHEMA,
    query=feature_query(USER),
    description="A user who is shown ads.",
    view_description="User profile and 1-day / 7-day impression, click and CTR history.",
)
AD_ENTITY = EntitySpec(
    name="ad",
    join_key=AD.key,
    feature_view=schema.AD_FEATURE_VIEW,
    feature_schema=schema.AD_FEATURE_SCHEMA,
    query=feature_query(AD),
    description="An ad creative.",
    view_description="Ad attributes and 1-day / 7-day impression, click and CTR history.",
)
ENTITIES = (USER_ENTITY, AD_ENTITY)
