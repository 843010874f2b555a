"""The one plug-in table of the engine: a short name -> an object, per plug-in group.

The engine never imports `models/`, `pipelines/` or a use case by module path. It asks
this table for a plug-in by group and name, and the table finds it through the Python
entry points a distribution declares (pyproject.toml):

    [project.entry-points."kubeloop.model_kinds"]
    logistic = "models.logistic:KIND"

Groups (`GROUPS`) name what a plug-in of that group must be:

    model_kinds      a `kubeloop.training.model_kind.ModelKind`
    registries       a `Backend` whose factory is a `kubeloop.registry.base.ModelRegistry`
    pipelines        a KFP pipeline function
    drift_detectors  a `Backend` whose factory is a `kubeloop.drift.detectors.base.DriftDetector`
    alert_stores     a `Backend` whose factory is a `kubeloop.drift.alerts.AlertStore`
    online_stores    a pydantic config class with a `Literal` `type` and `feast_config()`
                     (the `online_store:` section of feature_store.yaml)
    offline_stores   a Feast `OfflineStore` class; `feast_type` gives the
                     `offline_store.type` that selects it in feature_store.yaml
    usecases         a `kubeloop.usecase.UseCase` (a problem: schema, features, source)

An entry point is loaded (its module imported) only when its name is asked for, so listing
the names of a group imports nothing. A name nobody declared raises `PluginError` with one
line naming the known ones. Every path, in pyproject.toml and in a `Backend`, has the one
format entry points use: "module:attr".

This module is the only name -> plug-in table of the engine (tests/test_plugins.py fails
on a hand-written one elsewhere in kubeloop/): a new backend is one module plus one entry
point.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from kubeloop.errors import KubeloopError

ENTRY_POINT_PREFIX = "kubeloop."


class PluginError(KubeloopError):
    """No plug-in of that name in its group, or the plug-in failed to load."""


@dataclass(frozen=True)
class PluginGroup:
    """One kind of plug-in: its entry-point group and the noun its errors use."""

    name: str
    noun: str

    @property
    def entry_point_group(self) -> str:
        return ENTRY_POINT_PREFIX + self.name


MODEL_KINDS = PluginGroup("model_kinds", "model kind")
REGISTRIES = PluginGroup("registries", "registry type")
PIPELINES = PluginGroup("pipelines", "pipeline")
DRIFT_DETECTORS = PluginGroup("drift_detectors", "drift detector type")
ALERT_STORES = PluginGroup("alert_stores", "alert store type")
ONLINE_STORES = PluginGroup("online_stores", "online store")
OFFLINE_STORES = PluginGroup("offline_stores", "offline store")
USECASES = PluginGroup("usecases", "use case")

GROUPS = {
    group.name: group
    for group in (
        MODEL_KINDS,
        REGISTRIES,
        PIPELINES,
        DRIFT_DETECTORS,
        ALERT_STORES,
        ONLINE_STORES,
        OFFLINE_STORES,
        USECASES,
    )
}


def resolve(path: str) -> Any:
    """The object a "module:attr" path names (the format of an entry point's value),
    its module imported now."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"{path!r} is not a 'module:attr' path")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Backend:
    """A backend chosen by a config's `type`: its pydantic `<Name>Config` class and the
    "module:attr" of what builds it from that config, imported only by `make`, so that
    naming or configuring the backend imports nothing heavy."""

    config_class: type
    factory: str

    def make(self, config: Any) -> Any:
        return resolve(self.factory)(config)


@functools.cache
def _entry_points(group: PluginGroup) -> dict[str, metadata.EntryPoint]:
    # Cached per process: the installed distributions do not change under a running engine.
    return {ep.name: ep for ep in metadata.entry_points(group=group.entry_point_group)}


def names(group: PluginGroup) -> list[str]:
    """The sorted names declared in `group` (nothing is imported)."""
    return sorted(_entry_points(group))


def _unknown(group: PluginGroup, name: str) -> PluginError:
    known = names(group)
    if not known:
        return PluginError(
            f"unknown {group.noun} {name!r}: no {group.noun} is registered (entry points "
            f"{group.entry_point_group!r}); install kubeloop with `pip install -e .`"
        )
    return PluginError(f"unknown {group.noun} {name!r}; known: {', '.join(known)}")


@functools.cache
def load(group: PluginGroup, name: str) -> Any:
    """The plug-in `name` of `group`, its module imported on first use."""
    entry_point = _entry_points(group).get(name)
    if entry_point is None:
        raise _unknown(group, name)
    try:
        return entry_point.load()
    except (ImportError, AttributeError) as exc:
        raise PluginError(
            f"{group.noun} {name!r} is declared as {entry_point.value!r} but does not load: {exc}"
        ) from exc


def check_name(group: PluginGroup, name: str) -> str:
    """`name` if `group` declares it, else the one-line PluginError (nothing is imported)."""
    if name not in _entry_points(group):
        raise _unknown(group, name)
    return name


def declared(group: PluginGroup, name: str) -> str:
    """The "module:attr" that `name` of `group` is declared as (nothing is imported)."""
    return _entry_points(group)[check_name(group, name)].value


def feast_type(name: str) -> str:
    """The `offline_store.type` of feature_store.yaml for the offline store `name`
    (nothing is imported).

    Feast finds a custom store by its dotted class path, so that is what a store declared
    as "pkg.mod:Store" is written as ("pkg.mod.Store"). A store of Feast's own package is
    declared under Feast's short type name (`file = "feast.infra.offline_stores.dask:..."`)
    and written as that name, the form Feast's documentation and `feast init` use."""
    path = declared(OFFLINE_STORES, name)
    if path.split(".", 1)[0] == "feast":
        return name
    return path.replace(":", ".")


def offline_store_name(feast_store_type: str) -> str | None:
    """The offline store whose `feast_type` (or dotted class path) is `feast_store_type`,
    None if no declared store is."""
    for name in names(OFFLINE_STORES):
        if feast_store_type in (feast_type(name), declared(OFFLINE_STORES, name).replace(":", ".")):
            return name
    return None
