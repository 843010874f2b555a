"""candidates: gather two candidate sets (a trained model, or models by kind) into one.

kfp.local (2.16) runs neither dsl.Collected nor an unset optional artifact input, so the
pipeline gathers its train tasks' models by chaining this pairwise merge."""

from kfp import dsl

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def merge_candidates(
    first: dsl.Input[dsl.Artifact],
    second: dsl.Input[dsl.Artifact],
    candidates: dsl.Output[dsl.Artifact],
):
    """Copy both sets into `candidates`, one sub-directory per model kind."""
    from kubeloop.pipeline.steps import merge_candidates_step

    merge_candidates_step(first.path, second.path, candidates.path)
