"""The shadow stage: the router mirrors every request to the non-serving model, off the
caller's path.

Nothing here is timed. That the mirror adds nothing to the caller's latency is shown by
structure: a shadow model that blocks on an Event that is only set after the caller has
every answer cannot have been waited for; the caller's answers are byte-identical with and
without the mirror, whatever the shadow answers (garbage, 500, nothing); and a full queue
drops the copy (counted) instead of waiting for room.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kubeloop.serving.request_log.logger import CloudEventLogger
from kubeloop.serving.request_log.reader import exchanges_frame
from kubeloop.serving.request_log.sinks import SQLiteRequestLog
from kubeloop.serving.rollout import initial_state
from kubeloop.serving.router import CanaryRouter
from kubeloop.serving.shadow import (
    HTTPSender,
    ShadowAnswer,
    ShadowMirror,
    ShadowRequest,
    version_of_answer,
)

PRIMARY_URL = "http://primary.test"
CANARY_URL = "http://canary.test"
BACKENDS = {"v0001": PRIMARY_URL, "v0002": CANARY_URL}


def predictor(version: str, score: float) -> Starlette:
    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        preds = [score for _ in body.get("instances", [])]
        return JSONResponse(
            {"predictions": preds, "model_version": version}, headers={"x-served-by": version}
        )

    return Starlette(routes=[Route("/v1/models/{name}:predict", predict, methods=["POST"])])


class Gate:
    """A predictor that counts the requests it got and answers none until `release()`."""

    def __init__(self, version: str, score: float):
        self.version, self.score = version, score
        self.entered = 0
        self.answered = 0
        self._open: asyncio.Event | None = None
        self._first: asyncio.Event | None = None

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        # Made on first use, inside the test's event loop.
        if self._open is None or self._first is None:
            self._open, self._first = asyncio.Event(), asyncio.Event()
        return self._open, self._first

    def app(self) -> Starlette:
        async def predict(request: Request) -> JSONResponse:
            await request.body()
            opened, first = self._events()
            self.entered += 1
            first.set()
            await opened.wait()
            self.answered += 1
            return JSONResponse({"predictions": [self.score], "model_version": self.version})

        return Starlette(routes=[Route("/v1/models/{name}:predict", predict, methods=["POST"])])

    async def wait_entered(self) -> None:
        await asyncio.wait_for(self._events()[1].wait(), 30)  # a guard against a hang only

    def release(self) -> None:
        self._events()[0].set()


def broken(status: int, body: bytes) -> Starlette:
    async def predict(request: Request) -> Response:
        return Response(body, status_code=status, media_type="application/json")

    return Starlette(routes=[Route("/v1/models/{name}:predict", predict, methods=["POST"])])


def router_for(state, canary_app, *, mirror: bool, logger=None, **mirror_kw) -> CanaryRouter:
    mounts = {
        PRIMARY_URL: httpx.ASGITransport(app=predictor("v0001", 0.1)),
        CANARY_URL: httpx.ASGITransport(app=canary_app),
    }
    router = CanaryRouter(state, BACKENDS, mounts=mounts, request_log=logger, seed=3)
    if mirror:
        router.shadow = ShadowMirror(HTTPSender(mounts=mounts), request_log=logger, **mirror_kw)
    return router


async def call(router: CanaryRouter, n: int, *, start: int = 0) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=router.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        return [
            await client.post(
                "/v1/models/ctr:predict",
                json={"instances": [{"i": i}]},
                headers={"x-request-id": f"r{i}"},
            )
            for i in range(start, start + n)
        ]


def answers(responses: list[httpx.Response]) -> list[tuple]:
    return [
        (r.status_code, r.content, r.headers["x-kubeloop-variant"], r.headers["x-served-by"])
        for r in responses
    ]


def test_a_shadow_that_never_answers_does_not_hold_the_caller(tmp_path) -> None:
    gate = Gate("v0002", 0.9)
    state = initial_state("ctr", "v0001", "v0002", 0)  # the shadow stage: canary pinned at 0%
    logger = CloudEventLogger(SQLiteRequestLog(tmp_path / "log.sqlite"), inference_service="ctr")
    router = router_for(state, gate.app(), mirror=True, logger=logger, workers=8)

    async def run():
        responses = await call(router, 1, start=0)
        # The copy of r0 is now held inside the shadow model; r1..r4 are served meanwhile.
        await gate.wait_entered()
        responses += await call(router, 4, start=1)
        held = (gate.entered, gate.answered)
        # Only now, with every caller answered, may the shadow model answer: had the router
        # waited for it, the calls above would never have returned.
        gate.release()
        await router.shadow.join()
        await router.aclose()
        return responses, held

    responses, (entered, answered) = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 5
    assert answered == 0 and entered >= 1
    assert gate.answered == 5
    assert router.shadow.stats.as_dict() == {
        "submitted": 5,
        "mirrored": 5,
        "failed": 0,
        "dropped": 0,
    }
    logger.close()
    frame = exchanges_frame(tmp_path / "log.sqlite")
    # Both answers of each request under its id: the served one and the shadow one.
    by_id = frame.groupby("request_id")
    assert sorted(by_id.groups) == [f"r{i}" for i in range(5)]
    for _, rows in by_id:
        assert sorted(rows["variant"]) == ["primary", "shadow"]
        shadow = rows[rows["variant"] == "shadow"].iloc[0]
        served = rows[rows["variant"] == "primary"].iloc[0]
        assert (shadow["version"], shadow["predictions"]) == ("v0002", [0.9])
        assert (served["version"], served["predictions"]) == ("v0001", [0.1])
        assert shadow["instances"] == served["instances"]


@pytest.mark.parametrize(
    "shadow_app",
    [
        broken(500, b'{"error": "boom"}'),
        broken(200, b"not json at all"),
        broken(400, b'{"error": "Invalid input"}'),
    ],
    ids=["500", "garbage", "400"],
)
def test_the_callers_answers_are_byte_identical_with_and_without_the_mirror(shadow_app) -> None:
    # 50%: half the requests are served by each variant; every copy goes to `shadow_app`
    # (the mirror has its own client), which answers 500, garbage or 400.
    state = initial_state("ctr", "v0001", "v0002", 50)

    def run(mirror: bool):
        router = router_for(state, predictor("v0002", 0.9), mirror=False)
        if mirror:
            broken = {url: httpx.ASGITransport(app=shadow_app) for url in BACKENDS.values()}
            router.shadow = ShadowMirror(HTTPSender(mounts=broken))

        async def go():
            responses = await call(router, 40)
            if router.shadow is not None:
                await router.shadow.join()
            await router.aclose()
            return responses

        return router, asyncio.run(go())

    _, plain = run(False)
    mirrored_router, mirrored = run(True)
    assert answers(plain) == answers(mirrored)
    assert {r.headers["x-kubeloop-variant"] for r in plain} == {"primary", "canary"}
    stats = mirrored_router.shadow.stats.as_dict()
    assert stats["submitted"] == 40 and stats["dropped"] == 0
    assert stats["mirrored"] + stats["failed"] == 40
    assert all(b"not json" not in r.content and b"boom" not in r.content for r in mirrored)


def test_the_mirror_scores_with_the_non_serving_variant() -> None:
    calls: list[ShadowRequest] = []

    async def record(request: ShadowRequest) -> ShadowAnswer:
        calls.append(request)
        return ShadowAnswer(200, b'{"predictions": [0.5]}')

    for percent, served, shadow_version in ((0, "primary", "v0002"), (100, "canary", "v0001")):
        calls.clear()
        router = router_for(
            initial_state("ctr", "v0001", "v0002", percent), predictor("v0002", 0.9), mirror=False
        )
        router.shadow = ShadowMirror(record)

        async def go(router=router):
            responses = await call(router, 6)
            await router.shadow.join()
            await router.aclose()
            return responses

        responses = asyncio.run(go())
        assert {r.headers["x-kubeloop-variant"] for r in responses} == {served}
        assert [c.version for c in calls] == [shadow_version] * 6
        assert [c.request_id for c in calls] == [f"r{i}" for i in range(6)]
        assert {c.served_variant for c in calls} == {served}
        assert all(json.loads(c.body) == {"instances": [{"i": i}]} for i, c in enumerate(calls))

    # No canary (after a rollback or a promote): nothing to mirror to.
    calls.clear()
    router = router_for(initial_state("ctr", "v0001"), predictor("v0002", 0.9), mirror=False)
    router.shadow = ShadowMirror(record)

    async def go_plain():
        await call(router, 3)
        await router.aclose()

    asyncio.run(go_plain())
    assert calls == [] and router.shadow.stats.as_dict()["submitted"] == 0


def test_a_full_queue_drops_the_copy_and_counts_it() -> None:
    registry = CollectorRegistry()
    sent: list[str] = []

    async def send(request: ShadowRequest) -> ShadowAnswer:
        sent.append(request.request_id)
        return ShadowAnswer(200, b"{}")

    mirror = ShadowMirror(send, queue_size=3, workers=1, registry=registry)

    async def go():
        # submit never awaits, so no worker runs between these calls: exactly the queue's
        # room is taken and the rest is dropped, none of them waits for room.
        accepted = [
            mirror.submit(ShadowRequest(f"r{i}", "v2", "http://shadow/x", b"{}")) for i in range(5)
        ]
        depth = mirror.depth()
        await mirror.join()
        await mirror.aclose()
        return accepted, depth

    accepted, depth = asyncio.run(go())
    assert accepted == [True, True, True, False, False]
    assert depth == 3
    assert sent == ["r0", "r1", "r2"]
    assert mirror.stats.as_dict() == {"submitted": 5, "mirrored": 3, "failed": 0, "dropped": 2}
    value = registry.get_sample_value("kubeloop_shadow_requests_total", {"result": "dropped"})
    assert value == 2.0
    assert registry.get_sample_value("kubeloop_shadow_requests_total", {"result": "mirrored"}) == 3
    # After close, a copy is dropped, not queued.
    assert mirror.submit(ShadowRequest("late", "v2", "http://shadow/x", b"{}")) is False
    assert mirror.stats.as_dict()["dropped"] == 3


def test_router_status_and_metrics_show_the_mirror() -> None:
    registry = CollectorRegistry()
    state = initial_state("ctr", "v0001", "v0002", 0)
    router = router_for(state, predictor("v0002", 0.9), mirror=False)
    router.shadow = ShadowMirror(HTTPSender(mounts=router.mounts), registry=registry)
    router.metrics_registry = registry

    async def go():
        await call(router, 4)
        await router.shadow.join()
        transport = httpx.ASGITransport(app=router.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            status = (await client.get("/kubeloop/rollout")).json()
            metrics = (await client.get("/metrics")).text
        await router.aclose()
        return status, metrics

    status, metrics = asyncio.run(go())
    assert status["shadow"]["mirrored"] == 4 and status["shadow"]["dropped"] == 0
    assert 'kubeloop_shadow_requests_total{result="mirrored"} 4.0' in metrics
    assert 'kubeloop_shadow_requests_total{result="dropped"} 0.0' in metrics


def test_a_failed_shadow_is_counted_and_logged_as_failed(tmp_path) -> None:
    async def down(request: ShadowRequest) -> ShadowAnswer:
        raise httpx.ConnectError("connection refused")

    logger = CloudEventLogger(SQLiteRequestLog(tmp_path / "log.sqlite"), inference_service="ctr")
    mirror = ShadowMirror(down, request_log=logger)

    async def go():
        mirror.submit(ShadowRequest("r1", "v2", "http://shadow/x", b'{"instances": [{}]}'))
        await mirror.join()
        await mirror.aclose()

    asyncio.run(go())
    logger.close()
    assert mirror.stats.as_dict()["failed"] == 1
    frame = exchanges_frame(tmp_path / "log.sqlite")
    assert list(frame["variant"]) == ["shadow"]
    assert int(frame["status_code"].iloc[0]) == 502


def test_version_of_answer() -> None:
    assert version_of_answer({"x-model-version": "v7"}, b"{}") == "v7"
    assert version_of_answer({}, b'{"predictions": [0.1], "model_version": "v3"}') == "v3"
    assert version_of_answer({}, b'{"predictions": [0.1]}') is None
    assert version_of_answer({}, b"not json, model_version") is None
