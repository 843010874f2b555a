"""The drift reference: what one model version's traffic is compared with (a sample of the
rows it did not learn from, with the model's scores on them)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kubeloop.drift.detectors.base import DriftError

log = logging.getLogger(__name__)


@dataclass
class Reference:
    """What one model version's traffic is compared with.

    `features` is the registered reference sample (model input columns), `predictions`
    the model's scores on it (None when the model could not be loaded: the monitor then
    learns reference scores from the first served windows), `metrics` the version's
    evaluation metrics (log_loss, normalized_entropy, calibration_ratio, base_rate, ...).
    """

    model: str
    version: str
    features: pd.DataFrame
    predictions: np.ndarray | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.features) == 0:
            raise DriftError(f"the reference sample of {self.model}:{self.version} is empty")
        if self.predictions is not None:
            self.predictions = np.asarray(self.predictions, dtype=np.float64).reshape(-1)
            if len(self.predictions) != len(self.features):
                raise DriftError(
                    f"{len(self.predictions)} reference predictions for "
                    f"{len(self.features)} reference rows"
                )

    @classmethod
    def from_dir(cls, path: str | Path, *, score: bool = True) -> Reference:
        """Read an exported version directory (kubeloop.registry.export): metadata.json
        and reference.parquet; with `score`, load the model files beside them and score
        the reference sample (falling back to no predictions, with a warning)."""
        from kubeloop.registry.export import METADATA_FILE, REFERENCE_FILE
        from kubeloop.registry.records import ModelVersion

        root = Path(path)
        meta_path, ref_path = root / METADATA_FILE, root / REFERENCE_FILE
        for needed in (meta_path, ref_path):
            if not needed.is_file():
                raise DriftError(
                    f"{needed} is missing: the reference directory must be an exported model "
                    "version (kubeloop models export) with a reference sample"
                )
        try:
            record = ModelVersion.model_validate_json(meta_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DriftError(f"{meta_path} is not a model version record: {exc}") from exc
        features = pd.read_parquet(ref_path)
        missing = [c for c in record.features if c not in features.columns]
        if missing:
            raise DriftError(f"{ref_path} lacks the model's features {missing}")
        features = features[list(record.features)]
        predictions = score_reference(features, root) if score else None
        return cls(record.name, record.version, features, predictions, dict(record.metrics))

    @classmethod
    def from_registry(
        cls, registry: Any, name: str, version: str | None = None, *, score: bool = True
    ) -> Reference:
        """The reference of a registered version (`registry` is a `ModelRegistry`)."""
        record = registry.get(name, version)
        features = registry.reference(name, record.version)
        features = features[[c for c in record.features if c in features.columns]]
        model_dir = registry.model_path(name, record.version)
        predictions = score_reference(features, model_dir) if score else None
        return cls(record.name, record.version, features, predictions, dict(record.metrics))


def score_reference(features: pd.DataFrame, model_dir: str | Path) -> np.ndarray | None:
    """The model's scores on the reference sample, or None (logged) when the model in
    `model_dir` cannot be loaded or scored."""
    try:
        from kubeloop.training.artifacts import load_model

        model = load_model(model_dir)
        scores = np.asarray(model.predict_proba(features), dtype=np.float64).reshape(-1)
    except Exception as exc:  # noqa: BLE001 - any failure means: learn the reference online
        log.warning(
            "cannot score the reference sample with the model in %s (%s); reference "
            "predictions will be learned from the first served windows",
            model_dir,
            exc,
        )
        return None
    return scores
