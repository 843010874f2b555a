"""Parsing KServe inference-logger CloudEvents.

KServe's logger (kserve `pkg/logger/worker.go`) POSTs every request and response of a
logged component as a CloudEvent 1.0 in HTTP binary mode: the context attributes are
headers, the payload is the body, unchanged.

    ce-specversion           1.0
    ce-id                    the request id; the same for a request and its response
    ce-type                  org.kubeflow.serving.inference.request | .response
    ce-source                URI of the logging component
    ce-time                  when the event was made (RFC 3339); used as the event time
    ce-inferenceservicename  the InferenceService
    ce-namespace             its namespace
    ce-component             predictor | transformer | explainer
    ce-endpoint              "default" or "canary": which traffic split served it
    content-type             the payload's type (the request's, application/json for V1)

Two optional extension attributes are read when present: `ce-variant` (a router that
knows its variant by name, "primary" or "canary", may send it; it wins over ce-endpoint)
and `ce-modelversion` (the registry version that answered). Structured mode
(`application/cloudevents+json`) is accepted too.

Payloads are the V1 protocol: a request `{"instances": [{column: value, ...}, ...]}`, a
response `{"predictions": [p, ...]}` (a number per instance; `[p0, p1]` lists take the
last element, the positive class).

Anything else raises `BadEventError`, whose `reason` is a short label for metrics and whose
message says what was wrong and what was expected.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from kubeloop.errors import KubeloopError

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
EVENT_KINDS = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}
REQUIRED_ATTRIBUTES = ("id", "type", "source", "specversion")
SPEC_VERSIONS = ("1.0", "0.3")

# ce-endpoint values (kserve constants InferenceServiceDefault / InferenceServiceCanary).
ENDPOINT_VARIANTS = {"default": "primary", "canary": "canary"}
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"


class BadEventError(KubeloopError, ValueError):
    """A POSTed CloudEvent that cannot be used. `reason` labels the kind of defect."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class InferenceEvent:
    """One logged request or response, with its payload already validated.

    `instances` (requests) are the model-input rows; `predictions` (responses) one score
    per instance. `variant` is "primary" or "canary" (or whatever a router named it).
    """

    id: str
    kind: Literal["request", "response"]
    source: str
    time: datetime | None
    inference_service: str | None
    namespace: str | None
    component: str | None
    endpoint: str | None
    variant: str
    model_version: str | None
    instances: list[dict[str, Any]] | None = None
    predictions: list[float] | None = None


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_json(media: str) -> bool:
    return media in ("application/json", "text/json") or media.endswith("+json")


def _parse_time(value: str | None) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadEventError("bad_time", f"ce-time {value!r} is not an RFC 3339 timestamp") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _decode_json(body: bytes, what: str) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadEventError("undecodable_body", f"{what} is not UTF-8: {exc}") from None
    if not text.strip():
        raise BadEventError("undecodable_body", f"{what} is empty; expected a JSON object")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadEventError("undecodable_body", f"{what} is not valid JSON: {exc}") from None


def _instances(data: Any) -> list[dict[str, Any]]:
    if not isinstance(data, Mapping):
        raise BadEventError(
            "malformed_body", 'the request body must be a JSON object {"instances": [...]}'
        )
    if "instances" not in data:
        hint = " (V2 'inputs' payloads are not supported)" if "inputs" in data else ""
        raise BadEventError("malformed_body", f"the request body has no 'instances' list{hint}")
    rows = data["instances"]
    if not isinstance(rows, list) or not rows:
        raise BadEventError("malformed_body", "'instances' must be a non-empty list")
    bad = [i for i, r in enumerate(rows) if not isinstance(r, Mapping)]
    if bad:
        raise BadEventError(
            "malformed_body",
            f"instances {bad[:5]} are not objects keyed by column name "
            "(the drift detector needs named model inputs)",
        )
    return [dict(r) for r in rows]


def _score(value: Any, i: int) -> float:
    if isinstance(value, list) and value:
        value = value[-1]
    elif isinstance(value, Mapping):
        for name in ("probability", "score", "prediction"):
            if name in value:
                value = value[name]
                break
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadEventError("malformed_body", f"prediction {i} is {value!r}, not a number")
    value = float(value)
    if not math.isfinite(value):
        raise BadEventError("malformed_body", f"prediction {i} is not finite")
    return value


def _predictions(data: Any) -> list[float]:
    if not isinstance(data, Mapping) or "predictions" not in data:
        hint = ""
        if isinstance(data, Mapping) and "outputs" in data:
            hint = " (V2 'outputs' payloads are not supported)"
        raise BadEventError("malformed_body", f"the response body has no 'predictions' list{hint}")
    values = data["predictions"]
    if not isinstance(values, list) or not values:
        raise BadEventError("malformed_body", "'predictions' must be a non-empty list")
    return [_score(v, i) for i, v in enumerate(values)]


def parse_event(headers: Mapping[str, str], body: bytes) -> InferenceEvent:
    """The `InferenceEvent` of one HTTP POST (binary or structured mode).

    `headers` may use any case. Raises BadEventError naming what is missing or wrong.
    """
    h = {str(k).lower(): str(v) for k, v in headers.items()}
    media = _media_type(h.get("content-type"))
    if media == STRUCTURED_CONTENT_TYPE:
        envelope = _decode_json(body, "the structured CloudEvent")
        if not isinstance(envelope, Mapping):
            raise BadEventError("malformed_body", "a structured CloudEvent must be a JSON object")
        attrs = {str(k).lower(): v for k, v in envelope.items() if k not in ("data", "data_base64")}
        attrs = {k: "" if v is None else str(v) for k, v in attrs.items()}
        media = _media_type(attrs.get("datacontenttype")) or "application/json"
        if "data_base64" in envelope:
            try:
                data_bytes = base64.b64decode(str(envelope["data_base64"]), validate=True)
            except ValueError:
                raise BadEventError("undecodable_body", "data_base64 is not base64") from None
            payload: Any = None
            raw: bytes | None = data_bytes
        else:
            payload, raw = envelope.get("data"), None
        where = "attribute"
    else:
        attrs = {k[3:]: v for k, v in h.items() if k.startswith("ce-")}
        raw, payload = body, None
        where = "header"

    missing = [a for a in REQUIRED_ATTRIBUTES if not attrs.get(a)]
    if missing:
        names = ", ".join(f"ce-{a}" if where == "header" else a for a in missing)
        raise BadEventError(
            "missing_header",
            f"not a CloudEvent: missing {where}{'s' if len(missing) > 1 else ''} {names} "
            "(KServe's logger sends binary-mode CloudEvents with ce-id, ce-type, ce-source, "
            "ce-specversion)",
        )
    if attrs["specversion"] not in SPEC_VERSIONS:
        raise BadEventError(
            "bad_specversion", f"CloudEvents specversion {attrs['specversion']!r} is not 1.0"
        )
    kind = EVENT_KINDS.get(attrs["type"])
    if kind is None:
        raise BadEventError(
            "unknown_type",
            f"event type {attrs['type']!r} is neither {REQUEST_TYPE} nor {RESPONSE_TYPE}",
        )
    if raw is not None:
        if media and not _is_json(media):
            raise BadEventError(
                "content_type",
                f"content type {media!r} is not JSON; the drift detector reads V1 JSON "
                "payloads (application/json)",
            )
        payload = _decode_json(raw, f"the {kind} body")
    time = _parse_time(attrs.get("time"))
    endpoint = attrs.get("endpoint") or None
    variant = attrs.get("variant") or ENDPOINT_VARIANTS.get(endpoint or "", endpoint or "primary")
    event = InferenceEvent(
        id=attrs["id"],
        kind=kind,  # type: ignore[arg-type]
        source=attrs["source"],
        time=time,
        inference_service=attrs.get("inferenceservicename") or None,
        namespace=attrs.get("namespace") or None,
        component=attrs.get("component") or None,
        endpoint=endpoint,
        variant=variant,
        model_version=attrs.get("modelversion") or None,
        instances=_instances(payload) if kind == "request" else None,
        predictions=_predictions(payload) if kind == "response" else None,
    )
    return event
