"""Model registry: versions of trained models with their metadata, reference sample and
stage (candidate -> canary -> production -> archived), exportable for KServe.

    from kubeloop.registry import open_registry, RegistrationRequest
    registry = open_registry(workdir.registry)
    v = registry.register("ctr", model_dir, RegistrationRequest(...), reference=sample)
    registry.set_stage("ctr", v.version, "canary")
    export(registry, "ctr", "canary", "s3://bucket/models/ctr/canary")

The default backend is a BentoML model store (`kubeloop.registry.bentoml_store`); other
backends plug in through the plug-in table (`kubeloop.plugins`, group `registries`), see
`kubeloop.registry.backends`.
"""

from __future__ import annotations

from typing import Any

from kubeloop.registry.backends import (
    BentoMLRegistryConfig,
    RegistryConfig,
    backend_names,
    make_registry,
    open_registry,
    parse_registry_config,
)
from kubeloop.registry.base import ModelRegistry, registry_summary
from kubeloop.registry.export import export, export_version
from kubeloop.registry.records import (
    ALLOWED_TRANSITIONS,
    GateDecision,
    ModelVersion,
    RegistrationRequest,
    RegistryError,
    Stage,
    StageChange,
    TrainingWindow,
    detect_code_version,
    plan_stage_change,
)

__all__ = [
    "ALLOWED_TRANSITIONS",
    "BentoMLRegistry",
    "BentoMLRegistryConfig",
    "GateDecision",
    "ModelRegistry",
    "ModelVersion",
    "RegistrationRequest",
    "RegistryConfig",
    "RegistryError",
    "Stage",
    "StageChange",
    "TrainingWindow",
    "backend_names",
    "detect_code_version",
    "export",
    "export_version",
    "make_registry",
    "open_registry",
    "parse_registry_config",
    "plan_stage_change",
    "registry_summary",
]


def __getattr__(name: str) -> Any:
    # The BentoML backend is imported on first use, keeping `import kubeloop.registry`
    # (and the CLI's start-up) free of BentoML.
    if name == "BentoMLRegistry":
        from kubeloop.registry.bentoml_store import BentoMLRegistry

        return BentoMLRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
