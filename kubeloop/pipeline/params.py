"""Typed parameters of one training-pipeline run, turned into KFP's flat arguments."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, model_validator

from kubeloop.evaluation.gate import GateConfig
from kubeloop.features.pipeline_config import FeaturesStepConfig
from kubeloop.training.config import TrainingConfig
from kubeloop.usecase import DEFAULT_USE_CASE, LakeSource, SyntheticConfig, load_use_case
from kubeloop.workdir import Workdir


def use_case_defaults(data: Any, generator_field: str, *, generate_field: str | None = None) -> Any:
    """A run config's raw input (a "before" validator's `data`) with what its use case
    (`use_case`, default `DEFAULT_USE_CASE`) decides: an empty `model_name` becomes the use
    case's, and `generator_field` is validated by the use case's generator config class.
    With `generate_field`, only where that field is true or a generator config is given (a
    run that reads its lake has none); without, always (a run that generates its lake).
    Anything but a dict is returned as it is, for pydantic to reject."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    spec = load_use_case(data.get("use_case") or DEFAULT_USE_CASE)
    data["model_name"] = data.get("model_name") or spec.defaults.model_name
    given = data.get(generator_field)
    if generate_field is None or data.get(generate_field) or given is not None:
        data[generator_field] = spec.generator_config(given)
    return data


def submitted_feature_config(engine: str | None, spark_submit: str = "operator") -> dict[str, Any]:
    """The feature config (FeaturesStepConfig's input) of a run submitted to a cluster with
    `engine` (duckdb or spark; None or "": the config's default engine). A Spark build in
    a submitted run goes to the Spark Operator by default (`spark_submit`): the components
    image has no Java, so a local SparkSession cannot start in the step's pod. Only what is
    given is set, so the step's defaults apply to the rest (arguments() sends set keys)."""
    if not engine:
        return {}
    build: dict[str, Any] = {"engine": engine}
    if engine == "spark":
        build["spark"] = {"submit": spark_submit}
    return {"build": build}


class TrainingRunParams(BaseModel):
    """Where the run reads and writes, and the typed config of each step.

    The configs are validated here, so a typo (an unknown key, a misspelt model kind)
    fails in the CLI before a pipeline starts; `generator_config` is validated by the use
    case's own generator config class. KFP parameters must be flat scalars, so
    `arguments()` sends each config as JSON (only the keys that were set, so the step's
    own defaults apply to the rest), and the step function parses it back."""

    model_config = ConfigDict(extra="forbid")

    lake_uri: str
    features_uri: str
    feature_repo: str
    registry_uri: str
    use_case: str = DEFAULT_USE_CASE
    model_name: str = ""
    scenario: str = "baseline"
    generate: bool = False
    generator_config: SerializeAsAny[SyntheticConfig] | None = None
    feature_config: FeaturesStepConfig = Field(default_factory=FeaturesStepConfig)
    train_config: TrainingConfig = Field(default_factory=TrainingConfig)
    gate_config: GateConfig = Field(default_factory=GateConfig)

    @model_validator(mode="before")
    @classmethod
    def _use_case_defaults(cls, data: Any) -> Any:
        return use_case_defaults(data, "generator_config", generate_field="generate")

    @classmethod
    def for_workdir(cls, workdir: Workdir, **overrides: Any) -> TrainingRunParams:
        """Parameters that point every step at the embedded layout of a local run. A use
        case that reads a real lake (`LakeSource`) is read where it is, unless the run
        generates its lake."""
        spec = load_use_case(overrides.get("use_case") or DEFAULT_USE_CASE)
        lake = str(workdir.lake)
        if isinstance(spec.source, LakeSource) and not overrides.get("generate"):
            lake = spec.source.path
        overrides.setdefault("lake_uri", lake)
        return cls(
            features_uri=str(workdir.features),
            feature_repo=str(workdir.feature_repo),
            registry_uri=str(workdir.registry),
            **overrides,
        )

    def arguments(self) -> dict[str, Any]:
        """The pipeline's keyword arguments (see pipelines/training.py)."""

        def as_json(config: BaseModel) -> str:
            return config.model_dump_json(exclude_unset=True)

        return {
            "lake_uri": self.lake_uri,
            "features_uri": self.features_uri,
            "feature_repo": self.feature_repo,
            "registry_uri": self.registry_uri,
            "use_case": self.use_case,
            "model_name": self.model_name,
            "scenario": self.scenario,
            "generate": self.generate,
            "generator_config_json": (
                as_json(self.generator_config) if self.generator_config is not None else "{}"
            ),
            "feature_config_json": as_json(self.feature_config),
            "engine": self.feature_config.build.engine,
            "train_config_json": as_json(self.train_config),
            "gate_config_json": as_json(self.gate_config),
        }
