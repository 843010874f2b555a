"""The drift configs: each detector backend's `<Name>Config` (unknown keys refused, a
`Literal` type field) and the monitor's `MonitorConfig` / `PerformanceConfig`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from kubeloop import plugins
from kubeloop.drift.windows import WindowConfig
from kubeloop.errors import KubeloopError


class DriftConfigError(KubeloopError, ValueError):
    """A drift detector or alert store configuration is invalid."""


def backend(group: plugins.PluginGroup, kind: Any) -> plugins.Backend:
    """The backend `kind` of `group` from the plug-in table (DriftConfigError if none)."""
    try:
        return plugins.load(group, kind)
    except plugins.PluginError as exc:
        raise DriftConfigError(str(exc)) from None


def parse_backend_config(
    what: str, group: plugins.PluginGroup, default: str, data: Any
) -> BaseModel:
    """Validate the config of a backend of `group` (a mapping whose `type`, defaulting to
    `default`, names the backend, or a config object of a registered backend)."""
    if isinstance(data, BaseModel):
        kind = getattr(data, "type", None)
        if (
            isinstance(kind, str)
            and kind in plugins.names(group)
            and isinstance(data, backend(group, kind).config_class)
        ):
            return data
        raise DriftConfigError(f"{type(data).__name__} is not a {what} config")
    if not isinstance(data, Mapping):
        raise DriftConfigError(f"a {what} config must be a mapping, not {type(data).__name__}")
    kind = data.get("type", default)
    config_class = backend(group, kind).config_class
    try:
        return config_class.model_validate({**data, "type": kind})
    except ValidationError as exc:
        raise DriftConfigError(f"invalid {kind} {what} config: {exc}") from exc


Correction = Literal["bonferroni", "fdr"]


class _DetectorConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p_val: float = Field(
        1e-4,
        gt=0.0,
        lt=1.0,
        description=(
            "family-wise significance of one window's tests (for fdr: the q-value); a "
            "feature drifts when its p-value is below the corrected threshold"
        ),
    )
    correction: Correction = Field(
        "bonferroni", description="multiple-testing correction over the features: bonferroni or fdr"
    )


class AlibiDetectorConfig(_DetectorConfigBase):
    """alibi-detect's TabularDrift (KS for numeric, chi-square for categorical columns) and
    KSDrift. Business Source License 1.1 since alibi-detect 0.11.5."""

    type: Literal["alibi"] = "alibi"


class ScipyDetectorConfig(_DetectorConfigBase):
    """The same tests (two-sample KS, chi-square contingency) straight from scipy, with the
    same corrections: a drop-in for users who cannot take a BSL dependency."""

    type: Literal["scipy"] = "scipy"


DEFAULT_DETECTOR = "alibi"
SERVE_DETECTOR_KINDS = ("feature", "prediction", "estimated_performance", "data_quality")


def parse_detector_config(data: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
    """Validate a detector config (`type` defaults to alibi)."""
    return parse_backend_config(
        "drift detector", plugins.DRIFT_DETECTORS, DEFAULT_DETECTOR, data or {}
    )


DetectorConfig = Annotated[SerializeAsAny[BaseModel], BeforeValidator(parse_detector_config)]
"""Any registered detector's config (entry-point group `kubeloop.drift_detectors`)."""


def _use_case_inputs() -> tuple[list[str], dict[str, list[str]]]:
    """(categorical inputs, entity name -> its looked-up features) of the default use case."""
    from kubeloop.usecase import resolve_use_case

    use_case = resolve_use_case(None)
    return list(use_case.transform.categorical), {
        e.name: list(e.features) for e in use_case.entities
    }


def _default_categorical() -> list[str]:
    return _use_case_inputs()[0]


def _default_entity_groups() -> dict[str, list[str]]:
    return _use_case_inputs()[1]


class DataQualityConfig(BaseModel):
    """Tolerances of the data-quality checks (rates per window and feature;
    `kubeloop.drift.quality`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_unseen_rate: float = Field(
        0.1, ge=0, le=1, description="categorical values absent from the reference"
    )
    max_null_increase: float = Field(
        0.02, ge=0, le=1, description="missing rate above the reference's own"
    )
    max_out_of_range_rate: float = Field(
        0.05, ge=0, le=1, description="numeric values outside the reference's [min, max]"
    )
    max_schema_violation_rate: float = Field(
        0.01, ge=0, le=1, description="rows whose request lacked the input or had a bad type"
    )
    p_val: float = Field(
        1e-6, gt=0, lt=1, description="one-sided binomial p-value a rate must also reach"
    )


class EstimateConfig(BaseModel):
    """Label-free performance estimate of every serving window (`kubeloop.drift.estimate`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_ne_increase: float = Field(
        0.05,
        gt=0,
        description="allowed rise of the expected normalized entropy over the reference's",
    )
    max_auc_drop: float = Field(
        0.05, gt=0, description="allowed fall of the expected AUC below the reference's"
    )
    p_val: float = Field(
        1e-4, gt=0, lt=1, description="the NE rise must also be significant at this level"
    )


# Per-window significance of the feature and prediction tests (see the module docstring).
DEFAULT_P_VALS = {"feature_detector": 1e-6, "prediction_detector": 1e-4}


class PerformanceConfig(BaseModel):
    """Performance drift on labelled predictions."""

    model_config = ConfigDict(extra="forbid")

    window: WindowConfig = Field(
        default_factory=lambda: WindowConfig(
            max_events=10_000, max_seconds=86_400.0, min_events=1000
        ),
        description=(
            "windows of labelled predictions; larger than the serving windows because a "
            "click rate of ~5% needs thousands of events to be estimated to a few percent"
        ),
    )
    calibration_bounds: tuple[float, float] = Field(
        (0.8, 1.25), description="allowed mean prediction / observed click rate"
    )
    max_ne_increase: float = Field(
        0.04, gt=0, description="allowed rise of normalized entropy over the reference's"
    )
    p_val: float = Field(
        1e-3,
        gt=0,
        lt=1,
        description="a metric out of bounds must also be significant at this level",
    )

    @property
    def min_events(self) -> int:
        return self.window.min_events

    @field_validator("calibration_bounds")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] < value[1]:
            raise ValueError(f"calibration_bounds {value} must satisfy 0 < low < high")
        return value


class MonitorConfig(BaseModel):
    """Everything the monitor decides with. Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")

    window: WindowConfig = Field(default_factory=WindowConfig)
    feature_detector: DetectorConfig = Field(
        default_factory=lambda: AlibiDetectorConfig(p_val=DEFAULT_P_VALS["feature_detector"])
    )
    prediction_detector: DetectorConfig = Field(
        default_factory=lambda: AlibiDetectorConfig(p_val=DEFAULT_P_VALS["prediction_detector"])
    )
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)
    categorical: list[str] = Field(
        default_factory=_default_categorical,
        description="categorical model inputs (chi-square); every other input is numeric (KS)",
    )
    exclude_features: list[str] = Field(
        default_factory=lambda: ["hour", "weekday"],
        description=(
            "inputs not tested: calendar context differs between any window and a "
            "reference of whole days by construction"
        ),
    )
    stratify_by: str | None = Field(
        "hour", description="reference rows are matched to each window's mix of this column"
    )
    season_by: str | None = Field(
        "weekday",
        description=(
            "weekday column (0 = Monday): windows are also matched on weekday vs weekend "
            "when the reference holds rows of the window's day type; null: hour only"
        ),
    )
    weekend_days: list[int] = Field(default_factory=lambda: [5, 6])
    entity_groups: dict[str, list[str]] = Field(
        default_factory=_default_entity_groups,
        description=(
            "features looked up per entity (one user, one ad): tested over the distinct "
            "rows of the group in a window, since an entity shown 30 times is one sample"
        ),
    )
    ks_tolerance: float = Field(
        0.05,
        ge=0,
        lt=1,
        description=(
            "KS distance a numeric input or the score may move without being drift "
            "(normal day-to-day and weekly variation); the test is of a larger shift"
        ),
    )
    windows_between_false_alarms: float | None = Field(
        100_000.0,
        gt=1,
        description=(
            "the false-alarm budget: expected serving windows between two false alarms "
            "of the feature, prediction, estimate and data-quality detectors together "
            "(family-wise over features, split as `budget_split`); it sets those "
            "detectors' p_val. null: each detector's own p_val"
        ),
    )
    budget_split: dict[str, float] = Field(
        default_factory=lambda: {
            "feature": 0.4,
            "prediction": 0.2,
            "estimated_performance": 0.2,
            "data_quality": 0.2,
        },
        description="share of the false-alarm budget per serving detector",
    )
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)
    data_quality: DataQualityConfig = Field(default_factory=DataQualityConfig)
    min_category_count: int = Field(
        5, ge=1, description="rarer reference categories share the 'other' code with unseen ones"
    )
    learned_reference_per_stratum: int = Field(
        200, ge=10, description="reference scores learned per stratum when the model is absent"
    )
    variant_versions: dict[str, str] = Field(
        default_factory=dict,
        description="version of a variant's model when events do not carry ce-modelversion",
    )
    # Both caps bound the state file (the detector's /tmp is a 256Mi emptyDir): ~1.5 kB
    # per pending half, ~100 B per awaiting prediction. The oldest go first.
    max_pending: int = Field(10_000, ge=1, description="unpaired CloudEvent halves kept")
    max_awaiting_labels: int = Field(
        500_000, ge=1, description="served predictions kept waiting for their label"
    )
    alert_cooldown_seconds: float = Field(
        0.0,
        ge=0,
        description="event time after an alert during which the same key and detector stay quiet",
    )
    critical_factor: float = Field(
        1e-3, gt=0, le=1, description="p-value below threshold x this factor: severity critical"
    )
    seed: int = Field(0, description="seed of the reference subsampling (with the window index)")

    @model_validator(mode="after")
    def _apply_budget(self) -> MonitorConfig:
        budget = self.windows_between_false_alarms
        if budget is None:
            return self
        unknown = set(self.budget_split) - set(SERVE_DETECTOR_KINDS)
        if unknown:
            raise ValueError(
                f"budget_split: unknown detector(s) {sorted(unknown)}; use {SERVE_DETECTOR_KINDS}"
            )
        total = sum(self.budget_split.values())
        if total <= 0:
            raise ValueError("budget_split: the shares must sum to more than 0")
        share = {k: v / total / budget for k, v in self.budget_split.items()}
        # A false alarm is any alert on normal traffic; one window's tests are family-wise
        # (Bonferroni over the features) at the detector's share of 1 / budget.
        self.feature_detector.p_val = share.get("feature", self.feature_detector.p_val)
        self.prediction_detector.p_val = share.get("prediction", self.prediction_detector.p_val)
        self.estimate.p_val = share.get("estimated_performance", self.estimate.p_val)
        self.data_quality.p_val = share.get("data_quality", self.data_quality.p_val)
        return self

    def false_alarm_budget(self) -> dict[str, float]:
        """Each serving detector's per-window false-alarm probability and the expected
        windows between false alarms they give together (the budget, when set)."""
        alphas = {
            "feature": self.feature_detector.p_val,
            "prediction": self.prediction_detector.p_val,
            "estimated_performance": self.estimate.p_val if self.estimate.enabled else 0.0,
            "data_quality": self.data_quality.p_val if self.data_quality.enabled else 0.0,
        }
        total = sum(alphas.values())
        return {**alphas, "expected_windows_between_false_alarms": 1 / total if total else math.inf}

    @field_validator("feature_detector", "prediction_detector", mode="before")
    @classmethod
    def _monitor_defaults(cls, value: Any, info: Any) -> Any:
        # {"type": "scipy"} swaps the backend, not the thresholds: keep the monitor's
        # (and a bare {"p_val": ...} keeps the default backend).
        if isinstance(value, Mapping):
            value = {"type": "alibi", "p_val": DEFAULT_P_VALS[info.field_name], **value}
        return value
