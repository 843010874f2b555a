"""The one drift alert model: `Alert`, what the monitor raises, the alert store keeps, the
drift service posts as a Kubernetes Event and both `kubeloop alerts` and `kubectl kubeloop
alerts` show.

An `Alert` says what was found (detector, statistic, p-value against its threshold, the
drifted features), on which traffic (model, version, variant, and the serving revision: the
Knative revision in a cluster) and on which window of events (event-time start and end,
number of events). Its `id` is derived from the model, version, variant, detector and
window, so evaluating the same window twice stores it once. It lives apart from the drift
engine so that the cluster side (`kubeloop.cluster.events`) can post it without importing
the engine.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DetectorKind = Literal[
    "feature", "prediction", "performance", "estimated_performance", "data_quality"
]
Severity = Literal["warning", "critical"]
DETECTORS: tuple[str, ...] = (
    "feature",
    "prediction",
    "performance",
    "estimated_performance",
    "data_quality",
)


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_utc(value: datetime) -> str:
    # Fixed width (microseconds, +00:00), so the text sorts like the instant it names.
    return utc(value).isoformat(timespec="microseconds")


class AlertWindow(BaseModel):
    """The window of events a detection was made on (event time)."""

    model_config = ConfigDict(extra="forbid")

    start: datetime
    end: datetime
    n: int = Field(ge=0, description="events (or labelled events) in the window")
    index: int = Field(0, ge=0, description="0-based number of the window for its key")

    @field_validator("start", "end")
    @classmethod
    def _as_utc(cls, value: datetime) -> datetime:
        return utc(value)


class Alert(BaseModel):
    """One detection.

    `statistic` is the test statistic of the strongest finding (KS distance or chi-square
    for the feature detector, KS distance for predictions, the calibration ratio or the
    normalized entropy for performance); `p_value` its p-value and `threshold` the bar it
    fell below (after the multiple-testing correction). `features` names the drifted
    features (feature detector) or the failed metrics (performance detector). `details`
    holds everything else the detector computed (per-feature p-values, bounds, ...).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    time: datetime = Field(description="when the alert was raised (wall clock, UTC)")
    model: str
    version: str
    variant: str
    revision: str | None = Field(
        None, description="revision that served the window (Knative revision in a cluster)"
    )
    detector: DetectorKind
    statistic: float
    p_value: float
    threshold: float
    features: list[str] = Field(default_factory=list)
    window: AlertWindow
    severity: Severity = "warning"
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("time")
    @classmethod
    def _time_utc(cls, value: datetime) -> datetime:
        return utc(value)

    @staticmethod
    def make_id(
        model: str, version: str, variant: str, detector: str, window_index: int, start: datetime
    ) -> str:
        """Deterministic id of the alert of one detector on one window of one key."""
        text = "|".join([model, version, variant, detector, str(window_index), iso_utc(start)])
        return hashlib.sha256(text.encode()).hexdigest()[:24]
