"""gate: choose the champion (start simple) and decide whether it may be registered."""

from kfp import dsl

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def gate(
    evaluation: dsl.Input[dsl.Artifact],
    gate_config_json: str,
    use_case: str,
    decision: dsl.Output[dsl.Artifact],
) -> bool:
    """Record the decision, champion and reasons; the returned `passed` drives the dsl.If.

    A single unnamed output on purpose: kfp.local (2.16) resolves a condition on a task's
    `Output` but mistakes a named output's channel ("gate-passed") for a pipeline input."""
    from kubeloop.pipeline.steps import gate_step

    passed, _ = gate_step(evaluation.path, gate_config_json, decision.path, use_case)
    return passed
