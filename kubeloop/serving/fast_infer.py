"""The fast inference route: a raw ASGI app in front of KServe's, for the v1 predict and
v2 JSON infer requests of the models that opt in (`inference_route = True`).

KServe's app stays the server: health, metadata, metrics, the repository routes, every
error and every unusual request are its. What this app answers itself is exactly the
common case, a `POST /v1/models/{name}:predict` or `POST /v2/models/{name}/infer` of an
opted-in, loaded model with

* a declared `Content-Length` within the body limit and valid request-id headers (what
  `kubeloop.serving.edge.EdgeMiddleware` would let through unchanged), no
  `Transfer-Encoding`, and no CloudEvent headers (`ce-specversion`);
* v1: no Content-Type, or exactly `application/json`: what KServe's `DataPlane.decode`
  hands to `orjson.loads` (kserve v0.20.0 `python/kserve/kserve/protocol/dataplane.py`
  `decode`, `JSON_HEADERS`), and a body that `orjson.loads` decodes (as KServe decodes
  it) to an object that is not a structured CloudEvent (`decode_cloudevent`);
* v2: no `inference-header-content-length` (not the binary extension), a body without
  an integer literal of 19 or more digits (orjson reads those past 64 bits as floats,
  the standard library that `StrictDataPlane` decodes v2 JSON with as ints) that orjson
  decodes to a plain request: `id` (a string) and `inputs` only, each input exactly
  name, shape (ints), datatype and data, so that pydantic's `InferenceRequest` would
  coerce nothing (`_infer_request`).

For such a request it makes the calls KServe's endpoints make (`protocol/rest/
v1_endpoints.py` `predict`, `v2_endpoints.py` `infer`: `DataPlane.infer` ->
`Model.__call__`, with its Prometheus histograms and latency log line, and
`DataPlane.encode`) and answers as the endpoints do (`endpoint_answer`), with an error
answered by the app's own exception handler for it (`handler_answer`). What it skips is
everything between uvicorn and the model: FastAPI's application and router, KServe's
timing middleware (its two `kserve.trace` timing lines per request are not written for
these requests; the model's latency line is), the edge's body replay, and the
dataplane's generic decoding.

Anything else (another path or method, another Content-Type, a body that does not
decode, a chunked body, a model that is not loaded or did not opt in) goes on to KServe's
app untouched, with the body replayed when it was read, so its answer is KServe's own.

`handler_answer` and `endpoint_answer` are shared with the inference route of
`kubeloop.serving.model_server.V2RoutingMiddleware`.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi.encoders import jsonable_encoder
from fastapi.responses import ORJSONResponse
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.protocol.infer_type import InferInput, InferRequest
from kserve.protocol.rest.v2_datamodels import InferenceResponse
from starlette.requests import Request
from starlette.responses import Response

from kubeloop.serving.edge import ID_HEADERS, id_problem

V1_PREDICT_PATH = re.compile(r"^/v1/models/(?P<name>[^/]+):predict$")
V2_INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)/infer$")
_JSON = "application/json"
_OCTETS = "application/octet-stream"
# An integer literal of 19+ digits: orjson reads those beyond 64 bits as floats, the
# standard library (KServe's v2 JSON decoding here) as ints.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
# orjson options of FastAPI's ORJSONResponse (fastapi/responses.py `render`).
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_CLOUDEVENT_KEYS = ("time", "type", "source", "id", "specversion", "data")


class FastInferApp:
    """The fast route in front of `app`, KServe's ASGI app (see the module docstring).

    `dataplane`: the server's DataPlane (its model registry names the models);
    `max_body_bytes`: the edge's body limit; `handlers`: the FastAPI app whose exception
    handlers answer the errors of a fast request."""

    def __init__(self, app: Any, dataplane: Any, max_body_bytes: int, handlers: Any):
        self.app = app
        self.dataplane = dataplane
        self.max_body_bytes = max_body_bytes
        self.handlers = handlers

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            match = V1_PREDICT_PATH.match(path)
            v2 = match is None
            if v2:
                match = V2_INFER_PATH.match(path)
            if match is not None:
                model = self._model(match["name"])
                headers = self._headers(scope, v2) if model is not None else None
                if headers is not None:
                    body, done = await _read(receive, self.max_body_bytes)
                    if body is None:  # the client hung up: nobody to answer
                        return
                    answer = self._v2 if v2 else self._v1
                    if done and await answer(
                        model, match["name"], body, headers, scope, receive, send
                    ):
                        return
                    receive = _replay(body, done, receive)
        await self.app(scope, receive, send)

    def _model(self, name: str) -> Any:
        model = self.dataplane.model_registry.get_model(name)
        if model is None or not getattr(model, "inference_route", False):
            return None
        return model if getattr(model, "ready", False) else None

    def _headers(self, scope, v2: bool) -> dict[str, str] | None:
        """The request headers as KServe's endpoint reads them (a dict, latin-1; for v2
        with the Content-Type V2RoutingMiddleware gives every v2 infer body), or None
        when the request is not one this route answers."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > self.max_body_bytes:
            return None
        if v2:
            if INFERENCE_CONTENT_LENGTH_HEADER in headers:  # the binary extension
                return None
            headers.pop("content-type", None)
            headers["content-type"] = _OCTETS
        elif headers.get("content-type", _JSON) != _JSON:
            return None
        if "transfer-encoding" in headers or "ce-specversion" in headers:
            return None
        for name in ID_HEADERS:
            value = headers.get(name)
            if value is not None and id_problem(value.encode("latin-1")) is not None:
                return None
        return headers

    async def _answer_error(self, exc: Exception, scope, receive, send) -> None:
        """Answer `exc` with the app's own exception handler for it, as KServe's endpoint
        would; an exception no handler takes goes on up, as it would there."""
        answer = await handler_answer(self.handlers, scope, receive, exc)
        if answer is None:
            raise exc
        await answer(scope, receive, send)

    async def _v1(self, model, name: str, body: bytes, headers: dict, scope, receive, send) -> bool:
        """Answer a v1 predict request; False when it must go on to KServe's app."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(payload, dict) or all(k in payload for k in _CLOUDEVENT_KEYS):
            return False
        try:
            response, response_headers = await model(payload, headers=headers)
        except Exception as exc:  # noqa: BLE001 (the app's handler answers it, or it is re-raised)
            await self._answer_error(exc, scope, receive, send)
            return True
        response_headers.pop("content-length", None)
        if not isinstance(response, dict):
            await endpoint_answer(response, response_headers, False)(scope, receive, send)
            return True
        content = orjson.dumps(response, option=_ORJSON_OPTIONS)
        raw = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response_headers.items()
        ]
        keys = {k for k, _ in raw}
        if b"content-length" not in keys:
            raw.append((b"content-length", str(len(content)).encode("latin-1")))
        if b"content-type" not in keys:
            raw.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": content})
        return True

    async def _v2(self, model, name: str, body: bytes, headers: dict, scope, receive, send) -> bool:
        """Answer a v2 JSON infer request; False when it must go on to KServe's app."""
        if _LONG_DIGITS.search(body):  # orjson reads integers past 64 bits as floats
            return False
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        request = _infer_request(payload, name)
        if request is None:
            return False
        try:
            response, response_headers = await model(request, headers=headers)
            response, more = self.dataplane.encode(
                model_name=name, response=response, headers=headers, req_attributes={}
            )
        except Exception as exc:  # noqa: BLE001 (the app's handler answers it, or it is re-raised)
            await self._answer_error(exc, scope, receive, send)
            return True
        response_headers.update(more)
        response_headers.pop("content-length", None)
        await endpoint_answer(response, response_headers, True)(scope, receive, send)
        return True


_INPUT_KEYS = frozenset({"name", "shape", "datatype", "data"})


def _infer_request(payload: Any, model_name: str) -> Any:
    """The `InferRequest` KServe's JSON decoding makes of `payload` (pydantic's
    `InferenceRequest`, then `InferRequest.from_inference_request`), when `payload` is
    plainly one: only `id` (a string) and `inputs`, each input exactly name (str), shape
    (list of int), datatype (str, not FP16) and data (a list), nothing pydantic would
    coerce or a parameter would change; None otherwise (KServe's path decides)."""

    if type(payload) is not dict or not payload.keys() <= {"id", "inputs"}:
        return None
    request_id, inputs = payload.get("id"), payload.get("inputs")
    if (request_id is not None and type(request_id) is not str) or type(inputs) is not list:
        return None
    infer_inputs = []
    for item in inputs:
        if type(item) is not dict or item.keys() != _INPUT_KEYS:
            return None
        name, shape, datatype, data = item["name"], item["shape"], item["datatype"], item["data"]
        if type(name) is not str or type(datatype) is not str or type(data) is not list:
            return None
        if type(shape) is not list or not all(type(d) is int for d in shape):
            return None
        if datatype == "FP16":
            return None
        infer_inputs.append(
            InferInput(name=name, shape=shape, datatype=datatype, data=data, parameters={})
        )
    return InferRequest(request_id=request_id, model_name=model_name, infer_inputs=infer_inputs)


async def _read(receive, limit: int) -> tuple[bytes | None, bool]:
    """(the body read, whether it is whole): whole unless it grew past `limit` (then the
    rest is left to the app, which refuses it); (None, False) if the client hung up."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None, False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > limit:
            return b"".join(chunks), False


def _replay(body: bytes, done: bool, receive):
    """A receive that hands the app the body read so far (all of it when `done`), then
    the real receive."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": not done}
        return await receive()

    return replay


async def handler_answer(handlers: Any, scope: Any, receive: Any, exc: Exception) -> Any:
    """The response the exception handler of `handlers` (a FastAPI app) gives `exc`, or
    None when it has none for the exception's class or its bases."""

    for cls in type(exc).__mro__:
        handler = handlers.exception_handlers.get(cls)
        if handler is not None:
            answer = handler(Request(scope, receive), exc)
            if hasattr(answer, "__await__"):
                answer = await answer
            return answer
    return None


def endpoint_answer(response: Any, headers: dict[str, str], v2: bool) -> Any:
    """The response KServe's v1 `predict` / v2 `infer` endpoint sends for `response`
    (FastAPI's app answers with ORJSONResponse by default)."""

    if v2:
        headers.pop("content-type", None)
        if isinstance(response, bytes):
            return Response(content=response, headers=headers)
        validated = InferenceResponse.model_validate(response)
        if _plain_response(response):
            # jsonable_encoder's own result for such a response (it dumps the model in
            # JSON mode, then walks the dump, which changes nothing here), without the walk.
            content = validated.model_dump(mode="json", by_alias=True)
        else:
            content = jsonable_encoder(validated)
        return ORJSONResponse(content=content, headers=headers)
    if isinstance(response, (bytes, str)):
        return Response(content=response, headers=headers)
    return ORJSONResponse(content=response, headers=headers)


_SCALARS = frozenset({float, int, str, bool, type(None)})


def _plain_response(response: Any) -> bool:
    """Whether a v2 response dict holds no parameters and only scalar output data: then
    jsonable_encoder's walk of the JSON-mode dump (which drops dict keys starting with
    "_sa" and re-encodes containers) leaves it as it is."""
    if type(response) is not dict or response.get("parameters") is not None:
        return False
    outputs = response.get("outputs")
    if type(outputs) is not list:
        return False
    for output in outputs:
        if type(output) is not dict or output.get("parameters") is not None:
            return False
        data = output.get("data")
        if type(data) is not list or not set(map(type, data)) <= _SCALARS:
            return False
    return True
