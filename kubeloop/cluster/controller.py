"""The rollout controller in the cluster: `kubeloop rollout-controller` (a Deployment).

Every `--interval` seconds it runs one `kubeloop.serving.rollout_loop.RolloutLoop` pass over
InferenceService `--name`:

- the candidate is the predictor's storageUri while `canaryTrafficPercent` is set (someone
  rolled out a new version: `kubectl kubeloop canary set ctr 0 --storage-uri .../v2`); a
  storageUri the record does not know starts a rollout at the schedule's first step;
- answers and labels come from the request log beside the drift detector
  (`GET <records-url>?since=`, `kubeloop.serving.request_log.feedback`);
- the canary verbs are `kubeloop.cluster.canary.ClusterCanary`'s, i.e. the merge patches of
  `kubeloop.cluster.isvc.InferenceServiceClient` that `kubectl kubeloop canary` sends:
  `{"spec": {"predictor": {"canaryTrafficPercent": P}}}` to move a step, `null` to promote,
  `0` to roll back;
- a moved percent counts only once KServe has reconciled it (`cluster_split_ready`: the
  status's traffic shows it on the latest revision), so the step's SRM test and dwell never
  see answers served at the previous split;
- every step is a core/v1 Event on the InferenceService (`rollout_event`, reason
  `RolloutStarted|RolloutAdvanced|RolloutPromoted|RolloutRolledBack|RolloutInconclusive|
  RolloutAborted`), created once under a unique name (the Role grants `create` only);
- the rollout record lives in the ConfigMap `--state-configmap` (key `rollout.json`), which
  the manifests create: the Role grants get/patch on that one name. Not in the
  InferenceService's annotations: KServe copies them into the Knative revision template
  (kserve v0.20.0 `components/predictor.go:100-102`, `ksvc_reconciler.go:102,204`), so
  every write would make a new revision and break the canary split.

Least privilege (manifests/base/rollout-controller.yaml; the process: `kubeloop.cluster.controller_cli`): get + patch on
inferenceservices/<name>, get + patch on configmaps/<state-configmap>, create on events.
Nothing else; `tests/test_controller.py` replays a whole rollout against the loopback API
server and checks every request it made against that Role.

KServe at 100%: with canaryTrafficPercent 100 there is no `prev` route tag
(`ksvc_reconciler.go:143`), so the transformer cannot score the production model in shadow
there; the 100% step's dwell counts requests only (`rollout_loop.step_policy`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubeloop.cluster.events import isvc_event
from kubeloop.cluster.isvc import api_error
from kubeloop.errors import KubeloopError

if TYPE_CHECKING:
    import pandas as pd

    from kubeloop.serving.rollout_loop import RolloutRecord, StepRecord

log = logging.getLogger(__name__)

COMPONENT = "kubeloop-rollout-controller"
STATE_KEY = "rollout.json"
DEFAULT_STATE_CONFIGMAP = "kubeloop-rollout-ctr"
DEFAULT_RECORDS_URL = "http://kubeloop-drift-detector.kubeloop.svc.cluster.local/requestlog/records"
REASONS = {
    "start": ("RolloutStarted", "Normal"),
    "advance": ("RolloutAdvanced", "Normal"),
    "promote": ("RolloutPromoted", "Normal"),
    "rollback": ("RolloutRolledBack", "Warning"),
    "inconclusive": ("RolloutInconclusive", "Warning"),
    "abort": ("RolloutAborted", "Warning"),
}
MAX_MESSAGE = 1024


class ControllerError(KubeloopError):
    """The controller cannot read or write its state, or reach the request log."""


# --- state: one ConfigMap -----------------------------------------------------------------


class ConfigMapStore:
    """The rollout record in ConfigMap `name` (key `rollout.json`), which must exist (the
    manifests create it empty). Saves are merge patches carrying the resourceVersion last
    read, so two writers cannot silently overwrite each other (409 instead)."""

    def __init__(self, core_api: Any, namespace: str, name: str, *, context: str | None = None):
        self.core_api = core_api
        self.namespace = namespace
        self.name = name
        self.context = context
        self._resource_version: str | None = None

    def _error(self, exc: BaseException, verb: str) -> Exception:
        return (
            api_error(
                exc,
                verb=verb,
                resource="configmap",
                name=self.name,
                namespace=self.namespace,
                context=self.context,
            )
            or exc
        )

    def load(self) -> RolloutRecord | None:
        from kubeloop.serving.rollout_loop import RolloutRecord

        try:
            cm = self.core_api.read_namespaced_config_map(self.name, self.namespace)
        except Exception as exc:  # noqa: BLE001 - translated
            raise self._error(exc, "get") from None
        cm = _plain(cm, self.core_api)
        self._resource_version = (cm.get("metadata") or {}).get("resourceVersion")
        text = (cm.get("data") or {}).get(STATE_KEY)
        if not text:
            return None
        try:
            return RolloutRecord.model_validate_json(text)
        except ValueError as exc:
            raise ControllerError(
                f'configmap "{self.name}" key {STATE_KEY} is not a rollout record: '
                f"{str(exc).splitlines()[0]}; fix or clear it with kubectl edit"
            ) from None

    def save(self, record: RolloutRecord) -> None:
        patch: dict[str, Any] = {"data": {STATE_KEY: record.model_dump_json()}}
        if self._resource_version:
            patch["metadata"] = {"resourceVersion": self._resource_version}
        try:
            saved = self.core_api.patch_namespaced_config_map(self.name, self.namespace, patch)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "patch") from None
        self._resource_version = (_plain(saved, self.core_api).get("metadata") or {}).get(
            "resourceVersion"
        )


def _plain(obj: Any, core_api: Any) -> dict:
    from kubeloop.cluster.events import _plain as plain

    return plain(obj, core_api) or {}


# --- the request log ----------------------------------------------------------------------


class HTTPRecords:
    """Answers and labels from the request log's `GET /requestlog/records`."""

    def __init__(self, url: str, *, timeout: float = 60.0, client: Any = None):
        self.url = url
        self.timeout = timeout
        self.client = client

    def fetch(self, since: datetime) -> tuple[pd.DataFrame, dict[str, int]]:
        import httpx

        from kubeloop.serving.rollout_loop import records_frame

        params = {"since": since.astimezone(UTC).isoformat()}
        try:
            if self.client is not None:
                response = self.client.get(self.url, params=params)
            else:
                response = httpx.get(self.url, params=params, timeout=self.timeout)
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ControllerError(f"cannot read the request log at {self.url}: {exc}") from None
        labels = {str(k): int(v) for k, v in (body.get("labels") or {}).items()}
        return records_frame(body.get("records") or []), labels


# --- Events -------------------------------------------------------------------------------


def rollout_event(
    record: RolloutRecord, step: StepRecord, isvc: dict, *, instance: str | None = None
) -> dict:
    """A core/v1 Event on `isvc` for one rollout step: reason per action, the reasons as
    the message, the figures as kubeloop.io/* annotations, and a name unique to the step."""
    meta = isvc.get("metadata") or {}
    name = meta.get("name")
    reason, type_ = REASONS[step.action]
    identity = json.dumps(
        [meta.get("uid"), record.candidate, record.started_at.isoformat(), step.action,
         step.step, step.at.isoformat()]
    )  # fmt: skip
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    message = f"step {step.step} ({step.percent}%) {step.action}: " + "; ".join(step.reasons)
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."

    def fmt(x: float | None) -> str:
        return "" if x is None else repr(float(x))

    annotations = {
        "candidate": record.candidate,
        "candidate-version": record.candidate_version or "",
        "production-version": record.production_version or "",
        "action": step.action,
        "step": str(step.step),
        "percent": str(step.percent),
        "paired": str(step.paired),
        "delta-logloss": fmt(step.delta_logloss),
        "cs-low": fmt(step.cs_low),
        "cs-high": fmt(step.cs_high),
    }
    return isvc_event(
        meta,
        name=f"{name}.rollout-{digest}",
        component=("rollout", COMPONENT),
        reason=reason,
        type_=type_,
        message=message,
        annotations=annotations,
        when=step.at,
        instance=instance,
    )


class EventRecorder:
    """Posts each step as an Event on the InferenceService (create only; a failure is
    logged, never raised: the step itself is already applied and saved)."""

    def __init__(self, client: Any, name: str, *, instance: str | None = None):
        self.client = client  # InferenceServiceClient
        self.name = name
        self.instance = instance
        self.failed = 0

    def record(self, record: RolloutRecord, step: StepRecord) -> None:
        try:
            isvc = self.client.get(self.name)
            event = rollout_event(record, step, isvc, instance=self.instance)
            self.client.core_api.create_namespaced_event(self.client.namespace, event)
        except Exception as exc:  # noqa: BLE001 - counted and logged
            self.failed += 1
            log.warning("rollout: could not post the %s event: %s", step.action, exc)


# --- wiring -------------------------------------------------------------------------------


def cluster_candidate(client: Any, name: str) -> Any:
    """`current_candidate` for an InferenceService: its predictor storageUri while
    canaryTrafficPercent is set, else None (no canary: nothing to roll out)."""

    def current() -> str | None:
        status = client.status(name)
        if status.canary_percent is None:
            return None
        return status.storage_uri

    return current


def cluster_production(client: Any, name: str) -> Any:
    """`current_production` for an InferenceService: its predictor storageUri while no
    canaryTrafficPercent is set (what every request is served by)."""

    def current() -> str | None:
        status = client.status(name)
        return status.storage_uri if status.canary_percent is None else None

    return current


def cluster_split_ready(client: Any, name: str) -> Any:
    """`split_ready` for an InferenceService: KServe has reconciled the current spec and its
    status reports `percent` on the latest revision and the rest on the pinned one."""

    def ready(percent: int) -> bool:
        status = client.status(name)
        if not status.up_to_date or status.canary_percent != percent:
            return False
        latest = sum(t.percent for t in status.traffic if t.latest)
        pinned = sum(t.percent for t in status.traffic if not t.latest)
        return bool(status.traffic) and latest == percent and pinned == 100 - percent

    return ready


def build_loop(
    client: Any,
    name: str,
    target: Any,
    *,
    records: Any,
    state_configmap: str = DEFAULT_STATE_CONFIGMAP,
    policy: Any = None,
    instance: str | None = None,
    production_version: str | None = None,
    candidate_version: str | None = None,
    clock: Any = None,
):
    """The `RolloutLoop` of InferenceService `name` through `client` (an
    `InferenceServiceClient`) and `target` (its `ClusterCanary`, whose verbs are the
    plugin's merge patches): ConfigMap state, Events."""
    from kubeloop.serving.rollout_loop import RolloutLoop

    store = ConfigMapStore(
        client.core_api, client.namespace, state_configmap, context=client.context
    )
    kwargs = {"clock": clock} if clock is not None else {}
    return RolloutLoop(
        name,
        target,
        store,
        records,
        current_candidate=cluster_candidate(client, name),
        split_ready=cluster_split_ready(client, name),
        current_production=cluster_production(client, name),
        recorder=EventRecorder(client, name, instance=instance),
        policy=policy,
        production_version=production_version,
        candidate_version=candidate_version,
        shadow_at_full=False,
        **kwargs,
    )
