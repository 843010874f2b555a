"""The demo's replay serves a streamed-state use case (fraud: state_freshness_seconds=0) the
request-time features its training set holds for the same events: `replay_through_time`
feeds each request's card its state strictly before the request (`StateFeed`), in waves
that never let a request in flight see a later request's state. The hourly feed alone
(what the replay did before) serves the state as of the hour's start instead."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pandas as pd
import pytest

from kubeloop.features.state_feed import StateFeed, dependencies, streams_state
from kubeloop.features.training_set import build_training_set
from kubeloop.serving.replay import ReplayConfig, offered_load, replay_through_time
from kubeloop.usecase import load_use_case
from models.transformer import FeastTransformer
from tests.test_request_time import feature_store, same

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]


class _RecordingTransformer:
    """An HTTP endpoint that runs the transformer's preprocess (its online read and
    request-time features) on each request and keeps what it would send the predictor,
    by request id; it answers a score of 0 per row. One request at a time, so requests
    the client has in flight wait in its queue, where a later feed could overtake them."""

    def __init__(self, transformer: FeastTransformer):
        self.served: dict[str, list[dict]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                headers = {k.lower(): v for k, v in self.headers.items()}
                out = asyncio.run(transformer.preprocess(body, headers))
                outer.served[headers["x-request-id"]] = out["instances"]
                answer = json.dumps({"predictions": [0.0] * len(out["instances"])}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_port}/v1/models/fraud:predict"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fraud_store(tmp_path_factory):
    """A small generated fraud lake (few cards, so cards come back within minutes), its
    feature store and training set."""
    root = tmp_path_factory.mktemp("fraud")
    spec = load_use_case("fraud")
    config = spec.generator_config({"events": 4_000, "days": 2, "cards": 150, "merchants": 40})
    spec.synthetic.generate(config, str(root / "lake"), False)
    store, lake = feature_store(root, "fraud")
    build_training_set(store, lake, root / "training.parquet", progress=False, use_case=spec)
    training = pd.read_parquet(root / "training.parquet")
    return spec, store, root / "repo", training


def _replay(fraud_store, sample, config):
    spec, store, repo, _ = fraud_store
    transformer = FeastTransformer("fraud", "127.0.0.1:1", None, store=store, use_case=spec)
    recorder = _RecordingTransformer(transformer)
    with recorder as url:
        sent = replay_through_time(url, sample, config, repo, id_prefix="t-", use_case=spec)
    return sent, recorder.served


def _served_vs_training(spec, sent, served, training, first_only=False):
    """(compared values, mismatches) of every request-time feature of every served row."""
    by_event = training.assign(event_id=training["event_id"].astype(str)).set_index("event_id")
    compared, mismatches = 0, []
    for _, row in sent.iterrows():
        if first_only and row["position"] != 0:
            continue
        offline = by_event.loc[row["event_id"]]
        online = served[row["request_id"]][row["position"]]
        for name in spec.request_feature_columns:
            compared += 1
            if not same(offline[name], online[name]):
                mismatches.append((row["event_id"], name, offline[name], online[name]))
    return compared, mismatches


def _sample(training, hours: int = 3) -> pd.DataFrame:
    # Every event of a few hours of the last day, in time order, as the demo replays them.
    training = training.sort_values(["event_timestamp", "event_id"], kind="stable")
    start = training["event_timestamp"].max().floor("D") + pd.Timedelta(hours=10)
    window = training[
        (training["event_timestamp"] >= start)
        & (training["event_timestamp"] < start + pd.Timedelta(hours=hours))
    ]
    return window.reset_index(drop=True)


@pytest.mark.slow
def test_fraud_replay_serves_the_training_sets_request_time_values(fraud_store):
    spec, _, _, training = fraud_store
    assert streams_state(spec) and not streams_state(load_use_case("ctr"))
    sample = _sample(training)
    # Cards come back within the replayed hours, several within one wave's reach.
    assert sample["card_id"].duplicated().sum() > 20
    config = ReplayConfig(requests=1, batch_size=1, concurrency=4)
    sent, served = _replay(fraud_store, sample, config)
    assert (sent["status_code"] == 200).all() and len(sent) == len(sample)
    compared, mismatches = _served_vs_training(spec, sent, served, training)
    assert compared == len(sample) * len(spec.request_feature_columns)
    assert mismatches == []
    # Values that could differ did: recency and velocity vary across the served events.
    served_hours = pd.Series([served[r][0]["card_hours_since_last"] for r in sent["request_id"]])
    assert served_hours.dropna().nunique() > 20
    load = offered_load(sent, config)
    assert load["requests"] == len(sample) and load["rows_per_request"] == 1
    assert 0 < load["mean_in_flight"] <= config.concurrency + 0.01


@pytest.mark.slow
def test_batched_replay_serves_each_request_at_its_own_time(fraud_store):
    """A batch's rows read the state and clock of the batch's time (its first row's), so
    every batch's first row is served its training values."""
    spec, _, _, training = fraud_store
    sample = _sample(training, hours=2)
    sent, served = _replay(fraud_store, sample, ReplayConfig(batch_size=4, concurrency=3))
    compared, mismatches = _served_vs_training(spec, sent, served, training, first_only=True)
    assert compared > 0 and mismatches == []


@pytest.mark.slow
def test_the_hourly_feed_alone_serves_stale_state(fraud_store, monkeypatch):
    """Without the per-request feed (the replay before), the same replay serves values the
    training set does not have: the check above is not vacuous."""
    from kubeloop.features import state_feed

    spec, _, _, training = fraud_store
    monkeypatch.setattr(state_feed, "streams_state", lambda use_case: False)
    sample = _sample(training, hours=2)
    sent, served = _replay(fraud_store, sample, ReplayConfig(batch_size=1, concurrency=2))
    _, mismatches = _served_vs_training(spec, sent, served, training)
    assert len({m[0] for m in mismatches}) > len(sample) // 4


def test_a_request_waits_for_the_latest_earlier_one_on_each_of_its_entities():
    keys = [{1}, {2}, {1}, {3, 2}, {1, 3}, {4}]
    assert dependencies(keys) == [set(), set(), {0}, {1}, {2, 3}, set()]
    assert dependencies([]) == []


@pytest.mark.slow
def test_state_feed_writes_the_newest_state_strictly_before_the_request(fraud_store):
    spec, store, _, _ = fraud_store
    feed = StateFeed(store, use_case=spec)
    ((view, table),) = feed.tables.items()
    key, (start, _) = next((k, r) for k, r in table.ranges.items() if r[1] - r[0] >= 3)
    second = table.frame["feature_timestamp"].iloc[start + 1]
    # at the card's second instant: its first row; a microsecond later: the second
    assert table.newest_before(key, second.value) == start
    assert table.newest_before(key, second.value + 1000) == start + 1
    assert table.newest_before(key, table.frame["feature_timestamp"].iloc[start].value) is None
    assert table.newest_before(-1, second.value) is None
    # A row the store holds (materialized before `held_as_of`) is not written again.
    held = StateFeed(store, use_case=spec, held_as_of=second + pd.Timedelta(microseconds=1))
    request = [{table.key: key}]
    assert held.write([(second + pd.Timedelta(microseconds=1), request)]) == 0
    third = table.frame["feature_timestamp"].iloc[start + 2]
    assert held.write([(third + pd.Timedelta(microseconds=1), request)]) == 1
    assert held.held[(view, key)] == start + 2 and held.rows_written == 1


def test_offered_load_counts_only_the_time_traffic_was_in_flight():
    t0 = pd.Timestamp("2026-01-05", tz="UTC")
    s = pd.Timedelta(seconds=1)
    # two overlapping 1 s requests of 2 rows, then a pause, then one more of 1 row
    spans = {"a": (0, 1, 2), "b": (0.5, 1.5, 2), "c": (10, 11, 1)}
    sent = pd.DataFrame(
        [
            {
                "request_id": rid,
                "position": k,
                "started_at": t0 + start * s,
                "sent_at": t0 + end * s,
                "client_latency_ms": (end - start) * 1000,
            }
            for rid, (start, end, rows) in spans.items()
            for k in range(rows)
        ]
    )
    load = offered_load(sent, ReplayConfig(batch_size=2, concurrency=2))
    assert load["busy_seconds"] == 2.5  # [0, 1.5] and [10, 11]; the pause is left out
    assert load["requests"] == 3 and load["requests_per_s"] == 1.2
    assert load["rows_per_s"] == 2.0 and load["rows_per_request"] == round(5 / 3, 3)
    assert load["mean_in_flight"] == 1.2 and load["concurrency"] == 2
