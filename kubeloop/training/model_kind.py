"""A model kind as one spec: what the engine needs to train, store, gate and serve it.

A model kind is one module in `models/` that defines a `ModelKind` and one entry point
in pyproject.toml (`[project.entry-points."kubeloop.model_kinds"]`) that names it. Every
stage reads the spec instead of listing kinds:

* config: `config_class`, a pydantic model with `extra="forbid"` and a `Literal` `kind`
  field (TrainingConfig validates each kind's section through it);
* trainer: `trainer`, "module:function" taking (train, valid, config, transform) and
  returning a `TrainedModel` (`transform` None: fit one on train);
* saved-artifact layout: `model_class` ("module:Class", a `TrainedModel` subclass that
  saves and loads the directory) and `weights_file`, the main file of that directory
  (the registry records it; `kserve_model_file` is the name a stock KServe server
  expects, when there is one, which the export adds as a copy);
* export hook: `export_hook`, "module:function" run on the export directory (e.g.
  LightGBM's trees compiled once, stored with the exported version);
* predictor hook: `load_for_serving(dir)`, an object with `predict_proba(frame)` set up
  for small online batches;
* simplicity rank: `rank`, 0 for the simplest; the ladder ("start simple") visits kinds
  by rank.

The spec names its trainer and model class by string, so registering a kind (and
validating its config) imports neither torch nor LightGBM.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from kubeloop import plugins

if TYPE_CHECKING:
    import pandas as pd

    from kubeloop.training.artifacts import TrainedModel
    from kubeloop.training.transform import FeatureTransform


def _import(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class ModelKind:
    """The spec of one model kind (see the module docstring)."""

    name: str
    rank: int
    config_class: type[BaseModel]
    trainer: str
    model_class: str
    weights_file: str
    kserve_model_file: str | None = None
    export_hook: str | None = None
    """"module:function" the export calls on the directory it is about to publish (the
    model files already copied there), to add what serving wants built once, e.g.
    LightGBM's compiled trees; None: nothing to add."""
    description: str = ""

    def __post_init__(self) -> None:
        kind_field = self.config_class.model_fields.get("kind")
        if kind_field is None or kind_field.default != self.name:
            raise ValueError(
                f"{self.config_class.__name__} needs a `kind: Literal[{self.name!r}]` field"
            )

    def parse_config(self, data: Mapping[str, Any] | BaseModel | None) -> BaseModel:
        """This kind's config from a mapping (unknown keys fail), or the defaults."""
        if isinstance(data, self.config_class):
            return data
        if isinstance(data, BaseModel):
            data = data.model_dump()
        return self.config_class.model_validate({"kind": self.name, **(data or {})})

    def train(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame,
        config: BaseModel | None = None,
        transform: FeatureTransform | None = None,
    ) -> TrainedModel:
        """Train this kind on (train, valid) with `config` (default: the defaults) and the
        fitted `transform` (default: one the trainer fits on `train` for the default use
        case; the pipeline passes the one its use case fitted)."""
        return _import(self.trainer)(train, valid, self.parse_config(config), transform)

    def model_type(self) -> type[TrainedModel]:
        """The `TrainedModel` subclass that saves and loads this kind's directory."""
        return _import(self.model_class)

    def prepare_export(self, directory: str | Path) -> None:
        """Run the kind's export hook on an export directory being built (no-op without
        one)."""
        if self.export_hook is not None:
            _import(self.export_hook)(Path(directory))

    def load_for_serving(self, directory: str | Path) -> TrainedModel:
        """The predictor hook: the model in `directory`, set up for online batches."""
        return self.model_type().load(directory).for_serving()


def model_kind(name: str) -> ModelKind:
    """The spec registered as `name`; PluginError naming the known kinds otherwise."""
    spec = plugins.load(plugins.MODEL_KINDS, name)
    if not isinstance(spec, ModelKind) or spec.name != name:
        raise plugins.PluginError(
            f"model kind {name!r} must be registered as a ModelKind named {name!r}"
        )
    return spec


def kind_names() -> list[str]:
    """Every registered kind, simplest first (by rank, then name)."""
    return [spec.name for spec in model_kinds()]


def model_kinds() -> list[ModelKind]:
    """Every registered spec, simplest first (by rank, then name)."""
    specs = [model_kind(name) for name in plugins.names(plugins.MODEL_KINDS)]
    return sorted(specs, key=lambda spec: (spec.rank, spec.name))


def is_known(name: str) -> bool:
    """Whether a kind of that name is registered (nothing is imported)."""
    return name in plugins.names(plugins.MODEL_KINDS)


def parse_kind_config(name: str, data: Any) -> BaseModel:
    """The typed config of kind `name`; a ValueError names the kind and the bad key."""
    try:
        return model_kind(name).parse_config(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"invalid {name} config: {problems}") from None
