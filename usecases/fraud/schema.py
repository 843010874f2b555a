"""The card-fraud use case's column contracts: the lake's transactions, the offline feature
tables and the request. One place, so that generator, ETL SQL and spec cannot disagree on a
name or a type. The engine reads them only through `usecases.fraud.usecase.USE_CASE`."""

from __future__ import annotations

import pyarrow as pa

from kubeloop.usecase import FEATURE_TIMESTAMP, TIMESTAMP

# One row per card transaction, as written to the lake (Parquet, one partition per day).
EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("event_timestamp", TIMESTAMP),
        ("card_id", pa.int64()),
        ("merchant_id", pa.int64()),
        # static attributes, denormalised into the log as a processor's log would carry them
        ("card_country", pa.string()),
        ("merchant_category", pa.string()),
        # request context: what the authorisation request carries
        ("amount", pa.int64()),  # whole currency units
        ("hour", pa.int64()),
        ("channel", pa.string()),  # card_present | card_not_present
        ("country", pa.string()),  # where the transaction happens (the merchant's country)
        # label, when it became known, and the generator's true fraud probability (oracle
        # only, never a feature). A fraud is confirmed by a chargeback days later; a
        # legitimate transaction has no chargeback (null).
        ("is_fraud", pa.int64()),
        ("chargeback_timestamp", TIMESTAMP),
        ("fraud_probability", pa.float64()),
    ]
)

LABEL = "is_fraud"
ORACLE = "fraud_probability"
LABEL_TIME = "chargeback_timestamp"
AMOUNT = "amount"

CONTEXT_NUMERIC = ["amount", "hour"]
CONTEXT_CATEGORICAL = ["channel", "country"]
# What a request may carry (else a 400): the generator's amounts stay far below the cap.
CONTEXT_RANGES = {"amount": (0, 1_000_000), "hour": (0, 23)}
REQUEST_FIELDS = ("card_id", "merchant_id", "amount", "hour", "channel", "country")

WINDOWS = ("1h", "24h", "7d")

CARD_FEATURE_SCHEMA = pa.schema(
    [
        ("card_id", pa.int64()),
        (FEATURE_TIMESTAMP, TIMESTAMP),
        ("card_country", pa.string()),
        ("card_txns_1h", pa.int64()),
        ("card_txns_24h", pa.int64()),
        ("card_txns_7d", pa.int64()),
        ("card_amount_1h", pa.float64()),
        ("card_amount_24h", pa.float64()),
        ("card_amount_7d", pa.float64()),
        ("card_mean_amount_7d", pa.float64()),
        ("card_cnp_share_7d", pa.float64()),
        ("card_chargebacks_7d", pa.int64()),
        ("card_fraud_rate_7d", pa.float64()),
    ]
)

MERCHANT_FEATURE_SCHEMA = pa.schema(
    [
        ("merchant_id", pa.int64()),
        (FEATURE_TIMESTAMP, TIMESTAMP),
        ("merchant_category", pa.string()),
        ("merchant_txns_1h", pa.int64()),
        ("merchant_txns_24h", pa.int64()),
        ("merchant_txns_7d", pa.int64()),
        ("merchant_amount_1h", pa.float64()),
        ("merchant_amount_24h", pa.float64()),
        ("merchant_amount_7d", pa.float64()),
        ("merchant_mean_amount_7d", pa.float64()),
        ("merchant_cnp_share_7d", pa.float64()),
        ("merchant_chargebacks_7d", pa.int64()),
        ("merchant_fraud_rate_7d", pa.float64()),
    ]
)

CARD_FEATURE_VIEW = "card_stats"
MERCHANT_FEATURE_VIEW = "merchant_stats"
FEATURE_SERVICE = "fraud_model"

CATEGORICAL_INPUTS = ["channel", "country", "card_country", "merchant_category"]
