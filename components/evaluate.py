"""evaluate: both candidates and the production model on the same later-in-time holdout."""

from kfp import dsl

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def evaluate(
    training_set: dsl.Input[dsl.Dataset],
    lightgbm_model: dsl.Input[dsl.Model],
    torch_model: dsl.Input[dsl.Model],
    registry_uri: str,
    model_name: str,
    train_config_json: str,
    evaluation: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
):
    """Write metrics, ROC, reliability and importance plots for each model."""
    from kubeloop.pipeline.steps import evaluate_step

    figures = evaluate_step(
        training_set.path,
        {"lightgbm": lightgbm_model.path, "torch": torch_model.path},
        registry_uri,
        model_name,
        train_config_json,
        evaluation.path,
    )
    for name, value in figures.items():
        metrics.log_metric(name, value)
