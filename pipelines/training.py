"""The offline loop as a Kubeflow pipeline:
ingest -> features -> (train-lightgbm || train-torch) -> evaluate -> gate -> If(passed): register."""

from typing import NamedTuple

from kfp import dsl

from components.evaluate import evaluate
from components.features import features
from components.gate import gate
from components.ingest import ingest
from components.register import register
from components.train_lightgbm import train_lightgbm
from components.train_torch import train_torch

PIPELINE_NAME = "kubeloop-training"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Data lake -> Feast features -> LightGBM and PyTorch -> evaluation gate -> model registry.",
)
def training_pipeline(
    lake_uri: str,
    features_uri: str,
    feature_repo: str,
    registry_uri: str,
    model_name: str = "ctr",
    scenario: str = "baseline",
    generate: bool = False,
    generator_config_json: str = "{}",
    feature_config_json: str = "{}",
    train_config_json: str = "{}",
    gate_config_json: str = "{}",
) -> NamedTuple(
    "TrainingOutputs",
    [
        ("data_summary", dsl.Artifact),
        ("features_summary", dsl.Artifact),
        ("evaluation", dsl.Artifact),
        ("decision", dsl.Artifact),
    ],
):
    """Train both models on the Feast training set and register the champion if it passes the gate."""
    ingest_task = ingest(
        lake_uri=lake_uri, generator_config_json=generator_config_json, generate=generate
    ).set_display_name("ingest")
    features_task = features(
        lake_uri=ingest_task.outputs["Output"],
        features_uri=features_uri,
        feature_repo=feature_repo,
        feature_config_json=feature_config_json,
    ).set_display_name("features")
    training_set = features_task.outputs["training_set"]

    lgb_task = train_lightgbm(
        training_set=training_set, train_config_json=train_config_json
    ).set_display_name("train-lightgbm")
    torch_task = train_torch(
        training_set=training_set, train_config_json=train_config_json
    ).set_display_name("train-torch")

    eval_task = evaluate(
        training_set=training_set,
        lightgbm_model=lgb_task.outputs["model"],
        torch_model=torch_task.outputs["model"],
        registry_uri=registry_uri,
        model_name=model_name,
        train_config_json=train_config_json,
    ).set_display_name("evaluate")
    gate_task = gate(
        evaluation=eval_task.outputs["evaluation"], gate_config_json=gate_config_json
    ).set_display_name("gate")

    with dsl.If(gate_task.outputs["Output"] == True, name="gate-passed"):
        register(
            lightgbm_model=lgb_task.outputs["model"],
            torch_model=torch_task.outputs["model"],
            training_set=training_set,
            evaluation=eval_task.outputs["evaluation"],
            decision=gate_task.outputs["decision"],
            registry_uri=registry_uri,
            model_name=model_name,
            scenario=scenario,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            train_config_json=train_config_json,
        ).set_display_name("register")

    return NamedTuple(
        "TrainingOutputs",
        [
            ("data_summary", dsl.Artifact),
            ("features_summary", dsl.Artifact),
            ("evaluation", dsl.Artifact),
            ("decision", dsl.Artifact),
        ],
    )(
        ingest_task.outputs["data_summary"],
        features_task.outputs["features_summary"],
        eval_task.outputs["evaluation"],
        gate_task.outputs["decision"],
    )
