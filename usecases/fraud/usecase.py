"""The card-fraud use case as the engine's spec (`kubeloop.usecase.UseCase`)."""

from __future__ import annotations

from kubeloop.usecase import (
    DecisionPolicy,
    Defaults,
    MetricsSpec,
    SyntheticSource,
    TransformRules,
    UseCase,
)
from usecases.fraud import schema
from usecases.fraud.features import ENTITIES, REQUEST_FEATURES
from usecases.fraud.generator import GeneratorConfig, generate_lake, iter_day_tables

# Counts and amounts are heavy-tailed (log1p; a missing row is a quiet entity, 0); smoothed
# fraud rates and shares are undefined without history (filled with the training rate,
# flagged); mean amounts fall back to the training median.
TRANSFORM = TransformRules(
    categorical=tuple(schema.CATEGORICAL_INPUTS),
    numeric=(
        ("amount", "log1p"),
        ("*_txns_*", "log1p"),
        ("*_amount_1h", "log1p"),
        ("*_amount_24h", "log1p"),
        ("*_amount_7d", "log1p"),
        ("*_chargebacks_*", "log1p"),
        ("*_fraud_rate_*", "rate"),
        ("*_hours_since_*", "hours"),
        ("card_*_last_*", "log1p"),
    ),
    cyclic_hours=("hour",),
    # Abroad is the pair (where the card lives, where it is used); online risk depends on
    # the category.
    crosses=(("card_country", "country"), ("channel", "merchant_category")),
)

# A training set holds ~700 frauds (0.9% of ~80k rows) and its validation split ~100, so
# the engine's LightGBM (31 leaves, 50 rows a leaf) fits noise and stops early on a noisy
# valid loss: smaller trees with more rows a leaf, a longer patience. Chosen on seeds 11
# and 12 (PR-AUC against the oracle's, 200k transactions, first training), checked on
# 13-15: LightGBM's ratio held or rose (0.777x -> 0.812x on 13) and its NE is now the
# lowest on all five, so it is the champion; the champion's ratio moved only -0.010 to
# +0.007 (0.80x-0.91x). Nor do features reach 0.9x on average: the oracle knows which
# of a compromised card's transactions are the fraudster's; a LightGBM also given each
# card's and merchant's latent parameters and the true count of the card's earlier
# episode transactions scores 0.905x and 0.903x on seeds 12 and 13 (0.847x, 0.812x
# with these features; 4x the data: 0.817x, 0.845x).
TRAINING = {
    "lightgbm": {
        "num_leaves": 7,
        "learning_rate": 0.05,
        "min_data_in_leaf": 200,
        "feature_fraction": 0.8,
        "lambda_l2": 5.0,
        "max_rounds": 1500,
        "early_stopping_rounds": 100,
    }
}

USE_CASE = UseCase(
    name="fraud",
    description="Card-transaction fraud on a seeded payments log, with delayed chargebacks.",
    events=schema.EVENTS,
    entities=ENTITIES,
    feature_service=schema.FEATURE_SERVICE,
    transform=TRANSFORM,
    source=SyntheticSource(
        config_class=GeneratorConfig,
        generate=generate_lake,
        iter_day_tables=iter_day_tables,
        scenarios=("baseline", "new_fraud_pattern", "merchant_mix_shift"),
    ),
    defaults=Defaults(model_name="fraud", scenario="baseline", training=TRAINING),
    metrics=MetricsSpec(
        slices=("channel", "merchant_category"),
        seen_entities=("card", "merchant"),
        # With ~0.7% positives a holdout holds a few hundred frauds, so its calibration
        # ratio moves by +-10% from sampling alone: CTR's [0.9, 1.1] would reject sound
        # models at random.
        gate={"calibration_bounds": (0.75, 1.33)},
        # Reviewers look at 1% of transactions; a missed fraud costs its amount, a review 5.
        decision=DecisionPolicy(
            alert_budget=0.01, min_precision=0.5, value_column=schema.AMOUNT, review_cost=5.0
        ),
    ),
    request_fields=schema.REQUEST_FIELDS,
    # Time since the card's last transaction, amount against its mean, velocity: at the
    # request's time, from the card's latest state (usecases/fraud/features.py).
    request_features=REQUEST_FEATURES,
)
