"""The KServe transformer (models/transformer.py): Feast online lookup -> predictor request.

A tiny Feast repository (hand-built offline tables in the usecases.ctr.schema schemas, applied
and materialized into the embedded SQLite online store) backs both the in-process tests
of `preprocess` and the end-to-end test, which runs the real entry points as
subprocesses: client -> `python -m models.transformer` -> a recording proxy (the place of
the canary router) -> `python -m models.predictor`.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse
from test_predictor import (
    MODEL_NAME,
    TINY_LGB,
    export_model,
    start_server,
    tiny_data,
    v2_inputs,
)

from kubeloop.errors import FeatureStoreError
from kubeloop.features.materialize import materialize
from kubeloop.features.request_time import REQUEST_TIME_HEADER
from kubeloop.features.store import FeatureStoreSettings, apply_definitions, open_store, write_repo
from kubeloop.serving.protocol import CLIENT_FIELDS, MODEL_FIELDS, UpstreamError
from models.lightgbm_trainer import train_lightgbm
from models.predictor import CTRPredictor
from models.transformer import FeastTransformer, open_feature_store
from usecases.ctr import schema

pytestmark = [
    # Feast warns about its own internals on import, apply and materialize.
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

D0 = datetime(2024, 3, 1, tzinfo=UTC)
SEGMENTS = ["sports", "tech", "fashion"]
COUNTRIES = ["US", "DE", "FR"]
DEVICES = ["mobile", "desktop", "tablet"]
CATEGORIES = ["sports", "tech", "food"]
# entity -> number of daily feature rows; the online store must serve the latest.
USERS = {1: 3, 2: 1, 3: 2}
ADS = {10: 2, 11: 3}
NULL_USER_CELL = (2, "user_ctr_1d")  # a null the ETL may write
# The request time the tests send (REQUEST_TIME_HEADER), so recency is deterministic.
NOW = D0 + timedelta(days=6, hours=5)
AT = {REQUEST_TIME_HEADER: NOW.isoformat()}
UNKNOWN_USER, UNKNOWN_AD = 999, 777


def _user_row(user: int, k: int) -> dict:
    imp7, clk7 = 10 * user + k, user + k
    return {
        "user_id": user,
        schema.FEATURE_TIMESTAMP: D0 + timedelta(days=k),
        "user_segment": SEGMENTS[(user + k) % 3],
        "user_country": COUNTRIES[user % 3],
        "user_device_pref": DEVICES[user % 3],
        "user_impressions_1d": imp7 // 3,
        "user_clicks_1d": clk7 // 3,
        "user_ctr_1d": None
        if (user, "user_ctr_1d") == NULL_USER_CELL
        else (clk7 // 3) / max(imp7 // 3, 1),
        "user_impressions_7d": imp7,
        "user_clicks_7d": clk7,
        "user_ctr_7d": clk7 / imp7,
    }


def _ad_row(ad: int, k: int) -> dict:
    imp7, clk7 = 100 * ad + k, ad + 2 * k
    return {
        "ad_id": ad,
        schema.FEATURE_TIMESTAMP: D0 + timedelta(days=k),
        "advertiser_id": ad % 7 + 1,
        "ad_category": CATEGORIES[(ad + k) % 3],
        "ad_creative_age_days": 3.0 * ad + k / 4,
        "ad_impressions_1d": imp7 // 7,
        "ad_clicks_1d": clk7 // 7,
        "ad_ctr_1d": (clk7 // 7) / max(imp7 // 7, 1),
        "ad_impressions_7d": imp7,
        "ad_clicks_7d": clk7,
        "ad_ctr_7d": clk7 / imp7,
    }


def _last_impression(entity: int, k: int) -> datetime:
    """The instant of an entity's k-th impression (its state tables' rows)."""
    return D0 + timedelta(days=k - 1, hours=entity % 5, minutes=7 * k)


def state_tables() -> tuple[pa.Table, pa.Table]:
    """The request-time recency state: one row per impression instant of each entity."""

    def rows(entities: dict[int, int], key: str, prefix: str) -> list[dict]:
        return [
            {
                key: e,
                schema.FEATURE_TIMESTAMP: _last_impression(e, k),
                f"{prefix}_state_last_us": int(_last_impression(e, k).timestamp() * 1_000_000),
            }
            for e, n in entities.items()
            for k in range(1, n + 1)
        ]

    return (
        pa.Table.from_pylist(rows(USERS, "user_id", "user"), schema=schema.USER_STATE_SCHEMA),
        pa.Table.from_pylist(rows(ADS, "ad_id", "ad"), schema=schema.AD_STATE_SCHEMA),
    )


def expected_recency(entities: dict[int, int], entity: int) -> float | None:
    """Hours from the entity's last impression to NOW (None when it has none)."""
    if entity not in entities:
        return None
    return (NOW - _last_impression(entity, entities[entity])).total_seconds() * 1e6 / 3.6e9


def feature_tables() -> tuple[pa.Table, pa.Table]:
    users = [_user_row(u, k) for u, n in USERS.items() for k in range(1, n + 1)]
    ads = [_ad_row(a, k) for a, n in ADS.items() for k in range(1, n + 1)]
    return (
        pa.Table.from_pylist(users, schema=schema.USER_FEATURE_SCHEMA),
        pa.Table.from_pylist(ads, schema=schema.AD_FEATURE_SCHEMA),
    )


def build_feature_repo(
    root: Path, settings: FeatureStoreSettings | None = None, store=None
) -> Path:
    """Write the tables, write/apply the repository and materialize (into `store` when
    given, e.g. the same repository opened on Redis); returns the repository."""
    features = root / "features"
    features.mkdir(parents=True)
    users, ads = feature_tables()
    pq.write_table(users, features / schema.USER_FEATURES_FILE)
    pq.write_table(ads, features / schema.AD_FEATURES_FILE)
    user_state, ad_state = state_tables()
    pq.write_table(user_state, features / f"{schema.USER_STATE_VIEW}.parquet")
    pq.write_table(ad_state, features / f"{schema.AD_STATE_VIEW}.parquet")
    repo = root / "repo"
    write_repo(repo, settings or FeatureStoreSettings(), features)
    store = store(repo) if store is not None else open_store(repo)
    apply_definitions(store, features)
    materialize(store, progress=False)
    return repo


def latest_features() -> tuple[dict[int, dict], dict[int, dict]]:
    """The latest offline row per user and per ad, features only."""

    def latest(table: pa.Table, key: str, names: list[str]) -> dict[int, dict]:
        out: dict[int, dict] = {}
        for row in sorted(table.to_pylist(), key=lambda r: r[schema.FEATURE_TIMESTAMP]):
            out[row[key]] = {name: row[name] for name in names}
        return out

    users, ads = feature_tables()
    return latest(users, "user_id", schema.USER_FEATURES), latest(ads, "ad_id", schema.AD_FEATURES)


def client_rows() -> list[dict]:
    """Known users and ads, a cold-start user, a new ad, and both unknown at once."""
    pairs = [(1, 10), (2, 11), (3, 10), (1, 11), (UNKNOWN_USER, 10), (2, UNKNOWN_AD)]
    pairs.append((UNKNOWN_USER, UNKNOWN_AD))
    return [
        {
            "user_id": user,
            "ad_id": ad,
            "hour": (5 * i) % 24,
            "weekday": i % 7,
            "device": DEVICES[i % 3],
            "slot_position": 1 + i % 5,
        }
        for i, (user, ad) in enumerate(pairs)
    ]


def expected_predictor_rows(rows: list[dict]) -> list[dict]:
    """What the predictor must receive: context + latest offline features (nulls for
    entities the store does not hold) + recency at NOW, in model_input_columns() order."""
    users, ads = latest_features()
    null_user = dict.fromkeys(schema.USER_FEATURES)
    null_ad = dict.fromkeys(schema.AD_FEATURES)
    out = []
    for row in rows:
        merged = {
            **{k: row[k] for k in (*schema.CONTEXT_NUMERIC, *schema.CONTEXT_CATEGORICAL)},
            **users.get(row["user_id"], null_user),
            **ads.get(row["ad_id"], null_ad),
            "user_hours_since_last": expected_recency(USERS, row["user_id"]),
            "ad_hours_since_last": expected_recency(ADS, row["ad_id"]),
        }
        out.append({name: merged[name] for name in MODEL_FIELDS.names})
    return out


class CountingStore:
    """A FeatureStore wrapper counting online reads and registry lookups: one read per
    feature view per batch, and no registry lookup per request, is the contract."""

    def __init__(self, store):
        self._store = store
        self.lookups = 0  # online reads (Feast's online-store read, or get_online_features)
        self.registry_calls = 0
        counting = self

        class Provider:
            def __init__(self, provider):
                self._provider = provider

            def online_read(self, *args, **kwargs):
                counting.lookups += 1
                return self._provider.online_read(*args, **kwargs)

            def __getattr__(self, name):
                return getattr(self._provider, name)

        self._provider = Provider(store._get_provider())

    def _get_provider(self):
        return self._provider

    def get_online_features(self, *args, **kwargs):
        self.lookups += 1
        return self._store.get_online_features(*args, **kwargs)

    def get_feature_service(self, *args, **kwargs):
        self.registry_calls += 1
        return self._store.get_feature_service(*args, **kwargs)

    def get_feature_view(self, *args, **kwargs):
        self.registry_calls += 1
        return self._store.get_feature_view(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._store, name)


class RecordingProxy:
    """A loopback HTTP proxy in front of the predictor that records each request's path
    and headers: it stands where the canary router stands."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.seen: list[tuple[str, dict[str, str]]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                proxy.seen.append((self.path, headers))
                forward = {
                    k: v
                    for k, v in headers.items()
                    if k in ("content-type", "inference-header-content-length", "x-request-id")
                }
                answer = httpx.post(
                    proxy.upstream + self.path, content=body, headers=forward, timeout=30
                )
                self.send_response(answer.status_code)
                for key in ("content-type", "inference-header-content-length"):
                    if key in answer.headers:
                        self.send_header(key, answer.headers[key])
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def feature_repo(tmp_path_factory) -> Path:
    return build_feature_repo(tmp_path_factory.mktemp("feast"))


@pytest.fixture(scope="module")
def store(feature_repo):
    return open_store(feature_repo)


@pytest.fixture(scope="module")
def lgb_model():
    train, valid, _ = tiny_data()
    return train_lightgbm(train, valid, TINY_LGB)


@pytest.fixture(scope="module")
def servers(lgb_model, feature_repo, tmp_path_factory):
    """(transformer URL, predictor URL, proxy): the local online loop, for real."""
    root = tmp_path_factory.mktemp("serving")
    export = export_model(lgb_model, root)
    predictor_args = ["--model_name", MODEL_NAME, "--model_dir", str(export)]
    with (
        start_server("models.predictor", predictor_args, root / "predictor.log") as predictor,
        RecordingProxy(predictor) as proxy,
    ):
        transformer_args = [
            "--model_name",
            MODEL_NAME,
            "--predictor_host",
            proxy.host,
            "--feature_repo",
            str(feature_repo),
        ]
        with start_server(
            "models.transformer", transformer_args, root / "transformer.log"
        ) as transformer:
            yield transformer, predictor, proxy


def preprocess(transformer, body, headers=None):
    """The transformer's preprocess at the request time NOW (unless `headers` has one)."""
    if headers is None:
        headers = {}
    headers.setdefault(REQUEST_TIME_HEADER, AT[REQUEST_TIME_HEADER])
    return asyncio.run(transformer.preprocess(body, headers))


# --- preprocess, in process ------------------------------------------------------------


def test_preprocess_joins_the_latest_online_features_in_one_lookup(store):
    counting = CountingStore(store)
    transformer = FeastTransformer(MODEL_NAME, "127.0.0.1:1", None, store=counting)
    assert transformer.ready
    rows = client_rows()
    headers = {"x-request-id": "abc"}
    out = preprocess(transformer, {"instances": rows}, headers)
    assert list(out) == ["instances"]
    assert out["instances"] == expected_predictor_rows(rows)
    assert [list(r) for r in out["instances"]] == [MODEL_FIELDS.names] * len(rows)
    views = len(store.get_feature_service(schema.FEATURE_SERVICE).feature_view_projections)
    views += 2  # the user's and the ad's request-time state
    assert counting.lookups == views  # one read per feature view for the whole batch
    resolved = counting.registry_calls
    preprocess(transformer, {"instances": rows[:1]})
    assert counting.lookups == 2 * views
    assert counting.registry_calls == resolved  # no registry lookup per request
    assert headers["x-request-id"] == "abc"


def test_unknown_entities_get_null_features(store):
    transformer = FeastTransformer(MODEL_NAME, "127.0.0.1:1", None, store=store)
    rows = [r for r in client_rows() if r["user_id"] == UNKNOWN_USER and r["ad_id"] == UNKNOWN_AD]
    (row,) = preprocess(transformer, {"instances": rows})["instances"]
    assert all(row[name] is None for name in (*schema.USER_FEATURES, *schema.AD_FEATURES))
    assert row["hour"] == rows[0]["hour"] and row["device"] == rows[0]["device"]
    # a stored null stays null (the transform imputes it as in training)
    known = preprocess(transformer, {"instances": [client_rows()[1]]})["instances"][0]
    assert known["user_ctr_1d"] is None and known["user_segment"] is not None


def test_v2_client_request_and_v2_predictor_hop(store):
    rows = client_rows()
    request = InferRequest(
        MODEL_NAME,
        [
            InferInput(i["name"], i["shape"], i["datatype"], i["data"])
            for i in v2_inputs(rows, CLIENT_FIELDS)
        ],
        request_id="v2-req",
    )
    v1_hop = FeastTransformer(MODEL_NAME, "127.0.0.1:1", None, store=store)
    headers: dict[str, str] = {}
    assert preprocess(v1_hop, request, headers)["instances"] == expected_predictor_rows(rows)
    assert headers["x-request-id"] == "v2-req"

    v2_hop = FeastTransformer(MODEL_NAME, "127.0.0.1:1", None, store=store, protocol="v2")
    hop = preprocess(v2_hop, request)
    assert isinstance(hop, InferRequest) and hop.id == "v2-req"
    assert [i.name for i in hop.inputs] == MODEL_FIELDS.names
    expected = expected_predictor_rows(rows)
    for infer_input in hop.inputs:
        assert infer_input.shape == [len(rows)]
        assert infer_input.data == [r[infer_input.name] for r in expected]


def test_open_feature_store_overrides_the_online_store(feature_repo):
    store = open_feature_store(feature_repo)
    assert store.config.online_store.type == "sqlite"
    redis = open_feature_store(feature_repo, "redis", "redis://10.0.0.5:6380/2")
    assert redis.config.online_store.type == "redis"
    assert redis.config.online_store.connection_string == "10.0.0.5:6380,db=2"
    with pytest.raises(FeatureStoreError, match="--online_store redis"):
        open_feature_store(feature_repo, redis_url="redis://x:6379")


@pytest.mark.redis
def test_redis_online_store_override_serves_the_same_rows(redis_url, tmp_path):
    """The cluster path: feature_store.yaml says SQLite, --online_store redis wins."""
    import redis

    project = f"kl_test_{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(redis_url)

    def on_redis(repo):
        return open_feature_store(repo, "redis", redis_url)

    try:
        repo = build_feature_repo(tmp_path, FeatureStoreSettings(project=project), on_redis)
        transformer = FeastTransformer(
            MODEL_NAME, "127.0.0.1:1", repo, online_store="redis", redis_url=redis_url
        )
        assert transformer.load()
        assert transformer.store.config.online_store.type == "redis"
        rows = client_rows()
        assert preprocess(transformer, {"instances": rows})["instances"] == (
            expected_predictor_rows(rows)
        )
    finally:
        stale = list(client.scan_iter(match=f"*{project}"))
        if stale:
            client.delete(*stale)
        client.close()


def test_load_needs_an_applied_repository(tmp_path):
    with pytest.raises(FeatureStoreError, match="not found"):
        FeastTransformer(MODEL_NAME, "127.0.0.1:1", tmp_path / "missing").load()
    write_repo(tmp_path / "repo", FeatureStoreSettings(), tmp_path / "features")
    transformer = FeastTransformer(MODEL_NAME, "127.0.0.1:1", tmp_path / "repo")
    with pytest.raises(FeatureStoreError, match="feature service 'ctr_model' is not registered"):
        transformer.load()
    assert not transformer.ready


# --- end to end over HTTP ---------------------------------------------------------------


def test_end_to_end_equals_offline_predict_proba(servers, lgb_model):
    transformer, _, proxy = servers
    rows = client_rows()
    response = httpx.post(
        f"{transformer}/v1/models/{MODEL_NAME}:predict",
        json={"instances": rows},
        headers=AT,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(rows)
    joined = pd.DataFrame.from_records(expected_predictor_rows(rows), columns=MODEL_FIELDS.names)
    np.testing.assert_array_equal(predictions, lgb_model.predict_proba(joined))
    assert proxy.seen[-1][0] == f"/v1/models/{MODEL_NAME}:predict"

    v2 = httpx.post(
        f"{transformer}/v2/models/{MODEL_NAME}/infer",
        json={"id": "e2e-v2", "inputs": v2_inputs(rows, CLIENT_FIELDS)},
        headers=AT,
        timeout=30,
    )
    assert v2.status_code == 200, v2.text
    body = v2.json()
    assert body["id"] == "e2e-v2"
    (output,) = body["outputs"]
    assert output["name"] == "probability" and output["shape"] == [len(rows)]
    assert output["data"] == predictions


def test_v2_predictor_hop_is_accepted_by_the_real_predictor(servers, store, lgb_model):
    _, predictor, _ = servers
    rows = client_rows()
    transformer = FeastTransformer(MODEL_NAME, "127.0.0.1:1", None, store=store, protocol="v2")
    hop = preprocess(transformer, {"instances": rows})
    body, binary_length = hop.to_rest()
    assert binary_length is None
    response = httpx.post(f"{predictor}/v2/models/{MODEL_NAME}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    joined = pd.DataFrame.from_records(expected_predictor_rows(rows), columns=MODEL_FIELDS.names)
    expected = lgb_model.predict_proba(joined)
    answer = asyncio.run(transformer.postprocess(InferResponse.from_rest(response.json())))
    np.testing.assert_array_equal(answer["predictions"], expected)


def test_decisions_at_the_stored_threshold_reach_the_client(store, lgb_model):
    # A version with a decision threshold (the fraud use case's) answers its decisions
    # beside the scores; the transformer passes both on to the client.
    rows = client_rows()
    predictor = CTRPredictor(MODEL_NAME, "unused", model=lgb_model)
    predictor.load()
    scores = predictor.predict({"instances": expected_predictor_rows(rows)})["predictions"]
    threshold = float(np.median(scores))
    predictor.metadata = {"metrics": {"decision_threshold": threshold}}
    answer = predictor.predict({"instances": expected_predictor_rows(rows)})
    transformer = FeastTransformer(MODEL_NAME, "127.0.0.1:1", None, store=store)
    out = asyncio.run(transformer.postprocess(answer))
    assert out["predictions"] == scores
    assert out["decisions"] == [int(p >= threshold) for p in scores]
    assert 0 < sum(out["decisions"]) < len(rows)
    # Without a threshold there are none; nonsense from the predictor is a 502.
    assert "decisions" not in asyncio.run(transformer.postprocess({"predictions": scores}))
    with pytest.raises(UpstreamError, match="decisions"):
        asyncio.run(transformer.postprocess({"predictions": scores, "decisions": [2] * len(rows)}))


def test_the_pooled_hop_speaks_v1_and_v2_and_passes_on_predictor_errors(servers, store, lgb_model):
    # The hop to a plain-HTTP predictor goes over kubeloop's keep-alive pool, not KServe's
    # httpx client: the same answers for both protocols, the same 4xx mapping.
    _, predictor, _ = servers
    host = predictor.removeprefix("http://")
    rows = client_rows()
    joined = pd.DataFrame.from_records(expected_predictor_rows(rows), columns=MODEL_FIELDS.names)
    expected = lgb_model.predict_proba(joined)
    for protocol in ("v1", "v2"):
        transformer = FeastTransformer(MODEL_NAME, host, None, store=store, protocol=protocol)
        hop = preprocess(transformer, {"instances": rows})
        result = asyncio.run(transformer.predict(hop, {"x-request-id": f"pool-{protocol}"}))
        assert transformer._pool is not None and transformer._http_client_instance is None
        answer = asyncio.run(transformer.postprocess(result))
        np.testing.assert_array_equal(answer["predictions"], expected)
    transformer = FeastTransformer(MODEL_NAME, host, None, store=store)
    with pytest.raises(InvalidInput, match="rejected"):
        asyncio.run(transformer.predict({"instances": [{"bogus": 1}]}, {}))


def test_request_ids_reach_the_predictor_hop(servers):
    transformer, _, proxy = servers
    url = f"{transformer}/v1/models/{MODEL_NAME}:predict"
    rows = client_rows()[:2]

    def forwarded(**kwargs) -> tuple[httpx.Response, dict[str, str]]:
        before = len(proxy.seen)
        response = httpx.post(url, timeout=30, **kwargs)
        assert response.status_code == 200, response.text
        assert len(proxy.seen) == before + 1
        return response, proxy.seen[-1][1]

    response, seen = forwarded(
        json={"instances": rows},
        headers={"X-Request-ID": "client-abc", "x-b3-traceid": "trace-1", "x-other": "no"},
    )
    assert seen["x-request-id"] == "client-abc" == response.headers["x-request-id"]
    assert seen["x-b3-traceid"] == "trace-1"  # KServe forwards its tracing header too
    assert "x-other" not in seen

    response, seen = forwarded(
        json={"instances": rows, "request_id": "body-xyz"}, headers={"x-request-id": "client-abc"}
    )
    assert seen["x-request-id"] == "body-xyz" == response.headers["x-request-id"]

    response, seen = forwarded(json={"instances": rows})
    generated = seen["x-request-id"]
    assert str(uuid.UUID(generated)) == generated == response.headers["x-request-id"]


def test_bad_client_requests_name_the_field(servers):
    transformer, _, _ = servers
    url = f"{transformer}/v1/models/{MODEL_NAME}:predict"
    good = client_rows()[:3]
    cases = [
        (
            0,
            "user_id",
            "abc",
            "instances[0].user_id: expected integer 0..9223372036854775807, got 'abc'",
        ),
        (1, "hour", 25, "instances[1].hour: expected integer 0..23, got 25"),
        (2, "device", 5, "instances[2].device: expected string of at most 256 characters, got 5"),
        (0, "slot_position", None, "instances[0].slot_position: expected integer 1..100, got None"),
    ]
    for index, field, value, message in cases:
        rows = [dict(r) for r in good]
        rows[index][field] = value
        response = httpx.post(url, json={"instances": rows}, timeout=30)
        assert response.status_code == 400, (field, response.text)
        assert message in response.json()["error"]
    rows = [dict(r) for r in good]
    del rows[2]["weekday"]
    response = httpx.post(url, json={"instances": rows}, timeout=30)
    assert response.status_code == 400 and "instances[2].weekday: missing" in response.text

    response = httpx.post(url, json={"instances": good * 400}, timeout=30)
    assert response.status_code == 413 and "limit of 1024" in response.text

    assert httpx.post(url, json={"instances": good}, timeout=30).status_code == 200
