"""Run the training pipeline end to end on this machine with kfp.local's SubprocessRunner."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kubeloop.errors import KubeloopError
from kubeloop.pipeline.params import TrainingRunParams

LOG_FILE = "pipeline.log"


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


def run_local(
    params: TrainingRunParams, pipeline_root: Path, *, quiet: bool = False
) -> LocalRunResult:
    """Run every component as a subprocess of this interpreter (use_venv=False: the
    installed kubeloop package is what the components import), in the DAG order KFP
    resolves, with the gate's dsl.If honoured.

    kfp.local prints every task's executor log to stdout. With `quiet` those pages go to
    `<pipeline_root>/pipeline.log` instead (a demo shows progress and a summary, not
    executor logs), and a failed run says where the log is."""
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
    log_path = pipeline_root / LOG_FILE
    with contextlib.ExitStack() as stack:
        if quiet:
            # kfp.local prints through sys.stdout (its log handler is made per run), so a
            # redirect for the run's duration catches the tasks' streamed output too.
            log = stack.enter_context(log_path.open("a"))
            stack.enter_context(contextlib.redirect_stdout(log))
            stack.enter_context(contextlib.redirect_stderr(log))
        stack.enter_context(conditions_evaluated())
        try:
            task = training_pipeline(**params.arguments())
        except Exception as exc:
            if not quiet:
                raise
            raise KubeloopError(
                f"local pipeline run failed ({type(exc).__name__}: {exc}); the executor logs"
                f" are in {log_path}"
            ) from exc
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
