"""The predictor's inference route and its column-wise request check answer exactly what
KServe's FastAPI endpoints and the value-by-value check answer.

`V2RoutingMiddleware` answers v1 predict and v2 infer of an `inference_route` model itself
(kubeloop/serving/model_server.py); these tests send the same requests, good and bad, to
one app with the route and one without (KServe's endpoints), in process, and compare
status, body and headers. `parse_columns` is compared with `parse_request` on random valid
and invalid batches, messages included.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct

import httpx
import pytest
from kserve.errors import InvalidInput
from test_predictor import MODEL_NAME, TINY_LGB, tiny_data, v2_inputs

from kubeloop.serving.protocol import (
    MAX_STRING_LENGTH,
    MODEL_FIELDS,
    WIRE_DATATYPE,
    ParsedColumns,
    example_row,
    parse_columns,
    parse_request,
)
from models.lightgbm_trainer import train_lightgbm


def _apps(tmp_path):
    """(app with the inference route, app without), the same predictor behind both."""
    from fastapi import FastAPI
    from kserve.model_repository import ModelRepository
    from kserve.protocol.rest.server import RESTServer

    from kubeloop.serving.edge import EdgeMiddleware
    from kubeloop.serving.model_server import (
        AppSetup,
        StrictDataPlane,
        V2RoutingMiddleware,
        install_app,
        install_error_handlers,
    )
    from models.predictor import CTRPredictor

    train, valid, _ = tiny_data()
    predictor = CTRPredictor(
        MODEL_NAME, tmp_path, model=train_lightgbm(train, valid, TINY_LGB), max_batch_size=8
    )
    predictor.metadata = {"version": "v0007"}
    registry = ModelRepository()
    registry.update(predictor)
    plane = StrictDataPlane(model_registry=registry)
    apps = []
    for routed in (True, False):
        app = FastAPI()
        rest = RESTServer.__new__(RESTServer)
        rest.dataplane, rest.model_repository_extension = plane, None
        rest._register_endpoints(app)
        rest._add_exception_handlers(app)
        if routed:
            setup = AppSetup(MODEL_FIELDS, 8, upstream=False, max_body_bytes=1 << 20)
            install_app(app, setup, plane)
        else:
            install_error_handlers(app)
            app.add_middleware(V2RoutingMiddleware, dataplane=plane)
            app.add_middleware(EdgeMiddleware, max_body_bytes=1 << 20)
        apps.append(app)
    return apps


def _binary(rows: list[dict]) -> tuple[bytes, int]:
    inputs, blobs = [], []
    for spec in MODEL_FIELDS.fields:
        datatype = WIRE_DATATYPE[spec.kind]
        values = [r[spec.name] for r in rows]
        if datatype == "BYTES":
            blob = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
        elif datatype == "INT64":
            blob = struct.pack(f"<{len(values)}q", *values)
        else:
            blob = struct.pack(f"<{len(values)}d", *values)
        blobs.append(blob)
        inputs.append(
            {
                "name": spec.name,
                "shape": [len(rows)],
                "datatype": datatype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
    header = json.dumps({"id": "bin-1", "inputs": inputs}).encode()
    return header + b"".join(blobs), len(header)


def _requests() -> list[tuple[str, bytes, dict]]:
    row = example_row(MODEL_FIELDS)
    rows = [dict(row, hour=h % 24) for h in range(5)]
    v1 = f"/v1/models/{MODEL_NAME}:predict"
    v2 = f"/v2/models/{MODEL_NAME}/infer"
    js = {"content-type": "application/json"}
    binary, length = _binary(rows)
    binary_out = {"inputs": v2_inputs(rows), "parameters": {"binary_data_output": True}}
    bad = dict(row, hour=25)
    return [
        (v1, json.dumps({"instances": rows}).encode(), js),
        (v1, json.dumps({"instances": rows, "request_id": "r-1"}).encode(), js),
        (v1, json.dumps({"instances": [row]}).encode(), {**js, "x-request-id": "h-1"}),
        (v1, json.dumps({"instances": []}).encode(), js),
        (v1, json.dumps({"instances": rows + [bad]}).encode(), js),
        (v1, json.dumps({"instances": [dict(row, extra=1)] * 5}).encode(), js),
        (v1, json.dumps({"instances": [row] * 9}).encode(), js),
        (v1, b'{"instances": [', js),
        (v1, json.dumps({"rows": rows}).encode(), js),
        ("/v1/models/nope:predict", json.dumps({"instances": rows}).encode(), js),
        (v2, json.dumps({"id": "j-1", "inputs": v2_inputs(rows)}).encode(), js),
        (v2, json.dumps(binary_out).encode(), js),
        (v2, json.dumps({"inputs": v2_inputs([bad])}).encode(), js),
        (v2, json.dumps({"inputs": "x"}).encode(), js),
        (v2, binary, {"inference-header-content-length": str(length)}),
        (v2, binary[:-3], {"inference-header-content-length": str(length)}),
        (f"/v2/models/{MODEL_NAME}/versions/v0007/infer", binary,
         {"inference-header-content-length": str(length)}),
        (f"/v2/models/{MODEL_NAME}/versions/v0001/infer", binary,
         {"inference-header-content-length": str(length)}),
    ]  # fmt: skip


KEPT_HEADERS = ("x-request-id", "x-model-version", "inference-header-content-length")


def test_inference_route_answers_as_kserve_endpoints(tmp_path):
    routed, plain = _apps(tmp_path)

    async def run() -> list[tuple]:
        answers = []
        for app in (routed, plain):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                for path, body, headers in _requests():
                    r = await client.post(path, content=body, headers=headers)
                    kept = {k: r.headers.get(k) for k in KEPT_HEADERS}
                    if kept["x-request-id"] and len(kept["x-request-id"]) == 36:
                        kept["x-request-id"] = "<uuid>"  # a new id per answer
                    answers.append((path, r.status_code, _content(r), kept))
        return answers

    answers = asyncio.run(run())
    half = len(answers) // 2
    assert answers[:half] == answers[half:]
    statuses = [a[1] for a in answers[:half]]
    assert statuses.count(200) >= 7 and {400, 404, 413, 422} <= set(statuses), statuses


def _content(response: httpx.Response):
    length = response.headers.get("inference-header-content-length")
    if length is not None:  # binary outputs: a JSON header, then the raw tensors
        head, raw = response.content[: int(length)], response.content[int(length) :]
        return _content(httpx.Response(200, content=head)), raw
    try:
        out = response.json()
    except ValueError:
        return response.content
    if isinstance(out, dict) and isinstance(out.get("id"), str) and len(out["id"]) == 36:
        out["id"] = "<uuid>"
    return out


def test_inference_route_is_taken_only_by_routed_models(tmp_path, monkeypatch):
    """The route answers for the predictor; without `inference_route` the request goes on
    to KServe's endpoint (seen by the route being called or not)."""
    from kubeloop.serving.model_server import V2RoutingMiddleware
    from models.predictor import CTRPredictor

    routed, _ = _apps(tmp_path)
    seen = []
    original = V2RoutingMiddleware._infer

    async def spy(self, scope, receive, send, name, v2):
        seen.append((name, v2))
        return await original(self, scope, receive, send, name, v2)

    monkeypatch.setattr(V2RoutingMiddleware, "_infer", spy)
    row = example_row(MODEL_FIELDS)
    body = json.dumps({"instances": [row]}).encode()

    async def post() -> int:
        transport = httpx.ASGITransport(app=routed)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post(f"/v1/models/{MODEL_NAME}:predict", content=body)
            return r.status_code

    assert asyncio.run(post()) == 200 and seen == [(MODEL_NAME, False)]
    monkeypatch.setattr(CTRPredictor, "inference_route", False)
    assert asyncio.run(post()) == 200 and seen == [(MODEL_NAME, False)]


# --- parse_columns == parse_request ------------------------------------------------------


def _value(spec, rng: random.Random, valid: bool):
    if valid:
        choice = rng.random()
        if spec.nullable and choice < 0.15:
            return None
        if spec.kind == "string":
            return rng.choice(["a", "mobile", "", "x" * MAX_STRING_LENGTH])
        lo = spec.minimum if spec.minimum is not None else -(2**63)
        hi = spec.maximum if spec.maximum is not None else 2**63 - 1
        if spec.kind == "int" or choice < 0.4:
            return rng.choice([lo, hi, rng.randint(max(lo, -5), min(hi, 5))])
        return rng.uniform(-1e6, 1e6)
    return rng.choice(
        [True, "1", 1.5, float("nan"), float("inf"), 2**63, -(2**63) - 1, [1], {"a": 1},
         "x" * (MAX_STRING_LENGTH + 1), None, 25, -1]
    )  # fmt: skip


def _outcome(fn, body):
    try:
        parsed = fn(body, MODEL_FIELDS)
    except InvalidInput as exc:
        return type(exc).__name__, str(exc)
    rows = parsed.rows() if isinstance(parsed, ParsedColumns) else parsed.rows
    return parsed.protocol, rows, parsed.request_id


@pytest.mark.parametrize("seed", range(6))
def test_parse_columns_equals_parse_request(seed):
    rng = random.Random(seed)
    differed = 0
    for _ in range(150):
        n = rng.choice([0, 1, 3, 4, 5, 17])
        rows = [{s.name: _value(s, rng, True) for s in MODEL_FIELDS.fields} for _ in range(n)]
        if rows and rng.random() < 0.6:
            row = rng.choice(rows)
            spec = rng.choice(MODEL_FIELDS.fields)
            what = rng.random()
            if what < 0.7:
                row[spec.name] = _value(spec, rng, False)
            elif what < 0.85:
                del row[spec.name]
            else:
                row["unknown"] = 1
        if rows and rng.random() < 0.05:
            rows[0] = "not a row"
        body = {"instances": rows}
        want = _outcome(parse_request, body)
        assert _outcome(parse_columns, body) == want
        differed += want[0] == "InvalidInput"
    assert differed > 50  # both outcomes were exercised


def test_parse_columns_v2_equals_parse_request():
    from kserve.protocol.infer_type import InferRequest
    from kserve.protocol.rest.v2_datamodels import InferenceRequest

    rng = random.Random(3)
    for _ in range(80):
        rows = [{s.name: _value(s, rng, True) for s in MODEL_FIELDS.fields} for _ in range(5)]
        for row in rows:  # v2 JSON data cannot hold null for every datatype: no None
            for spec in MODEL_FIELDS.fields:
                if row[spec.name] is None:
                    row[spec.name] = example_row(MODEL_FIELDS)[spec.name]
        if rng.random() < 0.5:
            spec = rng.choice(MODEL_FIELDS.fields)
            rows[rng.randrange(5)][spec.name] = rng.choice([25, -1, "x" * 300, 2**63])
        inputs = v2_inputs(rows)
        request = InferRequest.from_inference_request(
            InferenceRequest.model_validate({"inputs": inputs}), MODEL_NAME
        )
        assert _outcome(parse_columns, request) == _outcome(parse_request, request)
