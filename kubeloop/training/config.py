"""Configuration of the training stage of the pipeline: the split, one section per model
kind and the drift reference sample."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kubeloop.training.model_kind import is_known, kind_names, parse_kind_config


class TrainingConfig(BaseModel):
    """One config for every train step, evaluate and register, so every step reproduces
    the same time-ordered split of the training set.

    Besides the fields below, a key may name a registered model kind (`logistic`,
    `lightgbm`, `torch`, ...): its value is that kind's hyperparameters, validated by the
    kind's own config class (`ModelKind.config_class`). Any other key fails here, at
    config time, naming the known settings and kinds; `kind_config(name)` gives a kind's
    typed config (its defaults when the key is absent).
    """

    # Extra keys are allowed only so that each model kind's section can sit at the top
    # level; `_kind_sections` validates every one of them and refuses anything else.
    model_config = ConfigDict(extra="allow")

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
    reference_rows: int = Field(
        5000, ge=100, description="rows of training features kept for drift detectors"
    )
    # Window features (7-day counts) only reach their steady level a week into the lake, so
    # the drift reference comes from the newest held-out days, which look like serving.
    reference_days: int = Field(
        2, ge=1, description="the reference is sampled from the last days before deployment"
    )
    seed: int = 42

    @model_validator(mode="before")
    @classmethod
    def _kind_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unknown = [k for k in data if k not in cls.model_fields and not is_known(k)]
        if unknown:
            raise ValueError(
                f"unknown training setting(s) {unknown}; settings: "
                f"{', '.join(cls.model_fields)}; model kinds: {', '.join(kind_names())}"
            )
        return {
            key: parse_kind_config(key, value) if key not in cls.model_fields else value
            for key, value in data.items()
        }

    @classmethod
    def over_defaults(
        cls, defaults: Mapping[str, Any], given: Mapping[str, Any] | str | None
    ) -> TrainingConfig:
        """The config of a run whose own settings `given` (a mapping, or its JSON as a
        step receives it) are laid over a use case's `defaults` (`Defaults.training`):
        see `layered`."""
        if given is None or isinstance(given, str):
            given = json.loads(given or "{}")
        return cls.model_validate(layered(defaults, given))

    def kind_config(self, kind: str) -> BaseModel:
        """The typed hyperparameters of model kind `kind` (its defaults when unset)."""
        return parse_kind_config(kind, (self.model_extra or {}).get(kind))


def layered(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` laid over `defaults`: a key of `given` replaces the default, except that
    where both hold a mapping (a model kind's section) the two are merged key by key, so a
    run that sets one hyperparameter of a kind keeps the use case's others."""
    out: dict[str, Any] = dict(defaults)
    for key, value in given.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            value = {**below, **value}
        out[key] = value
    return out
