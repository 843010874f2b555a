"""The card-fraud use case (usecases/fraud/): its generator (seeded, chunk-invariant, with
the oracle's probability, delayed chargebacks and its scenarios), its point-in-time
features (exact windows, fraud counted only once its chargeback arrived) and the decision
metrics the engine computes for a use case with a decision policy."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubeloop.evaluation.metrics import (
    decision_metrics,
    evaluate_frame,
    pr_auc,
    recall_at_precision,
    threshold_for_budget,
)
from kubeloop.usecase import DecisionPolicy, UseCaseError, load_use_case, use_case_names
from usecases.fraud import schema
from usecases.fraud.features import PRIOR_RATE, PRIOR_STRENGTH
from usecases.fraud.generator import GeneratorConfig, generate_lake, iter_day_tables

REPO = Path(__file__).resolve().parents[1]
SMALL = {"events": 40_000, "days": 6, "cards": 2_000, "merchants": 200, "seed": 3}


def _frame(**overrides) -> pd.DataFrame:
    config = GeneratorConfig(**{**SMALL, **overrides})
    return pa.concat_tables([t for _, t in iter_day_tables(config)]).to_pandas()


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return _frame()


def test_fraud_is_registered_and_its_spec_holds_together():
    assert "fraud" in use_case_names()
    spec = load_use_case("fraud")
    assert spec.events.label == "is_fraud" and spec.events.oracle == "fraud_probability"
    assert spec.join_keys == ["card_id", "merchant_id"]
    # Neither the oracle nor the label's arrival time is ever a model input.
    inputs = spec.model_input_columns()
    assert "fraud_probability" not in inputs and "chargeback_timestamp" not in inputs
    assert "amount" in inputs and "card_fraud_rate_7d" in inputs
    assert spec.metrics.decision is not None and spec.metrics.decision.value_column == "amount"


def test_generator_is_seeded_and_batching_does_not_change_rows(events):
    again = _frame()
    pd.testing.assert_frame_equal(events, again)
    chunked = _frame(chunk_size=1_000)
    pd.testing.assert_frame_equal(events, chunked)
    other = _frame(seed=4)
    assert not events["card_id"].equals(other["card_id"])


def test_transactions_carry_a_known_fraud_probability_and_a_delayed_label(events):
    assert list(events.columns) == schema.EVENT_SCHEMA.names
    assert events["event_id"].is_monotonic_increasing and events["event_id"].is_unique
    assert events["event_timestamp"].is_monotonic_increasing
    rate = events["is_fraud"].mean()
    assert 0.004 < rate < 0.012, rate
    # The labels are drawn from the oracle's probability: the mean agrees.
    p = events["fraud_probability"]
    assert ((p > 0) & (p < 1)).all()
    assert abs(rate - p.mean()) < 4 * np.sqrt(p.mean() / len(events))
    # The oracle ranks far better than chance (a learnable world) but not perfectly.
    assert 0.3 < pr_auc(events["is_fraud"], p) < 0.95
    fraud = events["is_fraud"] == 1
    assert events.loc[fraud, "chargeback_timestamp"].notna().all()
    assert events.loc[~fraud, "chargeback_timestamp"].isna().all()
    delay = events.loc[fraud, "chargeback_timestamp"] - events.loc[fraud, "event_timestamp"]
    assert (delay >= pd.Timedelta(days=1)).all() and delay.median() > pd.Timedelta(days=2)
    # Bursts: a compromised card's frauds come close together.
    per_card = events[fraud].groupby("card_id").size()
    assert per_card.max() >= 3
    assert set(events["channel"]) == {"card_present", "card_not_present"}
    assert events.groupby("channel")["is_fraud"].mean()["card_not_present"] > 3 * rate / 2


def test_scenarios_change_only_from_their_change_day(events):
    shifted = _frame(scenario="merchant_mix_shift", change_day=3)
    day = events["event_timestamp"].dt.date
    before = day < date(2026, 1, 8)
    pd.testing.assert_frame_equal(
        events[before].reset_index(drop=True),
        shifted[shifted["event_timestamp"].dt.date < date(2026, 1, 8)].reset_index(drop=True),
    )

    def online_share(frame: pd.DataFrame) -> float:
        return float((frame["merchant_category"] == "digital_goods").mean())

    after = shifted[shifted["event_timestamp"].dt.date >= date(2026, 1, 8)]
    assert online_share(after) > 1.8 * online_share(events[~before])

    drifted = _frame(scenario="new_fraud_pattern", change_day=3)
    late = drifted[drifted["event_timestamp"].dt.date >= date(2026, 1, 8)]
    # The new pattern is card-present fraud at everyday merchants.
    everyday = late["merchant_category"].isin(["grocery", "fuel", "restaurant"])
    in_person = late["channel"] == "card_present"
    base_late = events[~before]
    base_everyday = base_late["merchant_category"].isin(["grocery", "fuel", "restaurant"])
    new_rate = late.loc[everyday & in_person, "is_fraud"].mean()
    old_rate = base_late.loc[base_everyday & (base_late["channel"] == "card_present"), "is_fraud"]
    assert new_rate > 2 * old_rate.mean()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from kubeloop.features.build import FeatureBuildConfig, build_features

    root = tmp_path_factory.mktemp("fraud")
    config = GeneratorConfig(**SMALL)
    summary = generate_lake(config, str(root / "lake"), progress=False)
    build = FeatureBuildConfig(threads=1, memory_limit="512MB")
    build_features(str(root / "lake"), root / "features", build, progress=False, use_case="fraud")
    events = pq.read_table(root / "lake" / "events").to_pandas()
    return summary, events, root / "features"


def _latest_row(table: pd.DataFrame, key: str, entity: int, at: pd.Timestamp) -> pd.Series:
    """What Feast's point-in-time join gives a lookup at `at`: the newest row at or before."""
    rows = table[(table[key] == entity) & (table["feature_timestamp"] <= at)]
    return rows.sort_values("feature_timestamp").iloc[-1]


def test_features_are_point_in_time_with_exact_windows_and_delayed_labels(built):
    summary, events, features = built
    assert summary.fraud_rate == pytest.approx(events["is_fraud"].mean())
    cards = pq.read_table(features / "card_stats.parquet")
    merchants = pq.read_table(features / "merchant_stats.parquet")
    assert cards.schema.remove_metadata().equals(schema.CARD_FEATURE_SCHEMA)
    assert merchants.schema.remove_metadata().equals(schema.MERCHANT_FEATURE_SCHEMA)
    table = merchants.to_pandas()
    rng = np.random.default_rng(0)
    # Lookups at events of the last days, where 7-day windows and chargebacks matter.
    late = events[
        events["event_timestamp"] >= events["event_timestamp"].max() - pd.Timedelta(days=2)
    ]
    pending = 0
    for i in rng.choice(len(late), 25, replace=False):
        event = late.iloc[i]
        at = event["event_timestamp"]
        merchant = event["merchant_id"]
        row = _latest_row(table, "merchant_id", merchant, at)
        hour = at.floor("h")  # the windows end at the lookup's hour
        mine = events[(events["merchant_id"] == merchant) & (events["event_timestamp"] < hour)]
        day = mine[mine["event_timestamp"] >= hour - pd.Timedelta(hours=24)]
        week = mine[mine["event_timestamp"] >= hour - pd.Timedelta(days=7)]
        last_hour = mine[mine["event_timestamp"] >= hour - pd.Timedelta(hours=1)]
        assert row["merchant_txns_1h"] == len(last_hour)
        assert row["merchant_txns_24h"] == len(day)
        assert row["merchant_txns_7d"] == len(week)
        assert row["merchant_amount_24h"] == pytest.approx(day["amount"].sum())
        # The known frauds among the window's transactions: a fraud counts once its
        # chargeback has arrived, never at the transaction's time, and only while the
        # transaction is in the window the rate divides by.
        known = week[(week["is_fraud"] == 1) & (week["chargeback_timestamp"] < hour)]
        assert row["merchant_chargebacks_7d"] == len(known)
        pending += int(week["is_fraud"].sum()) - len(known)
        prior = PRIOR_RATE * PRIOR_STRENGTH
        assert row["merchant_fraud_rate_7d"] == pytest.approx(
            (len(known) + prior) / (len(week) + PRIOR_STRENGTH)
        )
    assert pending > 0  # some frauds of those windows were not yet known at the lookup


def test_decision_metrics_on_a_hand_made_set():
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.01])
    # Ranks of the positives: 1, 3, 10 -> precision 1, 2/3, 3/10.
    assert pr_auc(y, p) == pytest.approx((1 + 2 / 3 + 3 / 10) / 3)
    assert recall_at_precision(y, p, 0.6) == pytest.approx(2 / 3)
    assert recall_at_precision(y, p, 1.0) == pytest.approx(1 / 3)
    assert threshold_for_budget(p, 0.3) == pytest.approx(0.7)
    policy = DecisionPolicy(alert_budget=0.3, min_precision=0.6, review_cost=2.0)
    values = np.arange(1, 11, dtype=float)
    m = decision_metrics(y, p, 0.7, policy, values)
    assert (m.alerts, m.precision, m.recall) == (3, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert m.missed_value == 10.0 and m.review_cost == 6.0 and m.expected_cost == 16.0
    with pytest.raises(UseCaseError, match="alert_budget"):
        DecisionPolicy(alert_budget=1.5)


def test_evaluation_reports_pr_auc_against_the_oracle(events):
    spec = load_use_case("fraud")
    scores = events["fraud_probability"].to_numpy() * 0.5
    report = evaluate_frame(events, scores, use_case=spec, threshold=0.01)
    assert report.pr_auc == pytest.approx(report.oracle_pr_auc)  # a monotone map ranks alike
    assert report.decision is not None and report.decision.threshold == 0.01
    assert report.decision.oracle_expected_cost is not None
    assert report.decision.missed_value == pytest.approx(
        events.loc[(events["is_fraud"] == 1) & (scores < 0.01), "amount"].sum()
    )


FRAUD_COLUMNS = (
    "is_fraud",
    "fraud_probability",
    "chargeback_timestamp",
    "card_id",
    "merchant_id",
    "merchant_category",
    "card_txns_1h",
    "merchant_fraud_rate_7d",
)


def test_engine_contains_no_fraud_column_name():
    """The engine runs this use case without knowing it: no fraud column is named under
    kubeloop/ (the same scan as tests/test_usecase_boundary.py's for CTR columns)."""
    pattern = re.compile(r"\b(" + "|".join(FRAUD_COLUMNS) + r")\b")
    assert pattern.search('frame["is_fraud"]') and not pattern.search("this_is_fraudulent")
    files = [p for p in sorted((REPO / "kubeloop").rglob("*.py")) if "__pycache__" not in p.parts]
    assert len(files) > 50
    hits = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) or "fraud" in line.lower()
    ]
    assert hits == [], "fraud belongs in usecases/fraud/:\n" + "\n".join(hits)


def test_pipeline_compiles_for_the_fraud_use_case(tmp_path):
    from typer.testing import CliRunner

    from kubeloop.cli.main import app
    from kubeloop.pipeline.compile import load_ir

    out = tmp_path / "fraud.yaml"
    result = CliRunner().invoke(
        app, ["pipeline", "compile", "--use-case", "fraud", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    parameters = load_ir(out)["root"]["inputDefinitions"]["parameters"]
    assert parameters["use_case"]["defaultValue"] == "fraud"
    assert parameters["model_name"]["defaultValue"] == "fraud"
    default = tmp_path / "default.yaml"
    assert CliRunner().invoke(app, ["pipeline", "compile", "--out", str(default)]).exit_code == 0
    assert (
        load_ir(default)["root"]["inputDefinitions"]["parameters"]["use_case"]["defaultValue"]
        == "ctr"
    )


# A tiny fraud world: enough frauds (~150) for every rung to train and the gate to pass.
TINY_FRAUD_DEMO = {
    "use_case": "fraud",
    "generator": {"events": 24_000, "days": 6, "cards": 1_200, "merchants": 120, "seed": 5},
    "train_until_day": 5,
    "train_config": {
        "torch": {"max_epochs": 1, "importance_rows": 200},
        "lightgbm": {"max_rounds": 30},
    },
    "gate_config": {"calibration_bounds": [0.3, 3.0]},
    # Little traffic: the loop's every stage runs, not a measurement (README, docs).
    "serving": {"replay": {"requests": 300, "batch_size": 8}, "check_every": 400},
    "drift": {
        "impressions_per_day": 1_500,
        "canary_replay": {"requests": 150, "batch_size": 8},
        # No retraining run: a second pipeline run would double the test's time, and the
        # retrain -> gate -> canary path is the engine's, tested on CTR (test_closed_loop).
        "retrain": {"min_alerts": 1_000},
    },
}


@pytest.mark.slow
def test_fraud_demo_runs_both_loops(tmp_path):
    """`kubeloop demo --use-case fraud` at a tiny size: data, features, the training
    pipeline (the same KFP pipeline as CTR's), gate and registry, then serving (production
    and the runner-up on KServe servers, shadow first, decided on chargebacks that mature
    10 days after each transaction) and drift (replay through production into the drift
    service, labels, retrain policy). The report carries the PR-AUCs against the oracle and
    the decision threshold, which the version stores."""
    import json

    import yaml
    from typer.testing import CliRunner

    from kubeloop.cli.main import app
    from kubeloop.registry import open_registry

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in TINY_FRAUD_DEMO.items() if k != "use_case"}))
    workdir = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["demo", "--use-case", "fraud", "--workdir", str(workdir), "--config", str(config),
         "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((workdir / "report.json").read_text())
    assert {"run", "data", "features", "training", "registry", "serving", "drift"} <= set(report)
    assert report["run"]["complete"]
    assert 0.004 < report["data"]["fraud_rate"] < 0.015
    models = report["training"]["models"]
    assert set(models) == {"logistic", "lightgbm", "torch"}
    for m in models.values():
        assert 0 < m["pr_auc"] <= 1 and 0 < m["oracle_pr_auc"] <= 1
        decision = m["decision"]
        # Chosen on the validation split, so the holdout's alert rate is near, not at, 1%.
        assert decision["alert_budget"] == 0.01 and 0 < decision["threshold"] < 1
        assert decision["expected_cost"] == decision["missed_value"] + decision["review_cost"]
    champion = report["training"]["champion"]
    assert report["registry"]["version"] == "v0001"
    version = open_registry(str(workdir / "registry")).get("fraud", "v0001")
    assert version.metrics["decision_threshold"] == models[champion]["decision"]["threshold"]
    assert version.metrics["oracle_pr_auc"] == models[champion]["oracle_pr_auc"]

    serving = report["serving"]
    assert serving["primary_version"] == "v0001"
    assert serving["requests"]["errors"] == 0
    assert sum(serving["impressions"].values()) == 300 * 8  # requests x batch size
    if serving["canary_version"] is not None:  # a runner-up that passed its own gate
        # The shadow saw every request; the decision waited for matured chargebacks.
        requests = serving["requests"]
        assert serving["shadow"]["mirrored"] == requests["primary"] + requests["canary"]
        assert serving["labels"]["delay_hours"] == 240
        assert serving["labels"]["waits_after_traffic"] > 0
        assert serving["decision"]["action"] in ("promote", "rollback", "inconclusive")
        assert serving["oracle"]["agrees"] is not None

    drift = report["drift"]
    assert drift["scenario"] == "baseline"
    assert drift["replayed_impressions"] == 3_000  # days 4 and 5
    assert 0 < drift["labelled_impressions"] <= drift["replayed_impressions"]
    assert all(drift["windows"][d]["evaluated"] > 0 for d in ("feature", "prediction"))
    assert drift["retrain"]["triggered"] is False
    assert drift["rollout"] == {"decision": "none", "reasons": ["no retraining"]}
    assert drift["label_delay_hours"] == 240
    # baseline's change day (10) lies past the 6-day lake: every window is before it
    assert drift["change_at_impression"] == drift["replayed_impressions"]
    assert drift["first_alert_after_change"] == {}
    # The drift service tested the fraud model's own inputs.
    monitor = json.loads((workdir / "drift" / "monitor.json").read_text())
    assert "merchant_category" in monitor["categorical"] and monitor["season_by"] is None
