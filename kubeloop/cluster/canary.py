"""`ClusterCanary`: the `CanaryTarget` of an InferenceService (KServe's canary semantics).

It maps the protocol's verbs onto `InferenceServiceClient`: a `--version` becomes the
storageUri `PREFIX/MODEL/VERSION` unless a storageUri is given, and every result is the
client's status or patch (`kubectl`-style summary line, warnings, JSON data). `progress` and
`abort` read and end the rollout controller's progressive rollout (its record is in the
ConfigMap `state_configmap`, `kubeloop.cluster.controller`).
"""

from __future__ import annotations

import json
from dataclasses import KW_ONLY, InitVar, dataclass
from typing import Any

from kubeloop.cluster.isvc import RESOURCE
from kubeloop.serving.canary import CanaryResult

DEFAULT_STORAGE_PREFIX = "s3://mlpipeline/kubeloop/models"


@dataclass(eq=False)
class ClusterCanary:
    """The canary of InferenceService `model` in `namespace` of kube context `context`."""

    context: InitVar[str]
    namespace: InitVar[str]
    model: str
    _: KW_ONLY
    storage_uri: str | None = None
    storage_prefix: str = DEFAULT_STORAGE_PREFIX
    dry_run: bool = False
    client: Any = None
    """An `InferenceServiceClient` (or a fake); None: one for `namespace` in `context`."""
    state_configmap: str | None = None

    def __post_init__(self, context: str, namespace: str) -> None:
        if self.client is None:
            # Imported only here: the kubernetes client is not needed for the local rollout.
            from kubeloop.cluster.isvc import InferenceServiceClient

            self.client = InferenceServiceClient(namespace, context=context)

    def _uri(self, version: str | None) -> str | None:
        if self.storage_uri is None and version is not None:
            return f"{self.storage_prefix.rstrip('/')}/{self.model}/{version}"
        return self.storage_uri

    def status(self) -> CanaryResult:
        """The InferenceService's canary status (always shown as JSON)."""
        status = self.client.status(self.model)
        # A CanaryStatus; a client that answers with the API's plain dict is shown as it is.
        data = status.model_dump(mode="json") if hasattr(status, "model_dump") else dict(status)
        return CanaryResult(text=json.dumps(data, indent=2, default=str), data=data)

    def set(
        self, percent: int, *, version: str | None = None, reason: str | None = None
    ) -> CanaryResult:
        """canaryTrafficPercent `percent`; with a version, that model as the new revision.
        `reason` is not stored in the cluster."""
        return _patched(
            self.client.set_canary(
                self.model, percent, storage_uri=self._uri(version), dry_run=self.dry_run
            )
        )

    def promote(self, *, reason: str | None = None) -> CanaryResult:
        """Remove canaryTrafficPercent: the latest ready revision gets 100%."""
        return _patched(self.client.promote(self.model, dry_run=self.dry_run))

    def rollback(self, *, version: str | None = None, reason: str | None = None) -> CanaryResult:
        """canaryTrafficPercent 0; with a version, the spec reverted to it in the same patch."""
        return _patched(
            self.client.rollback(self.model, storage_uri=self._uri(version), dry_run=self.dry_run)
        )

    def _loop(self) -> Any:
        from kubeloop.cluster.controller import DEFAULT_STATE_CONFIGMAP, build_loop

        return build_loop(
            self.client,
            self.model,
            self,
            records=None,  # status and abort read no request log
            state_configmap=self.state_configmap or DEFAULT_STATE_CONFIGMAP,
        )

    def progress(self) -> CanaryResult:
        """The progressive rollout: step, percent, the last decision's statistics, reasons."""
        from kubeloop.serving.rollout_loop import record_summary, render_record

        record = self._loop().store.load()
        status = self.client.status(self.model)
        data = record_summary(record)
        data["canaryTrafficPercent"] = status.canary_percent
        text = render_record(record)
        text += f"\ncluster     canaryTrafficPercent {status.canary_percent}, phase {status.phase}"
        return CanaryResult(text=text, data=data)

    def abort(self, *, reason: str | None = None) -> CanaryResult:
        """Roll back now (canaryTrafficPercent 0) and end the rollout, as an Event too."""
        from kubeloop.serving.rollout_loop import record_summary

        record = self._loop().abort(reason or "aborted with `rollout abort`")
        return CanaryResult(
            text=f"{RESOURCE}/{self.model} rollout of {record.candidate} aborted: "
            "canaryTrafficPercent 0",
            data=record_summary(record),
        )


def _patched(result: Any) -> CanaryResult:
    return CanaryResult(
        text=result.summary(), data=result.model_dump(mode="json"), warnings=list(result.warnings)
    )
