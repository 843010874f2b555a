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

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from kubeloop.features.hourly_sql import edge_buckets, window_clause
from kubeloop.usecase import EntitySpec, RequestFeatures, StateSpec
from usecases.fraud import schema

PRIOR_RATE = 0.008
PRIOR_STRENGTH = 50.0
CNP = "card_not_present"


@dataclass(frozen=True)
class EntitySql:
    """What differs between the card and the merchant table: the entity, its key, prefix
    and static attribute, and its Feast descriptions."""

    name: str
    key: str
    prefix: str
    attribute: str
    description: str
    noun: str  # what the view's description says the fraud rate is of

    def spec(self) -> EntitySpec:
        """The entity's spec: its hourly table (`feature_query`) and Feast view."""
        return EntitySpec(
            name=self.name,
            join_key=self.key,
            feature_view=f"{self.prefix}_stats",
            feature_schema=schema.stats_schema(self.key, self.prefix, self.attribute),
            query=feature_query(self),
            description=self.description,
            view_description=f"{self.attribute}; 1 h / 24 h / 7 d counts and amounts; 7 d "
            f"mean amount, card-not-present share and {self.noun} known so far.",
        )


CARD = EntitySql("card", "card_id", "card", "card_country", "A payment card.", "chargebacks")
MERCHANT = EntitySql(
    "merchant",
    "merchant_id",
    "merchant",
    "merchant_category",
    "A merchant accepting cards.",
    "the fraud rate of chargebacks",
)


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
    {edge_buckets(k, [("txn", 0), ("txn", 1), ("txn", 24), ("txn", 168), ("cb", 0), ("cb", 168)])}
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
    {window_clause(k)}
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


def card_state_query() -> str:
    """The card's state after each instant it transacted at: one row per (card, instant),
    stamped with the instant. Running count and amount, the first instant, and for the
    last `STATE_INSTANTS` instants (t1 the newest: this row's) their time, transactions,
    amount, card-not-present and abroad counts, from which `request_features` summarises
    any window ending at the request. Events of one instant are one row, so the state read
    at t (the newest row strictly before t) never splits an instant."""
    per_instant = {"us": "epoch_us(instant)", "n": "n", "amount": "amount", "cnp": "cnp",
                   "abroad": "abroad"}  # fmt: skip
    casts = {"us": "BIGINT", "n": "BIGINT", "amount": "DOUBLE", "cnp": "BIGINT",
             "abroad": "BIGINT"}  # fmt: skip
    lags = []
    for k in range(1, schema.STATE_INSTANTS + 1):
        for name, _ in schema.STATE_PER_INSTANT:
            value = per_instant[name] if k == 1 else f"lag({per_instant[name]}, {k - 1}) OVER w"
            lags.append(f"CAST({value} AS {casts[name]}) AS card_state_t{k}_{name}")
    return f"""
WITH instants AS (
    SELECT card_id, event_timestamp AS instant, count(*) AS n, sum(amount) AS amount,
           sum(CASE WHEN channel = '{CNP}' THEN 1 ELSE 0 END) AS cnp,
           sum(CASE WHEN country <> card_country THEN 1 ELSE 0 END) AS abroad
    FROM events
    GROUP BY card_id, event_timestamp
),
running AS (
    SELECT card_id, instant, n, amount, cnp, abroad,
           sum(n) OVER upto AS total_txns,
           sum(amount) OVER upto AS total_amount,
           min(instant) OVER upto AS first_instant
    FROM instants
    WINDOW upto AS (PARTITION BY card_id ORDER BY instant ROWS UNBOUNDED PRECEDING)
)
SELECT
    card_id,
    instant AS feature_timestamp,
    CAST(total_txns AS BIGINT) AS card_state_txns,
    CAST(total_amount AS DOUBLE) AS card_state_amount,
    epoch_us(first_instant) AS card_state_first_us,
    {", ".join(lags)}
FROM running
WINDOW w AS (PARTITION BY card_id ORDER BY instant)
ORDER BY card_id, feature_timestamp
"""


HOUR_US = 3_600_000_000
MINUTE_US = 60_000_000
DAY_US = 24 * HOUR_US


def request_features(inputs: Mapping[str, np.ndarray], now_us: np.ndarray) -> dict:
    """The card's request-time features at `now_us`, from its state strictly before it:

    * `card_hours_since_last`: hours since its last transaction (NaN for its first);
    * `card_log_amount_ratio`: log of the amount over the card's mean amount so far (NaN
      for its first transaction);
    * `card_txns_last_<w>`: its transactions in the last w (0 for its first; at most those
      of its last `STATE_INSTANTS` instants);
    * `card_txns_per_day`: its transactions per day since its first (the habit a burst
      stands out against; NaN for its first);
    * `card_cnp_last_<w>`, `card_abroad_last_<w>`: how many of the last 6 h's / day's
      were card-not-present, abroad; `card_max_log_amount_ratio_<w>`: the largest of their
      amounts against the card's mean (NaN without any).
    """
    k_all = range(1, schema.STATE_INSTANTS + 1)
    now = now_us.astype(np.float64)
    count = inputs["card_state_txns"]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = inputs["card_state_amount"] / np.where(count > 0, count, np.nan)
    out = {"card_hours_since_last": np.maximum(now - inputs["card_state_t1_us"], 0.0) / HOUR_US}
    amount = np.maximum(inputs[schema.AMOUNT], 1.0)
    out["card_log_amount_ratio"] = np.log(amount / mean)

    def stack(name: str) -> np.ndarray:
        return np.stack([inputs[f"card_state_t{k}_{name}"] for k in k_all], axis=1)

    times, n = stack("us"), np.nan_to_num(stack("n"))
    for label, minutes in schema.VELOCITY_WINDOWS:
        inside = times >= (now - minutes * MINUTE_US)[:, None]  # NaN (no instant): False
        out[f"card_txns_last_{label}"] = (n * inside).sum(axis=1)
    days = np.maximum(now - inputs["card_state_first_us"], DAY_US) / DAY_US
    out["card_txns_per_day"] = count / days
    cnp, abroad = np.nan_to_num(stack("cnp")), np.nan_to_num(stack("abroad"))
    with np.errstate(divide="ignore", invalid="ignore"):
        each = stack("amount") / np.where(n > 0, n, np.nan)
        ratios = np.log(np.maximum(each, 1.0) / mean[:, None])
    for label, minutes in schema.RECENT_WINDOWS:
        inside = times >= (now - minutes * MINUTE_US)[:, None]
        out[f"card_cnp_last_{label}"] = (cnp * inside).sum(axis=1)
        out[f"card_abroad_last_{label}"] = (abroad * inside).sum(axis=1)
        largest = np.where(inside, ratios, -np.inf).max(axis=1)
        out[f"card_max_log_amount_ratio_{label}"] = np.where(np.isfinite(largest), largest, np.nan)
    return out


ENTITIES = (CARD.spec(), MERCHANT.spec())
CARD_STATE = StateSpec(
    name="card_state",
    entity=CARD.name,
    join_key=CARD.key,
    feature_view=schema.CARD_STATE_VIEW,
    feature_schema=schema.CARD_STATE_SCHEMA,
    query=card_state_query(),
    description="A card's latest state, after each instant it transacted at.",
    view_description="Running count and amount, first instant; the last instants' times, "
    "counts, amounts, card-not-present and abroad counts.",
)
REQUEST_FEATURES = RequestFeatures(
    states=(CARD_STATE,),
    schema=schema.REQUEST_FEATURE_SCHEMA,
    compute=request_features,
)
