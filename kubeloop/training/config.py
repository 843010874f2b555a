"""Configuration of the training stage of the pipeline: the split, both trainers and
the drift reference sample."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from models.lightgbm_trainer import LightGBMTrainConfig
from models.torch_config import TorchTrainConfig


class TrainingConfig(BaseModel):
    """One config for train-lightgbm, train-torch, evaluate and register, so every step
    reproduces the same time-ordered split of the training set."""

    model_config = ConfigDict(extra="forbid")

    burn_in_days: int = Field(
        1, ge=0, description="first days dropped: their features have no history behind them yet"
    )
    until: datetime | None = Field(
        None, description="train only on events before this time (the demo's 'today'); None = all"
    )
    window_days: int | None = Field(
        None,
        ge=1,
        description="keep only the last N days before `until` (retraining on recent data)",
    )
    valid_fraction: float = Field(0.1, gt=0, lt=1)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    lightgbm: LightGBMTrainConfig = Field(default_factory=LightGBMTrainConfig)
    torch: TorchTrainConfig = Field(default_factory=TorchTrainConfig)
    reference_rows: int = Field(
        5000, ge=100, description="rows of training features kept for drift detectors"
    )
    # Window features (7-day counts) only reach their steady level a week into the lake, so
    # the drift reference comes from the newest held-out days, which look like serving.
    reference_days: int = Field(
        2, ge=1, description="the reference is sampled from the last days before deployment"
    )
    seed: int = 42
