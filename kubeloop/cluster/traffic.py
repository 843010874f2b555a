"""Which Knative revision of an InferenceService is the primary and which the canary.

KServe's logger does not say which side of the canary split served an event: its
``ce-endpoint`` comes from a pod label no v0.20 controller sets. It does say the pod name,
from which `kubeloop.drift.events.revision_from_source` reads the revision. The role of each
revision is in the InferenceService's status, ``status.components.predictor``, as KServe writes
it (kserve v0.20.0 ``ksvc_reconciler.go:132-164``, ``inference_service_status.go:575-631``):

* with ``spec.predictor.canaryTrafficPercent`` set, the ``latestRevision: true`` target (P%)
  is the canary, the ``prev``-tagged target (100-P%, the latest rolled-out revision) the
  primary; a created but not yet routed revision (latest created) is the canary too, since it
  will take the canary's share;
* without it, every target (one ``latestRevision`` at 100%) is the primary;
* the latest and previous rolled-out revisions are the primary whatever the split (a few
  requests still in flight on the revision that was just replaced).

`RevisionVariants` keeps that mapping fresh for the drift service: it reads the
InferenceService every ``refresh_seconds``, and at once (at most every
``miss_refresh_seconds``) when an event names a revision it has not seen. It never raises:
without a cluster, or when the API is unreachable, it answers None and the event falls back
to ``ce-variant``/``ce-endpoint`` (see `kubeloop.drift.events.parse_event`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from kubeloop.cluster.isvc import CanaryStatus

log = logging.getLogger(__name__)

PRIMARY = "primary"
CANARY = "canary"


def revision_variants(status: CanaryStatus) -> dict[str, str]:
    """``{revision: "primary" | "canary"}`` for every revision the status names."""
    roles: dict[str, str] = {}
    split = status.canary_percent is not None
    for target in status.traffic:
        if not target.revision:
            continue
        role = CANARY if split and target.latest else PRIMARY
        # A split over one revision (promote, then rollback) has it both latest and `prev`;
        # the pinned side is what it is serving for.
        if roles.get(target.revision) != PRIMARY:
            roles[target.revision] = role
    pinned = status.pinned_revision
    if split and status.latest_created_revision and status.latest_created_revision != pinned:
        roles.setdefault(status.latest_created_revision, CANARY)
    for revision in (status.latest_rolledout_revision, status.previous_rolledout_revision):
        if revision and revision not in roles:
            roles[revision] = PRIMARY
    if pinned:
        roles[pinned] = PRIMARY
    return roles


@dataclass(eq=False)
class RevisionVariants:
    """A thread-safe, self-refreshing ``revision -> variant`` lookup for one
    InferenceService; call it with a revision name (it is a `RevisionVariant`).

    ``read_status`` returns the current `CanaryStatus` (e.g.
    ``lambda: InferenceServiceClient(ns).status(name)``); it is called lazily, on the
    first lookup, so building this object needs no cluster. ``clock`` is injectable for tests.
    """

    read_status: Callable[[], CanaryStatus]
    _: KW_ONLY
    refresh_seconds: float = 30.0
    miss_refresh_seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    errors: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _roles: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _read_at: float | None = field(default=None, init=False, repr=False)

    @classmethod
    def for_inference_service(
        cls, name: str, namespace: str, *, api: Any = None, **kwargs: Any
    ) -> RevisionVariants:
        """Lookups backed by the InferenceService ``name`` (kubeconfig or in-cluster service
        account; ``api`` injects a CustomObjectsApi). The client is built on first use."""
        client: list[Any] = []

        def read() -> CanaryStatus:
            if not client:
                from kubeloop.cluster.isvc import InferenceServiceClient

                client.append(InferenceServiceClient(namespace, api=api))
            return client[0].status(name)

        return cls(read, **kwargs)

    def roles(self) -> dict[str, str]:
        """The mapping as last read (a copy)."""
        with self._lock:
            return dict(self._roles)

    def refresh(self) -> bool:
        """Read the status now; False (logged, counted in ``errors``) when that failed."""
        try:
            roles = revision_variants(self.read_status())
        except Exception as exc:  # noqa: BLE001 - a lookup must never fail an event
            with self._lock:
                self._read_at = self.clock()
                self.errors += 1
            log.warning("cannot read the InferenceService status for revision roles: %s", exc)
            return False
        with self._lock:
            self._roles = roles
            self._read_at = self.clock()
        return True

    def _due(self, revision: str) -> bool:
        with self._lock:
            if self._read_at is None:
                return True
            age = self.clock() - self._read_at
            if revision not in self._roles:
                return age >= self.miss_refresh_seconds
            return age >= self.refresh_seconds

    def __call__(self, revision: str) -> str | None:
        """The variant ``revision`` serves, or None when the status does not name it."""
        if self._due(revision):
            self.refresh()
        with self._lock:
            return self._roles.get(revision)
