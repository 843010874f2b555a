"""The fast inference route (kubeloop/serving/fast_infer.py) answers exactly what KServe's
own endpoints answer, and leaves every other request to them.

The same requests, good and malformed, go in process to KServe's app without kubeloop's
routes (its FastAPI endpoints, the edge in front) and to the served app (the fast route
in front of KServe's app with kubeloop's middlewares); status, body and the kept headers
must be equal, byte for byte for the bodies of good requests. A counter on the app
behind the fast route shows which requests the route answered itself.
"""

from __future__ import annotations

import asyncio
import json

import httpx
from test_inference_route import KEPT_HEADERS, _apps, _content, _requests
from test_predictor import MODEL_NAME, v2_inputs

from kubeloop.serving.fast_infer import FastInferApp
from kubeloop.serving.model_server import AppSetup
from kubeloop.serving.protocol import MODEL_FIELDS, example_row

V1 = f"/v1/models/{MODEL_NAME}:predict"
V2 = f"/v2/models/{MODEL_NAME}/infer"
JS = {"content-type": "application/json"}
LIMIT = 1 << 20


class _Counted:
    """An ASGI app that counts the requests it is handed."""

    def __init__(self, app):
        self.app, self.calls = app, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.calls += 1
        await self.app(scope, receive, send)


def _served(tmp_path):
    """(the app uvicorn serves: fast route -> KServe's app with kubeloop's middlewares,
    the counter behind the fast route, KServe's plain app)."""
    routed, plain = _apps(tmp_path)
    dataplane = next(
        m.kwargs["dataplane"] for m in routed.user_middleware if "dataplane" in m.kwargs
    )
    counted = _Counted(routed)
    served = FastInferApp(counted, dataplane, LIMIT, handlers=routed)
    return served, counted, plain


def _more_requests() -> list[tuple[str, bytes, dict]]:
    row = example_row(MODEL_FIELDS)
    rows = [dict(row, hour=h) for h in range(3)]
    good = json.dumps({"instances": rows}).encode()
    return [
        (V1, good, {}),  # no content type: KServe decodes JSON too
        (V1, good, {"content-type": "application/json; charset=utf-8"}),
        (V1, good, {"content-type": "text/plain"}),
        (V1, good, {**JS, "x-request-id": "bad id"}),
        (V1, good, {**JS, "x-request-id": "r" * 129}),
        (V1, good, {**JS, "ce-id": "c-1", "x-request-id": "h-2"}),
        (V1, b"not json", JS),
        (V1, b"", JS),
        (V1, b"[1, 2]", JS),
        (V1, json.dumps({"instances": rows, "extra": 1}).encode(), JS),
        (V1, json.dumps({"instances": rows, "request_id": "bad id"}).encode(), JS),
        (V1, json.dumps({"instances": [dict(row, hour="x")]}).encode(), JS),
        (V1, json.dumps({"instances": [{k: v for k, v in row.items() if k != "hour"}]}).encode(), JS),
        (V1, json.dumps({"instances": [dict(row, user_ctr_1d=None)]}).encode(), JS),
        (V1, b'{"instances": [{"hour": NaN}]}', JS),
        (V1, json.dumps({"instances": "x"}).encode(), JS),
        (V1, b" " * (LIMIT + 1), JS),  # over the body limit: 413
        (V1, json.dumps({"specversion": "1.0", "type": "t", "source": "s", "id": "1",
                         "time": "2024-01-01T00:00:00Z", "data": {"instances": rows}}).encode(), JS),
        (f"/v1/models/{MODEL_NAME}", b"", {}),
        *_v2_requests(rows),
    ]  # fmt: skip


def _v2_requests(rows: list[dict]) -> list[tuple[str, bytes, dict]]:
    inputs = v2_inputs(rows)
    number = next(i for i, spec in enumerate(MODEL_FIELDS.fields) if spec.kind == "number")

    def changed(j: int, **item) -> list[dict]:
        return [dict(x, **item) if i == j else x for i, x in enumerate(inputs)]

    def body(**fields) -> bytes:
        return json.dumps({"inputs": inputs, **fields}).encode()

    n = len(rows)
    return [
        (V2, body(), JS),
        (V2, body(), {"content-type": "text/plain"}),
        (V2, body(id="v2-1"), {"x-request-id": "h-3"}),
        (V2, body(id=None), JS),
        (V2, body(id=7), JS),
        (V2, body(outputs=[{"name": "probability"}]), JS),
        (V2, body(parameters={}), JS),
        (V2, json.dumps({"inputs": changed(0, datatype="int64")}).encode(), JS),
        (V2, json.dumps({"inputs": changed(0, datatype="FP32")}).encode(), JS),
        (V2, json.dumps({"inputs": changed(0, shape=[n + 1])}).encode(), JS),
        (V2, json.dumps({"inputs": changed(0, shape=[str(n)])}).encode(), JS),
        (V2, json.dumps({"inputs": changed(0, shape=[True])}).encode(), JS),
        (V2, json.dumps({"inputs": changed(0, parameters={})}).encode(), JS),
        (V2, json.dumps({"inputs": changed(0, name="nope")}).encode(), JS),
        (V2, json.dumps({"inputs": changed(0, data=[[1]] * n)}).encode(), JS),
        (V2, json.dumps({"inputs": changed(number, data=[2**64] * n)}).encode(), JS),
        (V2, json.dumps({"inputs": changed(number, data=[-(2**63) - 1] * n)}).encode(), JS),
        (V2, json.dumps({"inputs": changed(number, data=[float("nan")] * n)}).encode(), JS),
        (V2, json.dumps({"inputs": inputs[1:]}).encode(), JS),
        (V2, json.dumps({"inputs": [*inputs, inputs[0]]}).encode(), JS),
        (V2, b"{}", JS),
        (V2, b"[]", JS),
        ("/v2/models/nope/infer", body(), JS),
    ]  # fmt: skip


async def _answers(app, requests) -> list[tuple]:
    out = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path, body, headers in requests:
            if path == f"/v1/models/{MODEL_NAME}":
                r = await client.get(path)
            else:
                r = await client.post(path, content=body, headers=headers)
            kept = {k: r.headers.get(k) for k in (*KEPT_HEADERS, "content-type")}
            if kept["x-request-id"] and len(kept["x-request-id"]) == 36:
                kept["x-request-id"] = "<uuid>"  # a new id per answer
            out.append((path, r.status_code, _content(r), kept))
    return out


def test_fast_route_answers_as_kserve_endpoints(tmp_path):
    served, counted, plain = _served(tmp_path)
    requests = _requests() + _more_requests()
    fast = asyncio.run(_answers(served, requests))
    kserve = asyncio.run(_answers(plain, requests))
    for got, want in zip(fast, kserve, strict=True):
        assert got == want, (got, want)
    statuses = [a[1] for a in fast]
    assert statuses.count(200) >= 10 and {400, 404, 413, 422} <= set(statuses), statuses
    # The good v1 requests (and v1 errors the model raises) were answered by the route.
    assert counted.calls < len(requests) - 5


def test_fast_route_good_bodies_are_byte_equal(tmp_path):
    served, counted, plain = _served(tmp_path)
    row = example_row(MODEL_FIELDS)
    bodies = [
        json.dumps({"instances": [dict(row, hour=h, user_ctr_1d=h / 7) for h in range(n)],
                    "request_id": f"r-{n}"}).encode()
        for n in (1, 3, 8)
    ]  # fmt: skip
    requests = [(V1, body) for body in bodies] + [
        (V2, json.dumps({"id": f"v2-{n}", "inputs": v2_inputs([dict(row, hour=h) for h in range(n)])}).encode())
        for n in (1, 3, 8)
    ]  # fmt: skip

    async def run(app) -> list[tuple]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            out = []
            for path, body in requests:
                r = await client.post(path, content=body, headers=JS)
                out.append((r.status_code, r.content, r.headers.raw))
            return out

    fast, kserve = asyncio.run(run(served)), asyncio.run(run(plain))
    assert counted.calls == 0  # all answered by the route
    assert [(s, b) for s, b, _ in fast] == [(s, b) for s, b, _ in kserve]
    # The same headers (KServe's v2 endpoint puts its own first, the routes the model's).
    assert [sorted(h) for _, _, h in fast] == [sorted(h) for _, _, h in kserve]


def test_fast_route_keeps_the_model_metrics(tmp_path):
    from kserve.metrics import PREDICT_HIST_TIME

    served, counted, _ = _served(tmp_path)
    body = json.dumps({"instances": [example_row(MODEL_FIELDS)]}).encode()

    def count() -> float:
        return PREDICT_HIST_TIME.labels(model_name=MODEL_NAME)._sum.get(), sum(
            b.get() for b in PREDICT_HIST_TIME.labels(model_name=MODEL_NAME)._buckets
        )

    before = count()

    async def run():
        transport = httpx.ASGITransport(app=served)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.post(V1, content=body, headers=JS)).status_code

    assert asyncio.run(run()) == 200 and counted.calls == 0
    assert count()[1] == before[1] + 1


def test_metadata_and_health_are_kserve_s(tmp_path):
    served, counted, plain = _served(tmp_path)
    paths = [
        "/", "/v2/health/ready", "/v2/health/live", "/v2", f"/v2/models/{MODEL_NAME}",
        f"/v2/models/{MODEL_NAME}/ready", f"/v1/models/{MODEL_NAME}", "/v1/models",
        "/v2/models/nope",
    ]  # fmt: skip

    async def run(app) -> list[tuple]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [((r := await client.get(p)).status_code, r.content) for p in paths]

    assert asyncio.run(run(served)) == asyncio.run(run(plain))
    assert counted.calls == len(paths)


def _histogram_counts(name: str) -> list[float]:
    from kserve.metrics import POST_HIST_TIME, PRE_HIST_TIME, PREDICT_HIST_TIME

    return [
        sum(b.get() for b in h.labels(model_name=name)._buckets)
        for h in (PRE_HIST_TIME, PREDICT_HIST_TIME, POST_HIST_TIME)
    ]


def test_predict_call_is_kserve_model_call(tmp_path, caplog):
    """`ServedModel._predict_call` (the PREDICT verb of its __call__) makes kserve's
    `Model.__call__` calls: the same answer, histograms and latency line, also for a
    request that fails validation."""
    import logging
    import re

    import kserve
    import pytest
    from kserve.errors import InvalidInput
    from test_predictor import TINY_LGB, tiny_data

    from models.lightgbm_trainer import train_lightgbm
    from models.predictor import CTRPredictor

    train, valid, _ = tiny_data()
    model = CTRPredictor("served-call", tmp_path, model=train_lightgbm(train, valid, TINY_LGB))
    model.enable_latency_logging = True
    row = example_row(MODEL_FIELDS)
    good = {"instances": [row, dict(row, hour=3)], "request_id": "r-9"}
    bad = {"instances": [dict(row, hour=99)]}
    logger = logging.getLogger("kserve.trace")

    def lines() -> list[str]:
        found = [r.getMessage() for r in caplog.records if r.name == "kserve.trace"]
        caplog.clear()
        return [re.sub(r"\d+\.\d+(e-?\d+)?", "<ms>", line) for line in found]

    async def both(body):
        out = []
        for call in (model._predict_call, lambda b, h: kserve.Model.__call__(model, b, h)):
            before = _histogram_counts(model.name)
            try:
                answer = await call(dict(body), {"x-request-id": "h-1"})
            except InvalidInput as exc:
                answer = ("raised", str(exc))
            after = _histogram_counts(model.name)
            out.append((answer, [a - b for a, b in zip(after, before)]))
        return out

    logger.propagate, kept = True, logger.propagate
    try:
        with caplog.at_level(logging.INFO, logger="kserve.trace"):
            for body in (good, bad):
                ours, theirs = asyncio.run(both(body))
                assert ours == theirs
                logged = lines()
                assert len(logged) == (2 if body is good else 0) and len(set(logged)) <= 1
                if body is good:
                    assert logged[0].startswith("requestId: h-1, preprocess_ms: <ms>")
    finally:
        logger.propagate = kept
    assert ours[1] == [1, 1, 0]  # a failed predict: pre and predict observed, post not
    with pytest.raises(InvalidInput):
        asyncio.run(model._predict_call(dict(bad), {}))


def test_uvicorn_serves_the_fast_route():
    """`KubeloopModelServer.setup_event_loop` (run by `ModelServer.start` after it built
    the REST server, before serving) hands uvicorn the fast route, KServe's app behind it."""
    import asyncio as aio
    import types

    from kserve.model_server import app

    from kubeloop.serving.model_server import KubeloopModelServer

    setup = AppSetup(MODEL_FIELDS, 8, upstream=False, max_body_bytes=LIMIT)
    server = KubeloopModelServer(host="127.0.0.1", app_setup=setup, http_port=0, workers=1)
    server._rest_server = types.SimpleNamespace(config=types.SimpleNamespace(host="0.0.0.0"))
    loop = aio.new_event_loop()
    aio.set_event_loop(loop)
    try:
        server.setup_event_loop()
    finally:
        aio.set_event_loop(None)
        loop.close()
    served = server._rest_server.config.app
    assert isinstance(served, FastInferApp) and served.app is app
    assert served.max_body_bytes == LIMIT and server._rest_server.config.host == "127.0.0.1"


def test_chunked_body_goes_to_kserve_app(tmp_path):
    """A body without Content-Length (chunked) is left to the app behind the route."""
    served, counted, plain = _served(tmp_path)
    body = json.dumps({"instances": [example_row(MODEL_FIELDS)]}).encode()

    async def chunks():
        yield body[:10]
        yield body[10:]

    async def run(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post(V1, content=chunks(), headers=JS)
            return r.status_code, r.json()["predictions"]

    assert asyncio.run(run(served)) == asyncio.run(run(plain))
    assert counted.calls == 1
