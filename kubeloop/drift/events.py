"""Parsing KServe inference-logger CloudEvents.

KServe's logger (kserve v0.20.0 `pkg/logger/worker.go:122-149`) POSTs every request and
response of a logged component as a CloudEvent 1.0 in HTTP binary mode: the context
attributes are headers, the payload is the body, unchanged (`handler.go:146-204`).
`kubeloop.cloudevents` lists the attributes, one definition shared with the request log.

So KServe says nothing about the canary split. What it does say is the pod name, and Knative
names a revision's Deployment `<revision>-deployment` (knative-v1.21.1
`pkg/reconciler/revision/resources/names/names.go:22-24`) and a revision `<ksvc>-<5-digit
generation>` (`pkg/reconciler/configuration/resources/revision.go:41-43`); the ksvc of a
predictor is `<isvc>-predictor` (kserve `pkg/constants/constants.go:799-804`). A pod of that
Deployment is `<deployment>-<pod-template-hash>-<5 chars>`, so `revision_from_source` reads
the Knative revision off ce-source. Which revision is the canary is not in the event: the
caller passes `revision_variant` (the drift service learns it from the InferenceService
status, `kubeloop.cluster.traffic.RevisionVariants`).

The variant of an event is, first match wins:
  1. `ce-variant` (a router that knows its variant by name, as kubeloop's local router does);
  2. `revision_variant(revision)`, when the caller knows the revision's role;
  3. ce-endpoint "default" -> primary, "canary" -> canary (KServe before v1beta1);
  4. "primary".

The revision is `ce-revision` when present (the local request log sends it), else read off
ce-source. The model version is `ce-modelversion` when present, else the response body's
`model_version` (kubeloop's predictor adds it to its V1 response, since the logger forwards
the response body but no response header; V2 responses carry it by protocol). Structured mode
(`application/cloudevents+json`) is accepted too.

Payloads are the V1 protocol: a request `{"instances": [{column: value, ...}, ...]}`, a
response `{"predictions": [p, ...], "model_version": "v2"?}` (a number per instance;
`[p0, p1]` lists take the last element, the positive class).

Anything else raises `BadEventError`, whose `reason` is a short label for metrics and whose
message says what was wrong and what was expected.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from kubeloop.cloudevents import (
    ENDPOINT_VARIANTS,
    EVENT_KINDS,
    JSON_CONTENT_TYPE,
    REQUEST_TYPE,
    REQUIRED_ATTRIBUTES,
    RESPONSE_TYPE,
    SPEC_VERSIONS,
    STRUCTURED_CONTENT_TYPE,
    header_attributes,
)
from kubeloop.errors import KubeloopError

# <revision>-deployment-<pod-template-hash>-<5 random chars>, the revision ending in its
# 5-digit configuration generation (Knative names.go Deployment, revision.go MakeRevision).
# A name too long for a pod (generateName is cut at 58 chars) does not match: no revision
# rather than a wrong one.
_POD_OF_REVISION = re.compile(
    r"^(?P<revision>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?-\d{5})-deployment-[a-z0-9]+-[a-z0-9]{5}$"
)

RevisionVariant = Callable[[str], "str | None"]


def revision_from_source(source: str | None) -> str | None:
    """The Knative revision whose pod sent the event (ce-source is the pod name), else None.

    ``ctr-predictor-00002-deployment-7f9c8d6b5-x2x7q`` -> ``ctr-predictor-00002``; a URI (a
    local logger's source) or a truncated pod name gives None.
    """
    match = _POD_OF_REVISION.match((source or "").strip())
    return match.group("revision") if match else None


class BadEventError(KubeloopError, ValueError):
    """A POSTed CloudEvent that cannot be used. `reason` labels the kind of defect."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class InferenceEvent:
    """One logged request or response, with its payload already validated.

    `instances` (requests) are the model-input rows; `predictions` (responses) one score
    per instance. `variant` is "primary" or "canary" (or whatever a router named it),
    `revision` the Knative revision (or local revision name) that served it, None when
    unknown; `model_version` the registry version, None when neither half says.
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
    revision: str | None = None


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


def _body_model_version(data: Any) -> str | None:
    """`model_version` of a response body (kubeloop's V1 extension; a V2 field)."""
    value = data.get("model_version") if isinstance(data, Mapping) else None
    if value is None or isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value) or None


def _variant(
    attrs: Mapping[str, str], revision: str | None, revision_variant: RevisionVariant | None
) -> str:
    """The variant, first match wins: ce-variant, the revision's role, ce-endpoint, primary."""
    if attrs.get("variant"):
        return attrs["variant"]
    if revision and revision_variant is not None:
        role = revision_variant(revision)
        if role:
            return role
    endpoint = attrs.get("endpoint") or ""
    return ENDPOINT_VARIANTS.get(endpoint, endpoint or "primary")


def parse_event(
    headers: Mapping[str, str],
    body: bytes,
    *,
    revision_variant: RevisionVariant | None = None,
) -> InferenceEvent:
    """The `InferenceEvent` of one HTTP POST (binary or structured mode).

    `headers` may use any case. `revision_variant(revision)` names the variant a Knative
    revision serves ("primary", "canary"), or None when it does not know; see the module
    docstring for the order. Raises BadEventError naming what is missing or wrong.
    """
    h = {str(k).lower(): str(v) for k, v in headers.items()}
    media = _media_type(h.get("content-type"))
    if media == STRUCTURED_CONTENT_TYPE:
        envelope = _decode_json(body, "the structured CloudEvent")
        if not isinstance(envelope, Mapping):
            raise BadEventError("malformed_body", "a structured CloudEvent must be a JSON object")
        attrs = {str(k).lower(): v for k, v in envelope.items() if k not in ("data", "data_base64")}
        attrs = {k: "" if v is None else str(v) for k, v in attrs.items()}
        media = _media_type(attrs.get("datacontenttype")) or JSON_CONTENT_TYPE
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
        attrs = header_attributes(h)
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
    revision = attrs.get("revision") or revision_from_source(attrs["source"])
    version = attrs.get("modelversion") or None
    if version is None and kind == "response":
        version = _body_model_version(payload)
    event = InferenceEvent(
        id=attrs["id"],
        kind=kind,  # type: ignore[arg-type]
        source=attrs["source"],
        time=time,
        inference_service=attrs.get("inferenceservicename") or None,
        namespace=attrs.get("namespace") or None,
        component=attrs.get("component") or None,
        endpoint=endpoint,
        variant=_variant(attrs, revision, revision_variant),
        model_version=version,
        instances=_instances(payload) if kind == "request" else None,
        predictions=_predictions(payload) if kind == "response" else None,
        revision=revision,
    )
    return event
