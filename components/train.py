"""train: one model kind on the Feast training set, parameterised by kind.

The pipeline calls `train_component(kind)` once per registered kind: the same component
under the task name `train-<kind>`, so each kind's task, and its model artifact, is
found by kind (kfp names a task after its component)."""

import dataclasses

from kfp import dsl
from kfp.dsl.python_component import PythonComponent

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def train(
    kind: str,
    training_set: dsl.Input[dsl.Dataset],
    train_config_json: str,
    use_case: str,
    model: dsl.Output[dsl.Model],
):
    """Train model kind `kind` with early stopping on a time-ordered validation split."""
    from kubeloop.pipeline.steps import train_step

    train_step(kind, training_set.path, train_config_json, model.path, use_case)


def train_component(kind: str) -> PythonComponent:
    """`train` named `train-<kind>`: one body and one step function for every kind."""
    spec = dataclasses.replace(train.component_spec, name=f"train-{kind}")
    return PythonComponent(component_spec=spec, python_func=train.python_func)
