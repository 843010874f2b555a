"""evaluate: every candidate and the production model on the same later-in-time holdout."""

from kfp import dsl

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def evaluate(
    training_set: dsl.Input[dsl.Dataset],
    candidates: dsl.Input[dsl.Artifact],
    registry_uri: str,
    model_name: str,
    train_config_json: str,
    use_case: str,
    evaluation: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
):
    """Write metrics, ROC, reliability and importance plots for each model."""
    from kubeloop.pipeline.steps import candidate_dirs, evaluate_step

    figures = evaluate_step(
        training_set.path,
        candidate_dirs(candidates.path),
        registry_uri,
        model_name,
        train_config_json,
        evaluation.path,
        use_case,
    )
    for name, value in figures.items():
        metrics.log_metric(name, value)
