"""Registry backends by short name: each has a pydantic `<Name>Config` with a `Literal`
`type` field that forbids unknown keys, and a class imported only when it is used.

Only the BentoML model store is implemented. Another backend (a Kubeflow Model Registry,
MLflow) is added by writing a `ModelRegistry` subclass whose constructor takes its config,
a config class here, and one entry in `_BACKENDS`; `RegistryConfig` then becomes a union
discriminated on `type`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from kubeloop.registry.base import ModelRegistry, RegistryError


class BentoMLRegistryConfig(BaseModel):
    """The default backend: a BentoML model store plus stage files under one local
    directory `path` (see `kubeloop.registry.bentoml_store`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["bentoml"] = "bentoml"
    path: Path

    @field_validator("path", mode="before")
    @classmethod
    def _local_only(cls, value: Any) -> Any:
        # Pipeline parameters often carry the location as a URL.
        if isinstance(value, str) and "://" in value:
            if not value.startswith("file://"):
                raise ValueError(
                    f"the bentoml registry needs a local directory (or file:// URL), not {value!r}"
                )
            return value[len("file://") :]
        return value


# Extension point. A Kubeflow Model Registry backend would add e.g.
#   class KubeflowRegistryConfig(BaseModel): type: Literal["kubeflow"]; server_address: str; ...
# and "kubeflow": (KubeflowRegistryConfig, "kubeloop.registry.kubeflow_store.KubeflowRegistry").
RegistryConfig = BentoMLRegistryConfig

_BACKENDS: dict[str, tuple[type[BaseModel], str]] = {
    "bentoml": (BentoMLRegistryConfig, "kubeloop.registry.bentoml_store.BentoMLRegistry"),
}

DEFAULT_BACKEND = "bentoml"


def backend_names() -> list[str]:
    """Short names of the available registry backends."""
    return sorted(_BACKENDS)


def parse_registry_config(data: Mapping[str, Any] | BaseModel) -> BaseModel:
    """Validate a registry config given as a mapping (e.g. a YAML section); `type` picks
    the backend and defaults to bentoml. Raises RegistryError naming the bad key."""
    if isinstance(data, BaseModel):
        return data
    kind = data.get("type", DEFAULT_BACKEND)
    if kind not in _BACKENDS:
        raise RegistryError(
            f"unknown registry type {kind!r}; available: {', '.join(backend_names())}"
        )
    config_cls, _ = _BACKENDS[kind]
    try:
        return config_cls.model_validate(dict(data))
    except ValidationError as exc:
        raise RegistryError(f"invalid {kind} registry config: {exc}") from exc


def make_registry(config: Mapping[str, Any] | BaseModel) -> ModelRegistry:
    """Build the registry backend `config` describes (a config object or a mapping)."""
    parsed = parse_registry_config(config)
    kind = getattr(parsed, "type", None)
    if kind not in _BACKENDS:
        raise RegistryError(
            f"unknown registry type {kind!r}; available: {', '.join(backend_names())}"
        )
    module_name, _, class_name = _BACKENDS[kind][1].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(parsed)


def open_registry(path: str | Path) -> ModelRegistry:
    """The default (BentoML) registry rooted at the local directory `path` (a path or a
    file:// URL)."""
    return make_registry({"type": DEFAULT_BACKEND, "path": str(path)})
