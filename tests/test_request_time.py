"""Request-time features: the same values offline (the training-set builder, each event at
its own time) and online (the transformer's preprocess, the online store materialized as of
the request, the request time sent as REQUEST_TIME_HEADER); and CTR's recency measured to
the request spans hours to days."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubeloop.errors import FeatureStoreError
from kubeloop.features.build import FeatureBuildConfig, build_features
from kubeloop.features.materialize import materialize, reset_online_store
from kubeloop.features.request_time import REQUEST_TIME_HEADER, request_time_us
from kubeloop.features.store import FeatureStoreSettings, apply_definitions, open_store, write_repo
from kubeloop.features.training_set import build_training_set
from kubeloop.usecase import load_use_case
from models.transformer import FeastTransformer
from usecases.fraud import schema as fraud_schema

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

UTC = dt.UTC
D0 = dt.datetime(2026, 1, 5, tzinfo=UTC)
S = dt.timedelta(seconds=1)
MS = dt.timedelta(milliseconds=1)
H = dt.timedelta(hours=1)
M = dt.timedelta(minutes=1)
CNP, CP = "card_not_present", "card_present"

# (card, merchant, time, amount, channel, country): card 1's first transaction; three
# within one second; two at the very same microsecond; one a day and a half later; card 2
# with a week between transactions; card 3 with a single one; card 4 with a habit of 20,
# then two days later a card-not-present 90 (a fraudster's kind) and half an hour after
# it a 30 in person.
TRANSACTIONS = [
    (1, 10, D0 + 9 * H, 40, CP, "DE"),
    (2, 11, D0 + 9 * H + 30 * S, 25, CP, "FR"),
    (1, 11, D0 + 9 * H + 10 * S + 100 * MS, 300, CNP, "US"),
    (1, 12, D0 + 9 * H + 10 * S + 400 * MS, 280, CNP, "US"),
    (1, 10, D0 + 9 * H + 10 * S + 900 * MS, 20, CP, "DE"),
    (1, 12, D0 + 9 * H + 20 * M, 90, CNP, "DE"),
    (1, 11, D0 + 9 * H + 20 * M, 95, CNP, "FR"),
    (1, 10, D0 + 33 * H, 55, CP, "DE"),
    (3, 12, D0 + 40 * H, 70, CP, "DE"),
    (2, 10, D0 + 9 * H + 30 * S + 7 * 24 * H, 30, CP, "FR"),
    (4, 10, D0 + 9 * H, 20, CP, "DE"),
    (4, 11, D0 + 57 * H, 90, CNP, "DE"),
    (4, 12, D0 + 57 * H + 30 * M, 30, CP, "DE"),
]


def write_fraud_lake(root: Path) -> None:
    """The transactions as a lake of the fraud use case (homes: cards 1, 3, 4 in DE, 2 in FR)."""
    home = {1: "DE", 2: "FR", 3: "DE", 4: "DE"}
    rows = [
        {
            "event_id": i,
            "event_timestamp": ts,
            "card_id": card,
            "merchant_id": merchant,
            "card_country": home[card],
            "merchant_category": ["grocery", "electronics", "travel"][merchant % 3],
            "amount": amount,
            "hour": ts.hour,
            "channel": channel,
            "country": country,
            "is_fraud": 0,
            "chargeback_timestamp": None,
            "fraud_probability": 0.01,
        }
        for i, (card, merchant, ts, amount, channel, country) in enumerate(TRANSACTIONS)
    ]
    frame = pd.DataFrame(rows).sort_values(["event_timestamp", "event_id"])
    for day, part in frame.groupby(frame["event_timestamp"].map(lambda t: t.date())):
        path = root / "events" / f"day={day.isoformat()}"
        path.mkdir(parents=True)
        table = pa.Table.from_pandas(part, schema=fraud_schema.EVENT_SCHEMA, preserve_index=False)
        pq.write_table(table, path / "part-00000.parquet")


def feature_store(root: Path, use_case: str):
    """Build the use case's tables from root/lake, apply them; (store, lake path)."""
    lake, features, repo = root / "lake", root / "features", root / "repo"
    build_features(str(lake), features, FeatureBuildConfig(threads=1), progress=False,
                   use_case=use_case)  # fmt: skip
    write_repo(repo, FeatureStoreSettings(offline_store="asof"), features, use_case=use_case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = open_store(repo)
        apply_definitions(store, features, use_case=use_case)
    return store, str(lake)


def same(offline, online) -> bool:
    if offline is None or (isinstance(offline, float) and math.isnan(offline)):
        return online is None
    return online == offline  # exact: the same arithmetic on the same float64 inputs


def test_request_time_features_are_equal_offline_and_online(tmp_path):
    spec = load_use_case("fraud")
    write_fraud_lake(tmp_path / "lake")
    store, lake = feature_store(tmp_path, "fraud")
    build_training_set(store, lake, tmp_path / "training.parquet", progress=False,
                       use_case=spec)  # fmt: skip
    training = pd.read_parquet(tmp_path / "training.parquet").set_index("event_id")
    names = spec.request_feature_columns
    transformer = FeastTransformer("fraud", "127.0.0.1:1", None, store=store, use_case=spec)

    for event_id, row in training.iterrows():
        ts = row["event_timestamp"].to_pydatetime()
        reset_online_store(store)
        # The online store as a streaming writer leaves it at the request: every state row
        # strictly before it (Feast's window excludes its end).
        materialize(store, end=ts, progress=False, use_case=spec)
        request = {name: row[name] for name in spec.request_fields if name in row}
        request = {k: (v.item() if hasattr(v, "item") else v) for k, v in request.items()}
        headers = {REQUEST_TIME_HEADER: ts.isoformat()}
        (served,) = asyncio.run(transformer.preprocess({"instances": [request]}, headers))[
            "instances"
        ]
        for name in names:
            assert same(row[name], served[name]), (event_id, name, row[name], served[name])

    # A request time no clock reads is the client's 400 (KServe's InvalidInput), not a 5xx.
    from kserve.errors import InvalidInput

    with pytest.raises(InvalidInput, match=REQUEST_TIME_HEADER):
        asyncio.run(transformer.preprocess({"instances": [request]}, {REQUEST_TIME_HEADER: "inf"}))

    # The edge cases came out as intended, offline (and so online).
    first = training.loc[0]
    assert all(math.isnan(first[n]) for n in ("card_hours_since_last", "card_log_amount_ratio"))
    assert first["card_txns_last_10m"] == 0
    # three within one second: each sees the ones before it, 0.3 s and 0.5 s earlier
    assert list(training.loc[[2, 3, 4], "card_txns_last_10m"]) == [1, 2, 3]
    assert training.loc[4, "card_hours_since_last"] == pytest.approx(0.5 / 3600)
    assert training.loc[3, "card_cnp_last_6h"] == 1  # event 2 was card-not-present
    assert training.loc[3, "card_abroad_last_6h"] == 1  # and abroad (US for a DE card)
    # two at the very same microsecond see neither each other nor their instant
    assert training.loc[5, "card_txns_last_1h"] == training.loc[6, "card_txns_last_1h"] == 4
    # 23 h 40 later: nothing in the last 6 h, all six since 24 h ago (its first exactly)
    assert training.loc[7, "card_txns_last_6h"] == 0
    assert training.loc[7, "card_txns_last_24h"] == 6
    assert training.loc[7, "card_hours_since_last"] == pytest.approx(24 - 20 / 60)
    assert training.loc[9, "card_hours_since_last"] == pytest.approx(7 * 24)
    assert math.isnan(training.loc[8, "card_hours_since_last"])  # card 3's only one
    # "Nothing in the last 6 h" is a value, not a missing one (it is normal at night).
    assert (
        first["card_max_log_amount_ratio_6h"]
        == training.loc[11, "card_max_log_amount_ratio_6h"]
        == 0
    )
    # Card 4: its habit is the 20 of two days before; the 90 is 4.5 times it and online,
    # so half an hour later it is one odd transaction, 0.5 h ago, against that same habit.
    assert training.loc[11, "card_log_amount_vs_habit"] == pytest.approx(math.log(90 / 20))
    assert training.loc[11, "card_odd_last_24h"] == 0
    assert math.isnan(training.loc[11, "card_hours_since_odd"])
    assert training.loc[11, "card_burst_24h"] == pytest.approx(-1.0)  # none today, 1 a day before
    late = training.loc[12]
    assert late["card_log_amount_vs_habit"] == pytest.approx(math.log(30 / 20))
    assert late["card_odd_last_1h"] == late["card_odd_last_6h"] == late["card_odd_last_24h"] == 1
    assert late["card_hours_since_odd"] == pytest.approx(0.5)
    assert late["card_burst_24h"] == pytest.approx(1 - 24 / 24.5)
    assert late["card_max_log_amount_ratio_6h"] == pytest.approx(math.log(90 / 55))


def test_request_time_header_forms():
    assert request_time_us(None) is None and request_time_us({}) is None
    assert request_time_us({REQUEST_TIME_HEADER: "1.5"}) == 1_500_000
    at = D0 + 9 * H
    assert request_time_us({REQUEST_TIME_HEADER: at.isoformat()}) == at.timestamp() * 1e6
    with pytest.raises(FeatureStoreError, match="time zone"):
        request_time_us({REQUEST_TIME_HEADER: "2026-01-05T09:00:00"})
    # What no clock reads: each a one-line error (the transformer's 400), never an overflow.
    for bad in (
        "Infinity",
        "-inf",
        "NaN",
        "tomorrow",
        "",
        "-1",
        "1e13",
        "9999-01-01T00:00:00+00:00",
    ):
        with pytest.raises(FeatureStoreError, match=REQUEST_TIME_HEADER):
            request_time_us({REQUEST_TIME_HEADER: bad})


@pytest.mark.slow
def test_ctr_recency_spans_hours_to_days(tmp_path):
    """Before, `*_hours_since_last` was measured to the end of the entity's last active
    hour and stayed below 1 h; measured to the request it spans hours to days."""
    spec = load_use_case("ctr")
    config = spec.generator_config({"events": 20_000, "days": 5, "users": 1_500, "ads": 80})
    spec.synthetic.generate(config, str(tmp_path / "lake"), False)
    store, lake = feature_store(tmp_path, "ctr")
    build_training_set(store, lake, tmp_path / "training.parquet", progress=False,
                       use_case=spec)  # fmt: skip
    hours = pd.read_parquet(tmp_path / "training.parquet")["user_hours_since_last"].dropna()
    assert hours.min() >= 0
    assert (hours > 1).mean() > 0.3  # most returning users come back hours later
    assert hours.max() > 48  # and some days later
    assert hours.quantile(0.1) < 1  # and some within the hour


@pytest.mark.slow
def test_ctr_recency_served_through_the_hourly_feed_equals_the_training_set(tmp_path):
    """CTR's state is materialized hourly (state_freshness_seconds=3600): served through
    the replay's OnlineFeed (advanced to each request's hour), the transformer's recency
    equals the training set's for the same impression, to the request's own time."""
    from kubeloop.features.materialize import OnlineFeed

    spec = load_use_case("ctr")
    assert spec.request_features.state_freshness_seconds == 3600
    config = spec.generator_config({"events": 6_000, "days": 3, "users": 300, "ads": 40})
    spec.synthetic.generate(config, str(tmp_path / "lake"), False)
    store, lake = feature_store(tmp_path, "ctr")
    build_training_set(store, lake, tmp_path / "training.parquet", progress=False,
                       use_case=spec)  # fmt: skip
    training = pd.read_parquet(tmp_path / "training.parquet")
    training = training.sort_values("event_timestamp", kind="stable")
    # A few impressions of each hour of the last day, in time order, as the replay sends them.
    last_day = training[training["event_timestamp"] >= training["event_timestamp"].max().floor("D")]
    sample = last_day.groupby(last_day["event_timestamp"].dt.floor("h")).head(3)
    transformer = FeastTransformer("ctr", "127.0.0.1:1", None, store=store, use_case=spec)
    reset_online_store(store)
    first = sample["event_timestamp"].iloc[0].floor("h").to_pydatetime()
    materialize(store, end=first, progress=False, use_case=spec)
    feed = OnlineFeed(store, first - dt.timedelta(seconds=1), use_case=spec)
    compared = 0
    for _, row in sample.iterrows():
        ts = row["event_timestamp"]
        feed.advance(ts.floor("h").to_pydatetime())
        request = {name: row[name] for name in spec.request_fields if name in row}
        request = {k: (v.item() if hasattr(v, "item") else v) for k, v in request.items()}
        headers = {REQUEST_TIME_HEADER: ts.isoformat()}
        (served,) = asyncio.run(transformer.preprocess({"instances": [request]}, headers))[
            "instances"
        ]
        for name in spec.request_feature_columns:
            assert same(row[name], served[name]), (ts, name, row[name], served[name])
            compared += row[name] == row[name]  # not NaN
    assert compared > 20
