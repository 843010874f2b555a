"""The interface every registry backend implements (`ModelRegistry`), and the run
report's registry summary. The records and stage rules live in `kubeloop.registry.records`;
import them from there."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from kubeloop.registry.records import (
    SINGLE_SLOT_STAGES,
    ModelVersion,
    RegistrationRequest,
    RegistryError,
    Stage,
    validate_name,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ModelRegistry", "registry_summary"]


class ModelRegistry(ABC):
    """Where trained models are registered, staged and exported for serving.

    Implementations must make `register` and `set_stage` atomic: a failure or interruption
    at any point leaves the registry as it was (no partial version is ever listed, and at
    most one production and one canary version per name exist at every instant). Reads
    may run concurrently with a writer and see either the state before or after it.

    Version arguments accept a version string, None or "latest", "production" or
    "canary" (see `resolve_ref`).
    """

    def register(
        self,
        name: str,
        model_dir: str | Path,
        request: RegistrationRequest | Mapping[str, Any],
        reference: pd.DataFrame | None = None,
    ) -> ModelVersion:
        """Store a copy of `model_dir` as the next version of `name`, in stage candidate.

        `reference` is a sample of training features kept for drift detection; it must
        contain every column in `request.features`. Returns the new version's record.
        The name, the request and the reference are checked here, for every backend,
        before the backend's `_add_version` stores anything.
        """
        validate_name(name)
        if not isinstance(request, RegistrationRequest):
            try:
                request = RegistrationRequest.model_validate(dict(request))
            except ValidationError as exc:
                raise RegistryError(f"invalid registration request for {name!r}: {exc}") from exc
        if reference is not None:
            missing = [f for f in request.features if f not in reference.columns]
            if missing:
                raise RegistryError(
                    f"reference sample for {name!r} lacks feature columns: {', '.join(missing)}"
                )
        return self._add_version(name, Path(model_dir), request, reference)

    @abstractmethod
    def _add_version(
        self, name: str, source: Path, request: RegistrationRequest, reference: pd.DataFrame | None
    ) -> ModelVersion:
        """`register` once its arguments are checked: copy `source` in as the next version
        of `name` (stage candidate), atomically."""

    @abstractmethod
    def list(self, name: str | None = None) -> list[ModelVersion]:
        """All versions (of `name`, or of every name), ordered by name then version.
        An unknown name gives an empty list."""

    @abstractmethod
    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The record of one version (default: the latest); RegistryError if absent."""

    @abstractmethod
    def set_stage(
        self, name: str, version: str, stage: Stage | str, *, force: bool = False
    ) -> ModelVersion:
        """Move `version` to `stage` under the rules of `plan_stage_change`, archiving the
        version it displaces from production or canary, in one atomic step."""

    @abstractmethod
    def model_path(self, name: str, version: str | None = None) -> Path:
        """Local directory holding the version's model files, as the trainer wrote them.
        Treat it as read-only."""

    @abstractmethod
    def reference(self, name: str, version: str | None = None) -> pd.DataFrame:
        """The reference sample stored with the version; RegistryError if it has none."""

    def has_reference(self, name: str, version: str | None = None) -> bool:
        """Whether the version was registered with a reference sample."""
        return self.get(name, version).reference_rows > 0

    def production(self, name: str) -> ModelVersion | None:
        """The production version of `name`, or None (also when `name` is unknown)."""
        return next((v for v in self.list(name) if v.stage == Stage.PRODUCTION), None)

    def canary(self, name: str) -> ModelVersion | None:
        """The canary version of `name`, or None (also when `name` is unknown)."""
        return next((v for v in self.list(name) if v.stage == Stage.CANARY), None)

    def promote(self, name: str, version: str, *, force: bool = False) -> ModelVersion:
        """Shorthand for `set_stage(name, version, "production")`."""
        return self.set_stage(name, version, Stage.PRODUCTION, force=force)

    def reference_file(self, name: str, version: str | None = None) -> Path | None:
        """The stored reference sample as a Parquet file, when the backend keeps one on a
        local disk (the export then copies it instead of rewriting it); None otherwise."""
        return None

    def export(
        self, name: str, version: str | None, dest: str | Path, *, overwrite: bool = False
    ) -> str:
        """Shorthand for the free function `kubeloop.registry.export.export(self, ...)`."""
        from kubeloop.registry.export import export

        return export(self, name, version, dest, overwrite=overwrite)


def registry_summary(registry: ModelRegistry, name: str | None = None) -> dict[str, Any]:
    """Figures for the run report's `registry` section: for each name, its versions (stage,
    kind, metrics, gate) and which version is in production and in canary."""
    summary: dict[str, Any] = {}
    for v in registry.list(name):
        entry = summary.setdefault(v.name, {"production": None, "canary": None, "versions": []})
        entry["versions"].append(
            {
                "version": v.version,
                "stage": v.stage.value,
                "model_kind": v.model_kind,
                "metrics": v.metrics,
                "gate_passed": v.gate.passed,
                "created_at": v.created_at.isoformat(),
            }
        )
        if v.stage in SINGLE_SLOT_STAGES:
            entry[v.stage.value] = v.version
    return summary
