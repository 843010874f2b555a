"""The card-fraud use case's entities and features: the DuckDB SQL of the point-in-time
feature build (run by the engine, kubeloop/features/build.py) and the entity specs.

Both tables come from one template. Transactions are summed into (entity, hour) buckets,
and chargebacks into the buckets of the hour they *arrived* in, so a fraud counts only from
the hour its label became known (delayed labels are respected in the features too). The row
of bucket h is stamped T = h + 1 hour and summarises every bucket up to and including h,
that is every event strictly before T.

Windows are exact at every hour boundary, not only at the entity's active hours: besides
each active bucket, the table has a row at each hour where a window's content changes
(one hour, 24 hours and 7 days after an active bucket, when it leaves the 1 h, 24 h and
7 d windows; a chargeback's arrival and its leaving the 7 d window). Feast's point-in-time
join takes the newest row at or before the lookup, so a lookup anywhere in hour H sees
exactly the windows ending at H's start: a card quiet for a day has `card_txns_24h` = 0,
not the count of its last active day.

A merchant's and a card's fraud rate is smoothed towards the lake's prior fraud rate
(`PRIOR_RATE`, with the weight of `PRIOR_STRENGTH` transactions), the use case's own
setting: the engine's `$prior_positives` is sized for another label rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubeloop.usecase import EntitySpec
from usecases.fraud import schema

PRIOR_RATE = 0.008
PRIOR_STRENGTH = 50.0
CNP = "card_not_present"


@dataclass(frozen=True)
class EntitySql:
    """What differs between the card and the merchant table: key, prefix, static attribute."""

    key: str
    prefix: str
    attribute: str


CARD = EntitySql(key="card_id", prefix="card", attribute="card_country")
MERCHANT = EntitySql(key="merchant_id", prefix="merchant", attribute="merchant_category")


def feature_query(spec: EntitySql) -> str:
    """The SELECT that yields one feature table, ordered by key and feature_timestamp."""
    k, p, attr = spec.key, spec.prefix, spec.attribute
    latest = "(event_timestamp, event_id)"
    prior = f"{PRIOR_RATE * PRIOR_STRENGTH!r}"
    strength = f"{PRIOR_STRENGTH!r}"
    return f"""
WITH txn AS (
    SELECT {k}, date_trunc('hour', event_timestamp) AS bucket,
           count(*) AS txns, sum(amount) AS amount,
           sum(CASE WHEN channel = '{CNP}' THEN 1 ELSE 0 END) AS cnp,
           arg_max({attr}, {latest}) AS {attr}
    FROM events
    GROUP BY {k}, bucket
),
cb AS (
    -- chargebacks in the hour they arrive, none after the lake's last event
    SELECT {k}, date_trunc('hour', {schema.LABEL_TIME}) AS bucket, count(*) AS chargebacks
    FROM events
    WHERE {schema.LABEL} = 1 AND {schema.LABEL_TIME} IS NOT NULL
      AND {schema.LABEL_TIME} <= (SELECT max(event_timestamp) FROM events)
    GROUP BY {k}, bucket
),
edges AS (
    SELECT {k}, bucket FROM txn
    UNION SELECT {k}, bucket + INTERVAL 1 HOUR FROM txn
    UNION SELECT {k}, bucket + INTERVAL 24 HOUR FROM txn
    UNION SELECT {k}, bucket + INTERVAL 168 HOUR FROM txn
    UNION SELECT {k}, bucket FROM cb
    UNION SELECT {k}, bucket + INTERVAL 168 HOUR FROM cb
),
grid AS (
    SELECT e.{k}, e.bucket,
           coalesce(t.txns, 0) AS txns, coalesce(t.amount, 0) AS amount,
           coalesce(t.cnp, 0) AS cnp, coalesce(c.chargebacks, 0) AS chargebacks, t.{attr}
    FROM edges e
    LEFT JOIN txn t ON t.{k} = e.{k} AND t.bucket = e.bucket
    LEFT JOIN cb c ON c.{k} = e.{k} AND c.bucket = e.bucket
    WHERE e.bucket <= (SELECT date_trunc('hour', max(event_timestamp)) FROM events)
),
windows AS (
    SELECT
        {k},
        bucket + INTERVAL 1 HOUR AS feature_timestamp,
        last_value({attr} IGNORE NULLS) OVER upto AS {attr},
        txns AS txns_1h,
        CAST(amount AS DOUBLE) AS amount_1h,
        sum(txns) OVER day AS txns_24h,
        CAST(sum(amount) OVER day AS DOUBLE) AS amount_24h,
        sum(txns) OVER week AS txns_7d,
        CAST(sum(amount) OVER week AS DOUBLE) AS amount_7d,
        sum(cnp) OVER week AS cnp_7d,
        sum(chargebacks) OVER week AS chargebacks_7d
    FROM grid
    WINDOW
        upto AS (PARTITION BY {k} ORDER BY bucket ROWS UNBOUNDED PRECEDING),
        day AS (PARTITION BY {k} ORDER BY bucket
                RANGE BETWEEN INTERVAL 23 HOURS PRECEDING AND CURRENT ROW),
        week AS (PARTITION BY {k} ORDER BY bucket
                 RANGE BETWEEN INTERVAL 167 HOURS PRECEDING AND CURRENT ROW)
)
SELECT
    {k},
    feature_timestamp,
    {attr},
    CAST(txns_1h AS BIGINT) AS {p}_txns_1h,
    CAST(txns_24h AS BIGINT) AS {p}_txns_24h,
    CAST(txns_7d AS BIGINT) AS {p}_txns_7d,
    amount_1h AS {p}_amount_1h,
    amount_24h AS {p}_amount_24h,
    amount_7d AS {p}_amount_7d,
    amount_7d / nullif(txns_7d, 0) AS {p}_mean_amount_7d,
    cnp_7d / nullif(txns_7d, 0) AS {p}_cnp_share_7d,
    CAST(chargebacks_7d AS BIGINT) AS {p}_chargebacks_7d,
    (chargebacks_7d + {prior}) / (txns_7d + {strength}) AS {p}_fraud_rate_7d
FROM windows
ORDER BY {k}, feature_timestamp
"""


CARD_ENTITY = EntitySpec(
    name="card",
    join_key=CARD.key,
    feature_view=schema.CARD_FEATURE_VIEW,
    feature_schema=schema.CARD_FEATURE_SCHEMA,
    query=feature_query(CARD),
    description="A payment card.",
    view_description="Card home country; 1 h / 24 h / 7 d counts and amounts; 7 d mean "
    "amount, card-not-present share and chargebacks known so far.",
)
MERCHANT_ENTITY = EntitySpec(
    name="merchant",
    join_key=MERCHANT.key,
    feature_view=schema.MERCHANT_FEATURE_VIEW,
    feature_schema=schema.MERCHANT_FEATURE_SCHEMA,
    query=feature_query(MERCHANT),
    description="A merchant accepting cards.",
    view_description="Merchant category; 1 h / 24 h / 7 d counts and amounts; 7 d mean "
    "amount, card-not-present share and the fraud rate of chargebacks known so far.",
)
ENTITIES = (CARD_ENTITY, MERCHANT_ENTITY)
