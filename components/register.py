"""register: write the champion into the model registry as a candidate version."""

from kfp import dsl

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def register(
    lightgbm_model: dsl.Input[dsl.Model],
    torch_model: dsl.Input[dsl.Model],
    training_set: dsl.Input[dsl.Dataset],
    evaluation: dsl.Input[dsl.Artifact],
    decision: dsl.Input[dsl.Artifact],
    registry_uri: str,
    model_name: str,
    scenario: str,
    run_id: str,
    train_config_json: str,
    registration: dsl.Output[dsl.Artifact],
) -> str:
    """Register the gate's champion (named in `decision`) with its metrics, gate decision
    and drift reference; returns the version."""
    from kubeloop.pipeline.steps import champion_of, register_step

    models = {"lightgbm": lightgbm_model.path, "torch": torch_model.path}
    champion = champion_of(decision.path)
    return register_step(
        models[champion],
        champion,
        training_set.path,
        evaluation.path,
        decision.path,
        registry_uri,
        model_name,
        scenario,
        run_id,
        registration.path,
        train_config_json,
    )
