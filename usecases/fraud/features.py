"""The card-fraud use case's entities and features: the DuckDB SQL of the point-in-time
feature build (run by the engine, kubeloop/features/build.py) and the entity specs.

Both tables come from one template. Transactions are summed into (entity, hour) buckets.
The chargebacks of a window are the known frauds among the window's own transactions: a
fraud counts from the hour its chargeback *arrived* in (delayed labels are respected in the
features too) until its transaction leaves the 7 d window. So the fraud rate divides frauds
by the very transactions they are among, and it is the same function of the last 7 days
from the lake's seventh day on; counting the chargebacks that arrived in the last 7 days
instead would still be filling up with the chargebacks of the lake's first days (2-10 days
late) a week later, and a drift reference taken then would differ from every later window.
The row of bucket h is stamped T = h + 1 hour and summarises every bucket up to and
including h, that is every event strictly before T.

Windows are exact at every hour boundary, not only at the entity's active hours: besides
each active bucket, the table has a row at each hour where a window's content changes
(one hour, 24 hours and 7 days after an active bucket, when it leaves the 1 h, 24 h and
7 d windows; a chargeback's arrival and its transaction's leaving the 7 d window). Feast's point-in-time
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
import pyarrow as pa

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
fraud AS (
    -- frauds whose chargeback arrived (none after the lake's last event) while their
    -- transaction was still inside the 7 d window
    SELECT {k}, date_trunc('hour', event_timestamp) AS txn_bucket,
           date_trunc('hour', {schema.LABEL_TIME}) AS cb_bucket
    FROM events
    WHERE {schema.LABEL} = 1 AND {schema.LABEL_TIME} IS NOT NULL
      AND {schema.LABEL_TIME} <= (SELECT max(event_timestamp) FROM events)
      AND date_trunc('hour', {schema.LABEL_TIME})
          < date_trunc('hour', event_timestamp) + INTERVAL 168 HOUR
),
cb_in AS (
    -- a fraud counts from the hour its chargeback arrives ...
    SELECT {k}, cb_bucket AS bucket, count(*) AS n FROM fraud GROUP BY {k}, bucket
),
cb_out AS (
    -- ... until its transaction leaves the 7 d window
    SELECT {k}, txn_bucket + INTERVAL 168 HOUR AS bucket, count(*) AS n
    FROM fraud GROUP BY {k}, bucket
),
edges AS (
    {edge_buckets(k, [("txn", 0), ("txn", 1), ("txn", 24), ("txn", 168), ("cb_in", 0), ("cb_out", 0)])}
),
grid AS (
    SELECT e.{k}, e.bucket,
           coalesce(t.txns, 0) AS txns, coalesce(t.amount, 0) AS amount,
           coalesce(t.cnp, 0) AS cnp, coalesce(ci.n, 0) - coalesce(co.n, 0) AS known_change,
           t.{attr}
    FROM edges e
    LEFT JOIN txn t ON t.{k} = e.{k} AND t.bucket = e.bucket
    LEFT JOIN cb_in ci ON ci.{k} = e.{k} AND ci.bucket = e.bucket
    LEFT JOIN cb_out co ON co.{k} = e.{k} AND co.bucket = e.bucket
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
        sum(known_change) OVER upto AS chargebacks_7d
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
ODD_WINDOWS = (("1h", 60), ("6h", 360), ("24h", 1440))  # label, minutes


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
      were card-not-present, abroad; `card_max_log_amount_ratio_<w>`: how far the largest
      of their amounts exceeds the card's mean, in log (0 when none does or there are
      none: "none in the last 6 h" is normal at night, not a missing value);
    * the habit features of `habit_features`.
    """
    now = now_us.astype(np.float64)
    count = inputs["card_state_txns"]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = inputs["card_state_amount"] / np.where(count > 0, count, np.nan)
    out = {"card_hours_since_last": np.maximum(now - inputs["card_state_t1_us"], 0.0) / HOUR_US}
    amount = np.maximum(inputs[schema.AMOUNT], 1.0)
    out["card_log_amount_ratio"] = np.log(amount / mean)
    recent = _Instants.of(inputs)
    for label, minutes in schema.VELOCITY_WINDOWS:
        out[f"card_txns_last_{label}"] = (recent.n * recent.within(now, minutes)).sum(axis=1)
    days = np.maximum(now - inputs["card_state_first_us"], DAY_US) / DAY_US
    out["card_txns_per_day"] = count / days
    ratios = recent.log_ratios(mean)
    for label, minutes in schema.RECENT_WINDOWS:
        inside = recent.within(now, minutes)
        out[f"card_cnp_last_{label}"] = (recent.cnp * inside).sum(axis=1)
        out[f"card_abroad_last_{label}"] = (recent.abroad * inside).sum(axis=1)
        largest = np.where(inside, ratios, -np.inf).max(axis=1)
        out[f"card_max_log_amount_ratio_{label}"] = np.maximum(largest, 0.0)
    return {**out, **habit_features(inputs, recent, now, amount, mean)}


@dataclass(frozen=True)
class _Instants:
    """The card's last `STATE_INSTANTS` instants from its state, one column each (t1 the
    newest): time (NaN where there is none), transactions, amount, card-not-present and
    abroad counts (0 where there is none)."""

    times: np.ndarray
    n: np.ndarray
    amount: np.ndarray
    cnp: np.ndarray
    abroad: np.ndarray

    @classmethod
    def of(cls, inputs: Mapping[str, np.ndarray]) -> _Instants:
        def stack(name: str) -> np.ndarray:
            ks = range(1, schema.STATE_INSTANTS + 1)
            return np.stack([inputs[f"card_state_t{k}_{name}"] for k in ks], axis=1)

        counts = [np.nan_to_num(stack(name)) for name in ("n", "amount", "cnp", "abroad")]
        return cls(stack("us"), *counts)

    def within(self, now: np.ndarray, minutes: float) -> np.ndarray:
        """Which instants lie in the last `minutes` before `now` (no instant: False)."""
        return self.times >= (now - minutes * MINUTE_US)[:, None]

    def log_ratios(self, reference: np.ndarray) -> np.ndarray:
        """Each instant's mean amount over `reference` (per card), in log; NaN without."""
        with np.errstate(divide="ignore", invalid="ignore"):
            each = self.amount / np.where(self.n > 0, self.n, np.nan)
            return np.log(np.maximum(each, 1.0) / reference[:, None])


def habit_features(
    inputs: Mapping[str, np.ndarray],
    recent: _Instants,
    now: np.ndarray,
    amount: np.ndarray,
    mean: np.ndarray,
) -> dict[str, np.ndarray]:
    """What a compromise episode (a burst of a fraudster's transactions over hours) looks
    like against the card's habit, its mean amount over transactions older than a day
    (so a burst going on does not inflate it; the mean so far when none is that old):

    * `card_log_amount_vs_habit`: log of the amount over the habit (NaN for the card's
      first transaction);
    * `card_burst_24h`: its last day's transactions less its daily rate before that;
    * `card_odd_last_<w>`: how many of its transactions in the last w were a fraudster's
      kind (more than twice the habit, and card-not-present or abroad), and
      `card_hours_since_odd` the hours since the newest of them (NaN without any).
    """
    last_day = recent.within(now, 24 * 60)
    old_n = inputs["card_state_txns"] - (recent.n * last_day).sum(axis=1)
    old_amount = inputs["card_state_amount"] - (recent.amount * last_day).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        habit = np.where(old_n > 0, old_amount / np.where(old_n > 0, old_n, 1.0), mean)
    out = {"card_log_amount_vs_habit": np.log(amount / habit)}
    older_days = np.maximum(now - DAY_US - inputs["card_state_first_us"], DAY_US) / DAY_US
    out["card_burst_24h"] = (recent.n * last_day).sum(axis=1) - np.nan_to_num(old_n) / older_days
    odd = (recent.log_ratios(habit) > np.log(2.0)) & ((recent.cnp + recent.abroad) > 0)
    for label, minutes in ODD_WINDOWS:
        out[f"card_odd_last_{label}"] = (recent.n * (recent.within(now, minutes) & odd)).sum(axis=1)
    last_odd = np.where(odd, recent.times, -np.inf).max(axis=1)
    out["card_hours_since_odd"] = np.where(
        np.isfinite(last_odd), np.maximum(now - last_odd, 0.0) / HOUR_US, np.nan
    )
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
REQUEST_FEATURE_SCHEMA = pa.schema(
    [
        *schema.REQUEST_FEATURE_SCHEMA,
        ("card_log_amount_vs_habit", pa.float64()),
        ("card_burst_24h", pa.float64()),
        *[(f"card_odd_last_{label}", pa.float64()) for label, _ in ODD_WINDOWS],
        ("card_hours_since_odd", pa.float64()),
    ]
)
REQUEST_FEATURES = RequestFeatures(
    states=(CARD_STATE,),
    schema=REQUEST_FEATURE_SCHEMA,
    compute=request_features,
)
