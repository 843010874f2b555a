"""The step functions behind each Kubeflow component (components/*.py).

A component only moves artifacts; everything it does happens here, in functions that
take paths and JSON configs and are unit-tested without KFP. Each writes a small JSON
summary so that a local run (and the run report) can read what the step produced."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from kubeloop.usecase import UseCase, resolve_use_case

EVALUATION_FILE = "evaluation.json"


def _write_json(path: str | Path, payload: dict[str, Any]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _parse(model_cls, config_json: str):
    return model_cls.model_validate(json.loads(config_json or "{}"))


# --------------------------------------------------------------------------- ingest


def ingest_step(
    lake_uri: str,
    generator_config_json: str,
    generate: bool,
    summary_path: str,
    use_case: str | None = None,
) -> str:
    """Generate the lake when `generate` is set (with the use case's generator), then
    validate it against the use case's event schema; returns the lake URI.

    Validation failing here stops the pipeline before any feature table is touched."""
    from kubeloop.data.validate import validate_lake

    started = time.perf_counter()
    spec = resolve_use_case(use_case)
    generator = None
    if generate:
        generator = spec.generator_config(json.loads(generator_config_json or "{}"))
        spec.synthetic.generate(generator, lake_uri, False)
    manifest = validate_lake(lake_uri, use_case=spec)
    _write_json(
        summary_path,
        {
            "events": manifest.rows,
            "days": len(manifest.days),
            "partitions": len(manifest.partitions),
            "scenario": generator.scenario if generator is not None else None,
            "seconds": round(time.perf_counter() - started, 3),
            "lake": lake_uri,
        },
    )
    return lake_uri


# --------------------------------------------------------------------------- features


def features_step(
    lake_uri: str,
    features_uri: str,
    feature_repo: str,
    feature_config_json: str,
    training_set_path: str,
    summary_path: str,
    use_case: str | None = None,
    *,
    engine: str = "",
) -> dict[str, Any]:
    """ETL -> Feast apply -> materialize -> point-in-time training set. A non-empty
    `engine` (the pipeline's parameter: duckdb or spark) replaces the config's."""
    from kubeloop.features.pipeline_config import FeaturesStepConfig

    config = _parse(FeaturesStepConfig, feature_config_json)
    if engine:
        # Validated like the config's own field: a misspelt engine is a one-line error.
        build = type(config.build).model_validate({**config.build.model_dump(), "engine": engine})
        config = config.model_copy(update={"build": build})
    summary = run_features(
        lake_uri,
        Path(features_uri),
        Path(feature_repo),
        Path(training_set_path),
        config,
        use_case=use_case,
    )
    _write_json(summary_path, summary)
    return summary


def run_features(
    lake_uri: str,
    features_dir: Path,
    repo_dir: Path,
    training_set: Path,
    config,
    *,
    use_case: UseCase | str | None = None,
) -> dict[str, Any]:
    """The features stage as one function (also called directly by benchmarks and tests)."""
    from kubeloop.features.build import build_features
    from kubeloop.features.materialize import materialize
    from kubeloop.features.store import apply_definitions, open_store, write_repo
    from kubeloop.features.training_set import build_training_set

    started = time.perf_counter()
    spec = resolve_use_case(use_case)
    built = build_features(
        lake_uri, features_dir, config.build, progress=config.progress, use_case=spec
    )
    write_repo(repo_dir, config.store, features_dir, use_case=spec.name)
    store = open_store(repo_dir)
    views = apply_definitions(store, features_dir, use_case=spec)
    materialized = materialize(store, progress=config.progress, use_case=spec)
    training = build_training_set(
        store, lake_uri, training_set, progress=config.progress, use_case=spec
    )
    return {
        "feature_views": sorted(obj.name for obj in views if type(obj).__name__ == "FeatureView"),
        "rows_offline": built.total_rows,
        "rows_online": materialized.rows_online,
        "training_rows": training.rows,
        "online_store": config.store.online_store.type,
        "offline_store": config.store.offline_store,
        "seconds": round(time.perf_counter() - started, 3),
    }


# --------------------------------------------------------------------------- training


def load_splits(
    training_set_path: str | Path, config
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The training set split by time into (train, valid, holdout), after the burn-in days."""
    from kubeloop.training.split import time_split

    frame = pd.read_parquet(training_set_path)
    ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    keep = ts >= ts.min().normalize() + pd.Timedelta(days=config.burn_in_days)
    if config.until is not None:
        until = pd.Timestamp(config.until)
        until = until.tz_localize("UTC") if until.tzinfo is None else until.tz_convert("UTC")
        keep &= ts < until
        if config.window_days:
            keep &= ts >= until - pd.Timedelta(days=config.window_days)
    elif config.window_days:
        keep &= ts >= ts.max().normalize() - pd.Timedelta(days=config.window_days - 1)
    frame = frame[keep]
    if frame.empty:
        from kubeloop.errors import KubeloopError

        raise KubeloopError(
            f"training set {training_set_path} has no rows after {config.burn_in_days} burn-in day(s); "
            "generate more days or lower burn_in_days"
        )
    return time_split(frame, config.valid_fraction, config.holdout_fraction)


def train_step(
    kind: str,
    training_set_path: str,
    train_config_json: str,
    model_dir: str,
    use_case: str | None = None,
) -> dict[str, Any]:
    """Train one model kind (any registered one, see `kubeloop.training.model_kind`) on the
    time-ordered split and save it to `model_dir`. The feature transform is fitted here,
    on the train split, with the use case's rules. The training config is the use case's
    training defaults (`Defaults.training`) under the run's, as in evaluate and register.

    Raises KubeloopError naming the known kinds for any other `kind`, before any data is read.
    """
    from kubeloop.training.config import TrainingConfig
    from kubeloop.training.model_kind import model_kind
    from kubeloop.training.transform import FeatureTransform

    spec = model_kind(kind)
    problem = resolve_use_case(use_case)
    config = TrainingConfig.over_defaults(problem.defaults.training, train_config_json)
    train, valid, _ = load_splits(training_set_path, config)
    transform = FeatureTransform.fit(train, use_case=problem)
    model = spec.train(train, valid, config.kind_config(kind), transform)
    model.save(model_dir)
    return {
        "kind": kind,
        "train_seconds": model.train_seconds,
        "best_iteration": model.best_iteration,
    }


def candidate_dirs(candidates_path: str | Path) -> dict[str, str]:
    """The model directories of a candidate set by kind, simplest first.

    A candidate set is either one model directory (what a train step writes) or a
    directory of them, one sub-directory per kind (what `merge_candidates_step` writes)."""
    from kubeloop.training.artifacts import MODEL_JSON, read_model_info
    from kubeloop.training.model_kind import kind_names

    root = Path(candidates_path)
    if (root / MODEL_JSON).is_file():
        return {read_model_info(root).kind: str(root)}
    found = {p.name: str(p) for p in root.iterdir() if (p / MODEL_JSON).is_file()}
    order = {name: i for i, name in enumerate(kind_names())}
    return dict(sorted(found.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


def merge_candidates_step(first: str, second: str, out_dir: str) -> list[str]:
    """Copy two candidate sets into one at `out_dir` (one sub-directory per kind); returns
    the kinds. The pipeline chains this to gather every train task's model for evaluate."""
    import shutil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kinds: list[str] = []
    for source in (first, second):
        for kind, directory in candidate_dirs(source).items():
            if kind in kinds:
                from kubeloop.errors import KubeloopError

                raise KubeloopError(f"two candidates of model kind {kind!r} to merge")
            shutil.copytree(directory, out / kind)
            kinds.append(kind)
    return kinds


def evaluate_step(
    training_set_path: str,
    model_dirs: dict[str, str],
    registry_uri: str,
    model_name: str,
    train_config_json: str,
    out_dir: str,
    use_case: str | None = None,
) -> dict[str, float]:
    """Score each candidate, the base rate and the production model (if any) on the same
    holdout; write evaluation.json, metrics.json and the plots into `out_dir`.

    Returns flat scalar metrics for KFP's Metrics artifact."""
    from kubeloop.evaluation.metrics import (
        base_rate_report,
        evaluate_frame,
        threshold_for_budget,
        write_metrics,
    )
    from kubeloop.evaluation.plots import save_plots
    from kubeloop.training.artifacts import load_model
    from kubeloop.training.config import TrainingConfig
    from kubeloop.training.split import split_summary

    spec = resolve_use_case(use_case)
    model_name = model_name or spec.defaults.model_name
    label, oracle_column = spec.events.label, spec.events.oracle
    config = TrainingConfig.over_defaults(spec.defaults.training, train_config_json)
    train, valid, holdout = load_splits(training_set_path, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    oracle = holdout[oracle_column].to_numpy() if oracle_column else None
    oracle_name = oracle_column or "oracle"

    reports, predictions, train_seconds = {}, {}, {}
    policy = spec.metrics.decision
    for kind, directory in model_dirs.items():
        model = load_model(directory)
        predictions[kind] = model.predict_proba(holdout)
        # The decision threshold is chosen on the validation split, never on the holdout
        # it is scored on.
        threshold = (
            threshold_for_budget(model.predict_proba(valid), policy.alert_budget)
            if policy is not None and len(valid)
            else None
        )
        reports[kind] = evaluate_frame(
            holdout, predictions[kind], train, name=kind, use_case=spec, threshold=threshold
        )
        train_seconds[kind] = model.train_seconds
        save_plots(
            holdout[label].to_numpy(),
            {kind: predictions[kind]},
            out / kind,
            oracle=oracle,
            oracle_name=oracle_name,
            feature_importance=model.feature_importance(),
            importance_title=f"{kind} feature importance",
        )
    save_plots(holdout[label].to_numpy(), predictions, out, oracle=oracle, oracle_name=oracle_name)

    base = base_rate_report(train[label], holdout[label], oracle)
    production = _score_production(registry_uri, model_name, holdout, train, spec)
    write_metrics(reports, out)
    ts = pd.to_datetime(train["event_timestamp"], utc=True)
    _write_json(
        out / EVALUATION_FILE,
        {
            "models": {k: r.model_dump(mode="json") for k, r in reports.items()},
            "train_seconds": train_seconds,
            "base_rate": base.model_dump(mode="json"),
            "production": production,
            "split": split_summary(train, valid, holdout, use_case=spec),
            "training_window": {"start": ts.min().isoformat(), "end": ts.max().isoformat()},
        },
    )
    flat: dict[str, float] = {}
    for kind, report in reports.items():
        metrics = ("auc", "log_loss", "normalized_entropy", "calibration_ratio", "ece", "pr_auc")
        for metric in metrics:
            value = getattr(report, metric)
            if value is not None:
                flat[f"{kind}_{metric}"] = float(value)
    if reports:
        first = next(iter(reports.values()))
        if first.oracle_auc is not None:
            flat["oracle_auc"] = float(first.oracle_auc)
        if first.oracle_pr_auc is not None:
            flat["oracle_pr_auc"] = float(first.oracle_pr_auc)
    return flat


def _score_production(
    registry_uri: str,
    model_name: str,
    holdout: pd.DataFrame,
    train: pd.DataFrame,
    use_case: UseCase,
):
    """The production version's report on this holdout, so the gate compares like with like."""
    from kubeloop.evaluation.metrics import evaluate_frame
    from kubeloop.registry import open_registry
    from kubeloop.training.artifacts import load_model

    if not Path(registry_uri.removeprefix("file://")).exists():
        return None
    registry = open_registry(registry_uri)
    version = registry.production(model_name)
    if version is None:
        return None
    model = load_model(registry.model_path(model_name, version.version))
    report = evaluate_frame(
        holdout,
        model.predict_proba(holdout),
        train,
        name=f"production {version.version}",
        use_case=use_case,
    )
    return {"version": version.version, "report": report.model_dump(mode="json")}


# --------------------------------------------------------------------------- gate


def run_gate_config(use_case: UseCase | str | None, gate_config_json: str):
    """The gate config a run's gate applies: the use case's gate defaults
    (`MetricsSpec.gate`) under the run's own settings (`gate_config_json`)."""
    from kubeloop.evaluation.gate import GateConfig

    defaults = dict(resolve_use_case(use_case).metrics.gate)
    return GateConfig.model_validate({**defaults, **json.loads(gate_config_json or "{}")})


def gate_step(
    evaluation_dir: str, gate_config_json: str, decision_path: str, use_case: str | None = None
) -> tuple[bool, str]:
    """Choose the champion (start simple), then gate it against production or the base rate.

    The gate config is the use case's gate defaults under the run's (`run_gate_config`)."""
    from kubeloop.evaluation.gate import choose_champion, gate
    from kubeloop.evaluation.metrics import EvaluationReport

    config = run_gate_config(use_case, gate_config_json)
    evaluation = _read_json(Path(evaluation_dir) / EVALUATION_FILE)
    reports = {k: EvaluationReport.model_validate(v) for k, v in evaluation["models"].items()}
    champion = choose_champion(reports, config)
    production = evaluation.get("production")
    decision = gate(
        reports[champion.champion],
        EvaluationReport.model_validate(production["report"]) if production else None,
        EvaluationReport.model_validate(evaluation["base_rate"]),
        config,
    )
    _write_json(
        decision_path,
        {
            "champion": champion.champion,
            "champion_reasons": champion.reasons,
            "production_version": production["version"] if production else None,
            **decision.model_dump(mode="json"),
        },
    )
    return decision.passed, champion.champion


# --------------------------------------------------------------------------- register


def reference_sample(rows: pd.DataFrame, features: list[str], config) -> pd.DataFrame:
    """Model inputs for the drift detectors: a sample of `rows` from their last
    `reference_days` (or of all of them when those days are too few)."""
    ts = pd.to_datetime(rows["event_timestamp"], utc=True)
    recent = rows[ts >= ts.max().normalize() - pd.Timedelta(days=config.reference_days - 1)]
    pool = recent if len(recent) >= min(config.reference_rows, len(rows)) // 2 else rows
    return (
        pool[features]
        .sample(n=min(config.reference_rows, len(pool)), random_state=config.seed)
        .reset_index(drop=True)
    )


def champion_of(decision_path: str) -> str:
    """The model kind the gate chose, read from its decision artifact."""
    return _read_json(decision_path)["champion"]


def register_step(
    model_dir: str,
    kind: str,
    training_set_path: str,
    evaluation_dir: str,
    decision_path: str,
    registry_uri: str,
    model_name: str,
    scenario: str,
    run_id: str,
    registration_path: str,
    train_config_json: str = "{}",
    use_case: str | None = None,
) -> str:
    """Register the champion as a candidate version with everything a later stage needs:
    metrics, gate decision, feature service and list, training window, run id, and a
    reference sample of training features for the drift detectors."""
    from kubeloop.registry import open_registry
    from kubeloop.training.config import TrainingConfig
    from kubeloop.training.transform import model_input_columns

    spec = resolve_use_case(use_case)
    model_name = model_name or spec.defaults.model_name
    evaluation = _read_json(Path(evaluation_dir) / EVALUATION_FILE)
    decision = _read_json(decision_path)
    report = evaluation["models"][kind]
    config = TrainingConfig.over_defaults(spec.defaults.training, train_config_json)
    _, valid, holdout = load_splits(training_set_path, config)
    features = model_input_columns(spec)
    # The newest rows the model did not learn from (valid + holdout: the days just before
    # deployment) look most like what it will serve; the first days of a young lake would
    # not (their 7-day counts are still filling up).
    reference = reference_sample(pd.concat([valid, holdout], ignore_index=True), features, config)
    metrics = {
        key: report.get(key)
        for key in (
            "auc",
            "log_loss",
            "normalized_entropy",
            "calibration_ratio",
            "ece",
            "oracle_auc",
            "oracle_log_loss",
            "base_rate",
            "pr_auc",
            "oracle_pr_auc",
        )
    }
    metrics["train_seconds"] = evaluation["train_seconds"].get(kind)
    # A use case with a decision policy serves a decision too: the threshold chosen
    # offline (evaluate step, validation split) travels with the version.
    if report.get("decision"):
        metrics["decision_threshold"] = report["decision"]["threshold"]
        metrics["alert_budget"] = report["decision"]["alert_budget"]
    registry = open_registry(registry_uri)
    version = registry.register(
        model_name,
        model_dir,
        {
            "model_kind": kind,
            "metrics": metrics,
            "gate": {k: decision[k] for k in ("passed", "reasons")},
            "feature_service": spec.feature_service,
            "features": features,
            "training_window": evaluation["training_window"],
            "data_scenario": scenario,
            "pipeline_run_id": run_id,
        },
        reference=reference,
    )
    _write_json(
        registration_path,
        {
            "name": version.name,
            "version": version.version,
            "stage": version.stage.value,
            "uri": str(registry.model_path(model_name, version.version)),
        },
    )
    return version.version
