"""gate: choose the champion (start simple) and decide whether it may be registered."""

from typing import NamedTuple

from kfp import dsl

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def gate(
    evaluation: dsl.Input[dsl.Artifact],
    gate_config_json: str,
    decision: dsl.Output[dsl.Artifact],
) -> NamedTuple("GateOutputs", [("passed", bool), ("champion", str)]):
    """Record the decision and its reasons; `passed` drives the pipeline's dsl.If."""
    from collections import namedtuple

    from kubeloop.pipeline.steps import gate_step

    passed, champion = gate_step(evaluation.path, gate_config_json, decision.path)
    return namedtuple("GateOutputs", ["passed", "champion"])(passed, champion)
