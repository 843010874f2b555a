"""The LightGBM baseline: gradient-boosted trees on the transformed features.

The categorical codes of the feature transform go to LightGBM as native categorical
features (code 0, unknown, is an ordinary category to it). Training stops early on the
validation log loss, and the booster is saved truncated to its best iteration, so the
saved `model.txt` is exactly the model that was evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kubeloop.training.artifacts import ModelInfo, TrainedModel, library_versions
from kubeloop.training.fitting import Fit, registration, trainer
from kubeloop.training.transform import FeatureTransform, TransformedBatch

WEIGHTS_FILE = "model.txt"


class LightGBMTrainConfig(BaseModel):
    """Hyperparameters of `train_lightgbm`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["lightgbm"] = "lightgbm"
    num_leaves: int = Field(31, ge=2)
    learning_rate: float = Field(0.05, gt=0)
    max_rounds: int = Field(500, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    min_data_in_leaf: int = Field(50, ge=1)
    feature_fraction: float = Field(0.9, gt=0, le=1)
    lambda_l2: float = Field(1.0, ge=0)
    # Categories with fewer rows than this are not split on alone (guards rare advertisers).
    min_data_per_group: int = Field(50, ge=1)
    max_bin: int = Field(255, ge=2)
    seed: int = 42
    num_threads: int = Field(2, ge=1)

    def booster_params(self) -> dict[str, Any]:
        """The `lgb.train` parameters this config stands for (rounds and early stopping are
        arguments of the call, not parameters). Deterministic: row-wise, seeded."""
        return {
            "objective": "binary",
            "metric": "binary_logloss",
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "lambda_l2": self.lambda_l2,
            "min_data_per_group": self.min_data_per_group,
            "max_bin": self.max_bin,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.num_threads,
            "verbosity": -1,
        }


class LightGBMModel(TrainedModel):
    """A LightGBM booster with its feature transform."""

    kind = "lightgbm"

    def __init__(self, transform: FeatureTransform, info: ModelInfo, booster):
        super().__init__(transform, info)
        self.booster = booster
        # Where the model was loaded from (an export may hold its compiled trees there).
        self.directory: Path | None = None
        self.compiled = None

    def for_serving(self) -> LightGBMModel:
        """The compiled trees of the export directory when there are some and they load
        here (models/lightgbm_compiled.py), else the booster; the fallback is logged."""
        if self.directory is not None and self.compiled is None:
            from models.lightgbm_compiled import load_compiled

            self.compiled = load_compiled(self.directory)
        return self

    def predict_batch(self, batch: TransformedBatch) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros(0, dtype=np.float64)
        if self.compiled is not None:
            return np.asarray(self.compiled.predict(batch.matrix()), dtype=np.float64)
        # One thread: serving batches are small, and LightGBM's default (one OpenMP thread
        # per core) stalls each call when another process holds a core: measured 3.7x
        # slower per request in bench/serving_bench.py on a shared 2-core machine.
        return np.asarray(
            self.booster.predict(
                batch.matrix(), num_iteration=self.info.best_iteration, num_threads=1
            ),
            dtype=np.float64,
        )

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per feature, as shares of the total gain."""
        gain = self.booster.feature_importance(
            importance_type="gain", iteration=self.info.best_iteration
        ).astype(np.float64)
        total = gain.sum()
        shares = gain / total if total > 0 else gain
        return {name: float(v) for name, v in zip(self.feature_names, shares)}

    def _save_weights(self, directory: Path) -> None:
        self.booster.save_model(
            str(directory / WEIGHTS_FILE), num_iteration=self.info.best_iteration
        )

    @classmethod
    def _load(cls, directory: Path, transform: FeatureTransform, info: ModelInfo) -> LightGBMModel:
        import lightgbm as lgb

        model = cls(transform, info, lgb.Booster(model_file=str(directory / WEIGHTS_FILE)))
        model.directory = directory
        return model


@trainer(LightGBMTrainConfig)
def train_lightgbm(fit: Fit[LightGBMTrainConfig]) -> LightGBMModel:
    """Train the LightGBM baseline with early stopping on `valid` log loss.

    `transform` defaults to one fitted on `train`. Deterministic for a given config,
    data and thread count (LightGBM `deterministic=True`, `force_row_wise=True`, seeded).
    """
    import lightgbm as lgb

    from kubeloop.evaluation.metrics import log_loss

    cfg, tr, va = fit.config, fit.tr, fit.va
    categorical = list(range(len(tr.numeric_names), len(tr.names)))
    params = cfg.booster_params()
    dtrain = lgb.Dataset(
        tr.matrix(),
        label=fit.labels(fit.train, np.float64),
        feature_name=tr.names,
        categorical_feature=categorical,
        free_raw_data=True,
    )
    dvalid = lgb.Dataset(
        va.matrix(),
        label=fit.labels(fit.valid, np.float64),
        reference=dtrain,
        categorical_feature=categorical,
    )
    booster = lgb.train(
        params,
        dtrain,
        num_boost_round=cfg.max_rounds,
        valid_sets=[dvalid],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)],
    )
    # best_iteration is 0 when early stopping never triggered a best (e.g. max_rounds hit).
    best = int(booster.best_iteration) or int(booster.current_iteration())
    info = fit.info(
        LightGBMModel.kind,
        fit.seconds(),
        best_iteration=best,
        importance_method="lightgbm split gain (share of total)",
        versions=library_versions("lightgbm", "numpy"),
    )
    model = LightGBMModel(fit.transform, info, booster)
    info.valid_log_loss = float(
        log_loss(fit.labels(fit.valid, np.float64), model.predict_batch(va))
    )
    return model


# The registration (pyproject.toml `kubeloop.model_kinds`: lightgbm): the second rung of
# the ladder. KServe's stock lgbserver looks for one `*.bst` file, which the export adds.
KIND = registration(
    train_lightgbm,
    LightGBMModel,
    rank=1,
    weights_file=WEIGHTS_FILE,
    kserve_model_file="model.bst",
    export_hook="models.lightgbm_compiled:compile_export",
    description="gradient-boosted trees (LightGBM) with native categorical splits",
)
