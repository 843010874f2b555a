"""register: write the champion into the model registry as a candidate version."""

from kfp import dsl

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def register(
    candidates: dsl.Input[dsl.Artifact],
    training_set: dsl.Input[dsl.Dataset],
    evaluation: dsl.Input[dsl.Artifact],
    decision: dsl.Input[dsl.Artifact],
    registry_uri: str,
    model_name: str,
    scenario: str,
    run_id: str,
    train_config_json: str,
    use_case: str,
    registration: dsl.Output[dsl.Artifact],
) -> str:
    """Register the gate's champion (named in `decision`) with its metrics, gate decision
    and drift reference; returns the version."""
    from kubeloop.pipeline.steps import candidate_dirs, champion_of, register_step

    champion = champion_of(decision.path)
    return register_step(
        candidate_dirs(candidates.path)[champion],
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
        use_case,
    )
