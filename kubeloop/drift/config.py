"""The drift configs: each detector backend's `<Name>Config` (unknown keys refused, a
`Literal` type field) and the monitor's `MonitorConfig` / `PerformanceConfig`."""

from __future__ import annotations

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


def parse_detector_config(data: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
    """Validate a detector config (`type` defaults to alibi)."""
    return parse_backend_config(
        "drift detector", plugins.DRIFT_DETECTORS, DEFAULT_DETECTOR, data or {}
    )


DetectorConfig = Annotated[SerializeAsAny[BaseModel], BeforeValidator(parse_detector_config)]
"""Any registered detector's config (entry-point group `kubeloop.drift_detectors`)."""


def _default_categorical() -> list[str]:
    from kubeloop.training.transform import CATEGORICAL_INPUTS

    return list(CATEGORICAL_INPUTS)


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
        (0.85, 1.15), description="allowed mean prediction / observed click rate"
    )
    max_ne_increase: float = Field(
        0.04, gt=0, description="allowed rise of normalized entropy over the reference's"
    )
    p_val: float = Field(
        0.01,
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

    @field_validator("feature_detector", "prediction_detector", mode="before")
    @classmethod
    def _monitor_defaults(cls, value: Any, info: Any) -> Any:
        # {"type": "scipy"} swaps the backend, not the thresholds: keep the monitor's
        # (and a bare {"p_val": ...} keeps the default backend).
        if isinstance(value, Mapping):
            value = {"type": "alibi", "p_val": DEFAULT_P_VALS[info.field_name], **value}
        return value
