"""`kubeloop demo`: the whole local loop on embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console


def _read_config(path: Path | None) -> dict[str, Any]:
    """The DemoConfig fields in a JSON or YAML file (empty without one)."""
    if path is None:
        return {}
    from kubeloop.errors import KubeloopError

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KubeloopError(f"--config {path}: cannot read it ({exc.strerror})") from None
    try:
        import yaml

        # YAML is a superset of JSON: one parser reads both.
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeloopError(f"--config {path} is not valid JSON or YAML: {exc}") from None
    if not isinstance(data, dict):
        raise KubeloopError(
            f"--config {path} must hold a mapping of DemoConfig fields "
            "(generator, serving, drift, train_config, ...)"
        )
    return data


def demo(
    workdir: Path = typer.Option(
        Path("runs/demo"), help="Run directory; report.json is written here."
    ),
    events: int | None = typer.Option(
        None, help="Events to generate (default: the generator's default)."
    ),
    scenario: str | None = typer.Option(
        None, help="baseline | covariate_shift | concept_drift | new_ads (default: baseline)"
    ),
    seed: int | None = typer.Option(None, help="Generator seed."),
    use_case: str | None = typer.Option(
        None,
        "--use-case",
        envvar="KUBELOOP_USE_CASE",
        help="Use case to run (default: the config's, else kubeloop.usecase.DEFAULT_USE_CASE).",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="JSON or YAML file of DemoConfig fields (sizes of every stage: generator, "
        "serving, drift, train_config, ...); the options above override its generator.",
    ),
    features_engine: str | None = typer.Option(
        None,
        "--features-engine",
        help="duckdb (default) or spark: who runs the feature build (the same SQL and tables).",
    ),
    progress: bool = typer.Option(True, help="Show progress bars."),
    executor_logs: bool = typer.Option(
        False,
        help="Stream every pipeline task's executor log (by default they go to "
        "WORKDIR/kfp_local*/pipeline.log).",
    ),
) -> None:
    """Run every stage of the local loop and write WORKDIR/report.json."""
    from kubeloop.demo import DemoConfig, run_demo
    from kubeloop.workdir import Workdir

    fields = _read_config(config)
    generator = dict(fields.get("generator") or {})
    for name, value in (("events", events), ("scenario", scenario), ("seed", seed)):
        if value is not None:
            generator[name] = value
    if use_case is not None:
        fields["use_case"] = use_case
    if features_engine is not None:
        fields["features_engine"] = features_engine
    demo_config = DemoConfig.model_validate(
        {**fields, "generator": generator, "progress": progress, "executor_logs": executor_logs}
    )
    wd = Workdir.at(workdir)
    report = run_demo(demo_config, wd)
    console = Console()
    console.rule("kubeloop demo")
    for line in summary_lines(report):
        console.print(line)
    console.print(f"report: {wd.report}")


def _num(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def summary_lines(report: dict) -> list[str]:
    """A few lines a person reads after a demo: the champion, the serving decision, the
    drift outcome and the wall time (the whole report is in report.json)."""
    lines = []
    training = report.get("training") or {}
    models = training.get("models") or {}
    champion = training.get("champion")
    if models:
        ranked = ", ".join(
            f"{kind} NE {_num(m.get('ne'))} AUC {_num(m.get('auc'))}"
            + (" (champion)" if kind == champion else "")
            for kind, m in sorted(models.items(), key=lambda kv: kv[1].get("rank", 0))
        )
        lines.append(f"training: {ranked}")
    serving = report.get("serving") or {}
    decision = serving.get("decision") or {}
    if decision:
        # The last reason is the one that decided; the rest are in report.json.
        reasons = decision.get("reasons") or []
        why = f" ({reasons[-1]})" if reasons else ""
        lines.append(f"serving: {decision.get('action', '-')}{why}")
        verdict = (serving.get("oracle") or {}).get("verdict")
        if verdict:
            lines.append(f"serving, against the oracle: {verdict}")
    if serving:
        from kubeloop.report_render import latency_line

        # "p99 at load X": a latency means little without the load it was measured at.
        latency = latency_line(serving)
        if latency:
            lines.append(f"serving latency: {latency}")
    drift = report.get("drift") or {}
    if drift:
        alerts = drift.get("alerts") or []
        retrain = (drift.get("retrain") or {}).get("triggered")
        lines.append(
            f"drift: {len(alerts)} alert(s), {drift.get('false_alarms_before_change', 0)} before the"
            f" change; retraining {'triggered' if retrain else 'not triggered'}"
        )
    run = report.get("run") or {}
    if isinstance(run.get("wall_seconds"), int | float):
        lines.append(f"wall time: {run['wall_seconds'] / 60:.1f} min")
    return lines
