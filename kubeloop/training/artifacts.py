"""A trained model as one object and one directory, whatever library trained it.

`TrainedModel` is what the trainers return, what the registry stores and what the KServe
predictor loads: it owns its fitted `FeatureTransform`, so `predict_proba(raw_df)` applies
exactly the transform the model was trained with. On disk a model is a directory:

* `model.json` — kind, feature names, training figures, config (and, for torch, the
  architecture). Written last, so a directory without it is an incomplete save.
* `transform.json` — the fitted feature transform (the serving transformer reads it too).
* the weights: the file its model kind's spec names (`ModelKind.weights_file`), e.g.
  `model.txt` (LightGBM booster text), `model.pt` (torch state_dict) or `logistic.json`.

`load_model(dir)` reads the kind from `model.json`, finds its spec in the plug-in table
(`kubeloop.training.model_kind`) and imports only that kind's library, so a LightGBM
predictor never imports torch.
"""

from __future__ import annotations

import importlib
import json
import platform
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from kubeloop.errors import KubeloopError
from kubeloop.training.transform import FeatureTransform, TransformedBatch

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
TRANSFORM_JSON = "transform.json"

class ModelArtifactError(KubeloopError):
    """A model directory is missing, incomplete or of an unknown kind."""


class ModelInfo(BaseModel):
    """The contents of `model.json`: what a model is and how its training went."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    kind: str
    numeric_features: list[str]
    categorical_features: list[str]
    best_iteration: int = Field(
        description=(
            "LightGBM: boosting rounds kept; torch: epoch (1-based) whose weights were kept;"
            " logistic: solver iterations of the kept fit"
        )
    )
    epochs: int | None = Field(None, description="torch: epochs run before early stopping")
    train_seconds: float
    n_train: int
    n_valid: int
    valid_log_loss: float | None = None
    config: dict[str, Any]
    architecture: dict[str, Any] | None = None
    feature_importance: dict[str, float] | None = None
    importance_method: str
    versions: dict[str, str] = Field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return [*self.numeric_features, *self.categorical_features]


def library_versions(*modules: str) -> dict[str, str]:
    """Versions of python and the given libraries, recorded with every model."""
    out = {"python": platform.python_version()}
    for name in modules:
        module = importlib.import_module(name)
        out[name] = str(getattr(module, "__version__", "unknown"))
    return out


class TrainedModel(ABC):
    """A fitted feature transform plus a fitted model of one `kind`.

    Subclasses implement `predict_batch`, `feature_importance`, `_save_weights` and
    `_load`; everything else (the transform, model.json, dispatch) lives here.
    """

    kind: ClassVar[str]

    def __init__(self, transform: FeatureTransform, info: ModelInfo):
        self.transform = transform
        self.info = info

    @property
    def train_seconds(self) -> float:
        return self.info.train_seconds

    @property
    def best_iteration(self) -> int:
        return self.info.best_iteration

    @property
    def feature_names(self) -> list[str]:
        return self.info.feature_names

    def for_serving(self) -> TrainedModel:
        """This model set up for small online batches (the predictor calls it once after
        loading); kinds whose library parallelises each call override it."""
        return self

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Click probabilities (float64, one per row) for raw model inputs."""
        return self.predict_batch(self.transform.transform(df))

    @abstractmethod
    def predict_batch(self, batch: TransformedBatch) -> np.ndarray:
        """Click probabilities for already transformed inputs (the transformer/predictor
        split of KServe sends these)."""

    @abstractmethod
    def feature_importance(self) -> dict[str, float]:
        """Importance per transformed feature as shares summing to 1 (method in
        `info.importance_method`)."""

    @abstractmethod
    def _save_weights(self, directory: Path) -> None: ...

    @classmethod
    @abstractmethod
    def _load(
        cls, directory: Path, transform: FeatureTransform, info: ModelInfo
    ) -> TrainedModel: ...

    @classmethod
    def load(cls, directory: str | Path) -> TrainedModel:
        """Load a directory this class saved (`load_model` when the kind is not known)."""
        directory = Path(directory)
        info = read_model_info(directory)
        if info.kind != cls.kind:
            raise ModelArtifactError(f"{directory} holds a {info.kind} model, not {cls.kind}")
        return cls._load(directory, FeatureTransform.load(directory / TRANSFORM_JSON), info)

    def save(self, directory: str | Path) -> Path:
        """Write the model directory (see the module docstring) and return its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_weights(directory)
        self.transform.save(directory / TRANSFORM_JSON)
        (directory / MODEL_JSON).write_text(
            json.dumps(self.info.model_dump(mode="json"), indent=2) + "\n"
        )
        return directory


def read_model_info(directory: str | Path) -> ModelInfo:
    """Parse `model.json` of a model directory."""
    path = Path(directory) / MODEL_JSON
    if not path.is_file():
        raise ModelArtifactError(f"{path} does not exist: not a saved kubeloop model directory")
    info = ModelInfo.model_validate_json(path.read_text())
    if info.format_version != FORMAT_VERSION:
        raise ModelArtifactError(
            f"{path}: format_version {info.format_version} is not {FORMAT_VERSION}; retrain"
        )
    return info


def model_class(kind: str) -> type[TrainedModel]:
    """The `TrainedModel` subclass of `kind` (from its spec), imported on demand."""
    from kubeloop.plugins import PluginError
    from kubeloop.training.model_kind import model_kind

    try:
        return model_kind(kind).model_type()
    except PluginError as exc:
        raise ModelArtifactError(str(exc)) from None


def load_model(directory: str | Path) -> TrainedModel:
    """Load a model directory written by `TrainedModel.save`, whatever its kind."""
    return model_class(read_model_info(directory).kind).load(directory)
