"""The label feedback endpoint and the request log's HTTP side
(kubeloop/serving/request_log/feedback.py): a label is a CloudEvent (binary, structured or
a batch) with a request id the log has seen and a label of 0 or 1; anything else is a 4xx
and stores nothing."""

from __future__ import annotations

import json

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from starlette.applications import Starlette
from starlette.testclient import TestClient

from kubeloop.cloudevents import REQUEST_TYPE, RESPONSE_TYPE
from kubeloop.serving.request_log.events import Exchange
from kubeloop.serving.request_log.feedback import (
    BATCH_CONTENT_TYPE,
    LABEL_TYPE,
    FeedbackService,
    label_event,
)
from kubeloop.serving.request_log.logger import CloudEventLogger
from kubeloop.serving.request_log.sinks import SQLiteRequestLog


def _exchange(rid: str, variant: str, version: str, n: int = 1, score: float = 0.2) -> Exchange:
    return Exchange(
        request_body=json.dumps({"instances": [{"x": i} for i in range(n)]}).encode(),
        response_body=json.dumps({"predictions": [score] * n}).encode(),
        status_code=200,
        variant=variant,
        model_version=version,
        latency_ms=3.0,
        request_id=rid,
    )


@pytest.fixture()
def service(tmp_path):
    sink = SQLiteRequestLog(tmp_path / "requests.sqlite")
    logger = CloudEventLogger(sink, inference_service="ctr", close_sink=False)
    logger.log(_exchange("r1", "primary", "v1"))
    logger.log(_exchange("r1", "shadow", "v2", score=0.3))
    logger.log(_exchange("b1", "canary", "v2", n=3))
    logger.log(_exchange("s1", "shadow", "v2"))  # only a shadow answered: not a served request
    logger.close()
    svc = FeedbackService(sink)
    yield svc
    svc.close()
    sink.close()


def client_for(svc: FeedbackService) -> TestClient:
    app = Starlette()
    svc.mount(app)
    return TestClient(app)


def binary(data, *, type_=LABEL_TYPE, **attrs) -> tuple[dict, bytes]:
    event = CloudEvent({"type": type_, "source": "test/feedback", **attrs}, data)
    headers, body = to_binary(event)
    return dict(headers), body


def test_binary_structured_and_batch_labels_are_stored(service) -> None:
    client = client_for(service)
    headers, body = binary({"request_id": "r1", "label": 1})
    r = client.post("/feedback", headers=headers, content=body)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 1
    headers, body = to_structured(
        CloudEvent({"type": LABEL_TYPE, "source": "t"}, {"request_id": "b1/2", "click": 0})
    )
    r = client.post("/feedback", headers=dict(headers), content=body)
    assert r.status_code == 200, r.text
    batch = [label_event("b1", 1, source="t", position=0), label_event("b1/1", 1, source="t")]
    r = client.post(
        "/feedback", headers={"content-type": BATCH_CONTENT_TYPE}, content=json.dumps(batch)
    )
    assert r.status_code == 200, r.text
    assert service.labels.labels() == {"r1": 1, "b1/2": 0, "b1/0": 1, "b1/1": 1}
    # The same impression again: the newer label replaces the older (a retried delivery).
    headers, body = binary({"request_id": "r1", "label": 0})
    assert client.post("/feedback", headers=headers, content=body).status_code == 200
    assert service.labels.labels()["r1"] == 0


BAD = [
    ({"request_id": "nope", "label": 1}, {}, 404, "unknown_request_id"),
    ({"request_id": "s1", "label": 1}, {}, 404, "unknown_request_id"),  # shadow only
    ({"request_id": "r1", "label": 2}, {}, 422, "bad_label"),
    ({"request_id": "r1", "label": True}, {}, 422, "bad_label"),
    ({"request_id": "r1", "label": 1.0}, {}, 422, "bad_label"),
    ({"request_id": "r1", "label": "1"}, {}, 422, "bad_label"),
    ({"request_id": "r1"}, {}, 422, "bad_label"),
    ({"request_id": "r1", "label": 1, "click": 1}, {}, 422, "bad_label"),
    ({"label": 1}, {}, 422, "bad_request_id"),
    ({"request_id": "r 1", "label": 1}, {}, 422, "bad_request_id"),
    ({"request_id": "r1", "label": 1, "extra": 3}, {}, 422, "unknown_field"),
    ({"request_id": "b1", "label": 1}, {}, 422, "bad_position"),
    ({"request_id": "b1/3", "label": 1}, {}, 422, "bad_position"),
    ({"request_id": "b1", "label": 1, "position": 3}, {}, 422, "bad_position"),
    ({"request_id": "b1", "label": 1, "position": -1}, {}, 422, "bad_position"),
    ([1, 2], {}, 400, "malformed_body"),
    (
        {"request_id": "r1", "label": 1},
        {"type_": "org.kubeflow.serving.inference.request"},
        400,
        "wrong_type",
    ),
]


@pytest.mark.parametrize(("data", "attrs", "status", "reason"), BAD)
def test_a_bad_label_is_a_4xx_and_stores_nothing(service, data, attrs, status, reason) -> None:
    client = client_for(service)
    headers, body = binary(data, **attrs)
    r = client.post("/feedback", headers=headers, content=body)
    assert (r.status_code, r.json()["reason"]) == (status, reason), r.text
    assert service.labels.count() == 0


def test_malformed_events_are_refused(service) -> None:
    client = client_for(service)
    headers, body = binary({"request_id": "r1", "label": 1})
    for drop in ("ce-id", "ce-source", "ce-specversion", "ce-type"):
        h = {k: v for k, v in headers.items() if k.lower() != drop}
        r = client.post("/feedback", headers=h, content=body)
        assert r.status_code == 400 and drop in r.json()["error"], (drop, r.text)
    r = client.post("/feedback", headers=headers, content=b"{not json")
    assert (r.status_code, r.json()["reason"]) == (400, "malformed_body")
    r = client.post("/feedback", headers={**headers, "content-type": "text/plain"}, content=body)
    assert r.status_code == 415
    r = client.post("/feedback", headers={**headers, "ce-specversion": "0.1"}, content=body)
    assert (r.status_code, r.json()["reason"]) == (400, "bad_specversion")
    # One bad event in a batch: the whole batch is refused, the good ones are not stored.
    batch = [label_event("r1", 1, source="t"), label_event("nope", 0, source="t")]
    r = client.post(
        "/feedback", headers={"content-type": BATCH_CONTENT_TYPE}, content=json.dumps(batch)
    )
    assert r.status_code == 404 and r.json()["error"].startswith("event 1:")
    assert service.labels.count() == 0
    assert service.status()["counters"]["unknown_request_id"] == 1


def test_labels_also_reach_the_callback(tmp_path, service) -> None:
    seen = []
    service.on_labels = seen.append
    headers, body = binary({"request_id": "r1", "click": 1})
    assert client_for(service).post("/feedback", headers=headers, content=body).status_code == 200
    assert seen == [[("r1", 1)]]


def test_requestlog_keeps_cluster_events_and_records_pair_them(tmp_path) -> None:
    sink = SQLiteRequestLog(tmp_path / "log.sqlite")
    svc = FeedbackService(sink)
    client = client_for(svc)

    def kserve_event(type_, data, time, **extra):
        # What KServe's logger sends (binary mode), without kubeloop's extensions.
        attrs = {
            "type": type_,
            "source": "ctr-predictor-00002-deployment-6b7c9d-abcde",
            "id": "k1",
            "time": time,
            "inferenceservicename": "ctr",
            "namespace": "kubeloop",
            "component": "predictor",
            "endpoint": "",
            **extra,
        }
        headers, body = to_binary(CloudEvent(attrs, data))
        return dict(headers), body

    for type_, data, when in (
        (REQUEST_TYPE, {"instances": [{"x": 1}]}, "2026-12-01T10:00:00.000000000Z"),
        (RESPONSE_TYPE, {"predictions": [0.25], "model_version": "v1"}, "2026-12-01T10:00:00.012Z"),
    ):
        headers, body = kserve_event(type_, data, when)
        assert client.post("/requestlog", headers=headers, content=body).status_code == 200
    # A shadow answer under the same id, as the transformer posts it.
    for type_, data in (
        (REQUEST_TYPE, {"instances": [{"x": 1}]}),
        (RESPONSE_TYPE, {"predictions": [0.3]}),
    ):
        headers, body = kserve_event(
            type_, data, "2026-12-01T10:00:01Z", variant="shadow", modelversion="v2"
        )
        assert client.post("/requestlog", headers=headers, content=body).status_code == 200
    headers, body = binary({"request_id": "k1", "label": 1})
    assert client.post("/feedback", headers=headers, content=body).status_code == 200

    answer = client.get("/requestlog/records").json()
    assert answer["labels"] == {"k1": 1}
    rows = {r["variant"]: r for r in answer["records"]}
    assert rows[None]["version"] == "v1" and rows[None]["predictions"] == [0.25]
    assert rows[None]["latency_ms"] == pytest.approx(12.0, abs=0.01)
    assert rows[None]["status_code"] == 200
    assert rows["shadow"]["version"] == "v2"
    later = client.get("/requestlog/records", params={"since": "2026-12-01T10:00:00.5+00:00"})
    assert [r["variant"] for r in later.json()["records"]] == ["shadow"]
    assert later.json()["labels"] == {"k1": 1}  # k1 still has an answer in the window
    # Labels of requests outside the window are not sent.
    assert svc.records(since="2026-12-02T00:00:00+00:00") == {
        "since": "2026-12-02T00:00:00.000000+00:00",
        "records": [],
        "labels": {},
    }
    assert client.get("/requestlog/records", params={"since": "yesterday"}).status_code == 400
    # Not an inference event: refused, nothing kept.
    headers, body = binary({"request_id": "k1", "label": 1})
    assert client.post("/requestlog", headers=headers, content=body).status_code == 400
    assert sink.count() == 4
    svc.close()
    sink.close()


class _Monitor:
    """What the drift service's app calls on its monitor, recording the labels."""

    def __init__(self):
        self.on_evaluation, self.on_alert, self.labelled = [], [], []

    def ingest(self, event):
        class Result:
            paired, alerts = event.kind == "response", []

        return Result()

    def add_labels(self, pairs):
        self.labelled.extend(pairs)

    def status(self):
        return {"model": "ctr", "reference_version": "v1", "open_windows": []}


def test_the_drift_service_mounts_the_feedback_endpoint(tmp_path) -> None:
    from kubeloop.drift.service import build_app

    monitor = _Monitor()
    sink = SQLiteRequestLog(tmp_path / "requests.sqlite")
    feedback = FeedbackService(sink, on_labels=monitor.add_labels)
    app = build_app(
        monitor,
        inference_service="ctr",
        revision_variant=lambda revision: "canary" if revision.endswith("00002") else "primary",
        feedback=feedback,
    )
    client = TestClient(app)
    source = "ctr-predictor-00002-deployment-6b7c9d-abcde"
    for type_, data in (
        (REQUEST_TYPE, {"instances": [{"x": 1}]}),
        (RESPONSE_TYPE, {"predictions": [0.4], "model_version": "v2"}),
    ):
        headers, body = to_binary(CloudEvent({"type": type_, "source": source, "id": "q1"}, data))
        r = client.post("/", headers=dict(headers), content=body)
        assert r.status_code == 200, r.text
    headers, body = binary({"request_id": "q1", "label": 1})
    assert client.post("/feedback", headers=headers, content=body).status_code == 200
    headers, body = binary({"request_id": "q2", "label": 1})
    assert client.post("/feedback", headers=headers, content=body).status_code == 404
    assert monitor.labelled == [("q1", 1)]
    records = client.get("/requestlog/records").json()
    assert records["labels"] == {"q1": 1}
    (row,) = records["records"]
    assert (row["variant"], row["version"], row["predictions"]) == ("canary", "v2", [0.4])
    feedback.close()
    sink.close()


def test_the_router_takes_labels_for_what_it_served(tmp_path) -> None:
    import asyncio

    import httpx
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from kubeloop.serving.rollout import initial_state
    from kubeloop.serving.router import CanaryRouter

    async def predict(request):
        return JSONResponse({"predictions": [0.5]})

    backend = Starlette(routes=[Route("/v1/models/{name}:predict", predict, methods=["POST"])])
    sink = SQLiteRequestLog(tmp_path / "requests.sqlite")
    logger = CloudEventLogger(sink, inference_service="ctr", close_sink=False)
    feedback = FeedbackService(sink)
    router = CanaryRouter(
        initial_state("ctr", "v1"),
        {"v1": "http://p.test"},
        mounts={"http://p.test": httpx.ASGITransport(app=backend)},
        request_log=logger,
        feedback=feedback,
    )

    async def go():
        transport = httpx.ASGITransport(app=router.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            await client.post(
                "/v1/models/ctr:predict", json={"instances": [{}]}, headers={"x-request-id": "z1"}
            )
            logger.flush()
            answers = []
            for rid in ("z1", "z2"):
                headers, body = binary({"request_id": rid, "label": 0})
                answers.append(
                    (
                        await client.post("/kubeloop/feedback", headers=headers, content=body)
                    ).status_code
                )
            status = (await client.get("/kubeloop/rollout")).json()
        await router.aclose()
        return answers, status

    answers, status = asyncio.run(go())
    assert answers == [200, 404]
    assert status["feedback"]["labels"] == 1
    logger.close()
    feedback.close()
    sink.close()


def test_post_label_events_sends_batches_all_or_nothing(service) -> None:
    from kubeloop.serving.request_log.feedback import FeedbackError, post_label_events

    client = client_for(service)
    assert (
        post_label_events("/feedback", [("r1", 1), ("b1/0", 0)], source="t", chunk=1, client=client)
        == 2
    )
    assert service.labels.labels() == {"r1": 1, "b1/0": 0}
    with pytest.raises(FeedbackError, match="no such request") as info:
        post_label_events("/feedback", [("b1/1", 1), ("ghost", 1)], source="t", client=client)
    assert info.value.status == 404
    assert "b1/1" not in service.labels.labels()  # the batch was refused as a whole


def test_the_log_keeps_only_its_retention(tmp_path) -> None:
    import time

    sink = SQLiteRequestLog(tmp_path / "requests.sqlite")
    logger = CloudEventLogger(sink, inference_service="ctr", close_sink=False)
    logger.log(_exchange("old", "primary", "v1"))
    logger.close()
    now = [time.time()]
    svc = FeedbackService(
        sink, retention_seconds=3600, prune_every_seconds=60, clock=lambda: now[0]
    )
    headers, body = binary({"request_id": "old", "label": 1})
    assert client_for(svc).post("/feedback", headers=headers, content=body).status_code == 200
    assert sink.count() == 2 and svc.labels.count() == 1
    # Within the retention nothing goes; two hours later the next write prunes both.
    now[0] += 120
    svc.tap(
        {"ce-id": "n1", "ce-type": REQUEST_TYPE, "ce-source": "s", "ce-specversion": "1.0"}, b"{}"
    )
    assert sink.count() == 3
    now[0] += 2 * 3600
    svc.tap(
        {"ce-id": "n2", "ce-type": REQUEST_TYPE, "ce-source": "s", "ce-specversion": "1.0"}, b"{}"
    )
    # The events logged "now" (ce-time is real time) are older than the shifted clock's
    # cutoff too: only the one written after the prune is left.
    assert sink.count() == 1 and svc.labels.count() == 0
    assert svc.status()["counters"]["pruned"] == 3
    svc.close()
    sink.close()
