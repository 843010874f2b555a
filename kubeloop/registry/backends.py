"""Registry backends by short name, through the engine's one plug-in table
(`kubeloop.plugins`, entry-point group `kubeloop.registries`): each is a `RegistryBackend`
(a `plugins.Backend`) with a pydantic `<Name>Config` that has a `Literal` `type` field and
forbids unknown keys, and a class imported only when it is used.

Only the BentoML model store is implemented. Another backend (a Kubeflow Model Registry,
MLflow) is added by writing a `ModelRegistry` subclass whose constructor takes its config,
a `RegistryBackend` naming both, and one entry point in pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from kubeloop import plugins
from kubeloop.registry.base import ModelRegistry
from kubeloop.registry.records import RegistryError

# One registry backend: its config class and its `ModelRegistry` class, named as
# "module:Class" so that naming the backend imports nothing heavy.
RegistryBackend = plugins.Backend


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


# A second backend makes this a union discriminated on `type`.
RegistryConfig = BentoMLRegistryConfig

# Registered in pyproject.toml as `kubeloop.registries: bentoml`.
BENTOML = RegistryBackend(BentoMLRegistryConfig, "kubeloop.registry.bentoml_store:BentoMLRegistry")

DEFAULT_BACKEND = "bentoml"


def backend_names() -> list[str]:
    """Short names of the available registry backends."""
    return plugins.names(plugins.REGISTRIES)


def _backend(kind: Any) -> RegistryBackend:
    try:
        return plugins.load(plugins.REGISTRIES, kind)
    except plugins.PluginError as exc:
        raise RegistryError(str(exc)) from None


def parse_registry_config(data: Mapping[str, Any] | BaseModel) -> BaseModel:
    """Validate a registry config given as a mapping (e.g. a YAML section); `type` picks
    the backend and defaults to bentoml. Raises RegistryError naming the bad key."""
    if isinstance(data, BaseModel):
        return data
    kind = data.get("type", DEFAULT_BACKEND)
    backend = _backend(kind)
    try:
        return backend.config_class.model_validate(dict(data))
    except ValidationError as exc:
        raise RegistryError(f"invalid {kind} registry config: {exc}") from exc


def make_registry(config: Mapping[str, Any] | BaseModel) -> ModelRegistry:
    """Build the registry backend `config` describes (a config object or a mapping)."""
    parsed = parse_registry_config(config)
    return _backend(getattr(parsed, "type", None)).make(parsed)


def open_registry(path: str | Path) -> ModelRegistry:
    """The default (BentoML) registry rooted at the local directory `path` (a path or a
    file:// URL)."""
    return make_registry({"type": DEFAULT_BACKEND, "path": str(path)})
