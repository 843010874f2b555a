"""What every model kind's trainer shares: its signature and inputs (the `trainer`
decorator: default config, frames checked and transformed, the call timed), the
`ModelInfo` fields every fit records, importances as shares of their total, and the
`ModelKind` of a kind registered beside its trainer (`registration`).

A trainer (`ModelKind.trainer`) keeps only what is its own: the fit, its weights and the
fields only it records (architecture, importance method, library versions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kubeloop.training.artifacts import ModelInfo, TrainedModel
from kubeloop.training.model_kind import ModelKind
from kubeloop.training.transform import FeatureTransform, TransformedBatch

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from pydantic import BaseModel

C = TypeVar("C", bound="BaseModel")
M = TypeVar("M")


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


@dataclass(frozen=True)
class Fit(Generic[C]):
    """One call of a trainer: its `config` (the kind's defaults when none was given), the
    `train` and `valid` frames, the fitted `transform`, both frames transformed (`tr`,
    `va`) and when the call started (`time.perf_counter`)."""

    config: C
    train: pd.DataFrame
    valid: pd.DataFrame
    transform: FeatureTransform
    tr: TransformedBatch
    va: TransformedBatch
    started: float

    def labels(self, frame: pd.DataFrame, dtype: Any) -> np.ndarray:
        """The label column of `frame` (`train` or `valid`) as an array of `dtype`."""
        return frame[self.transform.label].to_numpy(dtype=dtype)

    def seconds(self) -> float:
        """Seconds since the call started."""
        return time.perf_counter() - self.started

    def info(self, kind: str, seconds: float, **fields: Any) -> ModelInfo:
        """`fitted_info` of this fit of `kind`, which took `seconds`."""
        return fitted_info(kind, self.config, self.tr, self.va, seconds, **fields)


Trainer = Callable[..., M]


def trainer(config_class: type[C]) -> Callable[[Callable[[Fit[C]], M]], Trainer[M]]:
    """Make `fit(Fit) -> model` a model kind's trainer, `name(train, valid, config=None,
    transform=None) -> model` (the signature `ModelKind.train` calls): `config` None is
    `config_class()`, and `transform` None is one fitted on `train` (`transformed_frames`,
    which also refuses empty frames, naming the trainer)."""

    def decorate(fit: Callable[[Fit[C]], M]) -> Trainer[M]:
        def call(
            train: pd.DataFrame,
            valid: pd.DataFrame,
            config: C | None = None,
            transform: FeatureTransform | None = None,
        ) -> M:
            started = time.perf_counter()
            transform, tr, va = transformed_frames(fit.__name__, train, valid, transform)
            return fit(Fit(config or config_class(), train, valid, transform, tr, va, started))

        # The trainer stands in for `fit` under its name (ModelKind.trainer imports it).
        for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(call, attribute, getattr(fit, attribute))
        call.config_class = config_class  # type: ignore[attr-defined]  # for `registration`
        return call

    return decorate


def import_path(obj: Any) -> str:
    """The "module:name" by which `ModelKind` names `obj` (its `trainer`, `model_class`), a
    module-level function or class. For a kind registered in its trainer's own module the
    string is derived, so it cannot go stale when the module or the object is renamed."""
    return f"{obj.__module__}:{obj.__qualname__}"


def registration(
    trainer: Trainer[Any],
    model_class: type[TrainedModel],
    *,
    rank: int,
    weights_file: str,
    kserve_model_file: str | None = None,
    export_hook: str | None = None,
    description: str = "",
) -> ModelKind:
    """The `ModelKind` of a kind registered beside its trainer (made by `trainer(...)`) and
    model class: its name is the class's `kind`, its config class the trainer's, and the
    trainer and class are named by `import_path`, so none can disagree with the objects."""
    return ModelKind(
        name=model_class.kind,
        rank=rank,
        config_class=trainer.config_class,  # type: ignore[attr-defined]
        trainer=import_path(trainer),
        model_class=import_path(model_class),
        weights_file=weights_file,
        kserve_model_file=kserve_model_file,
        export_hook=export_hook,
        description=description,
    )
