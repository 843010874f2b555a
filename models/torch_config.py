"""Hyperparameters and the registration of the PyTorch model kind, importable without
importing torch (the trainer and network live in `models.torch_trainer`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.training.model_kind import ModelKind


class TorchTrainConfig(BaseModel):
    """Hyperparameters of `train_torch`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["torch"] = "torch"
    embedding_dim: int = Field(8, ge=1)
    cross_layers: int = Field(2, ge=0)
    hidden_units: list[int] = Field(default_factory=lambda: [128, 64])
    dropout: float = Field(0.1, ge=0, lt=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    batch_size: int = Field(1024, ge=1)
    max_epochs: int = Field(20, ge=1)
    patience: int = Field(3, ge=1, description="epochs without valid improvement before stopping")
    min_delta: float = Field(1e-5, ge=0, description="log-loss decrease that counts as improvement")
    seed: int = 42
    num_threads: int = Field(2, ge=1)
    importance_rows: int = Field(
        5000, ge=100, description="valid rows used for permutation importance"
    )


# The registration (pyproject.toml `kubeloop.model_kinds`: torch): the top rung of the
# ladder. It lives here, not beside the network, so that naming the kind imports no torch.
KIND = ModelKind(
    name="torch",
    rank=2,
    config_class=TorchTrainConfig,
    trainer="models.torch_trainer:train_torch",
    model_class="models.torch_trainer:TorchModel",
    weights_file="model.pt",
    description="Deep & Cross Network (PyTorch) with categorical embeddings",
)
