"""Drift alerts as Kubernetes Events on the InferenceService.

The drift detector reports each alert as a core/v1 Event whose involvedObject is the
InferenceService, so ``kubectl describe inferenceservice ctr``, ``kubectl get events`` and
``kubectl kubeloop alerts ctr`` all show it, and anything that watches Events can react::

    from kubeloop.cluster.events import alert_event, post_alert_event

    isvc = custom_api.get_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", "kubeloop", "inferenceservices", "ctr")
    post_alert_event(core_api, "kubeloop", alert_event(alert, isvc))

``alert`` is the one alert model, :class:`kubeloop.alert.Alert`, that the monitor raises
and the alert store keeps (a mapping is validated as one; unknown keys are refused, so a
misspelt field fails loudly instead of vanishing). The Event:

- ``reason: DriftDetected``, ``type: Warning``, ``source.component`` and
  ``reportingComponent``: ``kubeloop-drift-detector``;
- a one-line ``message`` (detector, variant, p-value, features, window; at most 1024 chars);
- the same facts as ``kubeloop.io/*`` annotations, for tools that should not parse text;
- a deterministic name, ``<isvc>.drift-<16 hex>``, hashed from the InferenceService and the
  alert's identity (detector, variant, revision, features, window): posting the same alert
  twice updates one Event (``lastTimestamp``, ``count``) instead of making a second one.

Posting needs only ``create`` and ``patch`` on events (the Role kubeloop-drift-detector); the
core/v1 API is used because it is what ``kubectl get events`` lists by default and what
EventsV1Api objects are also visible through.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from kubeloop.alert import Alert
from kubeloop.cluster.isvc import API_VERSION, KIND, api_error
from kubeloop.errors import KubeloopError

REASON = "DriftDetected"
EVENT_TYPE = "Warning"
COMPONENT = "kubeloop-drift-detector"
ANNOTATION_PREFIX = "kubeloop.io/"
MAX_MESSAGE = 1024
_MAX_FEATURES_SHOWN = 8


class DriftAlertError(KubeloopError):
    """An alert mapping that is not a valid `kubeloop.alert.Alert`."""


def _coerce(alert: Mapping[str, Any] | Alert) -> Alert:
    if isinstance(alert, Alert):
        return alert
    try:
        return Alert.model_validate(alert)
    except ValidationError as exc:
        raise DriftAlertError(f"invalid drift alert: {exc}") from None


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _unit(p: float) -> float:
    # A p-value or threshold outside [0, 1] (a backend's rounding) is shown as its bound.
    return min(max(float(p), 0.0), 1.0)


def _k8s_time(ts: datetime) -> str:
    """metav1.Time: RFC 3339 in UTC, whole seconds."""
    return _utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def isvc_event(
    meta: Mapping[str, Any],
    *,
    name: str,
    component: tuple[str, str],
    reason: str,
    type_: str,
    message: str,
    annotations: Mapping[str, str],
    when: datetime,
    instance: str | None = None,
) -> dict[str, Any]:
    """The core/v1 Event (as the dict the API takes) that kubeloop posts on the
    InferenceService whose metadata is `meta`: the drift detector's alerts and the rollout
    controller's steps. `component` is (the app.kubernetes.io/component label, the reporting
    component); `annotations` get the kubeloop.io/ prefix; `instance` names the reporting pod
    (reportingInstance, source.host)."""
    label, reporter = component
    involved = {
        "apiVersion": API_VERSION, "kind": KIND,
        "name": meta.get("name"), "namespace": meta.get("namespace"),
    }  # fmt: skip
    if meta.get("uid"):
        involved["uid"] = meta["uid"]
    stamp = _k8s_time(when)
    event: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace"),
            "labels": {
                "app.kubernetes.io/part-of": "kubeloop",
                "app.kubernetes.io/component": label,
            },
            "annotations": {ANNOTATION_PREFIX + k: v for k, v in annotations.items()},
        },
        "involvedObject": involved,
        "reason": reason,
        "type": type_,
        "message": message,
        "source": {"component": reporter},
        "reportingComponent": reporter,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    if instance:
        event["reportingInstance"] = instance
        event["source"]["host"] = instance
    return event


def _pvalue(p: float) -> str:
    return f"{p:.3g}"


def alert_message(alert: Mapping[str, Any] | Alert) -> str:
    """The Event's one-line message: detector, variant, p-value, features and window."""
    a = _coerce(alert)
    which = [f"model version {a.version}"] if a.version else []
    which += [f"revision {a.revision}"] if a.revision else []
    variant = f"{a.variant} variant" + (f" ({', '.join(which)})" if which else "")
    test = f"p-value {_pvalue(_unit(a.p_value))} < {_pvalue(_unit(a.threshold))}"
    if a.features:
        shown = ", ".join(a.features[:_MAX_FEATURES_SHOWN])
        more = len(a.features) - _MAX_FEATURES_SHOWN
        if more > 0:
            shown += f", ... (+{more} more)"
        n = len(a.features)
        feats = f"{n} feature{'s' if n != 1 else ''}: {shown}"
    else:
        feats = "the joint feature distribution"
    msg = f"Drift detected by {a.detector} on the {variant}: {test} for {feats}"
    w = a.window
    msg += f"; window {_k8s_time(w.start)}..{_k8s_time(w.end)} ({w.n} requests)"
    if len(msg) > MAX_MESSAGE:
        msg = msg[: MAX_MESSAGE - 3] + "..."
    return msg


def alert_event_name(alert: Mapping[str, Any] | Alert, isvc: dict) -> str:
    """``<isvc>.drift-<hash>``: the same alert on the same InferenceService, the same name."""
    a = _coerce(alert)
    meta = isvc.get("metadata") or {}
    identity = {
        "isvc": [meta.get("namespace"), meta.get("name"), meta.get("uid")],
        "detector": a.detector,
        "variant": a.variant,
        "version": a.version,
        "revision": a.revision,
        "features": sorted(a.features),
        "window": [_k8s_time(a.window.start), _k8s_time(a.window.end)],
        # Kept in the hash (always None now: every alert has a window) so that names of
        # Events posted before stay the same.
        "at": None,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"{meta.get('name', 'inferenceservice')}.drift-{digest}"


def alert_event(
    alert: Mapping[str, Any] | Alert,
    isvc: dict,
    *,
    now: datetime | None = None,
    instance: str | None = None,
) -> dict:
    """A core/v1 Event (as the dict the API takes) reporting ``alert`` on ``isvc``.

    ``isvc`` is the InferenceService as the API returns it (metadata name, namespace, uid are
    used). The event time is ``now``, else the alert's ``time``; ``instance`` names the
    reporting pod (reportingInstance, source.host).
    """
    a = _coerce(alert)
    meta = isvc.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not name or not namespace:
        raise DriftAlertError("the InferenceService must have metadata.name and metadata.namespace")
    annotations = {
        "detector": a.detector,
        "variant": a.variant,
        "p-value": repr(_unit(a.p_value)),
        "features": ",".join(a.features),
        "threshold": repr(_unit(a.threshold)),
        "version": a.version,
    }
    if a.revision:
        annotations["revision"] = a.revision
    annotations["window-start"] = _k8s_time(a.window.start)
    annotations["window-end"] = _k8s_time(a.window.end)
    annotations["window-size"] = str(a.window.n)

    return isvc_event(
        meta,
        name=alert_event_name(a, isvc),
        component=("monitoring", COMPONENT),
        reason=REASON,
        type_=EVENT_TYPE,
        message=alert_message(a),
        annotations=annotations,
        when=now or a.time,
        instance=instance,
    )


def _plain(obj: Any, core_api: Any = None) -> Any:
    """A kubernetes-client model as the API's JSON dict (camelCase keys); dicts pass through."""
    if obj is None or isinstance(obj, (dict, list, str, int, float, bool)):
        return obj
    api_client = getattr(core_api, "api_client", None)
    if api_client is None:
        from kubernetes.client import ApiClient

        api_client = ApiClient()
    return api_client.sanitize_for_serialization(obj)


def post_alert_event(
    core_api: Any, namespace: str, event: dict, *, context: str | None = None
) -> dict:
    """Create ``event``; if an Event of that name exists (the same alert again), bump its
    ``count`` and ``lastTimestamp`` instead. Returns the Event as stored."""
    name = event["metadata"]["name"]
    try:
        created = core_api.create_namespaced_event(namespace, event)
        return _plain(created, core_api)
    except Exception as exc:  # noqa: BLE001 - translated below
        if getattr(exc, "status", None) != 409:
            raise _events_error(exc, "create", name, namespace, context) or exc
    # The same alert again: update it with the two verbs the detector's Role grants.
    try:
        updated = _plain(
            core_api.patch_namespaced_event(
                name,
                namespace,
                {"lastTimestamp": event.get("lastTimestamp"), "message": event.get("message")},
            ),
            core_api,
        )
        count = int((updated or {}).get("count") or 1) + 1
        return _plain(core_api.patch_namespaced_event(name, namespace, {"count": count}), core_api)
    except Exception as exc:  # noqa: BLE001
        raise _events_error(exc, "patch", name, namespace, context) or exc


def _events_error(exc, verb, name, namespace, context):
    return api_error(
        exc, verb=verb, resource="event", name=name, namespace=namespace, context=context
    )


def event_time(event: dict) -> datetime | None:
    """When an Event last happened: lastTimestamp, eventTime, firstTimestamp or creation."""
    for value in (
        event.get("lastTimestamp"),
        (event.get("series") or {}).get("lastObservedTime"),
        event.get("eventTime"),
        event.get("firstTimestamp"),
        (event.get("metadata") or {}).get("creationTimestamp"),
    ):
        parsed = _parse_time(value)
        if parsed is not None:
            return parsed
    return None


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return _utc(value)
    try:
        return _utc(datetime.fromisoformat(str(value)))
    except ValueError:
        return None


def list_alert_events(
    core_api: Any,
    namespace: str,
    name: str | None = None,
    *,
    since: timedelta | None = None,
    now: datetime | None = None,
    context: str | None = None,
) -> list[dict]:
    """DriftDetected Events on InferenceService ``name`` (all InferenceServices if None),
    oldest first, as plain dicts; with ``since``, only those seen within that long of ``now``."""
    selector = f"involvedObject.kind={KIND},reason={REASON}"
    if name:
        selector = f"involvedObject.name={name},{selector}"
    items: list[dict] = []
    token = None
    while True:
        kwargs: dict[str, Any] = {"field_selector": selector, "limit": 500}
        if token:
            kwargs["_continue"] = token
        try:
            page = _plain(core_api.list_namespaced_event(namespace, **kwargs), core_api)
        except Exception as exc:  # noqa: BLE001
            raise (
                api_error(
                    exc,
                    verb="list",
                    resource="events",
                    name=None,
                    namespace=namespace,
                    context=context,
                )
                or exc
            )
        items.extend(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            break

    # The server applies the selector; checking again keeps a lenient server or proxy honest.
    def wanted(ev: dict) -> bool:
        obj = ev.get("involvedObject") or {}
        return (
            ev.get("reason") == REASON
            and obj.get("kind") == KIND
            and (name is None or obj.get("name") == name)
        )

    events = [ev for ev in items if wanted(ev)]
    if since is not None:
        cutoff = _utc(now or datetime.now(UTC)) - since
        events = [ev for ev in events if (event_time(ev) or cutoff) >= cutoff]
    epoch = datetime.min.replace(tzinfo=UTC)
    events.sort(
        key=lambda ev: (event_time(ev) or epoch, (ev.get("metadata") or {}).get("name", ""))
    )
    return events


def summarize_alert_event(event: dict) -> dict:
    """The facts of a DriftDetected Event, from its kubeloop.io annotations (else the message)."""
    meta = event.get("metadata") or {}
    ann = {
        k[len(ANNOTATION_PREFIX) :]: v
        for k, v in (meta.get("annotations") or {}).items()
        if k.startswith(ANNOTATION_PREFIX)
    }
    obj = event.get("involvedObject") or {}
    when = event_time(event)

    def _float(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    size = ann.get("window-size")
    first = _parse_time(event.get("firstTimestamp"))
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace") or obj.get("namespace"),
        "inferenceService": obj.get("name"),
        "type": event.get("type"),
        "reason": event.get("reason"),
        "detector": ann.get("detector"),
        "variant": ann.get("variant"),
        "version": ann.get("version"),
        "revision": ann.get("revision"),
        "pValue": _float(ann.get("p-value")),
        "threshold": _float(ann.get("threshold")),
        "features": [f for f in (ann.get("features") or "").split(",") if f],
        "windowStart": ann.get("window-start"),
        "windowEnd": ann.get("window-end"),
        "windowSize": int(size) if size and size.isdigit() else None,
        "count": int(event.get("count") or 1),
        "firstSeen": _k8s_time(first) if first else None,
        "lastSeen": _k8s_time(when) if when else None,
        "message": event.get("message"),
    }
