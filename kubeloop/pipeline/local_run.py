"""Run the training pipeline end to end on this machine with kfp.local's SubprocessRunner."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kubeloop.pipeline.params import TrainingRunParams


class LocalRunResult(BaseModel):
    """What a local run produced: each summary artifact's JSON, the wall time, and where
    its artifacts are (so no caller needs to know kfp.local's directory layout)."""

    data: dict[str, Any]
    features: dict[str, Any]
    evaluation: dict[str, Any]
    decision: dict[str, Any]
    seconds: float
    pipeline_root: str
    run_dir: str
    evaluation_dir: str = ""
    decision_path: str = ""
    model_dirs: dict[str, str] = {}


def _read_json(path: str) -> dict[str, Any]:
    target = Path(path)
    if target.is_dir():  # directory artifacts (evaluation) carry their JSON inside
        from kubeloop.pipeline.steps import EVALUATION_FILE

        target = target / EVALUATION_FILE
    return json.loads(target.read_text())


def run_local(params: TrainingRunParams, pipeline_root: Path) -> LocalRunResult:
    """Run every component as a subprocess of this interpreter (use_venv=False: the
    installed kubeloop package is what the components import), in the DAG order KFP
    resolves, with the gate's dsl.If honoured."""
    from kfp import local

    from kubeloop import plugins
    from kubeloop.pipeline.kfp_local_compat import conditions_evaluated
    from kubeloop.pipeline.steps import candidate_dirs

    training_pipeline = plugins.load(plugins.PIPELINES, "training")

    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
    )
    started = time.perf_counter()
    with conditions_evaluated():
        task = training_pipeline(**params.arguments())
    seconds = time.perf_counter() - started
    outputs = task.outputs
    return LocalRunResult(
        data=_read_json(outputs["data_summary"].path),
        features=_read_json(outputs["features_summary"].path),
        evaluation=_read_json(outputs["evaluation"].path),
        decision=_read_json(outputs["decision"].path),
        seconds=seconds,
        pipeline_root=str(pipeline_root),
        # <pipeline_root>/<run>/evaluate/evaluation: each task's artifacts live under <run>/<task>/
        run_dir=str(Path(outputs["evaluation"].path).parents[1]),
        evaluation_dir=outputs["evaluation"].path,
        decision_path=outputs["decision"].path,
        model_dirs=candidate_dirs(outputs["candidates"].path),
    )
