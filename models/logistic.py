"""The first rung of the model ladder: logistic regression on the shared feature transform.

Inputs are the transformed columns of `kubeloop.training.transform`: the numeric ones,
standardised with training statistics, and one-hot codes of every categorical column,
the transform's crosses (`user_segment_x_ad_category`, `device_x_user_device_pref`)
included. `extra_crosses` adds further pairs of categorical columns, as the exact product
of their codes when it fits in `hash_buckets` and hashed into that many buckets when it
does not. A click model that is linear in these inputs is the simplest one worth serving,
and the ladder keeps it unless a more complex kind beats it by the configured margin.

scikit-learn fits it (L2-regularised, lbfgs); the inverse regularisation strength `C` is
chosen from `c_values` on the validation log loss. What is saved is plain numbers
(`logistic.json`: intercept, scaling, one coefficient vector per column), so serving is
a few numpy lookups and imports no scikit-learn, and no pickle is ever loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kubeloop.training.artifacts import ModelInfo, TrainedModel, library_versions
from kubeloop.training.fitting import Fit, importance_shares, registration, trainer
from kubeloop.training.transform import FeatureTransform, TransformedBatch

WEIGHTS_FILE = "logistic.json"
# exp() of a logit beyond this is inf/0 in float64 terms; clipping keeps sigmoid finite.
_LOGIT_CLIP = 35.0


class LogisticTrainConfig(BaseModel):
    """Hyperparameters of `train_logistic`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["logistic"] = "logistic"
    c_values: list[float] = Field(
        default_factory=lambda: [0.01, 0.1, 1.0],
        min_length=1,
        description="inverse L2 strengths tried; the one with the lowest valid log loss is kept",
    )
    extra_crosses: list[tuple[str, str]] = Field(
        default_factory=list,
        description="pairs of categorical output columns crossed on top of the transform's own",
    )
    hash_buckets: int = Field(
        4096, ge=2, description="a cross with more code pairs than this is hashed into this many"
    )
    max_iter: int = Field(500, ge=10)
    tol: float = Field(1e-4, gt=0)


class _Layout:
    """Where each transformed column lands in the one-hot design matrix."""

    def __init__(self, cardinalities: list[int], crosses: list[dict[str, Any]]):
        self.cardinalities = cardinalities
        self.crosses = crosses
        sizes = [*cardinalities, *(c["size"] for c in crosses)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @property
    def width(self) -> int:
        return int(self.offsets[-1])

    def codes(self, categorical: np.ndarray) -> np.ndarray:
        """One column of codes per block (categorical columns, then extra crosses)."""
        blocks = [categorical[:, j] for j in range(categorical.shape[1])]
        for cross in self.crosses:
            a, b = categorical[:, cross["a"]], categorical[:, cross["b"]]
            blocks.append((a * cross["card_b"] + b) % cross["size"])
        if not blocks:
            return np.zeros((len(categorical), 0), dtype=np.int64)
        return np.stack(blocks, axis=1).astype(np.int64)


def _cross_specs(
    config: LogisticTrainConfig, names: list[str], cardinalities: list[int]
) -> list[dict[str, Any]]:
    specs = []
    for a, b in config.extra_crosses:
        missing = [c for c in (a, b) if c not in names]
        if missing:
            raise ValueError(f"extra_crosses name {missing}, not among the columns {names}")
        ia, ib = names.index(a), names.index(b)
        pairs = cardinalities[ia] * cardinalities[ib]
        specs.append(
            {
                "name": f"{a}_x_{b}",
                "a": ia,
                "b": ib,
                "card_b": cardinalities[ib],
                "size": min(pairs, config.hash_buckets),
                "hashed": pairs > config.hash_buckets,
            }
        )
    return specs


def _design(batch: TransformedBatch, mean, scale, layout: _Layout):
    """Standardised numeric columns beside the one-hot blocks, as one sparse CSR matrix."""
    from scipy import sparse

    numeric = (batch.numeric.astype(np.float64) - mean) / scale
    codes = layout.codes(batch.categorical) + layout.offsets[:-1]
    rows = np.repeat(np.arange(len(batch)), codes.shape[1])
    onehot = sparse.csr_matrix(
        (np.ones(codes.size), (rows, codes.ravel())), shape=(len(batch), layout.width)
    )
    return sparse.hstack([sparse.csr_matrix(numeric), onehot], format="csr")


class LogisticModel(TrainedModel):
    """A fitted logistic regression with its feature transform (weights as numpy arrays)."""

    kind = "logistic"

    def __init__(self, transform: FeatureTransform, info: ModelInfo, weights: dict[str, Any]):
        super().__init__(transform, info)
        self.weights = weights
        self._mean = np.asarray(weights["numeric_mean"], dtype=np.float64)
        self._scale = np.asarray(weights["numeric_scale"], dtype=np.float64)
        self._numeric_coef = np.asarray(weights["numeric_coef"], dtype=np.float64)
        self._blocks = [np.asarray(c, dtype=np.float64) for c in weights["block_coef"]]
        self._layout = _Layout(weights["cardinalities"], weights["crosses"])

    def logits(self, batch: TransformedBatch) -> np.ndarray:
        """The linear score of each row: intercept + numeric part + one weight per block."""
        z = np.full(len(batch), float(self.weights["intercept"]))
        if self._numeric_coef.size:
            z += (
                (batch.numeric.astype(np.float64) - self._mean) / self._scale
            ) @ self._numeric_coef
        codes = self._layout.codes(batch.categorical)
        for j, coef in enumerate(self._blocks):
            z += coef[codes[:, j]]
        return z

    def predict_batch(self, batch: TransformedBatch) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros(0, dtype=np.float64)
        z = np.clip(self.logits(batch), -_LOGIT_CLIP, _LOGIT_CLIP)
        return 1.0 / (1.0 + np.exp(-z))

    def feature_importance(self) -> dict[str, float]:
        """Spread (standard deviation) of each transformed column's logit contribution over
        validation rows, measured at training time, as shares of the total."""
        return dict(self.info.feature_importance or {})

    def _save_weights(self, directory: Path) -> None:
        (directory / WEIGHTS_FILE).write_text(json.dumps(self.weights) + "\n")

    @classmethod
    def _load(cls, directory: Path, transform: FeatureTransform, info: ModelInfo) -> LogisticModel:
        return cls(transform, info, json.loads((directory / WEIGHTS_FILE).read_text()))


def _importance(model: LogisticModel, batch: TransformedBatch) -> dict[str, float]:
    numeric = (batch.numeric.astype(np.float64) - model._mean) / model._scale
    spread = {
        name: float(np.std(numeric[:, i] * model._numeric_coef[i]))
        for i, name in enumerate(batch.numeric_names)
    }
    codes = model._layout.codes(batch.categorical)
    block_names = [*batch.categorical_names, *(c["name"] for c in model._layout.crosses)]
    for j, name in enumerate(block_names):
        spread[name] = float(np.std(model._blocks[j][codes[:, j]]))
    return importance_shares(spread)


@trainer(LogisticTrainConfig)
def train_logistic(fit: Fit[LogisticTrainConfig]) -> LogisticModel:
    """Fit the logistic regression, choosing `C` on `valid` log loss.

    `transform` defaults to one fitted on `train`. Deterministic for a given config and
    data (lbfgs has no random state).
    """
    from sklearn.linear_model import LogisticRegression

    from kubeloop.evaluation.metrics import log_loss

    cfg, transform, tr, va = fit.config, fit.transform, fit.tr, fit.va
    y_train = fit.labels(fit.train, np.int64)
    y_valid = fit.labels(fit.valid, np.float64)
    if len(np.unique(y_train)) < 2:
        raise ValueError("train_logistic needs both classes in the training frame")

    mean = tr.numeric.mean(axis=0, dtype=np.float64)
    std = tr.numeric.std(axis=0, dtype=np.float64)
    scale = np.where(std > 1e-6, std, 1.0)
    cardinalities = transform.cardinalities
    layout = _Layout(cardinalities, _cross_specs(cfg, list(tr.categorical_names), cardinalities))
    x_train, x_valid = _design(tr, mean, scale, layout), _design(va, mean, scale, layout)

    n_numeric = len(tr.numeric_names)
    fits: list[tuple[float, float, Any]] = []
    for c in cfg.c_values:
        regression = LogisticRegression(C=c, solver="lbfgs", max_iter=cfg.max_iter, tol=cfg.tol)
        regression.fit(x_train, y_train)
        loss = log_loss(y_valid, regression.predict_proba(x_valid)[:, 1])
        fits.append((loss, c, regression))
    best_loss, best_c, best = min(fits, key=lambda f: (f[0], f[1]))
    coef = best.coef_.ravel()
    weights = {
        "intercept": float(best.intercept_[0]),
        "numeric_mean": mean.tolist(),
        "numeric_scale": scale.tolist(),
        "numeric_coef": coef[:n_numeric].tolist(),
        "block_coef": [
            coef[n_numeric + start : n_numeric + stop].tolist()
            for start, stop in zip(layout.offsets[:-1], layout.offsets[1:])
        ],
        "cardinalities": cardinalities,
        "crosses": layout.crosses,
    }
    info = fit.info(
        LogisticModel.kind,
        fit.seconds(),
        best_iteration=int(np.max(best.n_iter_)),
        valid_log_loss=float(best_loss),
        architecture={
            "c": best_c,
            "valid_log_loss_by_c": {str(c): float(loss) for loss, c, _ in fits},
            "design_width": n_numeric + layout.width,
            "extra_crosses": [c["name"] for c in layout.crosses],
        },
        importance_method=(
            "spread (std) of each transformed column's logit contribution on the validation "
            "rows (share of total)"
        ),
        versions=library_versions("sklearn", "numpy"),
    )
    model = LogisticModel(transform, info, weights)
    info.feature_importance = _importance(model, va)
    return model


# The registration (pyproject.toml `kubeloop.model_kinds`: logistic): rank 0, the
# simplest kind, which every other kind must beat by the ladder's margin.
KIND = registration(
    train_logistic,
    LogisticModel,
    rank=0,
    weights_file=WEIGHTS_FILE,
    description="logistic regression on the shared transform and its crosses (scikit-learn)",
)
