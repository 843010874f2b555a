"""Canary verbs on a KServe InferenceService through the Kubernetes API.

KServe splits traffic itself; a client only edits two fields of the predictor and reads the
status back. What each verb sends follows KServe's "Canary Rollout Strategy" and "Canary
Rollout Example" pages (Knative deployment mode only; the Standard mode has no revisions):
https://kserve.github.io/website/docs/model-serving/predictive-inference/rollout-strategies/canary
https://kserve.github.io/website/docs/model-serving/predictive-inference/rollout-strategies/canary-example

==========  ========================================================================  ============================
verb        JSON merge patch (RFC 7386) sent to the InferenceService                  KServe docs section
==========  ========================================================================  ============================
set         ``{"spec": {"predictor": {"canaryTrafficPercent": P}}}``, plus            "Update the InferenceService
            ``"model": {"storageUri": URI}`` inside ``predictor`` for a new version   with the canary rollout
                                                                                      strategy"
promote     ``{"spec": {"predictor": {"canaryTrafficPercent": null}}}`` (null         "Promote the canary model"
            removes the field: the latest revision gets 100%)
rollback    ``{"spec": {"predictor": {"canaryTrafficPercent": 0}}}`` (the previous    "Rollback and pin the
            rolled-out revision gets 100%), plus ``model.storageUri`` when the        previous model"
            caller names the version to go back to
==========  ========================================================================  ============================

What KServe does with these fields (kserve v0.20.0; the tests replay it in a model of this
code, tests/test_cluster_plugin.py ``KServeModel``):

* ``createKnativeService`` (``pkg/controller/v1beta1/inferenceservice/reconcilers/knative/
  ksvc_reconciler.go:132-164``): with canaryTrafficPercent set and a latest rolled-out
  revision, the route is ``latestRevision: true`` at P% plus ``latestRolledoutRevision`` at
  100-P% tagged ``prev``; without it, ``latestRevision: true`` at 100%. Knative resolves
  ``latestRevision`` to the latest READY revision, not the latest created one.
* ``PropagateStatus`` (``pkg/apis/serving/v1beta1/inference_service_status.go:582-606``): the
  latest ready revision becomes ``latestRolledoutRevision`` (the old one becomes
  ``previousRolledoutRevision``) once it has 100%; and when the latest ready revision already
  IS the rolled-out one, is also the latest created one, and gets less than 100% of a split
  over itself, ``latestRolledoutRevision`` goes back to ``previousRolledoutRevision``: that is
  how a rollback after a promote works, and only while no newer revision exists.

So, rejecting a canary:

* during the canary, ``rollback`` (0%) pins the rolled-out revision at 100%;
  ``rollback --storage-uri OLD`` in the same patch is safe too: the new revision of OLD starts
  at 0%, and ``promote`` once it is Ready makes the spec and the running revision agree again.
* after a promote, ``rollback`` alone works (KServe moves the pointer back, then the traffic);
  ``rollback --storage-uri OLD`` in one patch does NOT: the new revision breaks "latest ready ==
  latest created", so the rejected revision keeps 100%. ``rollback`` refuses that and says
  the safe sequence: ``rollback``, wait until status shows the previous revision at 100%,
  ``rollback --storage-uri OLD``, then ``promote`` once its revision is Ready.
* removing canaryTrafficPercent together with the old storageUri (re-applying a manifest
  without the canary) sends 100% to ``latestRevision``, i.e. the rejected, still latest ready
  revision, until the new one is Ready. ``promote`` refuses the same thing: 100% to a latest
  ready revision that is neither the latest created nor the rolled-out one.

``CustomObjectsApi.patch_namespaced_custom_object`` in kubernetes client 30.1 sends a dict body
as ``application/merge-patch+json`` (the only patch type it declares for custom objects), so a
``None`` value reaches the server as ``null`` and deletes the key.

The traffic split is read from ``status.components.predictor``: ``traffic`` (a list of Knative
traffic targets ``{revisionName, percent, latestRevision, tag, url}``; KServe tags the pinned
previous revision ``prev``), ``latestReadyRevision``, ``latestCreatedRevision``,
``latestRolledoutRevision`` and ``previousRolledoutRevision``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, Field, computed_field

from kubeloop.errors import KubeloopError

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
KIND = "InferenceService"
API_VERSION = f"{GROUP}/{VERSION}"
RESOURCE = f"{PLURAL[:-1]}.{GROUP}"  # how kubectl names it: inferenceservice.serving.kserve.io

DEFAULT_NAMESPACE = "kubeloop"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# Deployment modes without Knative revisions, where canaryTrafficPercent has no effect.
_NO_CANARY_MODES = {"Standard", "RawDeployment", "ModelMesh"}
_STORAGE_URI = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")


# --- errors ---------------------------------------------------------------------------------


class ClusterError(KubeloopError):
    """A Kubernetes API call failed; the message names the object, namespace and context."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        name: str | None = None,
        namespace: str | None = None,
        context: str | None = None,
    ):
        self.status = status
        self.name = name
        self.namespace = namespace
        self.context = context
        super().__init__(message)


class ClusterConfigError(ClusterError):
    """No usable kubeconfig, or the requested context is not in it."""


class ClusterUnreachable(ClusterError):
    """The API server of the context did not answer."""


class InferenceServiceNotFound(ClusterError):
    """HTTP 404 for the InferenceService itself."""


class KServeNotInstalled(ClusterError):
    """HTTP 404 for the whole serving.kserve.io/v1beta1 API: the CRD is not installed."""


class ClusterForbidden(ClusterError):
    """HTTP 401/403: the credentials of the context may not do this."""


class ClusterRequestError(ClusterError):
    """Any other error status from the API server (400, 409, 422, 5xx)."""


class CanaryPercentError(KubeloopError, ValueError):
    """A canary traffic percent outside 0..100."""


class CanaryNotSupported(ClusterError):
    """The InferenceService cannot do a canary rollout (deployment mode, spec shape)."""


class UnsafeRolloutError(ClusterError):
    """A verb whose effect on KServe's traffic would not be what the verb means; the message
    says the safe sequence. Nothing was sent."""


def validate_percent(percent: Any) -> int:
    """Return ``percent`` as an int in 0..100, or raise CanaryPercentError saying why not."""
    if isinstance(percent, bool) or not isinstance(percent, int):
        try:
            text = str(percent).strip()
            if not re.fullmatch(r"[+-]?\d+", text):
                raise ValueError
            percent = int(text)
        except (TypeError, ValueError):
            raise CanaryPercentError(
                f"canary traffic percent must be a whole number from 0 to 100, got {percent!r}"
            ) from None
    if not 0 <= percent <= 100:
        raise CanaryPercentError(
            f"canary traffic percent must be from 0 to 100, got {percent} "
            "(0 pins all traffic to the previous revision, 100 sends all of it to the new one)"
        )
    return percent


def validate_storage_uri(uri: str) -> str:
    if not isinstance(uri, str) or not _STORAGE_URI.match(uri.strip()):
        raise KubeloopError(
            f"storage URI must look like scheme://location (s3://, gs://, pvc://, https://...), got {uri!r}"
        )
    return uri.strip()


def describe_context(context: str | None) -> str:
    return f'context "{context}"' if context else "the current context"


def api_error(
    exc: BaseException,
    *,
    verb: str,
    resource: str,
    name: str | None,
    namespace: str,
    context: str | None,
) -> ClusterError | None:
    """Translate a kubernetes-client exception into a ClusterError; None if it is not one.

    ``resource`` is the singular kind as a user types it (``inferenceservice``, ``events``).
    """
    where = f'in namespace "{namespace}" ({describe_context(context)})'
    what = f'{resource} "{name}"' if name else resource
    kw = {"name": name, "namespace": namespace, "context": context}

    status = getattr(exc, "status", None)
    if not isinstance(status, int) or not hasattr(exc, "reason"):
        # urllib3 errors: connection refused, DNS, TLS; the client retries, then raises these.
        module = type(exc).__module__ or ""
        if module.startswith("urllib3") or isinstance(exc, (ConnectionError, TimeoutError)):
            return ClusterUnreachable(
                f"cannot reach the Kubernetes API server of {describe_context(context)} "
                f"to {verb} {what}: {exc}",
                **kw,
            )
        return None

    body = _status_body(getattr(exc, "body", None))
    server_message = body.get("message") or getattr(exc, "reason", "") or ""
    details = body.get("details") or {}
    if status == 404:
        if name and details.get("name") != name and resource == "inferenceservice":
            return KServeNotInstalled(
                f"the API {API_VERSION} {PLURAL} is not served {where}: is KServe installed? "
                f"(server: {server_message})",
                status=status,
                **kw,
            )
        hint = ""
        if resource == "inferenceservice":
            ctx = f"--context {context} " if context else ""
            hint = f"; list them with: kubectl {ctx}-n {namespace} get inferenceservices"
        return InferenceServiceNotFound(f"{what} not found {where}{hint}", status=status, **kw)
    if status in (401, 403):
        label = "unauthorized" if status == 401 else "forbidden"
        return ClusterForbidden(
            f"{label}: cannot {verb} {what} {where}: {server_message}", status=status, **kw
        )
    return ClusterRequestError(
        f"{verb} {what} {where} failed: HTTP {status} {getattr(exc, 'reason', '')}: {server_message}".rstrip(
            ": "
        ),
        status=status,
        **kw,
    )


def _status_body(body: Any) -> dict:
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return {"message": body.strip()}
    return body if isinstance(body, dict) else {}


# --- status model ---------------------------------------------------------------------------


class TrafficTarget(BaseModel):
    """One entry of ``status.components.predictor.traffic``."""

    revision: str | None = None
    percent: int = 0
    latest: bool = False
    tag: str | None = None
    url: str | None = None


class CanaryStatus(BaseModel):
    """What a user needs to decide on a canary: spec, traffic split, readiness, revisions."""

    name: str
    namespace: str
    context: str | None = None
    deployment_mode: str | None = None
    url: str | None = None
    storage_uris: dict[str, str] = Field(
        default_factory=dict,
        description="storage URI per component of the current spec (predictor: the model version)",
    )
    canary_percent: int | None = Field(
        None, description="spec.predictor.canaryTrafficPercent; None when unset"
    )
    traffic: list[TrafficTarget] = Field(default_factory=list)
    ready: bool | None = None
    ready_reason: str | None = None
    ready_message: str | None = None
    latest_created_revision: str | None = None
    latest_ready_revision: str | None = None
    latest_rolledout_revision: str | None = None
    previous_rolledout_revision: str | None = None
    generation: int | None = None
    observed_generation: int | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def storage_uri(self) -> str | None:
        """The predictor's model version in the spec (the version the latest revision runs)."""
        return self.storage_uris.get("predictor")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def up_to_date(self) -> bool:
        """False while KServe has not yet reconciled the latest spec change."""
        if self.generation is None or self.observed_generation is None:
            return True
        return self.observed_generation >= self.generation

    @computed_field  # type: ignore[prop-decorator]
    @property
    def phase(self) -> str:
        """``stable`` (no canary field), ``canary`` (a split), ``rolled-back`` (pinned at 0%),
        ``full`` (canaryTrafficPercent 100)."""
        if self.canary_percent is None:
            return "stable"
        if self.canary_percent == 0:
            return "rolled-back"
        if self.canary_percent == 100:
            return "full"
        return "canary"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def pinned_revision(self) -> str | None:
        """The revision holding 100 - canaryTrafficPercent NOW: the non-latest (``prev``) target
        of the traffic KServe reports; None while that traffic has no such target (the latest
        revision has it all) or no split is set. With no traffic reported at all yet, the
        revision KServe will pin (`expected_pinned_revision`)."""
        if self.canary_percent is None or self.canary_percent >= 100:
            return None
        if not self.traffic:
            return self.expected_pinned_revision
        for target in self.traffic:
            if not target.latest and target.revision:
                return target.revision
        return None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def expected_pinned_revision(self) -> str | None:
        """The revision KServe pins once it has reconciled this spec and status: the latest
        rolled-out one, except in PropagateStatus's rolled-back case (latest ready == latest
        rolled out == latest created, split below 100%), where it is the previous rolled-out
        one. None without a split (no canaryTrafficPercent, 100%, or nothing rolled out yet:
        ksvc_reconciler.go:134 splits only with a latest rolled-out revision)."""
        if self.canary_percent is None or self.canary_percent >= 100:
            return None
        rolled_out = self.latest_rolledout_revision
        if not rolled_out:
            return None
        if (
            rolled_out == self.latest_ready_revision == self.latest_created_revision
            and self.previous_rolledout_revision
        ):
            return self.previous_rolledout_revision
        return rolled_out

    def after_patch(self, percent: int | None, *, new_revision: bool) -> CanaryStatus:
        """This status as KServe would see it after a patch setting ``percent`` (and, with
        ``new_revision``, a storageUri change, which makes a new, not yet ready revision)."""
        update: dict[str, Any] = {"canary_percent": percent}
        if new_revision:
            update["latest_created_revision"] = "(new revision)"
        return self.model_copy(update=update)

    def roles(self, revision: str | None) -> list[str]:
        """Which status pointers name ``revision`` (latest ready, latest rolled out, ...)."""
        if not revision:
            return []
        pointers = [
            ("latest created", self.latest_created_revision),
            ("latest ready", self.latest_ready_revision),
            ("latest rolled out", self.latest_rolledout_revision),
            ("previous rolled out", self.previous_rolledout_revision),
        ]
        return [label for label, value in pointers if value == revision]

    @classmethod
    def from_isvc(cls, isvc: dict, *, context: str | None = None) -> CanaryStatus:
        """Parse an InferenceService object as the API returns it (a plain dict)."""
        meta = isvc.get("metadata") or {}
        spec = isvc.get("spec") or {}
        status = isvc.get("status") or {}
        predictor_spec = spec.get("predictor") or {}
        predictor_status = (status.get("components") or {}).get("predictor") or {}

        ready = None
        ready_reason = ready_message = None
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Ready":
                ready = str(cond.get("status")) == "True"
                ready_reason = cond.get("reason")
                ready_message = cond.get("message")

        traffic = [
            TrafficTarget(
                revision=t.get("revisionName"),
                percent=int(t.get("percent") or 0),
                latest=bool(t.get("latestRevision", False)),
                tag=t.get("tag") or None,
                url=t.get("url") or None,
            )
            for t in predictor_status.get("traffic") or []
        ]
        mode = (meta.get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION) or status.get(
            "deploymentMode"
        )
        canary = predictor_spec.get("canaryTrafficPercent")
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            context=context,
            deployment_mode=mode,
            url=status.get("url"),
            storage_uris=_storage_uris(spec),
            canary_percent=None if canary is None else int(canary),
            traffic=traffic,
            ready=ready,
            ready_reason=ready_reason,
            ready_message=ready_message,
            latest_created_revision=predictor_status.get("latestCreatedRevision"),
            latest_ready_revision=predictor_status.get("latestReadyRevision"),
            latest_rolledout_revision=predictor_status.get("latestRolledoutRevision"),
            previous_rolledout_revision=predictor_status.get("previousRolledoutRevision"),
            generation=meta.get("generation"),
            observed_generation=status.get("observedGeneration"),
        )


def _storage_uris(spec: dict) -> dict[str, str]:
    """storageUri of each component: ``model.storageUri`` (or a legacy framework key such as
    ``sklearn.storageUri``), else a container's STORAGE_URI environment variable."""
    found: dict[str, str] = {}
    for component in ("predictor", "transformer", "explainer"):
        comp = spec.get(component) or {}
        uri = None
        for key, value in comp.items():
            if (
                isinstance(value, dict)
                and value.get("storageUri")
                and (key == "model" or uri is None)
            ):
                uri = value["storageUri"]
        if uri is None:
            for container in comp.get("containers") or []:
                for env in container.get("env") or []:
                    if env.get("name") == "STORAGE_URI" and env.get("value"):
                        uri = env["value"]
        if uri:
            found[component] = uri
    return found


# --- patch results --------------------------------------------------------------------------


class FieldChange(BaseModel):
    field: str
    before: Any = None
    after: Any = None


class PatchResult(BaseModel):
    """What a verb changed: the patch sent (None when nothing needed to change)."""

    verb: str
    name: str
    namespace: str
    context: str | None = None
    patch: dict | None = None
    changes: list[FieldChange] = Field(default_factory=list)
    dry_run: bool = False
    warnings: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        """One line in kubectl's style: ``inferenceservice.serving.kserve.io/ctr patched: ...``."""
        head = f"{RESOURCE}/{self.name}"
        dry = " (server dry run)" if self.dry_run else ""
        if not self.changes:
            return f"{head} patched (no change){dry}"
        parts = [
            f"{c.field.rsplit('.', 1)[-1]} {_show(c.before)} -> {_show(c.after)}"
            for c in self.changes
        ]
        return f"{head} patched{dry}: " + ", ".join(parts)


def _set_canary_percent(
    predictor: dict[str, Any], changes: list[FieldChange], before: int | None, after: int | None
) -> None:
    """Add canaryTrafficPercent `after` (None: remove it) to a predictor patch, and the change
    to `changes`, unless it is already `before`."""
    if before == after:
        return
    predictor["canaryTrafficPercent"] = after
    changes.append(
        FieldChange(field="spec.predictor.canaryTrafficPercent", before=before, after=after)
    )


def _show(value: Any) -> str:
    return "(unset)" if value is None else str(value)


# --- client ---------------------------------------------------------------------------------


class InferenceServiceClient:
    """Read and patch KServe InferenceServices in one namespace of one kubeconfig context.

    ``api`` is a ``kubernetes.client.CustomObjectsApi`` (or any object with its
    ``get_namespaced_custom_object`` / ``patch_namespaced_custom_object``), ``core_api`` a
    ``CoreV1Api`` for Events. Inject both in tests; left out, the kubeconfig is loaded here, in
    the constructor (never at import), for ``context`` (None: the current context), and an
    in-cluster service account is used when there is no kubeconfig at all.
    """

    def __init__(
        self,
        namespace: str = DEFAULT_NAMESPACE,
        context: str | None = None,
        api: Any = None,
        core_api: Any = None,
        *,
        kubeconfig: str | None = None,
    ):
        self.namespace = namespace
        self.context = context
        self._kubeconfig = kubeconfig
        self._api_client = None
        if api is None:
            self._api_client, self.context = load_api_client(context, kubeconfig)
            from kubernetes import client

            api = client.CustomObjectsApi(self._api_client)
        self.api = api
        self._core_api = core_api

    @property
    def core_api(self) -> Any:
        """CoreV1Api sharing the same connection (built on first use when not injected)."""
        if self._core_api is None:
            from kubernetes import client

            api_client = self._api_client or getattr(self.api, "api_client", None)
            if api_client is None:
                api_client, self.context = load_api_client(self.context, self._kubeconfig)
            self._core_api = client.CoreV1Api(api_client)
        return self._core_api

    # reads

    def get(self, name: str) -> dict:
        """The InferenceService as the API returns it (a dict)."""
        try:
            return self.api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except Exception as exc:  # noqa: BLE001 - translated below, re-raised otherwise
            raise self._error(exc, "get", name) or exc

    def status(self, name: str) -> CanaryStatus:
        return CanaryStatus.from_isvc(self.get(name), context=self.context)

    # verbs

    def set_canary(
        self, name: str, percent: int, storage_uri: str | None = None, *, dry_run: bool = False
    ) -> PatchResult:
        """Send ``percent`` of the traffic to the latest revision, the rest to the last
        rolled-out one; with ``storage_uri``, roll out that model version as the new revision."""
        return self._set("set", name, percent, storage_uri, dry_run)

    def _set(
        self, verb: str, name: str, percent: Any, storage_uri: str | None, dry_run: bool
    ) -> PatchResult:
        percent = validate_percent(percent)
        if storage_uri is not None:
            storage_uri = validate_storage_uri(storage_uri)
        isvc = self.get(name)
        self._check_canary_capable(isvc, name, needs_model=storage_uri is not None)
        before = CanaryStatus.from_isvc(isvc, context=self.context)

        predictor: dict[str, Any] = {}
        changes: list[FieldChange] = []
        _set_canary_percent(predictor, changes, before.canary_percent, percent)
        current_uri = (
            ((isvc.get("spec") or {}).get("predictor") or {}).get("model", {}).get("storageUri")
        )
        if storage_uri is not None and storage_uri != current_uri:
            predictor["model"] = {"storageUri": storage_uri}
            changes.append(
                FieldChange(
                    field="spec.predictor.model.storageUri", before=current_uri, after=storage_uri
                )
            )
        new_revision = "model" in predictor
        after = before.after_patch(percent, new_revision=new_revision)
        if verb == "rollback":
            self._check_rollback(name, before, after, storage_uri)
        warnings = []
        ready = before.latest_ready_revision
        if percent > 0 and not new_revision and ready and ready == before.latest_rolledout_revision:
            other = after.expected_pinned_revision
            if other and other != ready and percent < 100:
                warnings.append(
                    f"no new revision: KServe splits {ready} ({percent}%) against the previous "
                    f"rolled-out revision {other}; give --storage-uri to roll out a new model "
                    "version"
                )
            else:
                warnings.append(
                    f"no new revision to split traffic with: latest ready revision {ready} is "
                    "also the latest rolled-out one; give --storage-uri to roll out a new model "
                    "version"
                )
        if percent == 0:
            pinned = after.expected_pinned_revision
            if not pinned or pinned == before.latest_created_revision:
                warnings.append(
                    "no earlier rolled-out revision to pin: the latest revision is the only one "
                    "that has had all the traffic"
                )
            elif pinned != before.pinned_revision:
                warnings.append(
                    f"KServe pins {pinned} at 100% once it has reconciled this change; "
                    "check with `canary status`"
                )
        return self._apply(verb, name, predictor, changes, warnings, dry_run)

    def promote(self, name: str, *, dry_run: bool = False) -> PatchResult:
        """Remove canaryTrafficPercent: the latest ready revision gets 100% and becomes the
        latest rolled-out revision."""
        isvc = self.get(name)
        self._check_canary_capable(isvc, name, needs_model=False)
        before = CanaryStatus.from_isvc(isvc, context=self.context)
        predictor: dict[str, Any] = {}
        changes: list[FieldChange] = []
        _set_canary_percent(predictor, changes, before.canary_percent, None)
        created, ready = before.latest_created_revision, before.latest_ready_revision
        warnings = []
        if created and ready and created != ready:
            if ready != before.latest_rolledout_revision:
                raise UnsafeRolloutError(
                    f'refusing to promote inferenceservice "{name}": its latest created '
                    f"revision {created} is not Ready, so 100% would go to the latest ready "
                    f"revision {ready}, which was never rolled out (after a rollback it is the "
                    f"rejected one); wait until `canary status` shows {created} ready, then "
                    "promote",
                    name=name,
                    namespace=self.namespace,
                    context=self.context,
                )
            warnings.append(
                f"latest created revision {created} is not ready; 100% goes to the latest "
                f"ready revision {ready} until it is, then to {created}"
            )
        return self._apply("promote", name, predictor, changes, warnings, dry_run)

    def rollback(
        self, name: str, storage_uri: str | None = None, *, dry_run: bool = False
    ) -> PatchResult:
        """Set canaryTrafficPercent to 0: all traffic pinned to the rolled-out revision (after
        a promote: the previous rolled-out one, once KServe has moved its pointer back).

        With ``storage_uri`` (the version to go back to) the spec's model version is reverted in
        the same patch, so a later promote rolls out that version, not the rejected one. Raises
        UnsafeRolloutError, sending nothing, where that would leave the rejected revision at
        100% (after a promote: see the module docstring).
        """
        return self._set("rollback", name, 0, storage_uri, dry_run)

    def _check_rollback(
        self, name: str, before: CanaryStatus, after: CanaryStatus, storage_uri: str | None
    ) -> None:
        """Refuse a rollback that would pin the revision it is meant to reject."""
        rejected = before.latest_created_revision
        previous = before.previous_rolledout_revision
        if after.latest_created_revision == rejected or not previous or not rejected:
            return  # no new revision, or nothing earlier to go back to (a warning then)
        if after.expected_pinned_revision != rejected:
            return
        raise UnsafeRolloutError(
            f'refusing to roll back inferenceservice "{name}" with --storage-uri: {rejected} '
            f"was promoted, and KServe pins the previous rolled-out revision {previous} only "
            f"while no newer revision exists, so {rejected} would keep 100%; safe sequence: "
            f"`kubectl kubeloop canary rollback {name}`, wait until `canary status` shows "
            f"{previous} at 100%, then `canary rollback {name} --storage-uri {storage_uri}`, "
            f"then `canary promote {name}` once its new revision is Ready",
            name=name,
            namespace=self.namespace,
            context=self.context,
        )

    # helpers

    def _apply(
        self,
        verb: str,
        name: str,
        predictor: dict,
        changes: list[FieldChange],
        warnings: list[str],
        dry_run: bool,
    ) -> PatchResult:
        patch = {"spec": {"predictor": predictor}} if predictor else None
        if patch is not None:
            kwargs = {"dry_run": "All"} if dry_run else {}
            try:
                self.api.patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name, patch, **kwargs
                )
            except Exception as exc:  # noqa: BLE001
                raise self._error(exc, "patch", name) or exc
        return PatchResult(
            verb=verb,
            name=name,
            namespace=self.namespace,
            context=self.context,
            patch=patch,
            changes=changes,
            dry_run=dry_run,
            warnings=warnings,
        )

    def _check_canary_capable(self, isvc: dict, name: str, *, needs_model: bool) -> None:
        status = CanaryStatus.from_isvc(isvc, context=self.context)
        where = f'in namespace "{self.namespace}" ({describe_context(self.context)})'
        if status.deployment_mode in _NO_CANARY_MODES:
            raise CanaryNotSupported(
                f'inferenceservice "{name}" {where} runs in deployment mode '
                f"{status.deployment_mode}: canaryTrafficPercent needs Knative mode "
                f"(annotation {DEPLOYMENT_MODE_ANNOTATION}: Knative)",
                name=name,
                namespace=self.namespace,
                context=self.context,
            )
        predictor = (isvc.get("spec") or {}).get("predictor") or {}
        if needs_model and not isinstance(predictor.get("model"), dict):
            raise CanaryNotSupported(
                f'inferenceservice "{name}" {where} has no spec.predictor.model; kubeloop sets '
                "the new version in spec.predictor.model.storageUri",
                name=name,
                namespace=self.namespace,
                context=self.context,
            )

    def _error(self, exc: BaseException, verb: str, name: str) -> ClusterError | None:
        return api_error(
            exc,
            verb=verb,
            resource="inferenceservice",
            name=name,
            namespace=self.namespace,
            context=self.context,
        )


def load_api_client(context: str | None, kubeconfig: str | None = None) -> tuple[Any, str | None]:
    """An ApiClient for ``context`` of the kubeconfig (KUBECONFIG or ~/.kube/config unless
    ``kubeconfig`` is given), and the context's name. Without any kubeconfig and inside a pod,
    the pod's service account (context name ``in-cluster``)."""
    import os

    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    # Resolved here, per call: the client reads $KUBECONFIG once, when it is first imported.
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        contexts, active = config.list_kube_config_contexts(kubeconfig)
    except (ConfigException, OSError) as exc:
        if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration), "in-cluster"
        raise ClusterConfigError(
            f"cannot load a kubeconfig ({kubeconfig}): {exc}",
            context=context,
        ) from None
    names = [c.get("name") for c in contexts or []]
    if context is not None and context not in names:
        raise ClusterConfigError(
            f'context "{context}" is not in the kubeconfig; contexts: {", ".join(names) or "none"}',
            context=context,
        )
    name = context or (active or {}).get("name")
    try:
        api_client = config.new_client_from_config(config_file=kubeconfig, context=name)
    except ConfigException as exc:
        raise ClusterConfigError(
            f"cannot use {describe_context(name)} of the kubeconfig: {exc}", context=name
        ) from None
    return api_client, name
