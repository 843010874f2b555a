"""Compile tests for every pipeline: a golden IR comparison, and the IR loaded back with
kfp to check the DAG and the gate condition.

Regenerate the golden files after an intended change with:
    UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_pipeline_compile.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from kubeloop.pipeline.compile import compile_pipeline, load_ir, pipeline_names
from kubeloop.training.model_kind import kind_names

GOLDEN = Path(__file__).parent / "golden"


def _normalised(spec: dict) -> dict:
    # The SDK version is stamped into the IR and says nothing about the pipeline.
    spec = dict(spec)
    spec.pop("sdkVersion", None)
    return spec


@pytest.mark.parametrize("name", pipeline_names())
def test_compiled_ir_matches_golden(name, tmp_path):
    compiled = load_ir(compile_pipeline(name, tmp_path / f"{name}.yaml"))
    golden_path = GOLDEN / f"{name}_pipeline.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden_path.write_text(yaml.safe_dump(_normalised(compiled), sort_keys=True))
    assert golden_path.exists(), f"no golden file {golden_path}; run with UPDATE_GOLDEN=1"
    golden = yaml.safe_load(golden_path.read_text())
    assert _normalised(compiled) == golden, (
        f"compiled IR of {name!r} differs from {golden_path}; if the change is intended, "
        "regenerate with UPDATE_GOLDEN=1"
    )


def test_training_ir_loads_back_with_dag_and_gate(tmp_path):
    from kfp import components

    path = compile_pipeline("training", tmp_path / "training.yaml")
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == "kubeloop-training"

    spec = load_ir(path)
    tasks = spec["root"]["dag"]["tasks"]
    # one train task per registered model kind, named by kind, gathered pairwise
    kinds = kind_names()
    assert kinds[0] == "logistic" and {"lightgbm", "torch"} <= set(kinds)
    trains = {f"train-{kind}" for kind in kinds}
    merges = {"merge-candidates", *(f"merge-candidates-{i}" for i in range(2, len(kinds)))}
    assert set(tasks) == {"ingest", "features", *trains, *merges, "evaluate", "gate", "condition-1"}

    def upstream(task: str) -> set[str]:
        return set(tasks[task].get("dependentTasks", []))

    assert upstream("features") == {"ingest"}
    for train in trains:
        assert upstream(train) == {"features"}
        assert tasks[train]["inputs"]["parameters"]["kind"]["runtimeValue"]["constant"] in kinds
    assert upstream("merge-candidates") == {"train-logistic", "train-lightgbm"}
    last_merge = max(merges, key=lambda m: (len(m), m))
    assert {last_merge, "features"} == upstream("evaluate")
    assert upstream("gate") == {"evaluate"}
    # every train task runs the same body: one generic component, no per-kind code
    executors = spec["deploymentSpec"]["executors"]
    bodies = {executors[f"exec-{train}"]["container"]["command"][-1] for train in trains}
    assert len(bodies) == 1 and "train_step(kind," in bodies.pop()

    # register runs only inside the gate's dsl.If, whose trigger is the gate's `passed` output
    condition = tasks["condition-1"]
    assert "gate" in condition["dependentTasks"]
    trigger = condition["triggerPolicy"]["condition"]
    assert "pipelinechannel--gate-Output" in trigger and trigger.endswith("== true")
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert set(inner) == {"register"}
    gate_param = condition["inputs"]["parameters"]["pipelinechannel--gate-Output"]
    assert gate_param["taskOutputParameter"] == {"outputParameterKey": "Output", "producerTask": "gate"}


def test_every_component_runs_in_the_project_image_and_calls_kubeloop(tmp_path):
    from components.image import COMPONENT_IMAGE

    spec = load_ir(compile_pipeline("training", tmp_path / "training.yaml"))
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 5 + 2 * len(kind_names()) - 1  # a train per kind, a merge between
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == COMPONENT_IMAGE, name
        body = container["command"][-1]
        # the body only imports a step function from the installed package
        assert "from kubeloop.pipeline.steps import" in body, name
        assert "pip install" not in " ".join(container["command"]), name
