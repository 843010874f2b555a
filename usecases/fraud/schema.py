"""The card-fraud use case's column contracts: the lake's transactions, the offline feature
tables and the request. One place, so that generator, ETL SQL and spec cannot disagree on a
name or a type. The engine reads them only through `usecases.fraud.usecase.USE_CASE`."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from kubeloop.event_schema_file import load_event_schema
from kubeloop.usecase import TIMESTAMP, table_schema  # noqa: F401 (the generator's TIMESTAMP)

# One row per card transaction, as written to the lake: its columns and the role of each
# (entity keys, label and when it became known, oracle, request context and its ranges),
# declared in events.yaml.
EVENTS = load_event_schema(Path(__file__).with_name("events.yaml"))
EVENT_SCHEMA = EVENTS.columns
LABEL = EVENTS.label
ORACLE = EVENTS.oracle
LABEL_TIME = EVENTS.label_time
AMOUNT = "amount"

REQUEST_FIELDS = ("card_id", "merchant_id", "amount", "hour", "channel", "country")

WINDOWS = ("1h", "24h", "7d")


def stats_schema(key: str, prefix: str, attribute: str) -> pa.Schema:
    """The hourly table of one entity (card or merchant): its static attribute, 1 h / 24 h
    / 7 d counts and amounts, 7 d mean amount, card-not-present share, chargebacks and
    smoothed fraud rate."""
    windows = [(f"{prefix}_txns_{w}", pa.int64()) for w in WINDOWS]
    windows += [(f"{prefix}_amount_{w}", pa.float64()) for w in WINDOWS]
    return table_schema(
        key,
        [
            (attribute, pa.string()),
            *windows,
            (f"{prefix}_mean_amount_7d", pa.float64()),
            (f"{prefix}_cnp_share_7d", pa.float64()),
            (f"{prefix}_chargebacks_7d", pa.int64()),
            (f"{prefix}_fraud_rate_7d", pa.float64()),
        ],
    )


CARD_FEATURE_SCHEMA = stats_schema("card_id", "card", "card_country")
MERCHANT_FEATURE_SCHEMA = stats_schema("merchant_id", "merchant", "merchant_category")

# The card's latest state after each instant it transacted at (the request-time features'
# input, usecases/fraud/features.py): running count and amount, its first instant, and
# for each of its last `STATE_INSTANTS` instants (t1 the newest) the time, the number of
# transactions, their amount and how many were card-not-present and abroad.
STATE_INSTANTS = 16
STATE_PER_INSTANT = (("us", pa.int64()), ("n", pa.int64()), ("amount", pa.float64()),
                     ("cnp", pa.int64()), ("abroad", pa.int64()))  # fmt: skip
CARD_STATE_SCHEMA = table_schema(
    "card_id",
    [
        ("card_state_txns", pa.int64()),
        ("card_state_amount", pa.float64()),
        ("card_state_first_us", pa.int64()),
        *[
            (f"card_state_t{k}_{name}", kind)
            for k in range(1, STATE_INSTANTS + 1)
            for name, kind in STATE_PER_INSTANT
        ],
    ],
)
CARD_STATE_VIEW = "card_state"

# Computed at request time from the request and CARD_STATE (the same function offline).
VELOCITY_WINDOWS = (("10m", 10), ("1h", 60), ("6h", 360), ("24h", 1440))  # label, minutes
RECENT_WINDOWS = (("6h", 360), ("24h", 1440))
REQUEST_FEATURE_SCHEMA = pa.schema(
    [
        ("card_hours_since_last", pa.float64()),
        ("card_log_amount_ratio", pa.float64()),
        *[(f"card_txns_last_{label}", pa.float64()) for label, _ in VELOCITY_WINDOWS],
        ("card_txns_per_day", pa.float64()),
        *[
            (f"card_{name}_{label}", pa.float64())
            for label, _ in RECENT_WINDOWS
            for name in ("cnp_last", "abroad_last", "max_log_amount_ratio")
        ],
    ]
)

FEATURE_SERVICE = "fraud_model"

CATEGORICAL_INPUTS = ["channel", "country", "card_country", "merchant_category"]
