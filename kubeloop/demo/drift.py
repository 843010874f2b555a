"""The demo's drift stage, the closed loop: traffic is replayed across the day of the
change through the served production model; the router's KServe-logger CloudEvents go to
the drift detector service (a real process, the one the cluster runs); delayed clicks
follow; alerts go through the retrain policy; a retraining run of the training pipeline
on recent data registers a model that passes the gate; it is deployed as canary and the
rollout policy promotes it or rolls it back on replayed post-change traffic."""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Any

import httpx
import pandas as pd
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from kubeloop.drift.retrain import RetrainPolicy
from kubeloop.serving.progressive import ProgressivePolicy
from kubeloop.serving.replay import ReplayConfig
from kubeloop.usecase import UseCase, resolve_use_case
from kubeloop.workdir import Workdir

SERVE_DETECTORS = ("feature", "prediction", "estimated_performance", "data_quality")


class DriftStageConfig(BaseModel):
    """The replay across the change, the retrain policy, and the canary experiment after it."""

    model_config = ConfigDict(extra="forbid")

    impressions_per_day: int = Field(4000, ge=100, description="replayed impressions per day")
    replay: ReplayConfig = Field(default_factory=lambda: ReplayConfig(requests=1, batch_size=8))
    retrain: RetrainPolicy = Field(default_factory=RetrainPolicy)
    retrain_window_days: int = Field(
        8, ge=2, description="recent days the retraining run learns from"
    )
    executor_logs: bool = Field(
        False, description="stream the retraining run's executor logs; else <run>/pipeline.log"
    )
    canary_replay: ReplayConfig = Field(
        default_factory=lambda: ReplayConfig(requests=3000, batch_size=8)
    )
    # The retrained model passed the offline gate: online it must prove non-inferiority,
    # not superiority a second time.
    canary_policy: ProgressivePolicy = Field(
        default_factory=lambda: ProgressivePolicy(requires="non_inferiority")
    )
    canary_last_days: int = Field(2, ge=1, description="post-change days the canary is tried on")
    backend: str | None = Field(
        None,
        # `detector` was this field's earlier name; a check kind is a detector elsewhere.
        validation_alias=AliasChoices("backend", "detector"),
        description="statistical backend of the drift service: 'alibi' (default) or 'scipy'",
    )
    ready_timeout: float = 180.0


def monitor_config(use_case: UseCase) -> dict[str, Any]:
    """The drift service's MonitorConfig keys for `use_case`: its categorical inputs, the
    features each entity's lookup brings, and the calendar columns (strata, excluded
    inputs) only where the use case's model reads them. The monitor's defaults are the
    default use case's."""
    from kubeloop.drift.config import MonitorConfig

    defaults = MonitorConfig.model_fields
    inputs = set(use_case.model_input_columns())
    calendar = {}
    for name in ("stratify_by", "season_by"):
        column = defaults[name].default
        calendar[name] = column if column in inputs else None
    excluded = [c for c in defaults["exclude_features"].get_default(call_default_factory=True)]
    return {
        "categorical": list(use_case.transform.categorical),
        "entity_groups": {e.name: list(e.features) for e in use_case.entities},
        "exclude_features": [c for c in excluded if c in inputs],
        **calendar,
    }


def start_drift_service(
    workdir: Workdir,
    reference_dir,
    model_name: str,
    backend: str | None,
    timeout: float,
    use_case: UseCase | str | None = None,
):
    """Start `python -m kubeloop.drift.service` on a free loopback port, configured for
    `use_case` (`monitor_config`); returns the process."""
    import json

    from kubeloop.serving.processes import ServerProcess, free_ports, wait_ready

    drift = workdir.root / "drift"
    drift.mkdir(parents=True, exist_ok=True)
    config_file = drift / "monitor.json"
    config_file.write_text(json.dumps(monitor_config(resolve_use_case(use_case)), indent=1))
    port = free_ports(1)[0]
    args = [
        sys.executable,
        "-m",
        "kubeloop.drift.service",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--reference_dir",
        str(reference_dir),
        "--state_dir",
        str(drift / "state"),
        "--alert_store",
        f"sqlite:///{drift / 'alerts.db'}",
        "--inference_service",
        model_name,
        "--config",
        str(config_file),
        "--no-kube",
        "--log_level",
        "warning",
    ]
    if backend:
        args += ["--backend", backend]
    server = ServerProcess(
        "drift-detector", args, port, drift / "drift-detector.log", health_path="/healthz"
    )
    import os

    server.start(os.environ.copy())
    wait_ready([server], timeout)
    return server


def stop_process(server) -> None:
    """Stop the drift service (SIGTERM, SIGKILL after 15 s)."""
    from kubeloop.serving.processes import stop_servers

    stop_servers([server], grace=15.0)


def post_labels(
    url: str,
    sent: pd.DataFrame,
    impressions: pd.DataFrame,
    chunk: int = 5000,
    *,
    use_case: UseCase | str | None = None,
) -> int:
    """Delayed feedback: the label (the use case's label column) of every served
    impression, keyed as the monitor keys rows (`<request id>/<position>` for batched
    requests)."""
    from kubeloop.demo.serving import matured

    spec = resolve_use_case(use_case)
    label = spec.events.label
    # Each label as it is final (a late chargeback counts as none); all of them are posted
    # after the replay, and the labelled windows are read at their event times.
    impressions = matured(impressions, spec, pd.Timestamp.max.tz_localize("UTC"))
    labels = impressions.assign(event_id=impressions["event_id"].astype(str))[["event_id", label]]
    joined = sent[sent["status_code"] == 200].merge(labels, on="event_id")
    sizes = joined.groupby("request_id")["event_id"].transform("size")
    keys = joined["request_id"].where(
        sizes == 1, joined["request_id"] + "/" + joined["position"].astype(str)
    )
    payload = [{"request_id": k, "click": int(c)} for k, c in zip(keys, joined[label])]
    with httpx.Client(timeout=60) as client:
        for i in range(0, len(payload), chunk):
            client.post(f"{url}/labels", json={"labels": payload[i : i + chunk]}).raise_for_status()
    return len(payload)


def service_window_counts(url: str) -> dict[str, dict[str, int]]:
    """Per detector, the windows the drift service evaluated, skipped and failed (read from
    its /status counters after the final flush), so "no alert" is told apart from "never
    evaluated"."""
    from kubeloop.drift.alerts import DETECTORS
    from kubeloop.drift.monitor import window_counts

    response = httpx.get(f"{url}/status", timeout=60)
    response.raise_for_status()
    return window_counts(response.json().get("counters", {}), DETECTORS)


def service_timeline(url: str) -> list[dict[str, Any]]:
    """Every window the drift service evaluated, with its figures (GET /timeline)."""
    response = httpx.get(f"{url}/timeline", timeout=60)
    response.raise_for_status()
    return response.json()


def _iso(t: float) -> str:
    return pd.Timestamp(t, unit="s", tz="UTC").isoformat()


def performance_by_window(timeline: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The primary's label-free estimate per serving window, and estimate beside realized
    per labelled window (what the report's `drift.performance` carries)."""
    serve, labelled = [], []
    for r in timeline:
        if r["key"][2] != "primary":
            continue
        base = {"window": r["index"], "start": _iso(r["start"]), "end": _iso(r["end"]), "n": r["n"]}
        if r["detector"] == "estimated_performance":
            serve.append(
                {
                    **base,
                    "estimated": r.get("estimated"),
                    "reference_estimated": r.get("reference_estimated"),
                    "alert": r["drift"],
                }
            )
        elif r["detector"] == "performance":
            labelled.append(
                {
                    **base,
                    "estimated": r.get("estimated"),
                    "realized": r.get("realized"),
                    "estimate_error_ne": r.get("estimate_error_ne"),
                    "alert": r["drift"],
                }
            )
    return {"serving_windows": serve, "labelled_windows": labelled}


def data_quality_by_window(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The primary's data-quality verdict per serving window: the worst rate per check
    kind and the checks that failed."""
    return [
        {
            "window": r["index"],
            "start": _iso(r["start"]),
            "end": _iso(r["end"]),
            "n": r["n"],
            "alert": r["drift"],
            "worst_rate": r.get("worst_rate", {}),
            "failed": [
                {k: c[k] for k in ("feature", "check", "rate", "tolerance", "p_value")}
                for c in r.get("failed", [])
            ],
        }
        for r in timeline
        if r["detector"] == "data_quality" and r["key"][2] == "primary"
    ]


def alert_positions(alerts, sent: pd.DataFrame) -> list[int]:
    """For each alert, how many impressions had been served when its window closed."""
    # Compare as UTC nanoseconds: tz-aware pandas values turn into objects in numpy.
    times = pd.to_datetime(sent["sent_at"], utc=True).astype("int64").sort_values().to_numpy()

    def ns(moment) -> int:
        stamp = pd.Timestamp(moment)
        return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).value

    return [int(times.searchsorted(ns(a.window.end), side="right")) for a in alerts]


def first_alerts_after_change(
    alerts, timeline: list[dict[str, Any]], sent: pd.DataFrame, change_position: int
) -> dict[str, dict[str, Any]]:
    """Per detector, the primary's first alert after the change: how many impressions and
    how many of that detector's windows after the change it came (a serving window, or a
    labelled window for `performance`), and whether that is within one window: the window
    holding the change, or the first window wholly after it."""
    times = pd.to_datetime(sent["sent_at"], utc=True).astype("int64").sort_values().to_numpy()

    def served(epoch_s: float) -> int:
        return int(times.searchsorted(int(epoch_s * 1e9), side="right"))

    out: dict[str, dict[str, Any]] = {}
    ranked = sorted(zip(alert_positions(alerts, sent), range(len(alerts))))
    for position, i in ranked:
        alert = alerts[i]
        if alert.variant != "primary" or position <= change_position or alert.detector in out:
            continue
        windows = sorted(
            (r for r in timeline if r["detector"] == alert.detector and r["key"][2] == "primary"),
            key=lambda r: r["index"],
        )
        after = [r for r in windows if served(r["end"]) > change_position]
        first = after[0] if after else None
        straddles = first is not None and served(first["start"]) < change_position
        count = alert.window.index - first["index"] + 1 if first is not None else None
        out[alert.detector] = {
            "window_index": alert.window.index,
            "events_after_change": position - change_position,
            "windows_after_change": count,
            "window_events": alert.window.n,
            "within_one_window": count is not None and count <= (2 if straddles else 1),
        }
    return out


def summarize_alert(alert, position: int | None, change_position: int) -> dict[str, Any]:
    return {
        "id": alert.id,
        "detector": alert.detector,
        "variant": alert.variant,
        "version": alert.version,
        "features": alert.features,
        "p_value": alert.p_value,
        "threshold": alert.threshold,
        "statistic": alert.statistic,
        "severity": alert.severity,
        "window": alert.window.model_dump(mode="json"),
        "served_impressions_at_window_end": position,
        "after_change": None if position is None else position > change_position,
    }


def run_drift_stage(
    workdir: Workdir,
    model_name: str,
    production: str,
    impressions: pd.DataFrame,
    change_start: pd.Timestamp,
    scenario: str,
    config: DriftStageConfig,
    retrain_params,
    canary_impressions_fn,
    use_case: UseCase | str | None = None,
) -> dict[str, Any]:
    """Replay, detect, retrain, canary for `use_case`; returns the report's `drift` section.

    `retrain_params` are the TrainingRunParams of a retraining run; `canary_impressions_fn()`
    returns the post-change impressions the retrained canary is tried on."""
    from kubeloop.demo.serving import stack_server_args
    from kubeloop.drift.alerts import open_alert_store
    from kubeloop.drift.retrain import decide_retrain, trigger_local
    from kubeloop.registry import open_registry
    from kubeloop.serving.local_servers import LocalStack
    from kubeloop.serving.replay import offered_load, replay_through_time

    spec = resolve_use_case(use_case)
    started = time.perf_counter()
    registry = open_registry(str(workdir.registry))
    drift_dir = workdir.root / "drift"
    reference_dir = drift_dir / "reference" / production
    if not reference_dir.exists():
        registry.export(model_name, production, reference_dir)
    service = start_drift_service(
        workdir, reference_dir, model_name, config.backend, config.ready_timeout, spec
    )
    try:
        with LocalStack.start(
            registry,
            model_name,
            workdir,
            production,
            logger_urls=[service.url + "/"],
            server_args=stack_server_args(spec),
        ) as stack:
            sent = replay_through_time(
                f"{stack.url}/v1/models/{model_name}:predict",
                impressions,
                config.replay,
                workdir.feature_repo,
                id_prefix="drift-",
                use_case=spec,
            )
            stack.request_logger.flush(timeout=120)
        labelled = post_labels(service.url, sent, impressions, use_case=spec)
        httpx.post(f"{service.url}/flush", timeout=300).raise_for_status()
        windows = service_window_counts(service.url)
        timeline = service_timeline(service.url)
    finally:
        stop_process(service)

    store = open_alert_store(drift_dir / "alerts.db")
    alerts = sorted(store.list(model=model_name), key=lambda a: a.time)
    ts = pd.to_datetime(impressions["event_timestamp"], utc=True)
    change_position = int((ts < change_start).sum())
    serve_alerts = [a for a in alerts if a.detector in SERVE_DETECTORS and a.variant == "primary"]
    positions = dict(zip([a.id for a in serve_alerts], alert_positions(serve_alerts, sent)))
    after = [
        positions[a.id] - change_position for a in serve_alerts if positions[a.id] > change_position
    ]
    section: dict[str, Any] = {
        "scenario": scenario,
        "replayed_impressions": len(sent),
        "latency_ms": replay_latency(sent),
        "offered_load": offered_load(sent, config.replay),
        "labelled_impressions": labelled,
        "change_at_impression": change_position,
        "windows": windows,
        "alerts": [summarize_alert(a, positions.get(a.id), change_position) for a in alerts],
        "alerts_by_detector": pd.Series([a.detector for a in alerts], dtype=object)
        .value_counts()
        .to_dict(),
        "drifted_features": sorted(
            {f for a in alerts if a.detector == "feature" for f in a.features}
        ),
        "first_alert_delay_events": min(after) if after else None,
        "first_alert_after_change": first_alerts_after_change(
            alerts, timeline, sent, change_position
        ),
        "label_delay_hours": (
            spec.events.label_delay.total_seconds() / 3600 if spec.events.label_delay else None
        ),
        "false_alarms_before_change": sum(
            1 for a in serve_alerts if positions[a.id] <= change_position
        ),
        "performance": performance_by_window(timeline),
        "data_quality": data_quality_by_window(timeline),
    }

    decision = decide_retrain(alerts, config.retrain)
    retrain: dict[str, Any] = {"triggered": decision.trigger, "reasons": decision.reasons}
    rollout: dict[str, Any] = {"decision": "none", "reasons": ["no retraining"]}
    if decision.trigger:
        before = {v.version for v in registry.list(model_name)}
        result = trigger_local(
            retrain_params, workdir.root / "kfp_local_retrain", quiet=not config.executor_logs
        )
        new = sorted({v.version for v in registry.list(model_name)} - before)
        retrain.update(
            run_id=result.run_dir.rsplit("/", 1)[-1],
            new_version=new[-1] if new else None,
            gate={
                k: result.decision.get(k)
                for k in ("passed", "reasons", "compared_against", "champion")
            },
            seconds=round(result.seconds, 3),
        )
        if new:
            from kubeloop.demo.serving import ServingStageConfig, run_serving_stage

            serving = run_serving_stage(
                workdir,
                model_name,
                production,
                new[-1],
                canary_impressions_fn(),
                ServingStageConfig(
                    replay=config.canary_replay,
                    policy=config.canary_policy,
                    request_id_prefix="canary-",
                ),
                spec,
            )
            rollout = {
                "primary_version": production,
                "canary_version": new[-1],
                "decision": serving["decision"]["action"],
                "reasons": serving["decision"]["reasons"],
                **{
                    key: serving.get(key)
                    for key in (
                        "requires",
                        "shadow",
                        "steps",
                        "srm",
                        "paired",
                        "oracle",
                        "latency_ms",
                        "offered_load",
                    )
                },
                "stages_after": serving["stages_after"],
            }
        else:
            rollout = {"decision": "none", "reasons": ["the retrained model did not pass the gate"]}
    section["retrain"] = retrain
    section["rollout"] = rollout
    section["seconds"] = round(time.perf_counter() - started, 3)
    return section


def replay_latency(sent: pd.DataFrame) -> dict[str, float | None]:
    """Client-side p50 and p99 per answered request of a replay (ms)."""
    ok = sent[sent["status_code"] == 200].drop_duplicates("request_id")["client_latency_ms"]
    if ok.empty:
        return {"p50": None, "p99": None}
    return {"p50": float(ok.quantile(0.5)), "p99": float(ok.quantile(0.99))}


def change_start_of(generator) -> pd.Timestamp:
    """The first moment of the scenario's day of change (UTC)."""
    day = generator.start_date + timedelta(days=generator.change_day)
    return pd.Timestamp(day, tz="UTC")
