"""The one plug-in table of the engine: a short name -> an object, per plug-in group.

The engine never imports `models/`, `pipelines/` or a use case by module path. It asks
this table for a plug-in by group and name, and the table finds it through the Python
entry points a distribution declares (pyproject.toml):

    [project.entry-points."kubeloop.model_kinds"]
    logistic = "models.logistic:KIND"

Groups (`GROUPS`) name what a plug-in of that group must be: a model kind is a
`kubeloop.training.model_kind.ModelKind`, a registry backend a
`kubeloop.registry.backends.RegistryBackend`, a pipeline a KFP pipeline function. An entry
point is loaded (its module imported) only when its name is asked for, so listing the
names of a group imports nothing. A name nobody declared raises `PluginError` with one
line naming the known ones.
"""

from __future__ import annotations

import functools
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

GROUPS = {group.name: group for group in (MODEL_KINDS, REGISTRIES, PIPELINES)}


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
