"""The canary router: the split follows the canary percent (within binomial tolerance),
0% pins to the primary, promote/rollback move all traffic, sticky routing, pass-through of
predictor errors, runtime changes of the percent, logging of every exchange, and the
`kubeloop canary` command on a local workdir.

The predictors are tiny in-process ASGI apps (fakes, defined here) reached through httpx
mounts, so no socket or subprocess is needed except in the LocalStack test."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typer.testing import CliRunner

from kubeloop.serving.request_log.logger import CloudEventLogger
from kubeloop.serving.request_log.reader import exchanges_frame
from kubeloop.serving.request_log.sinks import SQLiteRequestLog
from kubeloop.serving.rollout import (
    LocalRollout,
    RolloutError,
    initial_state,
    load_state,
    promote,
    rollback,
    rollout_path,
    save_state,
    set_percent,
)
from kubeloop.serving.router import CanaryRouter, choose_variant, sticky_bucket

PRIMARY_URL = "http://primary.test"
CANARY_URL = "http://canary.test"


def fake_predictor(version: str) -> Starlette:
    """A predictor that answers 0.1 (v0001) or 0.9 (v0002) per instance; a body with
    "bad": true gets KServe's 400 for invalid input."""

    score = {"v0001": 0.1, "v0002": 0.9}.get(version, 0.5)

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("bad"):
            return JSONResponse({"error": "Invalid input: instances missing"}, status_code=400)
        preds = [score for _ in body.get("instances", [])]
        return JSONResponse({"predictions": preds}, headers={"x-served-by": version})

    async def infer(request: Request) -> JSONResponse:
        await request.json()
        return JSONResponse({"model_name": "ctr", "outputs": [{"name": "p", "data": [score]}]})

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({"ready": True, "version": version})

    async def model(request: Request) -> JSONResponse:
        return JSONResponse({"name": request.path_params["name"], "ready": True})

    return Starlette(
        routes=[
            Route("/v1/models/{name}:predict", predict, methods=["POST"]),
            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", ready),
            Route("/v1/models/{name}", model),
        ]
    )


MOUNTS = {
    PRIMARY_URL: httpx.ASGITransport(app=fake_predictor("v0001")),
    CANARY_URL: httpx.ASGITransport(app=fake_predictor("v0002")),
}
BACKENDS = {"v0001": PRIMARY_URL, "v0002": CANARY_URL}


def make_router(state, **kwargs) -> CanaryRouter:
    return CanaryRouter(state, BACKENDS, mounts=MOUNTS, **kwargs)


async def _send(router: CanaryRouter, n: int, *, body=None, headers=None):
    transport = httpx.ASGITransport(app=router.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        out = []
        for i in range(n):
            h = headers(i) if callable(headers) else headers
            r = await client.post(
                "/v1/models/ctr:predict", json=body or {"instances": [[i]]}, headers=h
            )
            out.append(r)
        await router.aclose()
        return out


def send(router: CanaryRouter, n: int, **kwargs) -> list[httpx.Response]:
    return asyncio.run(_send(router, n, **kwargs))


def variants(responses: list[httpx.Response]) -> list[str]:
    return [r.headers["x-kubeloop-variant"] for r in responses]


@pytest.mark.parametrize("percent", [10, 50])
def test_split_is_within_binomial_tolerance(percent: int) -> None:
    n = 2000
    router = make_router(initial_state("ctr", "v0001", "v0002", percent), seed=7)
    responses = send(router, n)
    assert all(r.status_code == 200 for r in responses)
    canary = sum(v == "canary" for v in variants(responses))
    p = percent / 100
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(canary - n * p) < 4.5 * sigma, (canary, n * p, sigma)
    # The body is the predictor's own answer, and the variant matches who answered.
    for r in responses:
        expected = {"primary": "v0001", "canary": "v0002"}[r.headers["x-kubeloop-variant"]]
        assert r.headers["x-served-by"] == expected
        assert r.headers["x-kubeloop-version"] == expected


def test_percent_zero_pins_everything_to_primary_and_100_to_canary() -> None:
    pinned = set_percent(initial_state("ctr", "v0001", "v0002", 30), 0)
    assert set(variants(send(make_router(pinned), 300))) == {"primary"}
    full = set_percent(pinned, 100)
    assert set(variants(send(make_router(full), 50))) == {"canary"}


def test_promote_sends_all_traffic_to_the_former_canary_and_rollback_to_primary() -> None:
    state = initial_state("ctr", "v0001", "v0002", 50)
    promoted = promote(state)
    assert (promoted.primary_version, promoted.canary_version) == ("v0002", None)
    responses = send(make_router(promoted), 200)
    assert set(variants(responses)) == {"primary"}
    assert {r.headers["x-served-by"] for r in responses} == {"v0002"}

    rolled_back = rollback(state)
    responses = send(make_router(rolled_back), 200)
    assert {r.headers["x-served-by"] for r in responses} == {"v0001"}


def test_sticky_routing_keeps_a_request_id_on_one_variant() -> None:
    state = initial_state("ctr", "v0001", "v0002", 50, sticky=True)
    ids = [f"req-{i % 40}" for i in range(400)]
    # Header ids, with a random generator seeded differently each run: no effect on sticky.
    first = send(make_router(state, seed=None), 400, headers=lambda i: {"x-request-id": ids[i]})
    seen: dict[str, set[str]] = {}
    for rid, v in zip(ids, variants(first), strict=True):
        seen.setdefault(rid, set()).add(v)
    assert all(len(v) == 1 for v in seen.values())
    assert {next(iter(v)) for v in seen.values()} == {"primary", "canary"}
    # The same ids in the body route the same way.
    router = make_router(state, seed=None)
    for rid in list(seen)[:10]:
        (r,) = send(router, 1, body={"request_id": rid, "instances": [[1]]})
        assert r.headers["x-kubeloop-variant"] == next(iter(seen[rid]))
    # Raising the percent only moves ids towards the canary.
    assert sticky_bucket("req-1") == sticky_bucket("req-1")
    wider = set_percent(state, 80)
    for rid, vs in seen.items():
        if vs == {"canary"}:
            assert choose_variant(wider, None, rid) == "canary"  # type: ignore[arg-type]


def test_predictor_400_is_passed_through_and_logged(tmp_path: Path) -> None:
    sink = SQLiteRequestLog(tmp_path / "log.sqlite")
    logger = CloudEventLogger(sink, inference_service="ctr", close_sink=False)
    router = make_router(initial_state("ctr", "v0001"), request_log=logger)
    (bad,) = send(router, 1, body={"bad": True}, headers={"x-request-id": "r-bad"})
    assert bad.status_code == 400
    assert bad.json() == {"error": "Invalid input: instances missing"}
    assert bad.headers["x-kubeloop-variant"] == "primary"
    (good,) = send(router, 1, body={"instances": [[1], [2]]}, headers={"x-request-id": "r-ok"})
    assert good.status_code == 200 and good.json() == {"predictions": [0.1, 0.1]}
    logger.close()

    frame = exchanges_frame(sink).set_index("request_id")
    assert frame.loc["r-bad", "status_code"] == 400
    assert frame.loc["r-bad", "predictions"] is None
    assert frame.loc["r-ok", "status_code"] == 200
    assert frame.loc["r-ok", "instances"] == [[1], [2]]
    assert frame.loc["r-ok", "predictions"] == [0.1, 0.1]
    assert frame.loc["r-ok", "version"] == "v0001"
    assert (frame["latency_ms"] >= 0).all()
    sink.close()


def test_unreachable_predictor_is_a_502_and_missing_canary_gets_no_traffic() -> None:
    missing: list[str] = []
    state = initial_state("ctr", "v0001", "v0003", 100)
    router = CanaryRouter(state, BACKENDS, mounts=MOUNTS, on_missing_backend=missing.append)
    responses = send(router, 5)
    assert set(variants(responses)) == {"primary"} and missing == ["v0003"]

    dead = CanaryRouter(initial_state("ctr", "v0001"), {"v0001": "http://127.0.0.1:9"})
    (r,) = send(dead, 1)
    assert r.status_code == 502 and "primary predictor v0001" in r.json()["error"]


def test_health_and_v2_infer_are_forwarded() -> None:
    router = make_router(initial_state("ctr", "v0001", "v0002", 100))

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=router.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as c:
            out = [
                await c.get("/v2/health/ready"),
                await c.get("/v1/models/ctr"),
                await c.get("/v2/health/live"),
                await c.post("/v2/models/ctr/infer", json={"inputs": []}),
            ]
        await router.aclose()
        return out

    ready, model, live, infer = asyncio.run(run())
    assert ready.json() == {"ready": True, "version": "v0001"}  # health: the primary
    assert model.json() == {"name": "ctr", "ready": True}
    assert live.json() == {"live": True}
    assert infer.headers["x-kubeloop-variant"] == "canary"
    assert infer.json()["outputs"][0]["data"] == [0.9]


def test_router_follows_the_rollout_file_and_admin_endpoint(tmp_path: Path) -> None:
    rollout = LocalRollout(tmp_path, "ctr")
    rollout.init("v0001", "v0002", 0)
    router = CanaryRouter(rollout.path, BACKENDS, mounts=MOUNTS, local_rollout=rollout)
    router.rollout.interval = 0  # type: ignore[attr-defined]
    assert set(variants(send(router, 20))) == {"primary"}

    rollout.set_percent(100)  # as `kubeloop canary set 100` would, from another process
    assert set(variants(send(router, 20))) == {"canary"}

    async def admin() -> httpx.Response:
        transport = httpx.ASGITransport(app=router.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as c:
            r = await c.post("/kubeloop/rollout", json={"action": "promote", "reason": "ok"})
            bad = await c.post("/kubeloop/rollout", json={"action": "rollback"})
            assert bad.status_code == 409  # no canary left
            return r

    r = asyncio.run(admin())
    assert r.status_code == 200
    assert r.json()["rollout"]["primary_version"] == "v0002"
    assert load_state(rollout.path).history[-1].reason == "ok"
    assert {x.headers["x-served-by"] for x in send(router, 20)} == {"v0002"}


def test_canary_cli_drives_the_local_rollout(tmp_path: Path) -> None:
    from kubeloop.cli.main import app

    save_state(initial_state("ctr", "v0001"), rollout_path(tmp_path))
    runner = CliRunner()
    base = ["canary"]
    wd = ["--workdir", str(tmp_path), "--no-registry"]
    r = runner.invoke(app, [*base, "set", "10", "--version", "v0002", *wd])
    assert r.exit_code == 0, r.output
    assert load_state(rollout_path(tmp_path)).canary_percent == 10
    r = runner.invoke(app, [*base, "status", "--workdir", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["rollout"]["split"] == {"primary": 90, "canary": 10}
    r = runner.invoke(app, [*base, "promote", *wd])
    assert r.exit_code == 0, r.output
    state = load_state(rollout_path(tmp_path))
    assert (state.primary_version, state.canary_version) == ("v0002", None)
    r = runner.invoke(app, [*base, "rollback", *wd])
    assert r.exit_code != 0 and isinstance(r.exception, RolloutError)
    assert "no canary" in str(r.exception)


FAKE_SERVER = textwrap.dedent(
    """
    import argparse, json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    p = argparse.ArgumentParser()
    p.add_argument("--model_name"); p.add_argument("--model_dir")
    p.add_argument("--predictor_host"); p.add_argument("--feature_repo")
    p.add_argument("--http_port", type=int); p.add_argument("--enable_grpc")
    a = p.parse_args()
    if a.model_dir and "v0009" in a.model_dir:
        raise SystemExit("cannot load this model")

    class H(BaseHTTPRequestHandler):
        def _json(self, code, obj):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def do_GET(self):
            self._json(200, {"ready": True})
        def do_POST(self):
            n = int(self.headers.get("content-length", 0))
            body = json.loads(self.rfile.read(n) or b"{}")
            self._json(200, {"predictions": [a.model_dir or "transformer"] * len(body.get("instances", []))})
        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", a.http_port), H).serve_forever()
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_local_stack_starts_routes_and_cleans_up(tmp_path: Path) -> None:
    from kubeloop.serving.local_servers import LocalStack, LocalStackError

    module_dir = tmp_path / "fakes"
    module_dir.mkdir()
    (module_dir / "fake_server.py").write_text(FAKE_SERVER)

    class Registry:  # export only: the stack copies each version's files
        def export(self, name, version, dest, overwrite=False):
            Path(dest).mkdir(parents=True, exist_ok=True)
            (Path(dest) / "model.txt").write_text(version)
            return str(dest)

    env = {"PYTHONPATH": str(module_dir)}
    kwargs = {
        "predictor_module": "fake_server",
        "transformer_module": "fake_server",
        "env": env,
        "ready_timeout": 30,
        "sync_registry": False,
    }
    with LocalStack.start(
        Registry(), "ctr", tmp_path / "wd", "v0001", "v0002", 50, **kwargs
    ) as stack:
        pids = stack.pids()
        assert len(pids) == 3 and all(_alive(p) for p in pids)
        r = httpx.post(
            f"{stack.router_url}/v1/models/ctr:predict", json={"instances": [[1]]}, timeout=10
        )
        assert r.status_code == 200 and r.headers["x-kubeloop-variant"] in ("primary", "canary")
        assert r.json()["predictions"][0].endswith(r.headers["x-kubeloop-version"])
        assert httpx.get(f"{stack.transformer_url}/v2/health/ready").status_code == 200

        # A canary set at run time gets a predictor of its own, started in the background;
        # until it is ready the primary keeps all the traffic.
        stack.rollout.set_canary("v0003", 100)
        assert _wait_for_version(stack.router_url, "v0003")
        # One that cannot start is forgotten; the stack keeps serving from the primary.
        stack.rollout.set_canary("v0009", 100)
        deadline = time.monotonic() + 20
        while "v0009" not in stack.failed and time.monotonic() < deadline:
            httpx.post(f"{stack.router_url}/v1/models/ctr:predict", json={"instances": []})
            time.sleep(0.1)
        assert "predictor-v0009.log" in stack.failed["v0009"]
        stack.check()
        r = httpx.post(f"{stack.router_url}/v1/models/ctr:predict", json={"instances": []})
        assert r.status_code == 200 and r.headers["x-kubeloop-version"] == "v0001"
        pids = stack.pids()

        logs = sorted(p.name for p in (tmp_path / "wd" / "serving" / "logs").iterdir())
        assert logs == [
            "predictor-v0001.log",
            "predictor-v0002.log",
            "predictor-v0003.log",
            "predictor-v0009.log",
            "router.log",
            "transformer.log",
        ]
    assert not any(_alive(p) for p in pids)

    # A predictor that dies while starting: a clear error naming it and its log, and the
    # processes started before it are stopped.
    with pytest.raises(LocalStackError, match=r"predictor-v0009.*predictor-v0009\.log"):
        LocalStack.start(Registry(), "ctr", tmp_path / "wd2", "v0001", "v0009", 10, **kwargs)
    assert sys.platform != "linux" or not [
        p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(int(p), str(tmp_path))
    ]


def _wait_for_version(url: str, version: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.post(f"{url}/v1/models/ctr:predict", json={"instances": []}, timeout=10)
        if r.headers["x-kubeloop-version"] == version:
            return True
        time.sleep(0.1)
    return False


def _cmdline_has(pid: int, needle: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return needle.encode() in f.read() and _alive(pid)
    except OSError:
        return False


def test_canary_cli_with_context_calls_the_cluster_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeloop.cli import canary
    from kubeloop.cli.main import app

    calls: list[tuple] = []

    class Result:
        def __init__(self, verb: str) -> None:
            self.verb = verb
            self.warnings = ["no earlier rolled-out revision"]

        def model_dump(self, mode: str = "python") -> dict:
            return {"verb": self.verb}

        def summary(self) -> str:
            return f"inferenceservice/ctr {self.verb}"

    class Client:
        def status(self, name):
            calls.append(("status", name))
            return {"name": name, "canary_percent": 10}

        def set_canary(self, name, percent, storage_uri=None, dry_run=False):
            calls.append(("set_canary", name, percent, storage_uri, dry_run))
            return Result("set")

        def promote(self, name, dry_run=False):
            calls.append(("promote", name, dry_run))
            return Result("promote")

        def rollback(self, name, storage_uri=None, dry_run=False):
            calls.append(("rollback", name, storage_uri, dry_run))
            return Result("rollback")

    contexts: list[tuple[str, str]] = []
    monkeypatch.setattr(canary, "_cluster", lambda ctx, ns: contexts.append((ctx, ns)) or Client())
    runner = CliRunner()
    ctx = ["--context", "kind-kubeloop", "--workdir", str(tmp_path)]
    r = runner.invoke(app, ["canary", "set", "20", "--version", "v0002", *ctx, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "inferenceservice/ctr set" in r.output
    r = runner.invoke(app, ["canary", "status", *ctx])
    assert json.loads(r.output) == {"name": "ctr", "canary_percent": 10}
    assert runner.invoke(app, ["canary", "promote", *ctx]).exit_code == 0
    r = runner.invoke(app, ["canary", "rollback", *ctx, "-n", "prod", "--storage-uri", "s3://m/v1"])
    assert r.exit_code == 0, r.output
    assert calls == [
        ("set_canary", "ctr", 20, "s3://mlpipeline/kubeloop/models/ctr/v0002", True),
        ("status", "ctr"),
        ("promote", "ctr", False),
        ("rollback", "ctr", "s3://m/v1", False),
    ]
    assert contexts[-1] == ("kind-kubeloop", "prod") and contexts[0][1] == "kubeloop"
    assert not rollout_path(tmp_path).exists()  # the local rollout was not touched


class _BlockedSink(SQLiteRequestLog):
    """A request-log sink whose writes wait until `release` is set."""

    def __init__(self, path: Path):
        import threading

        super().__init__(path)
        self.release = threading.Event()

    def write(self, events) -> None:
        self.release.wait(30)
        super().write(events)


def test_request_log_drops_are_counted_on_metrics(tmp_path: Path) -> None:
    """The log's bounded queue drops what does not fit, and /metrics counts it; the
    requests themselves are answered."""
    sink = _BlockedSink(tmp_path / "log.sqlite")
    # What the log holds is bounded by queue_size + batch_size (the writer's batch).
    logger = CloudEventLogger(
        sink, inference_service="ctr", close_sink=False, queue_size=1, batch_size=1
    )
    router = make_router(initial_state("ctr", "v0001"), request_log=logger)
    responses = send(router, 6)
    assert [r.status_code for r in responses] == [200] * 6

    async def scrape() -> str:
        transport = httpx.ASGITransport(app=router.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
            return (await client.get("/metrics")).text

    text = asyncio.run(scrape())
    dropped = logger.stats.as_dict()["dropped"]
    assert dropped >= 2  # at most one exchange in the writer, one queued
    assert f'kubeloop_request_log_events_total{{result="dropped"}} {float(dropped)}' in text
    sink.release.set()
    logger.close()
    sink.close()


def test_inference_dispatch_matches_the_starlette_routes() -> None:
    """`_dispatch` sends straight to `_infer` exactly the POSTs the Starlette app routes to
    `_infer` (the same paths, no more, no fewer)."""
    from starlette.routing import Match

    from kubeloop.serving.router import _INFER_PATH

    router = make_router(initial_state("ctr", "v0001"))
    paths = [
        "/v1/models/ctr:predict", "/v1/models/a:b:predict", "/v1/models/ctr:explain",
        "/v1/models/ctr", "/v1/models/x/y:predict", "/v2/models/ctr/infer",
        "/v2/models/ctr/versions/v1/infer", "/v2/models/ctr/versions/infer",
        "/v2/models/ctr/ready", "/v2/models//infer", "/kubeloop/rollout", "/v2/models/ctr/infer/",
    ]  # fmt: skip
    for path in paths:
        scope = {"type": "http", "method": "POST", "path": path}
        routed = any(
            route.matches(scope)[0] == Match.FULL and route.endpoint is router._infer_endpoint
            for route in router._starlette.routes
        )
        assert bool(_INFER_PATH.match(path)) == routed, path
