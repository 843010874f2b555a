"""The KServe ModelServer that both kubeloop model servers (predictor, transformer) run.

`make_model_server(args, fields, ...)` returns a `kserve.ModelServer` (kserve 0.20) with
what KServe leaves open closed:

* **Bind address.** KServe's `RESTServer` hard-codes `uvicorn.Config(host="0.0.0.0")`;
  `KubeloopModelServer` sets the config's host to `--host` (loopback by default) after
  `start()` built the REST server and before it serves. KServe's gRPC server always binds
  `[::]`, so gRPC is off unless asked for, and asking for it with a loopback `--host` is
  refused.
* **No one changes what is served.** The model-repository extension (`POST
  /v2/repository/models/{name}/load|unload`, and its gRPC twins) answers 403: the
  extension object KServe hands to both servers refuses every call.
* **Readiness is real.** `/v2/health/ready` is 200 only when every registered model's
  `healthy()` is true (the predictor scores a probe row, the transformer checks its
  feature store); `/v1/models/{name}` and `/v2/models/{name}/ready` ask the same. The
  probe is not run per inference request (KServe asks readiness twice per request):
  there only the `ready` flag is asked.
* **The edge.** `kubeloop.serving.edge.EdgeMiddleware`: the body limit (413) and the
  request-id headers (400), before KServe reads anything.
* **Every v2 mode of the open inference protocol.** Every v2 infer body reaches
  `StrictDataPlane` as bytes: with `inference-header-content-length` it is the binary
  tensor extension (JSON header + raw tensors, each checked against its
  `binary_data_size`, BYTES checked to be UTF-8), without it the whole body is JSON,
  whatever the Content-Type says (the extension: "if the header is not present the entire
  body is JSON"). A malformed request is a 4xx naming the field, never a 500.
* **The fast route.** uvicorn serves `kubeloop.serving.fast_infer.FastInferApp` with
  KServe's app behind it: the plain v1 predict and v2 JSON infer requests of an
  `inference_route` model are answered there, without FastAPI (`fast_app`); everything
  else reaches KServe's app and the middlewares above unchanged.
* **Versions.** v2 model metadata lists the served version (`versions`), and
  `/v2/models/{name}/versions/{version}[/ready|/infer]` works for it (404 for others).
* **OpenAPI.** `/openapi.json` documents the model's real inputs for v1 and v2 and the
  4xx answers.

**Workers.** KServe's multi-worker mode (`--workers N`) spawns fresh interpreters, each
of which re-imports `kserve.model_server:app` and builds it again with KServe's own
handlers only (kserve v0.20.0 `python/kserve/kserve/protocol/rest/multiprocess/server.py`
`spawn = mp.get_context("spawn")` and `init_processes` running `self._rest_server.run`;
`rest/server.py` `create_application`, which adds `invalid_input_handler` (400) and
`inference_error_handler` (500) from `kserve/errors.py`). What `make_model_server` did
to the parent's app is not there, so RequestTooLarge fell back to 400 and UpstreamError
to 500, and the edge and v2 routing were gone. With more than one worker the REST server
is a `KubeloopRESTServer`, whose `create_application` installs all of the above in each
worker; the models travel to the workers pickled and reload their files there
(`__getstate__`/`__setstate__` of the predictor and the transformer).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kserve
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InferenceError, InvalidInput, ModelNotFound
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.multiprocess.server import RESTServerMultiProcess, RESTServerProcess
from kserve.protocol.rest.server import RESTServer
from kserve.protocol.rest.v2_datamodels import InferenceRequest, RequestInput
from pydantic import ValidationError

from kubeloop.serving.edge import DEFAULT_HOST, EdgeMiddleware
from kubeloop.serving.fast_infer import FastInferApp, endpoint_answer, handler_answer
from kubeloop.serving.protocol import (
    _DATATYPES,
    MAX_REQUEST_ID_LENGTH,
    MAX_STRING_LENGTH,
    OUTPUT_NAME,
    FieldSet,
    FieldSpec,
    RequestTooLarge,
    UpstreamError,
    model_server_options,
    show,
)

WILDCARD_HOSTS = ("0.0.0.0", "::", "")
V2_INFER = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/infer$")
V2_VERSIONED = re.compile(r"^/v2/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)(?P<rest>/.*)?$")


class NotAnInferenceRequest(InvalidInput):
    """A v2 body that is not an inference request at all (KServe's pydantic model refuses
    it): 422, as FastAPI answers a JSON body its model refuses."""

    status_code = 422


class RepositoryLocked(InferenceError):
    """A call of the model-repository extension (load/unload): refused with 403."""

    status_code = 403


class ReadOnlyRepositoryExtension(ModelRepositoryExtension):
    """KServe's model-repository extension with load and unload refused: the models a
    kubeloop server serves are fixed at start (a new version is a new server)."""

    async def load(self, model_name: str) -> None:
        raise RepositoryLocked(
            f"model {model_name!r}: loading models is disabled on this server (the "
            "model-repository extension is read-only; deploy a new version instead)"
        )

    async def unload(self, model_name: str) -> None:
        raise RepositoryLocked(
            f"model {model_name!r}: unloading models is disabled on this server (the "
            "model-repository extension is read-only)"
        )


# --- errors ------------------------------------------------------------------------------


def error_path(loc: Sequence[Any]) -> str:
    """A pydantic error location as a field path: ("inputs", 0, "shape") ->
    "inputs[0].shape"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def validation_message(errors: Sequence[Mapping[str, Any]], drop: Sequence[str] = ()) -> str:
    """One message naming each invalid field of a pydantic/FastAPI validation error;
    leading location parts in `drop` ("body", the model name) are left out."""
    parts = []
    for error in errors[:10]:
        loc = list(error.get("loc", ()))
        while loc and loc[0] in drop:
            loc.pop(0)
        parts.append(f"{error_path(loc)}: {error.get('msg', 'invalid')}")
    if len(errors) > 10:
        parts.append(f"... ({len(errors)} errors in all)")
    return "; ".join(parts)


def install_error_handlers(app: Any) -> None:
    """Answer our errors with their own status codes (KServe's handlers would answer
    400/500) in KServe's body shape {"error": message}: RequestTooLarge 413,
    UpstreamError 502, RepositoryLocked 403, and NotAnInferenceRequest and FastAPI's
    request validation errors 422, with the fields named. Call before the server takes its first request."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    async def _handler(_request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc)})

    async def _validation(_request: Any, exc: RequestValidationError) -> JSONResponse:
        message = validation_message(exc.errors(), drop=("body", "InferenceRequest", "bytes"))
        return JSONResponse(status_code=422, content={"error": message})

    for cls in (RequestTooLarge, UpstreamError, RepositoryLocked, NotAnInferenceRequest):
        app.add_exception_handler(cls, _handler)
    app.add_exception_handler(RequestValidationError, _validation)


# --- v2 request decoding -------------------------------------------------------------------


class _BinaryRequestInput(RequestInput):
    # In the binary extension an input's data may follow the JSON header instead.
    data: list | None = None


class _BinaryHeader(InferenceRequest):
    inputs: list[_BinaryRequestInput]


def _load_json(body: bytes, what: str) -> Any:
    # The standard library, as FastAPI decodes JSON bodies: big integers and NaN decode,
    # and the field checks then name the field that holds them.
    try:
        return json.loads(body)
    except RecursionError:
        raise InvalidInput(f"{what}: JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what}: not UTF-8 JSON ({exc.reason})") from None
    except ValueError as exc:
        raise InvalidInput(f"{what}: not valid JSON ({exc})") from None


def _validated(model: type, data: Any, what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message = validation_message(exc.errors())
        raise NotAnInferenceRequest(message if what == "body" else f"{what}: {message}") from None


def json_infer_request(body: bytes, model_name: str) -> InferRequest:
    """A v2 request whose whole body is JSON (no inference-header-content-length)."""
    request = _validated(InferenceRequest, _load_json(body, "body"), "body")
    return InferRequest.from_inference_request(request, model_name)


def _binary_length(text: str, size: int) -> int:
    try:
        length = int(text)
    except ValueError:
        raise InvalidInput(
            f"{INFERENCE_CONTENT_LENGTH_HEADER} header: expected the byte length of the JSON "
            f"header, got {show(text)}"
        ) from None
    if not 0 < length <= size:
        raise InvalidInput(
            f"{INFERENCE_CONTENT_LENGTH_HEADER} header: {length} is not within the body's "
            f"{size} bytes"
        )
    return length


def _check_binary_input(item: _BinaryRequestInput, raw: bytes, path: str) -> None:
    probe = InferInput(name=item.name, shape=item.shape, datatype=item.datatype)
    probe._raw_data = raw
    try:
        values = probe.as_numpy()
    except Exception as exc:  # noqa: BLE001 - numpy/struct errors of client bytes
        raise InvalidInput(
            f"{path}.data: {len(raw)} bytes cannot be read as {show(item.datatype)} of shape "
            f"{show(item.shape)} ({type(exc).__name__}: {exc})"
        ) from None
    if item.datatype == "BYTES":
        for j, value in enumerate(values.ravel().tolist()):
            if isinstance(value, bytes):
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidInput(f"{path}.data[{j}]: BYTES value is not UTF-8 text") from None


def binary_infer_request(body: bytes, length_text: str, model_name: str) -> InferRequest:
    """A v2 request in the binary tensor extension: a JSON header of `length_text` bytes,
    then each input without `data` as `parameters.binary_data_size` raw bytes, in order."""
    length = _binary_length(length_text, len(body))
    what = "body (the JSON header)"
    header = _validated(_BinaryHeader, _load_json(body[:length], what), what)
    offset = length
    for i, item in enumerate(header.inputs):
        path = f"inputs[{i}] ({show(item.name, 40)})"
        if item.data is not None:
            continue
        size = (item.parameters or {}).get("binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(
                f"{path}.parameters.binary_data_size: expected the byte length of the "
                f"input's data after the JSON header (or give 'data'), got {show(size)}"
            )
        if offset + size > len(body):
            raise InvalidInput(
                f"{path}.parameters.binary_data_size: {size} bytes, but only "
                f"{len(body) - offset} remain in the body"
            )
        _check_binary_input(item, body[offset : offset + size], path)
        offset += size
    if offset != len(body):
        raise InvalidInput(
            f"body: {len(body) - offset} bytes after the inputs that no binary_data_size "
            "accounts for"
        )
    return InferRequest.from_bytes(body, length, model_name)


class StrictDataPlane(DataPlane):
    """KServe's DataPlane with the decoding, readiness and metadata described in the
    module docstring. Module-level so that it could be pickled."""

    def decode(self, body, headers, *args, **kwargs):
        try:
            return super().decode(body, headers, *args, **kwargs)
        except InvalidInput as exc:
            text = str(exc)
            prefix = "Unrecognized request format: "
            if text.startswith(prefix):
                raise InvalidInput(f"body: not valid JSON ({text[len(prefix) :]})") from None
            raise

    def decode_inference_request(self, body, headers, model_name):
        try:
            if isinstance(body, (bytes, bytearray)):
                length = (headers or {}).get(INFERENCE_CONTENT_LENGTH_HEADER)
                if length is None:
                    return json_infer_request(bytes(body), model_name)
                return binary_infer_request(bytes(body), length, model_name)
            return super().decode_inference_request(body, headers, model_name)
        except InvalidInput:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(
                f"body: malformed v2 request ({type(exc).__name__}: {exc})"
            ) from None

    def metadata(self) -> dict:
        # The repository extension is read-only here; the binary tensor one is served.
        return {**super().metadata(), "extensions": ["binary_tensor_data"]}

    async def ready(self) -> bool:
        """Ready when KServe's check passes (the predictor's, with
        --enable_predictor_health_check) and every registered model is healthy."""
        if not await super().ready():
            return False
        names = list(self._model_registry.get_models())
        if not names:
            return False
        for name in names:
            if not await self._model_registry.is_model_ready(name):
                return False
        return True

    # The probe of `healthy()` (a scored row, an online lookup) answers the readiness
    # routes only. kserve 0.20 also asks the registry before every inference, twice: its
    # predict/infer/explain endpoints call `model_ready(name, True)` (v1_endpoints.py
    # predict/explain, v2_endpoints.py infer) and `DataPlane.infer` calls `get_model`, both
    # through `ModelRepository.is_model_ready` -> `model.healthy()`. KServe's own
    # `healthy()` is the `ready` flag; a probing one there scored two extra rows (or made
    # two extra lookups) per request. On that path the flag is what is asked; a model that
    # cannot answer fails the request itself (503 ModelNotReady, 502 UpstreamError).

    @staticmethod
    def _loaded(model: Any) -> bool:
        return bool(getattr(model, "ready", False))

    async def model_ready(
        self, model_name: str, disable_predictor_health_check: bool = False
    ) -> bool:
        """`/v1/models/{name}`, `/v2/models/{name}/ready` and gRPC ModelReady: the model's
        `healthy()` (KServe's). On the inference path (KServe passes
        `disable_predictor_health_check=True` there, and only there): its `ready` flag."""
        if not disable_predictor_health_check:
            return await super().model_ready(model_name, disable_predictor_health_check)
        model = self._model_registry.get_model(model_name)
        if model is None:
            raise ModelNotFound(model_name)
        return self._loaded(model)

    async def get_model(self, name: str) -> Any:
        """KServe's `get_model` (the model, loaded first if it is not), asking the `ready`
        flag instead of the readiness probe: `infer`/`explain` call it per request."""
        model = self._model_registry.get_model(name)
        if model is None:
            raise ModelNotFound(name)
        if not self._loaded(model):
            model.load()
        return model

    async def model_metadata(self, model_name: str) -> dict:
        out = await super().model_metadata(model_name)
        versions = await served_versions(self.get_model_from_registry(model_name))
        if versions:
            out["versions"] = versions
        return out


async def served_versions(model: Any) -> list[str] | None:
    """The versions a model says it serves (`served_versions()`, sync or async), if any."""
    hook = getattr(model, "served_versions", None)
    if hook is None:
        return None
    result = hook()
    if hasattr(result, "__await__"):
        result = await result
    return list(result) if result else None


# --- the v2 routing middleware ---------------------------------------------------------


V1_PREDICT = re.compile(r"^/v1/models/(?P<name>[^/]+):predict$")
V2_INFER_NAME = re.compile(r"^/v2/models/(?P<name>[^/]+)/infer$")


class V2RoutingMiddleware:
    """Puts every v2 infer body on one decoding path (its Content-Type becomes
    application/octet-stream, so FastAPI hands the bytes to `StrictDataPlane` instead of
    parsing JSON itself with its own errors), and serves versioned v2 paths for the
    version a model serves locally (`local_versions`), 404 for any other.

    **The inference route.** With `app` (the FastAPI app whose exception handlers answer
    errors), a POST to `/v1/models/{name}:predict` or `/v2/models/{name}/infer` of a model
    that sets `inference_route = True` (the predictor) is answered here: the same calls
    KServe's v1 `predict` and v2 `infer` endpoints make (kserve v0.20.0
    `protocol/rest/v1_endpoints.py` `predict`, `v2_endpoints.py` `infer`: the dataplane's
    `model_ready(name, True)`, `decode`, `infer` -> `Model.__call__` with its metrics and
    latency log, `encode`), answered as they answer, and every error answered by the
    app's own handler for it. What is skipped is FastAPI's route matching, dependency
    solving and Request object, about a third of a small request's server CPU. Any
    other request goes on to the app.
    """

    def __init__(self, app: Any, dataplane: DataPlane, handlers: Any = None):
        self.app = app
        self.dataplane = dataplane
        self.handlers = handlers

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            match = V2_VERSIONED.match(scope["path"])
            if match:
                scope = await self._unversioned(scope, match, send)
                if scope is None:
                    return
            if scope["method"] == "POST":
                path = scope["path"]
                v2 = V2_INFER.match(path)
                if v2:
                    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                    headers.append((b"content-type", b"application/octet-stream"))
                    scope = {**scope, "headers": headers}
                if self.handlers is not None:
                    found = (V2_INFER_NAME if v2 else V1_PREDICT).match(path)
                    if found and self._routed(found["name"]):
                        await self._infer(scope, receive, send, found["name"], bool(v2))
                        return
        await self.app(scope, receive, send)

    def _routed(self, name: str) -> bool:
        model = self.dataplane.model_registry.get_model(name)
        return model is not None and getattr(model, "inference_route", False)

    async def _infer(self, scope, receive, send, name: str, v2: bool) -> None:
        from kserve.errors import ModelNotReady
        from starlette.responses import Response

        try:
            body = await _body(receive)
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            plane = self.dataplane
            if not await plane.model_ready(name, True):
                raise ModelNotReady(name)
            if v2:
                request, attributes = plane.decode(
                    body, headers, protocol_version="v2", model_name=name
                )
                attributes = {}
            else:
                request, attributes = plane.decode(body=body, headers=headers)
            response, response_headers = await plane.infer(
                model_name=name, request=request, headers=headers
            )
            response, more = plane.encode(
                model_name=name, response=response, headers=headers, req_attributes=attributes
            )
            response_headers.update(more)
            response_headers.pop("content-length", None)
            answer = endpoint_answer(response, response_headers, v2)
        except Exception as exc:  # answered by the app's handler for it
            answer = await handler_answer(self.handlers, scope, receive, exc)
            if answer is None:
                raise
        if isinstance(answer, Response):
            await answer(scope, receive, send)
        else:  # pragma: no cover - endpoint_answer returns Responses only
            raise TypeError(type(answer))

    async def _unversioned(self, scope, match, send) -> dict | None:
        from starlette.responses import JSONResponse

        name, version, rest = match["name"], match["version"], match["rest"] or ""
        model = self.dataplane.model_registry.get_model(name)
        local = list(getattr(model, "local_versions", None) or []) if model else []
        if version in local and rest in ("", "/ready", "/infer"):
            path = f"/v2/models/{name}{rest}"
            return {**scope, "path": path, "raw_path": path.encode()}
        if model is None:
            message = f"model {name!r} is not served here"
        elif local:
            message = (
                f"model {name!r} version {version!r} is not served here (this server serves "
                f"{', '.join(local)})"
            )
        else:
            message = (
                f"model {name!r}: this server does not serve versioned paths; use "
                f"/v2/models/{name}{rest}"
            )
        await JSONResponse({"error": message}, status_code=404)(scope, None, send)
        return None


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


# --- OpenAPI ---------------------------------------------------------------------------


def _value_schema(spec: FieldSpec) -> dict:
    if spec.kind == "int":
        out: dict[str, Any] = {"type": "integer", "format": "int64"}
        if spec.minimum is not None:
            out["minimum"] = spec.minimum
        if spec.maximum is not None:
            out["maximum"] = spec.maximum
    elif spec.kind == "number":
        out = {"type": "number", "description": "finite number"}
    else:
        out = {"type": "string", "maxLength": MAX_STRING_LENGTH}
    if spec.nullable:
        out = {**out, "nullable": True}
    return out


def _error_response(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _v2_input_schema(spec: FieldSpec, max_batch_size: int) -> dict:
    return {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string", "enum": [spec.name]},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": max_batch_size},
                "minItems": 1,
                "maxItems": 1,
                "description": "[n]: one value per row",
            },
            "datatype": {"type": "string", "enum": list(_DATATYPES[spec.kind])},
            "data": {"type": "array", "items": _value_schema(spec)},
            "parameters": {
                "type": "object",
                "description": "binary tensor extension: binary_data_size instead of data",
            },
        },
    }


def model_components(fields: FieldSet, max_batch_size: int) -> dict[str, dict]:
    """OpenAPI component schemas of a server's v1 and v2 requests, answers and errors."""
    request_id = {
        "type": "string",
        "pattern": f"^[!-~]{{1,{MAX_REQUEST_ID_LENGTH}}}$",
        "description": "request id (else the x-request-id header, else a new UUID)",
    }
    row = {
        "type": "object",
        "additionalProperties": False,
        "required": fields.names,
        "properties": {spec.name: _value_schema(spec) for spec in fields.fields},
    }
    inputs = [_v2_input_schema(spec, max_batch_size) for spec in fields.fields]
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string", "description": "what is wrong, naming the field"}
            },
        },
        "V1Row": row,
        "V1Request": {
            "type": "object",
            "additionalProperties": False,
            "required": ["instances"],
            "properties": {
                "instances": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/V1Row"},
                    "maxItems": max_batch_size,
                },
                "request_id": request_id,
            },
        },
        "V1Response": {
            "type": "object",
            "required": ["predictions"],
            "properties": {
                "predictions": {
                    "type": "array",
                    "items": {"type": "number", "minimum": 0, "maximum": 1},
                    "description": "click probability per instance",
                }
            },
        },
        "V2Request": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": request_id,
                "parameters": {"type": "object"},
                "inputs": {
                    "type": "array",
                    "description": "one input per field, each of shape [n]: "
                    + ", ".join(fields.names),
                    "items": {"oneOf": inputs},
                    "minItems": len(inputs),
                    "maxItems": len(inputs),
                },
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string", "enum": [OUTPUT_NAME]}},
                    },
                },
            },
        },
    }


def _request_id_parameter() -> dict:
    return {
        "name": "x-request-id",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": f"^[!-~]{{1,{MAX_REQUEST_ID_LENGTH}}}$"},
        "description": "request id; anything else is a 400 naming this header",
    }


def openapi_document(app: Any, fields: FieldSet, max_batch_size: int, upstream: bool) -> dict:
    """FastAPI's document for KServe's routes, with the model's real request and answer
    schemas on the v1 predict and v2 infer operations, their 4xx answers, and the
    repository routes (always 403 here) left out."""
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    doc.setdefault("components", {}).setdefault("schemas", {}).update(
        model_components(fields, max_batch_size)
    )
    errors = {
        "400": _error_response("malformed request: the message names the field or header"),
        "404": _error_response("no such model (or version) on this server"),
        "413": _error_response("body over --max_body_bytes, or batch over --max_batch_size"),
        "503": _error_response("the model is not ready"),
    }
    if upstream:
        errors["502"] = _error_response("the predictor or the online store failed")
    paths = doc.get("paths", {})
    for path in [p for p in paths if p.startswith("/v2/repository/")]:
        del paths[path]
    v1 = paths.get("/v1/models/{model_name}:predict", {}).get("post")
    if v1 is not None:
        v1["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V1Request"}}},
        }
        v1["responses"] = {
            "200": {
                "description": "one probability per instance",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/V1Response"}}
                },
            },
            **errors,
        }
        v1.setdefault("parameters", []).append(_request_id_parameter())
    v2 = paths.get("/v2/models/{model_name}/infer", {}).get("post")
    if v2 is not None:
        v2["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/V2Request"}},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "binary tensor extension: a JSON V2Request of "
                    "inference-header-content-length bytes, then the raw inputs",
                },
            },
        }
        ok = v2.get("responses", {}).get("200", {"description": "output probability, FP64 [n]"})
        v2["responses"] = {
            "200": ok,
            **errors,
            "422": _error_response("the body is not a v2 inference request"),
        }
        v2.setdefault("parameters", []).append(_request_id_parameter())
    return doc


def install_openapi(app: Any, fields: FieldSet, max_batch_size: int, upstream: bool) -> None:
    """Serve `openapi_document` at KServe's /openapi.json (FastAPI's documented way to
    extend the schema: replace `app.openapi`)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app, fields, max_batch_size, upstream)
        return app.openapi_schema

    app.openapi = openapi


# --- the server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AppSetup:
    """What `install_app` puts on KServe's app (picklable: it travels to each worker)."""

    fields: FieldSet
    max_batch_size: int
    upstream: bool
    max_body_bytes: int


def install_app(app: Any, setup: AppSetup, dataplane: DataPlane) -> None:
    """kubeloop's error handlers, OpenAPI document and middlewares on KServe's `app`."""
    install_error_handlers(app)
    install_openapi(app, setup.fields, setup.max_batch_size, upstream=setup.upstream)
    # Starlette runs the middleware added last first: the edge, then the v2 routing.
    app.add_middleware(V2RoutingMiddleware, dataplane=dataplane, handlers=app)
    app.add_middleware(EdgeMiddleware, max_body_bytes=setup.max_body_bytes)


def fast_app(app: Any, setup: AppSetup, dataplane: DataPlane) -> Any:
    """`app` (KServe's, after `install_app`) behind the fast inference route
    (`kubeloop.serving.fast_infer`): what uvicorn serves."""
    return FastInferApp(app, dataplane, setup.max_body_bytes, handlers=app)


class KubeloopRESTServer(RESTServer):
    """KServe's RESTServer that builds kubeloop's app in every worker process (see
    **Workers** in the module docstring); `kubeloop_setup` is set before the workers
    start."""

    kubeloop_setup: AppSetup

    def create_application(self) -> None:
        super().create_application()
        from kserve.model_server import app

        install_app(app, self.kubeloop_setup, self.dataplane)
        self.config.app = fast_app(app, self.kubeloop_setup, self.dataplane)


# How long a worker may take to answer the parent's liveness ping. KServe's own is 5 s
# from the first check, 0.5 s after the spawn (multiprocess/server.py `is_alive(timeout=5)`
# in `keep_subprocess_alive`); a worker still importing kserve and loading its model on a
# busy node answers later, is killed as hung and respawned, forever.
WORKER_PING_TIMEOUT_SECONDS = 120.0


class KubeloopRESTServerMultiProcess(RESTServerMultiProcess):
    """KServe's worker supervisor with a liveness ping that waits for a starting worker
    (WORKER_PING_TIMEOUT_SECONDS), asked off the event loop."""

    async def keep_subprocess_alive(self, sockets: list[Any]) -> None:
        for index, process in enumerate(list(self._processes)):
            if self.should_exit.is_set():
                return
            if await asyncio.to_thread(process.is_alive, WORKER_PING_TIMEOUT_SECONDS):
                continue
            process.kill()
            await process.wait_for_termination()
            if self.should_exit.is_set():
                return
            replacement = RESTServerProcess(
                sockets, self._rest_server.run, log_config_file=self.log_config_file
            )
            replacement.start()
            self._processes[index] = replacement


class KubeloopModelServer(kserve.ModelServer):
    """`kserve.ModelServer` that listens on `host` (see the module docstring)."""

    def __init__(
        self, *, host: str = DEFAULT_HOST, app_setup: AppSetup | None = None, **options: Any
    ):
        super().__init__(**options)
        self.host = host
        self.app_setup = app_setup
        self.model_repository_extension = ReadOnlyRepositoryExtension(self.registered_models)
        self.dataplane = StrictDataPlane(model_registry=self.registered_models)

    def setup_event_loop(self) -> None:
        # kserve 0.20's ModelServer.start() builds the RESTServer, whose uvicorn.Config has
        # host="0.0.0.0" hard-coded, then calls setup_event_loop() and only then serves:
        # the last point where the bind address can still be changed, and where the
        # workers' server can still become ours (they are spawned when serving starts).
        rest = self._rest_server
        if rest is not None:
            rest.config.host = self.host
            if self.app_setup is not None:
                # uvicorn serves the fast route, KServe's app behind it (the config's
                # app is loaded when serving starts, after this).
                from kserve.model_server import app

                rest.config.app = fast_app(app, self.app_setup, self.dataplane)
        multi = getattr(self, "_rest_multiprocess_server", None)
        if multi is not None:
            inner = multi._rest_server
            inner.config.host = self.host  # the parent binds the shared socket with it
            if self.app_setup is None:
                raise SystemExit("--workers above 1 needs make_model_server's app setup")
            inner.__class__ = KubeloopRESTServer
            inner.kubeloop_setup = self.app_setup
            multi.__class__ = KubeloopRESTServerMultiProcess
        super().setup_event_loop()


def add_server_arguments(parser: Any) -> None:
    """`--host` and `--max_body_bytes` for a KServe entry point, and gRPC off by default
    (KServe's gRPC server binds every interface)."""
    from kubeloop.serving.edge import add_edge_arguments

    add_edge_arguments(parser)
    parser.set_defaults(enable_grpc=False)


def check_server_arguments(args: Any) -> None:
    """Refuse combinations the hardening cannot honour (raises SystemExit)."""
    if args.workers < 1:
        raise SystemExit(f"--workers {args.workers}: at least 1")
    if args.enable_grpc and args.host not in WILDCARD_HOSTS:
        raise SystemExit(
            f"--enable_grpc true with --host {args.host}: KServe's gRPC server listens on "
            "every interface; drop --enable_grpc or pass --host 0.0.0.0"
        )


def make_model_server(
    args: Any,
    fields: FieldSet,
    *,
    max_batch_size: int,
    predictor_config: Any = None,
) -> KubeloopModelServer:
    """A `KubeloopModelServer` for a kubeloop server: options from `args` (KServe's
    parser plus `add_server_arguments`), the error handlers, the edge and v2 middlewares
    and the OpenAPI document for `fields` on KServe's app."""
    from kserve.model_server import app

    check_server_arguments(args)
    setup = AppSetup(
        fields=fields,
        max_batch_size=max_batch_size,
        upstream=predictor_config is not None,
        max_body_bytes=args.max_body_bytes,
    )
    server = KubeloopModelServer(
        host=args.host,
        app_setup=setup,
        predictor_config=predictor_config,
        **model_server_options(args),
    )
    if args.workers == 1:
        # One process: this app is the one served. With workers, each builds its own.
        install_app(app, setup, server.dataplane)
    return server
