"""The deep model: a Deep & Cross Network (DCN-v2 style) in PyTorch, trained on CPU.

Inputs are the transformed numeric features (standardised inside the network with
training statistics kept as buffers, so the saved state_dict is self-contained) and one
learned embedding per categorical column. A cross network (x_{l+1} = x0 * (W x_l + b) + x_l)
models explicit feature interactions, an MLP models implicit ones, and a linear head reads
both. Adam on binary cross-entropy, early stopping on validation log loss with patience,
weights of the best epoch kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kubeloop.training.artifacts import ModelInfo, TrainedModel, library_versions
from kubeloop.training.fitting import Fit, importance_shares, trainer
from kubeloop.training.transform import FeatureTransform, TransformedBatch
from models.torch_config import KIND, TorchTrainConfig

WEIGHTS_FILE = KIND.weights_file
_PREDICT_CHUNK = 65_536


# The config lives in a torch-free module so that configuring a run (and the LightGBM
# component) does not pay torch's import; re-exported here for callers of this module.
class DeepCrossNetwork(nn.Module):
    """Embeddings + cross network + MLP, in parallel, with a linear head (one logit)."""

    def __init__(
        self,
        n_numeric: int,
        cardinalities: list[int],
        embedding_dim: int,
        cross_layers: int,
        hidden_units: list[int],
        dropout: float,
    ):
        super().__init__()
        self.register_buffer("numeric_mean", torch.zeros(n_numeric))
        self.register_buffer("numeric_std", torch.ones(n_numeric))
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim) for c in cardinalities)
        width = n_numeric + embedding_dim * len(cardinalities)
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(cross_layers))
        layers: list[nn.Module] = []
        previous = width
        for units in hidden_units:
            layers += [nn.Linear(previous, units), nn.ReLU(), nn.Dropout(dropout)]
            previous = units
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width + previous, 1)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat(
            [(numeric - self.numeric_mean) / self.numeric_std]
            + [emb(categorical[:, j]) for j, emb in enumerate(self.embeddings)],
            dim=1,
        )
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.head(torch.cat([x, self.mlp(x0)], dim=1)).squeeze(1)


def _build_network(architecture: dict[str, Any]) -> DeepCrossNetwork:
    return DeepCrossNetwork(**architecture)


def _predict(net: DeepCrossNetwork, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
    net.eval()
    out = np.empty(len(numeric), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(numeric), _PREDICT_CHUNK):
            stop = start + _PREDICT_CHUNK
            logits = net(
                torch.from_numpy(np.ascontiguousarray(numeric[start:stop])),
                torch.from_numpy(np.ascontiguousarray(categorical[start:stop])),
            )
            out[start:stop] = torch.sigmoid(logits.double()).numpy()
    return out


class TorchModel(TrainedModel):
    """A trained DeepCrossNetwork with its feature transform."""

    kind = "torch"

    def __init__(self, transform: FeatureTransform, info: ModelInfo, network: DeepCrossNetwork):
        super().__init__(transform, info)
        self.network = network.eval()

    def predict_batch(self, batch: TransformedBatch) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros(0, dtype=np.float64)
        return _predict(self.network, batch.numeric, batch.categorical)

    def for_serving(self) -> TorchModel:
        # Serving batches are small: one intra-op thread per request avoids the stalls
        # that one-thread-per-core causes on a shared node (see bench/serving_bench.py).
        torch.set_num_threads(1)
        return self

    def feature_importance(self) -> dict[str, float]:
        """Permutation importance measured on a validation sample at training time: the
        rise in log loss when one transformed column is shuffled, as shares of the total
        (negative rises count as 0). Correlated columns (hour and its sin/cos) share credit."""
        return dict(self.info.feature_importance or {})

    def _save_weights(self, directory: Path) -> None:
        torch.save(self.network.state_dict(), directory / WEIGHTS_FILE)

    @classmethod
    def _load(cls, directory: Path, transform: FeatureTransform, info: ModelInfo) -> TorchModel:
        if info.architecture is None:
            raise ValueError(f"{directory}: model.json of a torch model lacks 'architecture'")
        network = _build_network(info.architecture)
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
        return cls(transform, info, network)


def _permutation_importance(
    net: DeepCrossNetwork, batch: TransformedBatch, labels: np.ndarray, rng: np.random.Generator
) -> dict[str, float]:
    from kubeloop.evaluation.metrics import log_loss

    base = log_loss(labels, _predict(net, batch.numeric, batch.categorical))
    rises: dict[str, float] = {}
    perm = rng.permutation(len(labels))
    for j, name in enumerate(batch.numeric_names):
        numeric = batch.numeric.copy()
        numeric[:, j] = numeric[perm, j]
        rises[name] = log_loss(labels, _predict(net, numeric, batch.categorical)) - base
    for j, name in enumerate(batch.categorical_names):
        categorical = batch.categorical.copy()
        categorical[:, j] = categorical[perm, j]
        rises[name] = log_loss(labels, _predict(net, batch.numeric, categorical)) - base
    return importance_shares({k: max(v, 0.0) for k, v in rises.items()})


@trainer(TorchTrainConfig)
def train_torch(fit: Fit[TorchTrainConfig]) -> TorchModel:
    """Train the Deep & Cross Network with early stopping on `valid` log loss.

    `transform` defaults to one fitted on `train`. Seeds torch and numpy from
    `config.seed`, and sets torch's intra-op threads to `config.num_threads` for the
    duration of the call (restored afterwards), so two runs with the same config, data and
    machine give the same weights.
    """
    from kubeloop.evaluation.metrics import log_loss

    cfg, transform, tr, va = fit.config, fit.transform, fit.tr, fit.va
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        y_train = fit.labels(fit.train, np.float32)
        y_valid = fit.labels(fit.valid, np.float64)

        architecture = {
            "n_numeric": len(tr.numeric_names),
            "cardinalities": transform.cardinalities,
            "embedding_dim": cfg.embedding_dim,
            "cross_layers": cfg.cross_layers,
            "hidden_units": list(cfg.hidden_units),
            "dropout": cfg.dropout,
        }
        net = _build_network(architecture)
        std = tr.numeric.std(axis=0, dtype=np.float64)
        net.numeric_mean.copy_(torch.from_numpy(tr.numeric.mean(axis=0, dtype=np.float64)).float())
        net.numeric_std.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0)).float())
        # Start the head at the base rate so the first epochs learn signal, not the mean.
        rate = float(np.clip(y_train.mean(), 1e-4, 1 - 1e-4))
        with torch.no_grad():
            net.head.bias.fill_(float(np.log(rate / (1 - rate))))

        optimizer = torch.optim.Adam(
            net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        loss_fn = nn.BCEWithLogitsLoss()
        numeric_t = torch.from_numpy(tr.numeric)
        categorical_t = torch.from_numpy(tr.categorical)
        labels_t = torch.from_numpy(y_train)
        shuffle = torch.Generator().manual_seed(cfg.seed)

        best_loss, best_epoch, best_state = float("inf"), 0, None
        epochs_run, stale = 0, 0
        for epoch in range(1, cfg.max_epochs + 1):
            net.train()
            order = torch.randperm(len(labels_t), generator=shuffle)
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(net(numeric_t[idx], categorical_t[idx]), labels_t[idx])
                loss.backward()
                optimizer.step()
            epochs_run = epoch
            valid_loss = log_loss(y_valid, _predict(net, va.numeric, va.categorical))
            if valid_loss < best_loss - cfg.min_delta:
                best_loss, best_epoch, stale = valid_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        assert best_state is not None  # the first epoch always improves on +inf
        net.load_state_dict(best_state)
        net.eval()
        seconds = fit.seconds()

        sample = rng.choice(len(va), size=min(cfg.importance_rows, len(va)), replace=False)
        sample.sort()
        importance = _permutation_importance(net, va.take(sample), y_valid[sample], rng)
    finally:
        torch.set_num_threads(previous_threads)

    info = fit.info(
        TorchModel.kind,
        seconds,
        best_iteration=best_epoch,
        epochs=epochs_run,
        valid_log_loss=float(best_loss),
        architecture=architecture,
        feature_importance=importance,
        importance_method=(
            f"permutation importance on {len(sample)} validation rows: rise in log loss "
            "when one transformed column is shuffled (share of total, negatives as 0)"
        ),
        versions=library_versions("torch", "numpy"),
    )
    return TorchModel(transform, info, net)
