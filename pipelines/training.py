"""The offline loop as a Kubeflow pipeline:
ingest -> features -> (train-<kind> for every registered model kind) -> merge-candidates
-> evaluate -> gate -> If(passed): register.

The kinds come from the plug-in table when the pipeline is compiled, simplest first; a
new model kind needs no edit here."""

from collections.abc import Mapping
from typing import Any, NamedTuple

from kfp import dsl, kubernetes

from components.candidates import merge_candidates
from components.evaluate import evaluate
from components.features import features
from components.gate import gate
from components.ingest import ingest
from components.register import register
from components.train import train_component
from kubeloop.features.spark_app import SparkApplicationSettings
from kubeloop.training.model_kind import kind_names
from kubeloop.usecase import DEFAULT_USE_CASE

PIPELINE_NAME = "kubeloop-training"


def with_object_store(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Give a step that reads or writes `s3://` (the lake, the Spark job's tables) the
    cluster's object store: the keys of KFP's own Secret as AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, and its endpoint and region, which is what s3fs's botocore reads
    from the environment (docs/cluster-assumptions.md). The store is the one the feature
    job's SparkApplication is given (SparkApplicationSettings' defaults), so the step and
    the Spark pods read and write the same objects. The Secret is optional: a run on local
    paths needs none, and an s3:// read without it fails with botocore's NoCredentialsError."""
    store = SparkApplicationSettings()
    kubernetes.use_secret_as_env(
        task,
        secret_name=store.s3_secret,
        secret_key_to_env={
            store.s3_access_key_field: "AWS_ACCESS_KEY_ID",
            store.s3_secret_key_field: "AWS_SECRET_ACCESS_KEY",
        },
        optional=True,
    )
    return task.set_env_variable("AWS_ENDPOINT_URL", store.s3_endpoint).set_env_variable(
        "AWS_DEFAULT_REGION", store.s3_region
    )


def step(component: Any, name: str, run: Mapping[str, Any], **inputs: Any) -> dsl.PipelineTask:
    """A task of `component` shown as `name`: `inputs`, plus every pipeline parameter in
    `run` that the component takes under the same name (a component input named like a
    pipeline parameter always is that parameter, so the wiring cannot mix two up)."""
    takes = component.component_spec.inputs or {}
    passed = {key: value for key, value in run.items() if key in takes and key not in inputs}
    return component(**passed, **inputs).set_display_name(name)


class TrainingOutputs(NamedTuple):
    """The pipeline's outputs: its return annotation (what KFP compiles) and its value."""

    data_summary: dsl.Artifact
    features_summary: dsl.Artifact
    evaluation: dsl.Artifact
    decision: dsl.Artifact
    candidates: dsl.Artifact


@dsl.pipeline(
    name=PIPELINE_NAME,
    description=(
        "Data lake -> Feast features -> the model ladder (one train task per model kind)"
        " -> evaluation gate -> model registry."
    ),
)
def training_pipeline(
    lake_uri: str,
    features_uri: str,
    feature_repo: str,
    registry_uri: str,
    use_case: str = DEFAULT_USE_CASE,
    model_name: str = "",
    scenario: str = "baseline",
    generate: bool = False,
    generator_config_json: str = "{}",
    feature_config_json: str = "{}",
    engine: str = "",
    train_config_json: str = "{}",
    gate_config_json: str = "{}",
) -> TrainingOutputs:
    """Train every model kind on the Feast training set and register the ladder's champion
    if it passes the gate. Every step resolves `use_case` by name (entry-point group
    `kubeloop.usecases`); an empty `model_name` is the use case's default. `engine` (duckdb
    or spark) runs the feature build's SQL; empty: the feature config's (duckdb)."""
    # Every pipeline parameter, by name (taken before any other local exists): a step gets
    # each one whose name is one of its component's inputs (see `step`).
    run = dict(locals())
    # The two steps that touch the lake and the feature tables themselves; the others read
    # and write KFP artifacts, which KFP's launcher moves.
    ingest_task = with_object_store(step(ingest, "ingest", run))
    features_task = with_object_store(
        step(features, "features", run, lake_uri=ingest_task.outputs["Output"])
    )
    training_set = features_task.outputs["training_set"]

    candidates = None
    for kind in kind_names():
        trained = step(
            train_component(kind), f"train-{kind}", run, kind=kind, training_set=training_set
        )
        model = trained.outputs["model"]
        candidates = (
            model
            if candidates is None
            else merge_candidates(first=candidates, second=model)
            .set_display_name(f"gather-{kind}")
            .outputs["candidates"]
        )

    eval_task = step(evaluate, "evaluate", run, training_set=training_set, candidates=candidates)
    gate_task = step(gate, "gate", run, evaluation=eval_task.outputs["evaluation"])

    with dsl.If(gate_task.outputs["Output"] == True, name="gate-passed"):
        step(
            register,
            "register",
            run,
            candidates=candidates,
            training_set=training_set,
            evaluation=eval_task.outputs["evaluation"],
            decision=gate_task.outputs["decision"],
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )

    return TrainingOutputs(
        ingest_task.outputs["data_summary"],
        features_task.outputs["features_summary"],
        eval_task.outputs["evaluation"],
        gate_task.outputs["decision"],
        candidates,
    )
