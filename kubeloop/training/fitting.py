"""What every model kind's trainer shares: its inputs checked and transformed, the
`ModelInfo` fields every fit records, and importances as shares of their total.

A trainer (`ModelKind.trainer`) keeps only what is its own: the fit, its weights and the
fields only it records (architecture, importance method, library versions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kubeloop.training.artifacts import ModelInfo
from kubeloop.training.transform import FeatureTransform, TransformedBatch

if TYPE_CHECKING:
    import pandas as pd
    from pydantic import BaseModel


def transformed_frames(
    trainer: str,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    transform: FeatureTransform | None,
) -> tuple[FeatureTransform, TransformedBatch, TransformedBatch]:
    """(transform, train transformed, valid transformed). `transform` None: one fitted on
    `train`. ValueError naming `trainer` when either frame is empty."""
    if len(train) == 0 or len(valid) == 0:
        raise ValueError(f"{trainer} needs non-empty train and valid frames")
    transform = transform or FeatureTransform.fit(train)
    return transform, transform.transform(train), transform.transform(valid)


def fitted_info(
    kind: str,
    config: BaseModel,
    train: TransformedBatch,
    valid: TransformedBatch,
    seconds: float,
    **fields: Any,
) -> ModelInfo:
    """The `ModelInfo` of a fit of `kind` with `config` on the transformed `train` rows
    (validated on `valid`), which took `seconds`; `fields` are the kind's own (e.g.
    `best_iteration`, `importance_method`)."""
    return ModelInfo(
        kind=kind,
        numeric_features=list(train.numeric_names),
        categorical_features=list(train.categorical_names),
        train_seconds=round(seconds, 3),
        n_train=len(train),
        n_valid=len(valid),
        config=config.model_dump(mode="json"),
        **fields,
    )


def importance_shares(values: Mapping[str, float]) -> dict[str, float]:
    """Each value as a share of their total; all 0 when the total is not positive."""
    total = sum(values.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in values.items()}
