"""Training of the offline loop: the shared feature transform, the time split, the
trained-model artifact and the model-kind spec (`model_kind`). The kinds themselves live
in the top-level `models` package, one module each, found by name through the plug-in
table (`kubeloop.plugins`), so their libraries load only when used."""

from kubeloop.training.artifacts import ModelInfo, TrainedModel, load_model, read_model_info
from kubeloop.training.split import split_summary, time_split
from kubeloop.training.transform import (
    FeatureTransform,
    TransformConfig,
    TransformedBatch,
    model_input_columns,
)

__all__ = [
    "FeatureTransform",
    "ModelInfo",
    "TrainedModel",
    "TransformConfig",
    "TransformedBatch",
    "load_model",
    "model_input_columns",
    "read_model_info",
    "split_summary",
    "time_split",
]
