"""A scoped fix for kfp.local's condition evaluation (kfp 2.16.1).

The compiled IR writes a dsl.If as `inputs.parameter_values['pipelinechannel--gate-Output']
== true` (CEL). kfp.local's enhanced DAG orchestrator substitutes the channel's value inside
that expression and evals it as Python, so `inputs` is undefined, the evaluation fails, and
every dsl.If branch is silently skipped. We rewrite the CEL form into the plain
`pipelinechannel--... == True` form the evaluator can resolve, only while a local run is in
progress (nothing is patched at import time), and delegate to kfp's own evaluator."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

_IR_PARAMETER = re.compile(r"inputs\.parameter_values\[\s*'([^']+)'\s*\]")
_CEL_LITERALS = {"true": "True", "false": "False", "null": "None", "&&": " and ", "||": " or "}


def cel_to_python(condition: str) -> str:
    """`inputs.parameter_values['x'] == true && ...` -> `x == True and ...`."""
    out = _IR_PARAMETER.sub(r"\1", condition)
    for cel, python in _CEL_LITERALS.items():
        if cel.isalpha():
            out = re.sub(rf"\b{cel}\b", python, out)
        else:
            out = out.replace(cel, python)
    return out


@contextlib.contextmanager
def conditions_evaluated() -> Iterator[None]:
    """Within this block, kfp.local evaluates dsl.If conditions of compiled IR correctly."""
    from kfp.local.orchestrator import enhanced_dag_orchestrator as orchestrator

    evaluator = orchestrator.ConditionEvaluator
    original = evaluator.__dict__["evaluate_condition"]

    def evaluate_condition(condition, io_store):
        return original.__func__(cel_to_python(condition), io_store)

    evaluator.evaluate_condition = staticmethod(evaluate_condition)
    try:
        yield
    finally:
        evaluator.evaluate_condition = original
