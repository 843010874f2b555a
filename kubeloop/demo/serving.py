"""The demo's serving stage: production + canary served by real KServe processes, traffic
replayed through them, labels joined later, and the canary promoted or rolled back by the
rollout policy on what was measured."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kubeloop.serving.policy import RolloutPolicy
from kubeloop.serving.replay import ReplayConfig
from kubeloop.workdir import Workdir


class ServingStageConfig(BaseModel):
    """Canary share, traffic and policy of the demo's online experiment."""

    model_config = ConfigDict(extra="forbid")

    canary_percent: int = Field(50, ge=0, le=100, description="an even split gets evidence fastest")
    replay: ReplayConfig = Field(default_factory=lambda: ReplayConfig(requests=3000, batch_size=8))
    request_id_prefix: str = Field(
        "ab-",
        pattern=r"^[a-z][a-z0-9-]*$",
        description="prefix of this stage's request ids (stages share one request log)",
    )
    policy: RolloutPolicy = Field(default_factory=lambda: RolloutPolicy(min_labelled=2000))
    replay_last_days: int = Field(
        3, ge=1, description="impressions are drawn from the last days of the lake"
    )


def register_challenger(
    workdir: Workdir,
    run_dir: Path,
    model_name: str,
    scenario: str,
    gate_config: dict | None = None,
    train_config_json: str = "{}",
) -> str | None:
    """Register the pipeline's runner-up as a candidate, with its own gate decision against
    the base rate, so that the online A/B can test what "start simple" decided offline."""
    from kubeloop.evaluation.gate import GateConfig, gate
    from kubeloop.evaluation.metrics import EvaluationReport
    from kubeloop.pipeline.steps import EVALUATION_FILE, register_step

    decision = json.loads((run_dir / "gate" / "decision").read_text())
    evaluation = json.loads((run_dir / "evaluate" / "evaluation" / EVALUATION_FILE).read_text())
    others = [kind for kind in evaluation["models"] if kind != decision["champion"]]
    if not others:
        return None
    kind = others[0]
    verdict = gate(
        EvaluationReport.model_validate(evaluation["models"][kind]),
        None,
        EvaluationReport.model_validate(evaluation["base_rate"]),
        GateConfig.model_validate(gate_config or {}),
    )
    challenger_decision = run_dir / "gate" / f"challenger-{kind}.json"
    challenger_decision.write_text(
        json.dumps({"champion": kind, **verdict.model_dump(mode="json")})
    )
    if not verdict.passed:
        return None
    return register_step(
        str(run_dir / f"train-{kind}" / "model"),
        kind,
        str(run_dir / "features" / "training_set"),
        str(run_dir / "evaluate" / "evaluation"),
        str(challenger_decision),
        str(workdir.registry),
        model_name,
        scenario,
        f"{run_dir.name}-challenger",
        str(run_dir / "gate" / f"challenger-{kind}-registration.json"),
        train_config_json,
    )


def run_serving_stage(
    workdir: Workdir,
    model_name: str,
    primary: str,
    canary: str | None,
    impressions,
    config: ServingStageConfig,
) -> dict[str, Any]:
    """Serve `primary` (and `canary` at the configured percent), replay `impressions`,
    evaluate per variant, apply the policy's decision; returns the report's `serving` section."""
    from kubeloop.registry import open_registry
    from kubeloop.serving import ab
    from kubeloop.serving.local_servers import LocalStack
    from kubeloop.serving.policy import conclude
    from kubeloop.serving.replay import join_feedback, replay_through_time
    from kubeloop.serving.request_log.reader import exchanges_frame
    from kubeloop.serving.rollout import LocalRollout

    registry = open_registry(str(workdir.registry))
    percent = config.canary_percent if canary else 0
    started = time.perf_counter()
    with LocalStack.start(registry, model_name, workdir, primary, canary, percent) as stack:
        url = f"{stack.url}/v1/models/{model_name}:predict"
        sent = replay_through_time(
            url,
            impressions,
            config.replay,
            workdir.feature_repo,
            id_prefix=config.request_id_prefix,
        )
        stack.request_logger.flush()
        exchanges = exchanges_frame(stack.request_log_path)
    frame = join_feedback(sent, exchanges, impressions)
    result = ab.compare_variants(frame[frame["variant"] != "unrouted"])
    decision = conclude(result, config.policy) if canary else None

    rollout = LocalRollout(workdir, model_name, registry)
    if decision is not None and decision.action == "promote":
        rollout.promote(reason="; ".join(decision.reasons))
    elif decision is not None and decision.action == "rollback":
        rollout.rollback(reason="; ".join(decision.reasons))

    per_request = frame.drop_duplicates("request_id")
    latencies = per_request.loc[~per_request["error"], "latency_ms"]
    counts = per_request["variant"].value_counts().to_dict()
    return {
        "primary_version": primary,
        "canary_version": canary,
        "canary_percent": percent,
        "requests": {
            "primary": int(counts.get("primary", 0)),
            "canary": int(counts.get("canary", 0)),
            "errors": int(per_request["error"].sum()),
        },
        "impressions": {k: int(v) for k, v in frame["variant"].value_counts().items()},
        "batch_size": config.replay.batch_size,
        "latency_ms": {
            "p50": float(latencies.quantile(0.5)) if len(latencies) else None,
            "p99": float(latencies.quantile(0.99)) if len(latencies) else None,
        },
        "ab": ab.summary(result),
        "decision": decision.model_dump()
        if decision
        else {"action": "none", "reasons": ["no canary"]},
        "stages_after": {v.version: v.stage.value for v in registry.list(model_name)},
        "request_log": str(stack.request_log_path),
        "seconds": round(time.perf_counter() - started, 3),
    }
