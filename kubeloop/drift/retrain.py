"""Which drift alerts trigger retraining, and the trigger itself.

The policy is deliberately conservative: a retraining run costs a pipeline and puts a new
model in front of users, so it needs alerts of enough severity, from windows of enough
events, on the production model, and not within the cool-down of the previous run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.drift.alerts import Alert

SEVERITY_RANK = {"warning": 1, "critical": 2}


class RetrainPolicy(BaseModel):
    """When alerts trigger a retraining run."""

    model_config = ConfigDict(extra="forbid")

    min_severity: Literal["warning", "critical"] = "warning"
    min_window_events: int = Field(500, ge=1, description="alerts from smaller windows are ignored")
    min_alerts: int = Field(1, ge=1, description="qualifying alerts needed")
    detectors: list[
        Literal["feature", "prediction", "performance", "estimated_performance", "data_quality"]
    ] = Field(
        # data_quality is left out: broken inputs are fixed upstream, and a model retrained
        # on them would learn the breakage.
        default_factory=lambda: ["feature", "prediction", "performance", "estimated_performance"],
        description="alert kinds that may trigger a run (add data_quality to retrain on it)",
    )
    variants: list[str] = Field(
        default_factory=lambda: ["primary"],
        description="only the production model's drift retrains it",
    )
    cooldown: timedelta = Field(
        timedelta(hours=6), description="no second run within this time of the last one"
    )


class RetrainDecision(BaseModel):
    """Whether to retrain, on which alerts, and why."""

    trigger: bool
    reasons: list[str]
    alert_ids: list[str] = Field(default_factory=list)


def decide_retrain(
    alerts: list[Alert],
    policy: RetrainPolicy,
    last_run: datetime | None = None,
    now: datetime | None = None,
) -> RetrainDecision:
    """Apply the policy to the alerts raised so far."""
    now = now or datetime.now(UTC)
    qualifying = [
        a
        for a in alerts
        if SEVERITY_RANK[a.severity] >= SEVERITY_RANK[policy.min_severity]
        and a.window.n >= policy.min_window_events
        and a.detector in policy.detectors
        and a.variant in policy.variants
    ]
    ignored = len(alerts) - len(qualifying)
    reasons = [
        f"{len(qualifying)} qualifying alert(s), {ignored} ignored by severity, window size, detector or variant"
    ]
    if len(qualifying) < policy.min_alerts:
        return RetrainDecision(
            trigger=False, reasons=[*reasons, f"fewer than {policy.min_alerts} required"]
        )
    if last_run is not None and now - last_run < policy.cooldown:
        return RetrainDecision(
            trigger=False,
            reasons=[
                *reasons,
                f"last run {now - last_run} ago, inside the {policy.cooldown} cool-down",
            ],
        )
    detectors = sorted({a.detector for a in qualifying})
    features = sorted({f for a in qualifying for f in a.features})
    reasons.append(
        f"drift on {', '.join(detectors)}" + (f" ({', '.join(features[:8])})" if features else "")
    )
    return RetrainDecision(trigger=True, reasons=reasons, alert_ids=[a.id for a in qualifying])


def trigger_local(params, pipeline_root, *, quiet: bool = False) -> Any:
    """Run the training pipeline here with kfp.local (the embedded path); `quiet` sends the
    executor logs to a file (see `kubeloop.pipeline.local_run.run_local`)."""
    from kubeloop.pipeline.local_run import run_local

    return run_local(params, pipeline_root, quiet=quiet)


def trigger_cluster(package, params, options, client=None) -> dict[str, str]:
    """Submit the training pipeline to the cluster's KFP API (kfp.Client)."""
    from kubeloop.pipeline.submit import submit

    return submit(package, params.arguments(), options, client)
