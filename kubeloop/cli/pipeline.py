"""`kubeloop pipeline ...`: compile, run locally with kfp.local, submit to a KFP API."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from kubeloop.cli.options import DEFAULT_USE_CASE, UseCaseOption

app = typer.Typer(
    help="Compile, run (kfp.local) and submit the Kubeflow training pipeline.", no_args_is_help=True
)
console = Console()


@app.command("compile")
def compile_cmd(
    out: Path = typer.Option(
        Path("build/training_pipeline.yaml"),
        help="Where to write the IR: a .yaml (or .json) file, or a directory "
        "(NAME_pipeline.yaml is written inside).",
    ),
    name: str = typer.Option("training", help="Pipeline to compile."),
    use_case: str | None = typer.Option(
        None,
        "--use-case",
        help="Use case the package runs by default (its use_case and model_name parameters); "
        "without it they default to kubeloop.usecase.DEFAULT_USE_CASE.",
    ),
) -> None:
    """Compile a pipeline to Kubeflow's IR YAML (the package `submit` uploads)."""
    from kubeloop.pipeline.compile import compile_pipeline

    path = compile_pipeline(name, out, use_case=use_case)
    console.print(f"compiled pipeline [bold]{name}[/] -> {path}")


@app.command("run")
def run_cmd(
    local: bool = typer.Option(
        False, "--local", help="Run with kfp.local's SubprocessRunner on this machine."
    ),
    workdir: Path = typer.Option(
        Path("runs/demo"), help="Run directory holding lake/, features/, feature_repo/, registry/."
    ),
    generate: bool = typer.Option(False, help="Generate the lake first (otherwise it must exist)."),
    events: int | None = typer.Option(None, help="Events to generate (with --generate)."),
    scenario: str = typer.Option("baseline", help="Data scenario (with --generate)."),
    use_case: UseCaseOption = DEFAULT_USE_CASE,
    model_name: str = typer.Option(
        "", help="Registry name of the model (default: the use case's)."
    ),
) -> None:
    """Run the training pipeline end to end. Only --local is supported here; use `submit` for a cluster."""
    if not local:
        raise typer.BadParameter(
            "use --local to run here, or `kubeloop pipeline submit --host URL` for a cluster"
        )
    from kubeloop.pipeline.local_run import run_local
    from kubeloop.pipeline.params import TrainingRunParams
    from kubeloop.workdir import Workdir

    wd = Workdir.at(workdir).ensure()
    generator = {"scenario": scenario}
    if events:
        generator["events"] = events
    params = TrainingRunParams.for_workdir(
        wd,
        use_case=use_case,
        model_name=model_name,
        scenario=scenario,
        generate=generate,
        # Only a generating run has a generator config (a LakeSource use case has none).
        generator_config=generator if generate else None,
    )
    result = run_local(params, wd.root / "kfp_local")
    console.print_json(
        json.dumps({"decision": result.decision, "seconds": round(result.seconds, 1)}, default=str)
    )


@app.command("submit")
def submit_cmd(
    host: str = typer.Option(
        ..., help="KFP API URL, e.g. http://localhost:8888 (port-forwarded ml-pipeline-ui)."
    ),
    package: Path = typer.Option(
        Path("build/training_pipeline.yaml"), help="Compiled IR YAML (compiled first if missing)."
    ),
    namespace: str = typer.Option("kubeflow", help="Kubernetes namespace of the run."),
    experiment: str = typer.Option("kubeloop", help="KFP experiment name."),
    run_name: str | None = typer.Option(None, help="Run name (default: derived from the package)."),
    schedule: str | None = typer.Option(
        None, help="Cron expression (6 fields, with seconds) for a recurring retraining run."
    ),
    lake_uri: str = typer.Option("s3://kubeloop/lake", help="Lake URI as seen from the cluster."),
    features_uri: str = typer.Option("s3://kubeloop/features", help="Offline feature tables URI."),
    feature_repo: str = typer.Option(
        "/feature_repo", help="Feast repo path inside the component image."
    ),
    registry_uri: str = typer.Option(
        "/registry", help="Registry location inside the component pods."
    ),
    use_case: UseCaseOption = DEFAULT_USE_CASE,
    model_name: str = typer.Option(
        "", help="Registry name of the model (default: the use case's)."
    ),
    service_account: str | None = typer.Option(
        "kubeloop-pipeline-runner", help="Service account for the run's pods."
    ),
    engine: str | None = typer.Option(
        None,
        "--engine",
        help="Feature build engine, the pipeline's `engine` parameter: duckdb (in the "
        "features step's pod) or spark (see --spark-submit). Default: the feature config's "
        "(duckdb).",
    ),
    spark_submit: str = typer.Option(
        "operator",
        "--spark-submit",
        help="With --engine spark: operator (a SparkApplication for the Kubeflow Spark "
        "Operator, which the features step creates and waits for) or local (a SparkSession "
        "in the step's pod; the project's components image has no Java for it).",
    ),
) -> None:
    """Submit the compiled pipeline to a Kubeflow Pipelines API with kfp.Client."""
    from pydantic import ValidationError

    from kubeloop.pipeline.compile import compile_pipeline, package_path
    from kubeloop.pipeline.params import TrainingRunParams, submitted_feature_config
    from kubeloop.pipeline.submit import SubmitOptions, submit

    try:
        params = TrainingRunParams(
            lake_uri=lake_uri,
            features_uri=features_uri,
            feature_repo=feature_repo,
            registry_uri=registry_uri,
            use_case=use_case,
            model_name=model_name,
            feature_config=submitted_feature_config(engine, spark_submit),
        )
    except ValidationError as err:
        # An unknown engine or submit mode fails here, before anything is compiled or sent.
        raise typer.BadParameter(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        ) from None
    package = package_path("training", package)
    if not package.exists():
        compile_pipeline("training", package)
    ids = submit(
        package,
        params.arguments(),
        SubmitOptions(
            host=host,
            namespace=namespace,
            experiment=experiment,
            run_name=run_name,
            schedule=schedule,
            service_account=service_account,
        ),
    )
    console.print_json(json.dumps(ids))
