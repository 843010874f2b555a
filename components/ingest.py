"""ingest: make sure the data lake exists and is valid (generating it when asked)."""

from kfp import dsl

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def ingest(
    lake_uri: str,
    generator_config_json: str,
    generate: bool,
    use_case: str,
    data_summary: dsl.Output[dsl.Artifact],
) -> str:
    """Validate (and, if `generate`, first write) the lake of use case `use_case` (found
    by name through the plug-in table); returns the lake URI."""
    from kubeloop.pipeline.steps import ingest_step

    return ingest_step(lake_uri, generator_config_json, generate, data_summary.path, use_case)
