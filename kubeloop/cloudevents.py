"""KServe inference-logger CloudEvents: the attribute names, types and binary-mode headers.

One definition for both sides of the log: the local router writes these events
(`kubeloop.serving.request_log`) and the drift detector parses them
(`kubeloop.drift.events`). KServe's logger (kserve v0.20.0 `pkg/logger/worker.go:122-149`,
`handler.go:115-208`) POSTs every request and response of a logged component as a
CloudEvent 1.0 in HTTP binary mode: the context attributes are `ce-<name>` headers, the
payload is the body, unchanged.

    ce-specversion           1.0
    ce-id                    the request id; the same for a request and its response (the
                             incoming Ce-Id header, else a new UUID)
    ce-type                  org.kubeflow.serving.inference.request | .response
    ce-source                the pod name (`agent_injector.go:258-259`), which carries the
                             Knative revision: ctr-predictor-00002-deployment-<hash>-<id>
    ce-time                  when the request arrived / the response was received (RFC 3339)
    ce-recordedtime          when the logger made the event (time.Now() at send time)
    ce-inferenceservicename  the InferenceService (pod label serving.kserve.io/inferenceservice)
    ce-namespace             its namespace
    ce-component             predictor | transformer | explainer (pod label `component`)
    ce-endpoint              the pod label `endpoint` (`agent_injector.go:238`), which no
                             v0.20 controller sets: empty in the cluster
    ce-metadata              JSON of the request headers named in the logger's
                             metadataHeaders (`{}` when none; `map[string][]string` as Go
                             marshals it; no response header is ever forwarded)
    content-type             the request's content type, for both halves

kubeloop's local logger adds three extensions that say outright what the detector
otherwise derives: ce-revision (the revision that served), ce-modelversion (the registry
version that answered) and ce-variant ("primary" or "canary", the router's decision).
"""

from __future__ import annotations

from collections.abc import Mapping

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
EVENT_KINDS = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}
"""ce-type -> the short kind name ("request", "response")."""
KIND_TYPES = {kind: type_ for type_, kind in EVENT_KINDS.items()}
"""The short kind name -> ce-type."""

SPEC_VERSION = "1.0"
SPEC_VERSIONS = ("1.0", "0.3")
"""Spec versions a reader accepts; writers send SPEC_VERSION."""
REQUIRED_ATTRIBUTES = ("id", "type", "source", "specversion")

JSON_CONTENT_TYPE = "application/json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
HEADER_PREFIX = "ce-"

# ce-endpoint per variant, as KServe before v1beta1 set it (empty in KServe v0.20).
VARIANT_ENDPOINTS = {"primary": "default", "canary": "canary"}
ENDPOINT_VARIANTS = {endpoint: variant for variant, endpoint in VARIANT_ENDPOINTS.items()}

# The context attributes of a logged event, in header order (ce-<name>): KServe's, then
# kubeloop's three extensions.
CE_ATTRIBUTES = (
    "specversion",
    "id",
    "type",
    "source",
    "time",
    "recordedtime",
    "inferenceservicename",
    "namespace",
    "component",
    "endpoint",
    "metadata",
    "revision",
    "modelversion",
    "variant",
)


def binary_headers(attributes: Mapping[str, str], content_type: str) -> dict[str, str]:
    """The HTTP headers of an event in binary mode: `ce-<name>` per attribute, then
    content-type."""
    out = {f"{HEADER_PREFIX}{k}": v for k, v in attributes.items()}
    out["content-type"] = content_type
    return out


def header_attributes(headers: Mapping[str, str]) -> dict[str, str]:
    """The context attributes of a binary-mode event from its headers (any case)."""
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    n = len(HEADER_PREFIX)
    return {k[n:]: v for k, v in lowered.items() if k.startswith(HEADER_PREFIX)}
