"""Security of every server we run (issue 10): the real predictor, transformer and drift
service entry points, started with their defaults, and the canary router in process.

* they listen on loopback only: a connection to this machine's non-loopback address is
  refused while 127.0.0.1 answers;
* no caller changes what is served: KServe's model-repository load/unload answers 403
  and the model keeps answering; readiness follows whether the model really answers;
* one body limit at the edge of every server (413, plain and chunked bodies, a client
  that writes the whole body first); the router logs refused requests as small records,
  never their bodies; the drift service stores nothing over its limits.

Every request loop is bounded in count and time; traffic goes to 127.0.0.1 only (and to
this machine's own address for the bind test).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
from test_predictor import (
    MODEL_NAME,
    REPO_ROOT,
    TINY_LGB,
    export_model,
    free_port,
    start_server,
    tiny_data,
    v2_inputs,
)
from test_router import BACKENDS, MOUNTS
from test_transformer import build_feature_repo

from kubeloop.serving.edge import DEFAULT_MAX_BODY_BYTES
from kubeloop.serving.protocol import CLIENT_FIELDS, MODEL_FIELDS, example_row
from kubeloop.serving.request_log.logger import CloudEventLogger
from kubeloop.serving.request_log.sinks import SQLiteRequestLog
from kubeloop.serving.rollout import initial_state
from kubeloop.serving.router import CanaryRouter
from models.lightgbm_trainer import train_lightgbm

pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

TIMEOUT = 20.0
OVER_LIMIT = DEFAULT_MAX_BODY_BYTES + 1024 * 1024


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (`hostname -I`), if any."""
    try:
        out = subprocess.run(
            ["hostname", "-I"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    with contextlib.suppress(OSError):
        out.append(socket.gethostbyname(socket.gethostname()))
    for text in out:
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(text)
            if address.version == 4 and not address.is_loopback:
                return text
    return None


@contextlib.contextmanager
def start_drift_service(reference_dir: Path, root: Path, timeout: float = 90.0) -> Iterator[str]:
    """`python -m kubeloop.drift.service` with its defaults (no --host); yields its URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    command = [
        sys.executable, "-m", "kubeloop.drift.service", "--port", str(port),
        "--reference_dir", str(reference_dir), "--state_dir", str(root / "drift-state"),
        "--no-kube", "--no_score_reference",
    ]  # fmt: skip
    log_path = root / "drift.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"drift service exited:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"drift service not ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """{"predictor", "transformer", "drift"}: base URLs of the three entry points, each
    started with its defaults (start_server passes only ports and --enable_grpc false)."""
    root = tmp_path_factory.mktemp("hardening")
    train, valid, holdout = tiny_data()
    export = export_model(train_lightgbm(train, valid, TINY_LGB), root)
    # The drift service needs a reference holding every model column.
    holdout[MODEL_FIELDS.names].head(300).to_parquet(export / "reference.parquet")
    repo = build_feature_repo(root / "feast")
    args = ["--model_name", MODEL_NAME, "--model_dir", str(export)]
    with start_server("models.predictor", args, root / "predictor.log") as predictor:
        transformer_args = [
            "--model_name", MODEL_NAME, "--predictor_host", predictor.removeprefix("http://"),
            "--feature_repo", str(repo),
        ]  # fmt: skip
        with (
            start_server("models.transformer", transformer_args, root / "t.log") as transformer,
            start_drift_service(export, root) as drift,
        ):
            yield {"predictor": predictor, "transformer": transformer, "drift": drift}


def _good(servers: dict, server: str, client: httpx.Client) -> httpx.Response:
    """One valid v1 request to a model server."""
    fields = CLIENT_FIELDS if server == "transformer" else MODEL_FIELDS
    body = {"instances": [example_row(fields)]}
    return client.post(f"{servers[server]}/v1/models/{MODEL_NAME}:predict", json=body)


def _ready_path(server: str) -> str:
    return "/healthz" if server == "drift" else "/v2/health/ready"


# --- 1. loopback by default --------------------------------------------------------------


@pytest.mark.parametrize("server", ["predictor", "transformer", "drift"])
def test_servers_listen_on_loopback_only_by_default(servers, server):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    port = int(servers[server].rsplit(":", 1)[1])
    assert httpx.get(servers[server] + _ready_path(server), timeout=TIMEOUT).status_code == 200
    with pytest.raises(OSError), socket.create_connection((address, port), timeout=5):
        pass


def test_every_entry_point_takes_host_defaulting_to_loopback():
    import inspect

    from kubeloop.cli.serve import serve
    from kubeloop.drift import service as drift_service
    from models import predictor, transformer

    parsers = [
        (predictor.build_parser(), []),
        (transformer.build_parser(), []),
        (drift_service._parser(), ["--reference_dir", "x"]),
    ]
    for parser, required in parsers:
        assert parser.parse_args(required).host == "127.0.0.1", parser.prog
        assert parser.parse_args([*required, "--host=0.0.0.0"]).host == "0.0.0.0", parser.prog
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"


# --- 2. what is served cannot be changed ---------------------------------------------------


@pytest.mark.parametrize("server", ["predictor", "transformer"])
def test_repository_load_and_unload_are_refused(servers, server):
    with httpx.Client(timeout=TIMEOUT) as client:
        for action in ("unload", "load"):
            r = client.post(f"{servers[server]}/v2/repository/models/{MODEL_NAME}/{action}")
            assert r.status_code == 403, r.text
            assert "disabled" in r.json()["error"]
        assert client.get(f"{servers[server]}/v2/health/ready").status_code == 200
        assert client.get(f"{servers[server]}/v1/models/{MODEL_NAME}").status_code == 200
        r = _good(servers, server, client)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1
        metadata = client.get(f"{servers[server]}/v2").json()
        assert "model_repository_extension" not in metadata["extensions"]


def test_readiness_follows_whether_the_model_answers(tmp_path):
    from kserve.model_repository import ModelRepository

    from kubeloop.serving.model_server import StrictDataPlane
    from models.predictor import CTRPredictor

    train, valid, _ = tiny_data()
    predictor = CTRPredictor(MODEL_NAME, tmp_path, model=train_lightgbm(train, valid, TINY_LGB))
    registry = ModelRepository()
    registry.update(predictor)
    plane = StrictDataPlane(model_registry=registry)

    async def readiness() -> tuple[bool, bool]:
        return await plane.ready(), await plane.model_ready(MODEL_NAME)

    assert asyncio.run(readiness()) == (True, True)
    predictor.model = None  # what an unload leaves behind: `ready` is still True
    assert predictor.ready
    assert asyncio.run(readiness()) == (False, False)
    registry.unload(MODEL_NAME)
    assert asyncio.run(plane.ready()) is False


def test_readiness_probe_runs_for_readiness_routes_only(tmp_path):
    """KServe asks readiness twice per inference (its endpoints' `model_ready(name, True)`
    and `DataPlane.infer`'s `get_model`): the probing `healthy()` (a scored row) must not
    run there, only for the readiness routes. Counts calls, no timing."""
    from fastapi import FastAPI
    from kserve.model_repository import ModelRepository
    from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
    from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

    from kubeloop.serving.model_server import StrictDataPlane, V2RoutingMiddleware
    from models.predictor import CTRPredictor

    train, valid, _ = tiny_data()
    predictor = CTRPredictor(MODEL_NAME, tmp_path, model=train_lightgbm(train, valid, TINY_LGB))
    probes = []
    probe = predictor.healthy

    async def counted() -> bool:
        probes.append(1)
        return await probe()

    predictor.healthy = counted
    registry = ModelRepository()
    registry.update(predictor)
    plane = StrictDataPlane(model_registry=registry)
    app = FastAPI()
    register_v1_endpoints(app, plane, None)
    register_v2_endpoints(app, plane, None)
    app.add_middleware(V2RoutingMiddleware, dataplane=plane)
    row = example_row(MODEL_FIELDS)
    v2 = {"inputs": v2_inputs([row])}

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(3):
                v1_answer = await client.post(
                    f"/v1/models/{MODEL_NAME}:predict", json={"instances": [row]}
                )
                assert v1_answer.status_code == 200, v1_answer.text
                v2_answer = await client.post(f"/v2/models/{MODEL_NAME}/infer", json=v2)
                assert v2_answer.status_code == 200, v2_answer.text
            during_inference = len(probes)
            for path in (
                "/v2/health/ready",
                f"/v1/models/{MODEL_NAME}",
                f"/v2/models/{MODEL_NAME}/ready",
            ):
                assert (await client.get(path)).status_code == 200
            return [during_inference, len(probes)]

    assert asyncio.run(run()) == [0, 3]


# --- 3. size limits before anything is stored ------------------------------------------------


def _chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


@pytest.mark.parametrize("server", ["predictor", "transformer", "drift"])
def test_one_body_limit_at_the_edge_of_every_server(servers, server):
    path = "/" if server == "drift" else f"/v1/models/{MODEL_NAME}:predict"
    url = servers[server] + path
    big = b'{"instances": [' + b" " * OVER_LIMIT + b"]}"
    # A client that writes its whole body before reading the answer.
    started = time.monotonic()
    r = requests.post(url, data=big, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413, r.text
    assert f"limit of {DEFAULT_MAX_BODY_BYTES} bytes" in r.json()["error"]
    # A chunked body, whose size nobody declared.
    with httpx.Client(timeout=30) as client:
        r = client.post(
            url, content=_chunks(OVER_LIMIT), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413, r.text
        assert r.json()["error"].startswith("body:")
        if server != "drift":
            assert _good(servers, server, client).status_code == 200
        assert client.get(servers[server] + _ready_path(server)).status_code == 200
    assert time.monotonic() - started < 60


def test_drift_service_caps_what_it_stores(servers):
    url = servers["drift"]
    rows = [example_row(MODEL_FIELDS)] * 1025
    headers = {
        "ce-id": "too-many", "ce-type": "org.kubeflow.serving.inference.request",
        "ce-source": "http://test", "ce-specversion": "1.0", "content-type": "application/json",
    }  # fmt: skip
    with httpx.Client(timeout=TIMEOUT) as client:
        before = client.get(f"{url}/status").json()["pending_halves"]
        r = client.post(url + "/", json={"instances": rows}, headers=headers)
        assert r.status_code == 413 and r.json()["reason"] == "too_many_rows", r.text
        assert r.json()["error"].startswith("instances: 1025 rows")
        deep = b"[" * 50_000 + b"]" * 50_000
        r = client.post(url + "/", content=deep, headers={**headers, "ce-id": "deep"})
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"], r.text
        r = client.post(url + "/labels", content=b'{"labels": ' + deep + b"}")
        assert r.status_code == 400, r.text
        r = client.post(
            url + "/", json={"instances": rows[:1]}, headers={**headers, "ce-id": "a b"}
        )
        assert r.status_code == 400 and r.json()["error"].startswith("ce-id header:"), r.text
        after = client.get(f"{url}/status").json()["pending_halves"]
        ok = client.post(
            url + "/", json={"instances": rows[:2]}, headers={**headers, "ce-id": "ok"}
        )
        assert ok.status_code == 200, ok.text
    assert after == before  # nothing of the refused events was stored


def _rejecting_router(
    tmp_path: Path, limit: int
) -> tuple[CanaryRouter, SQLiteRequestLog, CloudEventLogger]:
    sink = SQLiteRequestLog(tmp_path / "requests.sqlite")
    logger = CloudEventLogger(sink, inference_service="ctr", close_sink=False)
    router = CanaryRouter(
        initial_state("ctr", "v0001"), BACKENDS, mounts=MOUNTS, request_log=logger,
        max_body_bytes=limit,
    )  # fmt: skip
    return router, sink, logger


def test_router_logs_refused_requests_as_small_records(tmp_path):
    limit = 64 * 1024
    router, sink, logger = _rejecting_router(tmp_path, limit)
    padding = " " * (limit - 100)  # under the limit: the predictor refuses it (400)
    refused_by_predictor = json.dumps({"bad": True, "padding": padding}).encode()

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=router.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            out = []
            for i in range(5):  # five oversized bodies, as in the issue
                out.append(
                    await client.post(
                        "/v1/models/ctr:predict",
                        content=b" " * (limit * 8),
                        headers={"x-request-id": f"big-{i}", "content-type": "application/json"},
                    )
                )
            out.append(
                await client.post(
                    "/v1/models/ctr:predict",
                    content=refused_by_predictor,
                    headers={"x-request-id": "bad-1", "content-type": "application/json"},
                )
            )
            out.append(
                await client.post(
                    "/v1/models/ctr:predict",
                    json={"instances": [[1]]},
                    headers={"x-request-id": "a b"},
                )
            )
            out.append(
                await client.post(
                    "/v1/models/ctr:predict",
                    json={"instances": [[1]]},
                    headers={"x-request-id": "ok"},
                )
            )
            await router.aclose()
            return out

    responses = asyncio.run(run())
    logger.close()
    assert [r.status_code for r in responses] == [413] * 5 + [400, 400, 200]
    assert responses[6].json()["error"].startswith("x-request-id header:")
    events = list(sink.iter_events())
    requests_logged = {e.id: e for e in events if e.type.endswith(".request")}
    assert set(requests_logged) >= {f"big-{i}" for i in range(5)} | {"bad-1", "ok"}
    for i in range(5):
        record = requests_logged[f"big-{i}"].json()
        assert record["rejected"] == "body_too_large" and record["content_length"] == limit * 8
    assert requests_logged["bad-1"].json() == {
        "rejected": "the primary predictor answered 400",
        "content_length": len(refused_by_predictor),
    }
    assert requests_logged["ok"].json() == {"instances": [[1]]}
    assert max(len(e.data) for e in events) < 1024
    sink.close()
    assert (tmp_path / "requests.sqlite").stat().st_size < 256 * 1024
