"""train-lightgbm: the LightGBM baseline on the Feast training set."""

from kfp import dsl

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def train_lightgbm(
    training_set: dsl.Input[dsl.Dataset],
    train_config_json: str,
    model: dsl.Output[dsl.Model],
):
    """Train LightGBM with early stopping on a time-ordered validation split."""
    from kubeloop.pipeline.steps import train_step

    train_step("lightgbm", training_set.path, train_config_json, model.path)
