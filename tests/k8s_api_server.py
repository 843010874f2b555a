"""A loopback HTTP server that speaks the slice of the Kubernetes API kubeloop uses.

No Kubernetes API server can run on these machines, yet ``kubeloop canary --context``,
``kubectl kubeloop`` and the drift detector's Events must be exercised through the REAL
kubernetes Python client, over HTTP, configured from a kubeconfig file. This module is that
server: a ``ThreadingHTTPServer`` on 127.0.0.1 (a free port), started in a thread::

    with KubeAPIServer() as api:
        api.add_inferenceservice(isvc("ctr", V1))
        api.reconcile("kubeloop", "ctr")            # KServe writes the status
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"kind-kubeloop": api})
        ...run the CLI with KUBECONFIG=kubeconfig...
        assert api.requests_for("PATCH")[0].content_type == "application/merge-patch+json"

What it serves, and how strictly (each rule is what the real API server does):

- ``serving.kserve.io/v1beta1`` InferenceServices, namespaced: get, list, patch (and create,
  so a test may seed one over HTTP). A PATCH must be ``application/merge-patch+json``
  (anything else: 415, as the API server answers a strategic merge patch on a custom
  resource); the body must be a JSON object (else 400), and it is applied as an RFC 7386
  merge patch. ``status`` is a subresource: a patch of the main resource cannot change it.
  ``metadata.generation`` goes up when the spec changes, ``metadata.resourceVersion`` on
  every change (never on a no-op); a ``metadata.resourceVersion`` in the patch that is not
  the current one is a 409 Conflict; renaming is a 400; a canaryTrafficPercent that is not
  an integer in 0..100 is a 422 Invalid naming the field; ``?dryRun=All`` validates and
  persists nothing.
- Events of ``v1`` (``/api/v1``) and ``events.k8s.io/v1``: create, patch, list (and get). Both
  groups are views of one store, converted field by field as the API server does
  (``involvedObject`` <-> ``regarding``, ``message`` <-> ``note``, ``count`` <->
  ``deprecatedCount``...). A create of an existing name is a 409 AlreadyExists; a PATCH may
  be a merge patch or a strategic merge patch (for an Event the two are the same: it has
  no lists merged by key). Lists take ``fieldSelector`` (the Event field labels, ``=``,
  ``==``, ``!=``; an unknown label is a 400), ``labelSelector`` (equality), and ``limit``
  with ``continue`` tokens.
- ``v1`` ConfigMaps, namespaced: create, get, list, patch (merge or strategic merge: for a
  ConfigMap's ``data`` the two are the same), with the same resourceVersion precondition as
  above (the rollout controller keeps its state in one).
- Every error is a ``Status`` object (``kind: Status``, ``reason``, ``details``, ``code``).
  An unknown path is the API server's bare 404, which is how a client tells "KServe is not
  installed" from "this InferenceService does not exist". A request without the bearer
  token of the kubeconfig's user is a 401.

Every request is recorded (method, path, query, content type, body) for the assertions, and
the state can be read and changed directly (``get``, ``events``, ``reconcile``).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

KSERVE = "serving.kserve.io/v1beta1"
ISVC_PLURAL = "inferenceservices"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON = "application/json"

_ISVC_PATH = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/(?P<ns>[^/]+)/inferenceservices"
    r"(?:/(?P<name>[^/]+))?$"
)
_CORE_EVENTS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events(?:/(?P<name>[^/]+))?$")
_CONFIGMAPS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/configmaps(?:/(?P<name>[^/]+))?$")
_KINDS = {ISVC_PLURAL: "InferenceService", "events": "Event", "configmaps": "ConfigMap"}
_EVENTS_V1 = re.compile(
    r"^/apis/events\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/events(?:/(?P<name>[^/]+))?$"
)
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

# Field labels the API server accepts for Events (pkg/registry/core/event/strategy.go), and
# the events.k8s.io spellings it converts to them.
_EVENT_FIELDS = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "involvedObject.kind": ("involvedObject", "kind"),
    "involvedObject.namespace": ("involvedObject", "namespace"),
    "involvedObject.name": ("involvedObject", "name"),
    "involvedObject.uid": ("involvedObject", "uid"),
    "involvedObject.apiVersion": ("involvedObject", "apiVersion"),
    "involvedObject.resourceVersion": ("involvedObject", "resourceVersion"),
    "involvedObject.fieldPath": ("involvedObject", "fieldPath"),
    "reason": ("reason",),
    "reportingComponent": ("reportingComponent",),
    "source": ("source", "component"),
    "type": ("type",),
}
_EVENTS_V1_FIELD_ALIASES = {
    **{f"regarding.{k.split('.', 1)[1]}": k for k in _EVENT_FIELDS if k.startswith("involved")},
    "reportingController": "reportingComponent",
    "deprecatedSource": "source",
}

# core/v1 Event key -> events.k8s.io/v1 Event key (k8s.io/kubernetes pkg/apis/events/v1
# conversion); keys not named here are the same in both.
_TO_EVENTS_V1 = {
    "involvedObject": "regarding",
    "message": "note",
    "count": "deprecatedCount",
    "firstTimestamp": "deprecatedFirstTimestamp",
    "lastTimestamp": "deprecatedLastTimestamp",
    "source": "deprecatedSource",
    "reportingComponent": "reportingController",
}
_FROM_EVENTS_V1 = {v: k for k, v in _TO_EVENTS_V1.items()}


# --- small pure helpers --------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, ``null`` deletes, anything else
    (arrays included) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def now_rfc3339() -> str:
    """metav1.Time as the API server writes it: UTC, whole seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dig(obj: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def to_events_v1(event: dict) -> dict:
    """A stored core/v1 Event as events.k8s.io/v1 shows it."""
    out = {_TO_EVENTS_V1.get(k, k): copy.deepcopy(v) for k, v in event.items()}
    out["apiVersion"], out["kind"] = "events.k8s.io/v1", "Event"
    # A core Event without eventTime shows it as null, as the API server's conversion does
    # (the kubernetes client then refuses the model: kubernetes-client/python#1616).
    out.setdefault("eventTime", None)
    return out


def from_events_v1(event: dict) -> dict:
    """An events.k8s.io/v1 Event as the core/v1 Event the store keeps."""
    out = {_FROM_EVENTS_V1.get(k, k): copy.deepcopy(v) for k, v in event.items()}
    out["apiVersion"], out["kind"] = "v1", "Event"
    return out


@dataclass
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None  # the code the server answered

    def json(self) -> Any:
        """The body parsed as JSON (ValueError if it is not)."""
        return json.loads(self.body)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


class ApiError(Exception):
    """An error answer: raised by the handlers, turned into a Status object."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _not_found(resource: str, group: str, name: str) -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    details = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found', details)


def _invalid(kind: str, resource: str, group: str, name: str, causes: list[tuple[str, str]]):
    """422 Invalid, with one cause per (field, message), as field validation reports it."""
    text = "; ".join(f"{f}: {m}" for f, m in causes)
    details = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
    }
    if group:
        details["group"] = group
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {text}', details)


# --- the server ----------------------------------------------------------------------------


class KubeAPIServer:
    """A stateful fake of the Kubernetes API for InferenceServices and Events (see module
    docstring). Use as a context manager, or call ``start()`` and ``stop()``."""

    def __init__(self, token: str = "kubeloop-test-token", *, kserve_installed: bool = True):
        self.token = token
        self.kserve_installed = kserve_installed
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str], dict] = {}  # (plural, ns, name) -> object
        self._revisions: dict[tuple[str, str], dict] = {}  # KServe's view per isvc
        self._resource_version = 1000
        self._requests: list[RecordedRequest] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # lifecycle

    def start(self) -> KubeAPIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # what the tests read

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, method: str, path_contains: str = "") -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and path_contains in r.path]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def get(self, namespace: str, name: str) -> dict:
        """The stored InferenceService (a copy); KeyError if there is none."""
        with self._lock:
            return copy.deepcopy(self._objects[(ISVC_PLURAL, namespace, name)])

    def object(self, plural: str, namespace: str, name: str) -> dict | None:
        """Any stored object (a copy), None if there is none."""
        with self._lock:
            obj = self._objects.get((plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def add_object(self, plural: str, obj: dict) -> dict:
        """Store any served object as a create would (a ConfigMap, say)."""
        meta = obj.get("metadata") or {}
        with self._lock:
            return self._create(plural, meta.get("namespace", "default"), obj)

    def events(self, namespace: str | None = None) -> list[dict]:
        """Stored Events (core/v1 form, copies), by name."""
        with self._lock:
            found = [
                copy.deepcopy(o)
                for (plural, ns, _), o in sorted(self._objects.items())
                if plural == "events" and namespace in (None, ns)
            ]
        return found

    # what the tests change directly

    def add_inferenceservice(self, obj: dict) -> dict:
        """Store an InferenceService as a create would (uid, generation 1, ...)."""
        meta = obj.get("metadata") or {}
        with self._lock:
            return self._create(ISVC_PLURAL, meta.get("namespace", "default"), obj)

    def add_event(self, event: dict) -> dict:
        """Store a core/v1 Event as a create would."""
        meta = event.get("metadata") or {}
        with self._lock:
            return self._create("events", meta.get("namespace", "default"), event)

    def reconcile(self, namespace: str, name: str, *, ready: bool = True) -> dict:
        """Write ``status`` as KServe's controller would after the current spec (Knative mode).

        A predictor spec that differs (other than canaryTrafficPercent) from the one the last
        revision was made from makes a new revision ``<name>-predictor-0000N``; it becomes
        the latest ready revision when ``ready``. The Knative traffic targets follow
        ``createKnativeService`` (kserve v0.20.0,
        pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go): with
        canaryTrafficPercent P and a rolled-out revision, P% to the latest revision and
        100-P% to the last rolled-out one (tag ``prev``); else 100% to the latest. The
        rolled-out pointers follow ``PropagateStatus`` (pkg/apis/serving/v1beta1/
        inference_service_status.go). Both steps repeat until the status stops changing, as
        the controller's reconciles do."""
        with self._lock:
            key = (ISVC_PLURAL, namespace, name)
            obj = self._objects[key]
            predictor = copy.deepcopy((obj.get("spec") or {}).get("predictor") or {})
            canary = predictor.pop("canaryTrafficPercent", None)
            template = json.dumps(predictor, sort_keys=True)
            rev = self._revisions.setdefault((namespace, name), {"n": 0, "template": None})
            comp = copy.deepcopy(
                ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}
            )
            if template != rev["template"]:
                rev["n"] += 1
                rev["template"] = template
                comp["latestCreatedRevision"] = f"{name}-predictor-{rev['n']:05d}"
                if ready:
                    comp["latestReadyRevision"] = comp["latestCreatedRevision"]
            latest_ready = comp.get("latestReadyRevision")
            # The controller reconciles again whenever the Knative Service's status changes,
            # so run its two steps until the status no longer moves.
            for _ in range(5):
                seen = copy.deepcopy(comp)
                rolled = comp.get("latestRolledoutRevision") or ""
                comp["traffic"] = _knative_traffic(canary, rolled, latest_ready)
                _propagate(comp, comp["traffic"], latest_ready, comp.get("latestCreatedRevision"))
                if comp == seen:
                    break
            comp["url"] = f"http://{name}-predictor.{namespace}.example.com"
            status = copy.deepcopy(obj.get("status") or {})
            status.setdefault("components", {})["predictor"] = comp
            status["url"] = f"http://{name}.{namespace}.example.com"
            status["observedGeneration"] = obj["metadata"].get("generation", 1)
            all_ready = comp.get("latestReadyRevision") == comp.get("latestCreatedRevision")
            status["conditions"] = [
                {
                    "type": t,
                    "status": "True" if all_ready else "False",
                    "lastTransitionTime": now_rfc3339(),
                    **({} if all_ready else {"reason": "RevisionMissing"}),
                }
                for t in ("LatestDeploymentReady", "PredictorReady", "Ready")
            ]
            obj["status"] = status
            self._bump(obj)
            return copy.deepcopy(obj)

    # internals: storage

    def _bump(self, obj: dict) -> None:
        self._resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self._resource_version)

    def _create(self, plural: str, namespace: str, body: dict) -> dict:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        kind = _KINDS[plural]
        group = "serving.kserve.io" if plural == ISVC_PLURAL else ""
        if not name:
            raise _invalid(kind, plural, group, "", [("metadata.name", "Required value")])
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        if (plural, namespace, name) in self._objects:
            qualified = f"{plural}.{group}" if group else plural
            raise ApiError(
                409,
                "AlreadyExists",
                f'{qualified} "{name}" already exists',
                {"name": name, "kind": plural, **({"group": group} if group else {})},
            )
        meta.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            creationTimestamp=now_rfc3339(),
        )
        meta.pop("resourceVersion", None)
        if plural == ISVC_PLURAL:
            meta["generation"] = 1
            obj.pop("status", None)
        _validate(plural, obj)
        self._bump(obj)
        self._objects[(plural, namespace, name)] = obj
        return copy.deepcopy(obj)

    def _patch(self, plural: str, namespace: str, name: str, patch: Any, dry_run: bool) -> dict:
        group = "serving.kserve.io" if plural == ISVC_PLURAL else ""
        current = self._objects.get((plural, namespace, name))
        if current is None:
            raise _not_found(plural, group, name)
        if not isinstance(patch, dict):
            raise ApiError(
                400,
                "BadRequest",
                f"error decoding patch: json: cannot unmarshal {type(patch).__name__} into Go "
                "value of type map[string]interface {}",
            )
        wanted_rv = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted_rv is not None and wanted_rv != current["metadata"]["resourceVersion"]:
            qualified = f"{plural}.{group}" if group else plural
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {qualified} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                {"name": name, "kind": plural, **({"group": group} if group else {})},
            )
        updated = merge_patch(current, patch)
        # Fields the server owns: a patch cannot change them.
        for key in ("uid", "creationTimestamp", "generation", "resourceVersion"):
            if key in current["metadata"]:
                updated["metadata"][key] = current["metadata"][key]
            else:
                updated["metadata"].pop(key, None)
        if plural == ISVC_PLURAL:
            # status is a subresource: the main resource's patch leaves it as it was.
            if "status" in current:
                updated["status"] = copy.deepcopy(current["status"])
            else:
                updated.pop("status", None)
        for key, label in (("name", "name"), ("namespace", "namespace")):
            if updated["metadata"].get(key) != current["metadata"].get(key):
                raise ApiError(
                    400,
                    "BadRequest",
                    f"the {label} of the object ({updated['metadata'].get(key)}) does not "
                    f"match the {label} on the URL ({current['metadata'].get(key)})",
                )
        if (updated.get("apiVersion"), updated.get("kind")) != (
            current.get("apiVersion"),
            current.get("kind"),
        ):
            raise ApiError(400, "BadRequest", "apiVersion and kind of the object cannot change")
        _validate(plural, updated)
        if updated == current or dry_run:
            return copy.deepcopy(updated)
        if plural == ISVC_PLURAL and updated.get("spec") != current.get("spec"):
            updated["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        self._bump(updated)
        self._objects[(plural, namespace, name)] = updated
        return copy.deepcopy(updated)

    def _list(self, plural: str, namespace: str, query: dict, events_v1: bool) -> dict:
        selector = (query.get("fieldSelector") or [""])[0]
        labels = (query.get("labelSelector") or [""])[0]
        terms = _field_terms(selector, events_v1) if plural == "events" else []
        if plural != "events" and selector:
            _metadata_only_selector(selector)
        items = [
            o for (p, ns, _), o in sorted(self._objects.items()) if p == plural and ns == namespace
        ]
        items = [o for o in items if _fields_match(o, terms) and _labels_match(o, labels)]
        start = _decode_continue((query.get("continue") or [""])[0])
        limit = int((query.get("limit") or ["0"])[0] or 0)
        page = items[start : start + limit] if limit > 0 else items[start:]
        meta: dict[str, Any] = {"resourceVersion": str(self._resource_version)}
        if limit > 0 and start + limit < len(items):
            meta["continue"] = base64.b64encode(json.dumps({"start": start + limit}).encode())
            meta["continue"] = meta["continue"].decode()
            meta["remainingItemCount"] = len(items) - start - limit
        if plural == ISVC_PLURAL:
            return {
                "apiVersion": KSERVE,
                "kind": "InferenceServiceList",
                "metadata": meta,
                "items": copy.deepcopy(page),
            }
        shown = [to_events_v1(o) if events_v1 else copy.deepcopy(o) for o in page]
        return {
            "apiVersion": "events.k8s.io/v1" if events_v1 else "v1",
            "kind": f"{_KINDS[plural]}List",
            "metadata": meta,
            "items": shown,
        }

    # internals: HTTP

    def _route(self, method: str, path: str) -> tuple[str, str, str | None, bool]:
        """(plural, namespace, name, events_v1) of a path; ApiError 404 if it is not served."""
        for pattern, plural, v1 in (
            (_ISVC_PATH, ISVC_PLURAL, False),
            (_CORE_EVENTS, "events", False),
            (_EVENTS_V1, "events", True),
            (_CONFIGMAPS, "configmaps", False),
        ):
            match = pattern.match(path)
            if match and (plural != ISVC_PLURAL or self.kserve_installed):
                return plural, match["ns"], match["name"], v1
        # The API server's answer for a path no API group serves (no details).
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def handle(self, req: RecordedRequest, auth: str | None) -> tuple[int, dict]:
        """Answer one request: (status code, JSON body)."""
        with self._lock:
            self._requests.append(req)
            try:
                if auth != f"Bearer {self.token}":
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                code, answer = 200, self._dispatch(req)
            except ApiError as exc:
                code, answer = exc.code, exc.status()
            req.status = code
            return code, answer

    def _dispatch(self, req: RecordedRequest) -> dict:
        plural, ns, name, events_v1 = self._route(req.method, req.path)
        dry_run = _dry_run(req)
        group = "serving.kserve.io" if plural == ISVC_PLURAL else ""
        if req.method == "GET":
            if name is None:
                return self._list(plural, ns, req.query, events_v1)
            obj = self._objects.get((plural, ns, name))
            if obj is None:
                raise _not_found(plural, "events.k8s.io" if events_v1 else group, name)
            return to_events_v1(obj) if events_v1 else copy.deepcopy(obj)
        if req.method == "POST" and name is None:
            body = _json_body(req, (JSON,))
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body of the request must be a JSON object")
            _check_kind(body, plural, events_v1)
            if events_v1:
                _validate_events_v1(body)
                body = from_events_v1(body)
            if dry_run:
                return copy.deepcopy(body)
            created = self._create(plural, ns, body)
            return to_events_v1(created) if events_v1 else created
        if req.method == "PATCH" and name is not None:
            accepted = (
                (MERGE_PATCH,) if plural == ISVC_PLURAL else (MERGE_PATCH, STRATEGIC_MERGE_PATCH)
            )
            patch = _json_body(req, accepted)
            if events_v1 and isinstance(patch, dict):
                patch = {_FROM_EVENTS_V1.get(k, k): v for k, v in patch.items()}
            patched = self._patch(plural, ns, name, patch, dry_run)
            return to_events_v1(patched) if events_v1 else patched
        raise ApiError(
            405, "MethodNotAllowed", f"the server does not allow this method on {plural}"
        )

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                req = RecordedRequest(
                    method=self.command,
                    path=url.path,
                    query=parse_qs(url.query),
                    content_type=self.headers.get("Content-Type"),
                    body=body,
                    headers={k.lower(): v for k, v in self.headers.items()},
                )
                code, answer = server.handle(req, self.headers.get("Authorization"))
                raw = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", JSON)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, *args: object) -> None:  # quiet: pytest shows failures
                pass

        return Handler


# --- validation and selectors --------------------------------------------------------------


def _json_body(req: RecordedRequest, accepted: tuple[str, ...]) -> Any:
    """The JSON body of a request whose media type is one of ``accepted`` (else 415)."""
    media = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media not in accepted:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types "
            f"include: {', '.join(accepted)}",
        )
    try:
        return json.loads(req.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "BadRequest", f"error decoding request body: {exc}") from None


def _dry_run(req: RecordedRequest) -> bool:
    values = req.query.get("dryRun") or []
    if any(v != "All" for v in values):
        raise ApiError(400, "BadRequest", f"dryRun: unsupported value {values!r}; use All")
    return bool(values)


def _check_kind(body: dict, plural: str, events_v1: bool) -> None:
    want = {
        ISVC_PLURAL: (KSERVE, "InferenceService"),
        "events": ("events.k8s.io/v1" if events_v1 else "v1", "Event"),
        "configmaps": ("v1", "ConfigMap"),
    }[plural]
    got = (body.get("apiVersion", want[0]), body.get("kind", want[1]))
    if got != want:
        raise ApiError(
            400, "BadRequest", f"the object of {got[0]}/{got[1]} does not belong at this path"
        )


def _is_time(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _validate(plural: str, obj: dict) -> None:
    """Field validation of a whole object (what the CRD schema and the API server check)."""
    meta = obj["metadata"]
    name = meta.get("name", "")
    causes: list[tuple[str, str]] = []
    if not _NAME.match(name or "") or len(name) > 253:
        causes.append(("metadata.name", f'Invalid value: "{name}": must be a DNS-1123 subdomain'))
    if plural == ISVC_PLURAL:
        predictor = (obj.get("spec") or {}).get("predictor")
        if not isinstance(predictor, dict):
            causes.append(("spec.predictor", "Required value"))
        else:
            pct = predictor.get("canaryTrafficPercent")
            if pct is not None and (isinstance(pct, bool) or not isinstance(pct, int)):
                causes.append(
                    (
                        "spec.predictor.canaryTrafficPercent",
                        f"Invalid value: {pct!r}: must be of type integer",
                    )
                )
            elif pct is not None and not 0 <= pct <= 100:
                causes.append(
                    (
                        "spec.predictor.canaryTrafficPercent",
                        f"Invalid value: {pct}: must be in 0..100",
                    )
                )
            uri = (
                (predictor.get("model") or {}).get("storageUri")
                if isinstance(predictor.get("model"), dict)
                else None
            )
            if uri is not None and not isinstance(uri, str):
                causes.append(("spec.predictor.model.storageUri", "must be of type string"))
        if causes:
            raise _invalid("InferenceService", ISVC_PLURAL, "serving.kserve.io", name, causes)
        return
    if plural == "configmaps":
        data = obj.get("data") or {}
        if not isinstance(data, dict):
            causes.append(("data", "must be an object"))
        else:
            causes += [
                (f"data[{k}]", "must be a string")
                for k, v in data.items()
                if not isinstance(v, str)
            ]
        if causes:
            raise _invalid("ConfigMap", "configmaps", "", name, causes)
        return
    involved = obj.get("involvedObject")
    if not isinstance(involved, dict):
        causes.append(("involvedObject", "Required value"))
    elif involved.get("namespace") not in (None, "", meta.get("namespace")):
        causes.append(("involvedObject.namespace", "does not match event.namespace"))
    count = obj.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        causes.append(("count", f"Invalid value: {count!r}: must be a non-negative integer"))
    for key in ("firstTimestamp", "lastTimestamp", "eventTime"):
        if not _is_time(obj.get(key)):
            causes.append((key, f"Invalid value: {obj.get(key)!r}: not an RFC 3339 time"))
    if obj.get("type") not in (None, "", "Normal", "Warning"):
        causes.append(("type", f'Unsupported value: "{obj.get("type")}": "Normal", "Warning"'))
    if causes:
        raise _invalid("Event", "events", "", name, causes)


def _validate_events_v1(body: dict) -> None:
    """events.k8s.io/v1 requires what the core API leaves optional (ValidateEventCreate)."""
    name = (body.get("metadata") or {}).get("name", "")
    causes = [
        (key, "Required value")
        for key in ("eventTime", "reportingController", "reportingInstance", "action", "reason")
        if not body.get(key)
    ]
    if causes:
        raise _invalid("Event", "events", "events.k8s.io", name, causes)


def _field_terms(selector: str, events_v1: bool) -> list[tuple[tuple[str, ...], str, bool]]:
    """Parse an Event field selector into (path, value, equal) terms; 400 for an unknown
    field label, as the API server answers."""
    terms = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        match = re.match(r"^([A-Za-z.]+)\s*(!=|==|=)\s*(.*)$", term)
        if not match:
            raise ApiError(400, "BadRequest", f'invalid selector: "{selector}"')
        label, op, value = match.groups()
        if events_v1:
            label = _EVENTS_V1_FIELD_ALIASES.get(label, label)
        if label not in _EVENT_FIELDS:
            raise ApiError(
                400,
                "BadRequest",
                f'"{label}" is not a known field selector: only '
                + ", ".join(f'"{k}"' for k in _EVENT_FIELDS),
            )
        terms.append((_EVENT_FIELDS[label], value, op != "!="))
    return terms


def _metadata_only_selector(selector: str) -> None:
    for term in filter(None, selector.split(",")):
        label = re.split(r"!=|==|=", term, maxsplit=1)[0].strip()
        if label not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, "BadRequest", f"field label not supported: {label}")


def _fields_match(obj: dict, terms: list) -> bool:
    for path, value, equal in terms:
        actual = _dig(obj, path)
        if (("" if actual is None else str(actual)) == value) != equal:
            return False
    return True


def _labels_match(obj: dict, selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _decode_continue(token: str) -> int:
    if not token:
        return 0
    try:
        return int(json.loads(base64.b64decode(token))["start"])
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "BadRequest", "continue key is not valid") from None


# --- KServe's status logic -----------------------------------------------------------------


def _knative_traffic(canary: int | None, rolled: str, latest_ready: str | None) -> list[dict]:
    """The Knative Service's traffic, resolved to revisions as its status reports them."""
    if canary is not None and rolled:
        targets = [{"latestRevision": True, "percent": canary, "revisionName": latest_ready}]
        if canary < 100:
            targets.append(
                {"latestRevision": False, "percent": 100 - canary, "revisionName": rolled,
                 "tag": "prev"}
            )  # fmt: skip
        return targets
    return [{"latestRevision": True, "percent": 100, "revisionName": latest_ready}]


def _propagate(comp: dict, traffic: list[dict], latest_ready: str | None, latest_created) -> None:
    """``PropagateStatus``: move the rolled-out pointers as KServe v0.20.0 does."""
    per_revision: dict[str, int] = {}
    for t in traffic:
        per_revision[t["revisionName"]] = per_revision.get(t["revisionName"], 0) + t["percent"]
    for t in traffic:
        if t["revisionName"] != latest_ready or not t["latestRevision"]:
            continue
        if comp.get("latestRolledoutRevision") != latest_ready:
            if t["percent"] == 100:
                previous = comp.get("latestRolledoutRevision")
                if previous:
                    comp["previousRolledoutRevision"] = previous
                comp["latestRolledoutRevision"] = latest_ready
        elif (
            latest_ready == latest_created
            and t["percent"] < 100
            and per_revision.get(t["revisionName"]) == 100
            and comp.get("previousRolledoutRevision")
        ):
            comp["latestRolledoutRevision"] = comp["previousRolledoutRevision"]


# --- kubeconfig ----------------------------------------------------------------------------


def write_kubeconfig(
    path: Path, contexts: dict[str, KubeAPIServer | str], *, current: str | None = None
) -> Path:
    """A kubeconfig with one context (cluster + token user) per entry; a value may be a
    server or a bare URL (a context nobody answers). ``current`` defaults to the first."""
    import yaml

    names = list(contexts)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "current-context": current or names[0],
        "clusters": [],
        "users": [],
        "contexts": [],
    }
    for name, target in contexts.items():
        url = target.url if isinstance(target, KubeAPIServer) else target
        token = target.token if isinstance(target, KubeAPIServer) else "no-token"
        config["clusters"].append({"name": f"{name}-cluster", "cluster": {"server": url}})
        config["users"].append({"name": f"{name}-user", "user": {"token": token}})
        config["contexts"].append(
            {
                "name": name,
                "context": {"cluster": f"{name}-cluster", "user": f"{name}-user"},
            }
        )
    path = Path(path)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def inference_service(
    name: str, storage_uri: str, *, namespace: str = "kubeloop", mode: str = "Knative"
) -> dict:
    """An InferenceService in the shape manifests/ gives kubeloop's (predictor model with a
    storageUri, a logger to the drift detector)."""
    return {
        "apiVersion": KSERVE,
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"serving.kserve.io/deploymentMode": mode},
            "labels": {"app.kubernetes.io/part-of": "kubeloop"},
        },
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "logger": {
                    "mode": "all",
                    "url": "http://kubeloop-drift-detector.kubeloop.svc.cluster.local/",
                },
                "model": {
                    "modelFormat": {"name": f"kubeloop-{name}"},
                    "runtime": f"kubeloop-{name}",
                    "protocolVersion": "v1",
                    "storageUri": storage_uri,
                },
            }
        },
    }
