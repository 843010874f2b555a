"""The ad-CTR use case as the engine's spec (`kubeloop.usecase.UseCase`)."""

from __future__ import annotations

from kubeloop.usecase import (
    Defaults,
    MetricsSpec,
    SyntheticSource,
    TransformRules,
    UseCase,
)
from usecases.ctr import schema
from usecases.ctr.features import ENTITIES, REQUEST_FEATURES
from usecases.ctr.generator import GeneratorConfig, generate_lake, iter_day_tables
from usecases.ctr.scenarios import SCENARIOS

# Name rules of the ETL's columns (usecases/ctr/features.py): counts take log1p, smoothed
# rates are undefined without impressions (filled with the training click rate, flagged),
# and recency is filled with "longer than any window" (flagged).
TRANSFORM = TransformRules(
    categorical=tuple(schema.CATEGORICAL_INPUTS),
    numeric=(
        ("*_impressions_*", "log1p"),
        ("*_clicks_*", "log1p"),
        ("*_ctr_*", "rate"),
        ("*_hours_since_last", "hours"),
    ),
    cyclic_hours=("hour",),
    # Affinity of a segment for a category and use of the preferred device are pair
    # effects, which an embedding model or a tree otherwise assembles from two columns.
    crosses=(("user_segment", "ad_category"), ("device", "user_device_pref")),
)

USE_CASE = UseCase(
    name="ctr",
    description="Ad click-through-rate prediction on a seeded impression log.",
    events=schema.EVENTS,
    entities=ENTITIES,
    feature_service=schema.FEATURE_SERVICE,
    transform=TRANSFORM,
    source=SyntheticSource(
        config_class=GeneratorConfig,
        generate=generate_lake,
        iter_day_tables=iter_day_tables,
        scenarios=tuple(SCENARIOS),
    ),
    defaults=Defaults(model_name="ctr", scenario="baseline"),
    metrics=MetricsSpec(slices=("device", "user_country"), seen_entities=("ad", "user")),
    request_fields=("user_id", "ad_id", "hour", "weekday", "device", "slot_position"),
    # Recency of the user and the ad, measured to the request (usecases/ctr/features.py).
    request_features=REQUEST_FEATURES,
)
