"""train-torch: the PyTorch CTR model (embeddings + cross network) on the same training set."""

from kfp import dsl

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def train_torch(
    training_set: dsl.Input[dsl.Dataset],
    train_config_json: str,
    model: dsl.Output[dsl.Model],
):
    """Train the PyTorch model with early stopping on a time-ordered validation split."""
    from kubeloop.pipeline.steps import train_step

    train_step("torch", training_set.path, train_config_json, model.path)
