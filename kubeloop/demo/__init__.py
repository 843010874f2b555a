"""The whole local loop on embedded defaults: what `make demo` runs.

Stages, each writing its section of report.json as soon as it ends:
  data      generate the lake (seeded scenario)
  features  \\
  training   > the Kubeflow training pipeline, run by kfp.local's SubprocessRunner:
  registry  /  ingest -> features -> train x2 -> evaluate -> gate -> register
  serving   production + the ladder's runner-up on real KServe servers, a progressive
            rollout (shadow -> 5 -> 25 -> 50 -> 100%) on paired, anytime-valid statistics:
            promoted, rolled back or inconclusive (kubeloop.serving.progressive)
  drift     traffic replayed across the day of change through production, the drift
            detector service fed by the request log, delayed labels, retrain policy,
            retraining run on recent data, canary, promote or roll back

The timeline over the lake's days (defaults: 14 days, change on day 10):
  days [0, train_until_day)          the first training run's data (day 0 is burn-in)
  days [train_until_day, change_day) the champion-vs-challenger A/B
  days [change_day - 1, end)         the drift replay (one day before the change for false alarms)
  the last `canary_last_days` days  the retrained canary's A/B

The stages' own modules sit beside this one: `kubeloop.demo.serving` (the serving stage)
and `kubeloop.demo.drift` (the drift stage, the closed loop); the engine's serving and
drift packages know nothing of the demo.
"""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kubeloop.demo.drift import DriftStageConfig
from kubeloop.demo.serving import ServingStageConfig
from kubeloop.report import write_section
from kubeloop.usecase import DEFAULT_USE_CASE, SyntheticConfig, load_use_case
from kubeloop.workdir import Workdir

log = logging.getLogger(__name__)


class DemoConfig(BaseModel):
    """Sizes and knobs of a demo run; the defaults finish in minutes on 2 cores."""

    model_config = ConfigDict(extra="forbid")

    use_case: str = Field(
        DEFAULT_USE_CASE, description="the use case (entry-point group kubeloop.usecases)"
    )
    # Validated by the use case's own generator config class (see _use_case_defaults).
    generator: SerializeAsAny[SyntheticConfig]
    model_name: str = Field("", description="registry name; empty: the use case's default")
    train_config: dict[str, Any] = Field(default_factory=dict)
    gate_config: dict[str, Any] = Field(default_factory=dict)
    serving: ServingStageConfig = Field(default_factory=ServingStageConfig)
    serve: bool = Field(
        True, description="run the serving stage (KServe servers, replay, canary decision)"
    )
    drift: DriftStageConfig = Field(default_factory=DriftStageConfig)
    monitor: bool = Field(True, description="run the drift stage (needs `serve`)")
    features_engine: Literal["duckdb", "spark"] = Field(
        "duckdb",
        description="who runs the feature build's SQL (the pipeline's `engine`); both give "
        "the same tables, so the same metrics on the same seed",
    )
    train_until_day: int | None = Field(
        9, ge=2, description="the first training uses days before this one; None = every day"
    )

    @model_validator(mode="before")
    @classmethod
    def _use_case_defaults(cls, data: Any) -> Any:
        # The demo generates its lake, so the use case must be synthetic; its generator
        # config class and default model name fill what the config leaves out.
        from kubeloop.pipeline.params import use_case_defaults

        return use_case_defaults(data, "generator")

    @field_validator("train_config", "gate_config")
    @classmethod
    def _typed(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Kept as the dicts given (stages merge keys into them), but validated now, so a
        # typo (a misspelt model kind or setting) fails before the lake is generated.
        from kubeloop.evaluation.gate import GateConfig
        from kubeloop.training.config import TrainingConfig

        typed = TrainingConfig if info.field_name == "train_config" else GateConfig
        typed.model_validate(value)
        return value

    def day_start(self, day: int):
        """Midnight (UTC) starting day `day` of the lake."""
        from datetime import datetime, time, timedelta

        return datetime.combine(self.generator.start_date + timedelta(days=day), time(), UTC)

    def first_training(self) -> dict[str, Any]:
        """The first run's training config: the demo's, bounded by `train_until_day`."""
        train = dict(self.train_config)
        if self.train_until_day is not None and self.train_until_day < self.generator.days:
            train.setdefault("until", self.day_start(self.train_until_day).isoformat())
        return train

    progress: bool = True
    executor_logs: bool = Field(
        False,
        description="stream each pipeline task's executor log; else it goes to <run>/pipeline.log",
    )


def run_data_stage(config: DemoConfig, workdir: Workdir) -> dict[str, Any]:
    """Generate the lake with the use case's generator; write the report's `data` section."""
    source = load_use_case(config.use_case).synthetic
    summary = source.generate(config.generator, str(workdir.lake), config.progress)
    section = {
        "events": summary.events,
        "days": summary.days,
        "partitions": summary.partitions,
        "scenario": summary.scenario,
        "seconds": round(summary.seconds, 3),
        "seed": summary.seed,
        "change_day": summary.change_day,
        **summary.label_stats(),
        "lake": str(workdir.lake),
    }
    write_section(workdir.report, "data", section)
    return section


def training_section(evaluation: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """The report's `training` section from the evaluate and gate steps' outputs."""
    from kubeloop.training.model_kind import is_known, model_kind

    models = {}
    for kind, report in evaluation["models"].items():
        models[kind] = {
            # the model's rung on the ladder ("start simple"), from its kind's spec
            "rank": model_kind(kind).rank if is_known(kind) else None,
            "auc": report["auc"],
            "logloss": report["log_loss"],
            "ne": report["normalized_entropy"],
            "oracle_auc": report["oracle_auc"],
            "auc_vs_oracle": (
                report["auc"] / report["oracle_auc"]
                if report["auc"] and report["oracle_auc"]
                else None
            ),
            "oracle_logloss": report["oracle_log_loss"],
            "pr_auc": report.get("pr_auc"),
            "oracle_pr_auc": report.get("oracle_pr_auc"),
            "pr_auc_vs_oracle": (
                report["pr_auc"] / report["oracle_pr_auc"]
                if report.get("pr_auc") and report.get("oracle_pr_auc")
                else None
            ),
            "decision": report.get("decision"),
            "calibration": {"ratio": report["calibration_ratio"], "ece": report["ece"]},
            "train_seconds": evaluation["train_seconds"].get(kind),
        }
    return {
        "models": models,
        "champion": decision["champion"],
        "champion_reasons": decision["champion_reasons"],
        "gate": {
            "passed": decision["passed"],
            "reasons": decision["reasons"],
            "compared_against": decision["compared_against"],
        },
        "split": evaluation["split"],
    }


def registry_section(
    workdir: Workdir, model_name: str, run_id_hint: str | None = None
) -> dict[str, Any]:
    """The report's `registry` section: the newest version of `model_name`."""
    from kubeloop.registry import open_registry

    registry = open_registry(str(workdir.registry))
    versions = registry.list(model_name)
    if not versions:
        return {"name": model_name, "version": None, "stage": None, "uri": None}
    latest = versions[-1]
    return {
        "name": latest.name,
        "version": latest.version,
        "stage": latest.stage.value,
        "uri": registry.model_path(model_name, latest.version).as_uri(),
        "model_kind": latest.model_kind,
        "pipeline_run_id": latest.pipeline_run_id,
    }


def training_params(config: DemoConfig, workdir: Workdir, train_config: dict[str, Any]):
    """The parameters of one of the demo's training-pipeline runs (the first, or the drift
    stage's retraining) on the lake it generated: its use case, model name, scenario, gate
    config and feature engine, with `train_config`."""
    from kubeloop.pipeline.params import TrainingRunParams

    return TrainingRunParams.for_workdir(
        workdir,
        use_case=config.use_case,
        model_name=config.model_name,
        scenario=config.generator.scenario,
        generate=False,
        train_config=train_config,
        gate_config=config.gate_config,
        feature_config={"progress": False, "build": {"engine": config.features_engine}},
    )


def run_training_pipeline(config: DemoConfig, workdir: Workdir):
    """Run the Kubeflow training pipeline locally; write `features`, `training`, `registry`."""
    from kubeloop.pipeline.local_run import run_local

    params = training_params(config, workdir, config.first_training())
    result = run_local(params, workdir.root / "kfp_local", quiet=not config.executor_logs)
    write_section(workdir.report, "features", result.features)
    write_section(
        workdir.report,
        "training",
        {
            **training_section(result.evaluation, result.decision),
            "pipeline_seconds": round(result.seconds, 3),
        },
    )
    write_section(workdir.report, "registry", registry_section(workdir, config.model_name))
    return result


def replay_impressions(config: DemoConfig, days: list[int], n: int):
    """Impressions of the given lake days (regenerated from the same seed, so they are the
    lake's own rows), sampled down to `n`."""
    from kubeloop.serving.replay import impressions_from_days, sample_impressions

    source = load_use_case(config.use_case).synthetic
    dates = config.generator.day_dates()
    chosen = {dates[d] for d in days if 0 <= d < len(dates)}
    frames = impressions_from_days(source.iter_day_tables(config.generator), chosen)
    return sample_impressions(frames, n, seed=config.serving.replay.sample_seed)


def ab_days(config: DemoConfig) -> list[int]:
    """Days of the champion-vs-challenger A/B: after the first training, before the change
    (or the lake's last days when the first training used every day)."""
    last = config.generator.days
    keep = config.serving.replay_last_days
    until = config.train_until_day
    if until is None or until >= last:
        return list(range(max(last - keep, 0), last))
    change = config.generator.change_day
    days = list(range(until, change if until < change <= last else last))
    return days[:keep]


def run_serving(config: DemoConfig, workdir: Workdir, pipeline_result) -> dict[str, Any]:
    """Production = the pipeline's champion; canary = its runner-up; write `serving`."""
    from kubeloop.demo.serving import register_challenger, run_serving_stage

    registered = registry_section(workdir, config.model_name)
    if registered["version"] is None:
        section = {
            "decision": {"action": "none", "reasons": ["the gate registered no model to serve"]}
        }
        return write_section(workdir.report, "serving", section)
    # gated and registered with the parameters the pipeline ran with
    challenger = register_challenger(
        pipeline_result, training_params(config, workdir, config.first_training())
    )
    replay = config.serving.replay
    impressions = replay_impressions(config, ab_days(config), replay.requests * replay.batch_size)
    section = run_serving_stage(
        workdir,
        config.model_name,
        registered["version"],
        challenger,
        impressions,
        config.serving,
        config.use_case,
    )
    return write_section(workdir.report, "serving", section)


def run_demo(config: DemoConfig, workdir: Workdir) -> dict[str, Any]:
    """Run every stage that exists, in order; returns the final report. Its `run` section
    gives the machine, the commit, the load average before and after and the wall time."""
    from kubeloop.report import finish_run_section, read_report, start_run_section

    workdir.ensure()
    if workdir.report.exists():
        workdir.report.unlink()  # a report describes one run, never a mix of two
    # The use case names where the report is kept (kubeloop.report_render.report_target).
    run = {**start_run_section(), "use_case": config.use_case}
    public = {k: v for k, v in run.items() if k != "started_monotonic"}
    write_section(workdir.report, "run", {**public, "complete": False})
    complete = False
    try:
        _run_stages(config, workdir)
        complete = True
    finally:
        # Written also when a stage fails, so a partial report still says how long it ran.
        write_section(workdir.report, "run", {**finish_run_section(run), "complete": complete})
    return read_report(workdir.report)


def _run_stages(config: DemoConfig, workdir: Workdir) -> None:
    """The stages in order; each writes its own section of the report."""
    run_data_stage(config, workdir)
    result = run_training_pipeline(config, workdir)
    if not config.serve:
        return
    report = run_serving(config, workdir, result)
    if not config.monitor or report["serving"].get("primary_version") is None:
        return
    run_drift(config, workdir)


def run_drift(config: DemoConfig, workdir: Workdir) -> dict[str, Any]:
    """The closed loop on the production model; writes the report's `drift` section."""
    from kubeloop.demo.drift import change_start_of, run_drift_stage
    from kubeloop.registry import open_registry

    production = open_registry(str(workdir.registry)).production(config.model_name)
    gen = config.generator
    # one day before the change (false alarms), then every day after it
    days = list(range(max(min(gen.change_day - 1, gen.days - 2), 0), gen.days))
    per_day = config.drift.impressions_per_day
    impressions = replay_impressions(config, days, per_day * len(days))
    retrain_params = training_params(
        config,
        workdir,
        {**config.train_config, "window_days": config.drift.retrain_window_days},
    )
    canary = config.drift.canary_replay

    def canary_impressions():
        last = list(range(gen.days - config.drift.canary_last_days, gen.days))
        return replay_impressions(config, last, canary.requests * canary.batch_size)

    section = run_drift_stage(
        workdir,
        config.model_name,
        production.version,
        impressions,
        change_start_of(gen),
        gen.scenario,
        config.drift.model_copy(update={"executor_logs": config.executor_logs}),
        retrain_params,
        canary_impressions,
        config.use_case,
    )
    return write_section(workdir.report, "drift", section)
