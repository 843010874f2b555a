"""The transformer's shadow stage in the cluster (models/transformer.py + kubeloop/serving/
shadow.py): each predictor request is copied to the route tag that serves the other version,
its answer goes to the request log as a KServe-logger CloudEvent with variant "shadow", and
the predictor hop carries `ce-id` (KServe's logger takes the event id from it).

No KServe server runs here: the predictor hop is a recording stand-in for KServe's REST
client, the shadow targets are in-process ASGI apps."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from kubeloop.serving.request_log.feedback import FeedbackService
from kubeloop.serving.request_log.sinks import SQLiteRequestLog
from kubeloop.serving.shadow import (
    ShadowAnswer,
    ShadowMirror,
    ShadowRequest,
    ShadowTargets,
    transformer_mirror,
)

feast = pytest.importorskip("feast")
from models.transformer import FeastTransformer

PAYLOAD = {"instances": [{"user_id": 1, "ad_id": 2}]}


class Hop:
    """Stands in for KServe's InferenceRESTClient: records what the transformer sends."""

    def __init__(self, version: str = "v1"):
        self.calls: list[dict] = []
        self.version = version

    async def infer(self, base_url, model_name, data, headers=None, response_headers=None):
        self.calls.append({"url": base_url, "data": data, "headers": dict(headers or {})})
        return {"predictions": [0.125], "model_version": self.version}


def metadata_app(version: str) -> Starlette:
    async def meta(request):
        return JSONResponse({"name": "ctr", "versions": [version]})

    return Starlette(routes=[Route("/v2/models/{name}", meta)])


def transformer_with(mirror, targets, hop) -> FeastTransformer:
    t = FeastTransformer(
        "ctr", "ctr-predictor.kubeloop", None, shadow=mirror, shadow_targets=targets
    )
    t._http_client_instance = hop
    return t


def targets_for(latest: str, prev: str) -> ShadowTargets:
    mounts = {
        "http://latest-ctr-predictor.kubeloop": httpx.ASGITransport(app=metadata_app(latest)),
        "http://prev-ctr-predictor.kubeloop": httpx.ASGITransport(app=metadata_app(prev)),
    }
    return ShadowTargets(
        ["latest-ctr-predictor.kubeloop", "prev-ctr-predictor.kubeloop"], "ctr", mounts=mounts
    )


def test_targets_read_each_tags_version_and_pick_the_other_one() -> None:
    targets = targets_for("v2", "v1")
    assert targets.pick("v1") is None  # nothing known yet: no copy, and a refresh is due
    found = asyncio.run(targets.refresh())
    assert found == {
        "http://latest-ctr-predictor.kubeloop": "v2",
        "http://prev-ctr-predictor.kubeloop": "v1",
    }
    assert targets.pick("v1") == (
        "http://latest-ctr-predictor.kubeloop/v1/models/ctr:predict",
        "v2",
    )
    assert targets.pick("v2") == ("http://prev-ctr-predictor.kubeloop/v1/models/ctr:predict", "v1")
    assert targets.pick(None) is None
    # After a promote both tags serve one version: nothing to shadow.
    same = targets_for("v2", "v2")
    asyncio.run(same.refresh())
    assert same.pick("v2") is None


def test_the_hop_carries_ce_id_and_a_copy_goes_to_the_other_version() -> None:
    copies: list[ShadowRequest] = []

    async def record(request):
        copies.append(request)
        return ShadowAnswer(200, b'{"predictions": [0.5]}', "v2")

    targets = targets_for("v2", "v1")
    asyncio.run(targets.refresh())
    hop = Hop("v1")
    mirror = ShadowMirror(record)
    transformer = transformer_with(mirror, targets, hop)

    async def go():
        result = await transformer.predict(dict(PAYLOAD), {"x-request-id": "req-7"})
        await mirror.join()
        await mirror.aclose()
        return result

    result = asyncio.run(go())
    assert result == {"predictions": [0.125], "model_version": "v1"}
    (call,) = hop.calls
    assert call["headers"]["ce-id"] == "req-7" and call["headers"]["x-request-id"] == "req-7"
    (copy,) = copies
    assert (copy.request_id, copy.version) == ("req-7", "v2")
    assert copy.url == "http://latest-ctr-predictor.kubeloop/v1/models/ctr:predict"
    assert httpx.Response(200, content=copy.body).json() == PAYLOAD


def test_a_hung_shadow_does_not_hold_the_transformer() -> None:
    gate: dict[str, asyncio.Event] = {}

    async def hang(request):
        gate.setdefault("open", asyncio.Event())
        await gate["open"].wait()
        return ShadowAnswer(200, b"{}", "v2")

    targets = targets_for("v2", "v1")
    asyncio.run(targets.refresh())
    mirror = ShadowMirror(hang, workers=1, queue_size=2)
    transformer = transformer_with(mirror, targets, Hop("v1"))

    async def go():
        results = [
            await transformer.predict(dict(PAYLOAD), {"x-request-id": f"r{i}"}) for i in range(5)
        ]
        stats = mirror.stats.as_dict()
        gate.setdefault("open", asyncio.Event()).set()
        await mirror.join()
        await mirror.aclose()
        return results, stats

    results, stats = asyncio.run(go())
    assert results == [{"predictions": [0.125], "model_version": "v1"}] * 5
    # One copy in the hung worker, two queued, the rest dropped (counted), none waited for.
    assert stats["submitted"] == 5 and stats["dropped"] >= 2 and stats["mirrored"] == 0


class _Sink(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict, bytes]]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_shadow_answers_reach_the_request_log_as_cloudevents(tmp_path) -> None:
    _Sink.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/requestlog"
    mirror, _ = transformer_mirror("ctr", ["prev-ctr-predictor.kubeloop"], url)

    async def shadow_model(request):
        return ShadowAnswer(200, b'{"predictions": [0.5], "model_version": "v2"}', "v2")

    mirror.send = shadow_model

    async def go():
        mirror.submit(
            ShadowRequest("req-9", "v2", "http://x/v1/models/ctr:predict", b'{"instances": [{}]}')
        )
        await mirror.join()
        await mirror.aclose()

    asyncio.run(go())
    mirror.request_log.close()  # flushes the POSTs
    server.shutdown()
    assert len(_Sink.received) == 2
    # The request log keeps both halves under the caller's id, variant shadow, version v2.
    sink = SQLiteRequestLog(tmp_path / "log.sqlite")
    service = FeedbackService(sink)
    for headers, body in _Sink.received:
        assert headers["ce-id"] == "req-9" and headers["ce-variant"] == "shadow"
        status, answer = service.receive_event(headers, body)
        assert status == 200, answer
    (row,) = service.records()["records"]
    assert (row["variant"], row["version"], row["predictions"]) == ("shadow", "v2", [0.5])
    service.close()
    sink.close()
