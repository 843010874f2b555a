"""features: ETL, Feast apply + materialize, and the point-in-time training set."""

from kfp import dsl

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def features(
    lake_uri: str,
    features_uri: str,
    feature_repo: str,
    feature_config_json: str,
    use_case: str,
    engine: str,
    training_set: dsl.Output[dsl.Dataset],
    features_summary: dsl.Output[dsl.Artifact],
):
    """Build the offline feature tables, materialize the online store, write the training set."""
    from kubeloop.pipeline.steps import features_step

    features_step(
        lake_uri,
        features_uri,
        feature_repo,
        feature_config_json,
        training_set.path,
        features_summary.path,
        use_case,
        engine=engine,
    )
