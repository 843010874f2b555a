"""Typed parameters of one training-pipeline run, turned into KFP's flat arguments."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.workdir import Workdir


class TrainingRunParams(BaseModel):
    """Where the run reads and writes, and the JSON-encoded configs of each step.

    KFP parameters must be flat scalars, so each nested config travels as JSON and is
    parsed back into its pydantic model inside the step function."""

    model_config = ConfigDict(extra="forbid")

    lake_uri: str
    features_uri: str
    feature_repo: str
    registry_uri: str
    model_name: str = "ctr"
    scenario: str = "baseline"
    generate: bool = False
    generator_config: dict[str, Any] = Field(default_factory=dict)
    feature_config: dict[str, Any] = Field(default_factory=dict)
    train_config: dict[str, Any] = Field(default_factory=dict)
    gate_config: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def for_workdir(cls, workdir: Workdir, **overrides: Any) -> TrainingRunParams:
        """Parameters that point every step at the embedded layout of a local run."""
        return cls(
            lake_uri=str(workdir.lake),
            features_uri=str(workdir.features),
            feature_repo=str(workdir.feature_repo),
            registry_uri=str(workdir.registry),
            **overrides,
        )

    def arguments(self) -> dict[str, Any]:
        """The pipeline's keyword arguments (see pipelines/training.py)."""
        import json

        return {
            "lake_uri": self.lake_uri,
            "features_uri": self.features_uri,
            "feature_repo": self.feature_repo,
            "registry_uri": self.registry_uri,
            "model_name": self.model_name,
            "scenario": self.scenario,
            "generate": self.generate,
            "generator_config_json": json.dumps(self.generator_config, default=str),
            "feature_config_json": json.dumps(self.feature_config),
            "train_config_json": json.dumps(self.train_config),
            "gate_config_json": json.dumps(self.gate_config),
        }
