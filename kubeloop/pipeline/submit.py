"""Submit the compiled pipeline to a Kubeflow Pipelines API with kfp.Client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class SubmitOptions(BaseModel):
    """Where and how to submit. `schedule` (a cron expression with seconds, as KFP's
    scheduler expects, e.g. "0 0 3 * * *") makes it a recurring run for scheduled retraining."""

    model_config = ConfigDict(extra="forbid")

    host: str
    namespace: str = "kubeflow"
    experiment: str = "kubeloop"
    run_name: str | None = None
    schedule: str | None = None
    service_account: str | None = None
    enable_caching: bool = False


def submit(
    package: Path, arguments: dict[str, Any], options: SubmitOptions, client=None
) -> dict[str, str]:
    """Create a run (or a recurring run) from the compiled package; returns its ids.

    `client` may be injected (tests); by default a kfp.Client for `options.host`."""
    if client is None:
        import kfp

        client = kfp.Client(host=options.host, namespace=options.namespace)
    run_name = options.run_name or f"{package.stem}-run"
    if options.schedule:
        experiment = client.create_experiment(options.experiment, namespace=options.namespace)
        recurring = client.create_recurring_run(
            experiment_id=experiment.experiment_id,
            job_name=run_name,
            cron_expression=options.schedule,
            params=arguments,
            pipeline_package_path=str(package),
            enable_caching=options.enable_caching,
            service_account=options.service_account,
        )
        return {
            "recurring_run_id": recurring.recurring_run_id,
            "experiment_id": experiment.experiment_id,
        }
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments=arguments,
        run_name=run_name,
        experiment_name=options.experiment,
        namespace=options.namespace,
        enable_caching=options.enable_caching,
        service_account=options.service_account,
    )
    return {"run_id": result.run_id}
