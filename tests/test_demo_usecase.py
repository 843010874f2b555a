"""The demo's serving and drift stages read everything use-case specific from the spec:
the delayed-label cohort (`EventSchema.label_delay`/`label_time`), the labels and oracle
the experiment scores, and the drift service's configuration."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from kubeloop.demo.drift import monitor_config
from kubeloop.demo.serving import impression_labels, matured
from kubeloop.drift.config import MonitorConfig
from kubeloop.usecase import EVENT_ID, EVENT_TIMESTAMP, EventSchema, UseCaseError, load_use_case


def _fraud_like() -> pd.DataFrame:
    t0 = pd.Timestamp("2026-01-05", tz="UTC")
    fraud = load_use_case("fraud").events
    return pd.DataFrame(
        {
            EVENT_ID: [1, 2, 3, 4],
            EVENT_TIMESTAMP: [t0, t0, t0 + pd.Timedelta(days=3), t0],
            fraud.label: [1, 1, 0, 0],
            # confirmed after 4 days; after 12 (beyond the 10-day window); none; none
            fraud.label_time: [t0 + pd.Timedelta(days=4), t0 + pd.Timedelta(days=12), None, None],
            fraud.oracle: [0.9, 0.8, 0.01, 0.02],
        }
    )


def test_matured_cohort_waits_the_label_window_and_drops_late_chargebacks():
    fraud = load_use_case("fraud")
    label = fraud.events.label
    rows = _fraud_like()
    t0 = rows[EVENT_TIMESTAMP].min()
    assert matured(rows, fraud, t0 + timedelta(days=9)).empty  # nothing final yet
    at_10 = matured(rows, fraud, t0 + timedelta(days=10))
    assert at_10[EVENT_ID].tolist() == [1, 2, 4]
    # the chargeback of event 2 came after the window: a miss, as production would see it
    assert at_10[label].tolist() == [1, 0, 0]
    assert len(matured(rows, fraud, t0 + timedelta(days=13))) == 4
    # without a clock, or for a use case whose labels come at once, every row as it is
    assert matured(rows, fraud)[label].tolist() == [1, 1, 0, 0]
    ctr = load_use_case("ctr")
    assert ctr.events.label_delay is None
    assert matured(rows, ctr, t0) is rows


def test_impression_labels_are_keyed_per_position_and_known_by_the_clock():
    fraud = load_use_case("fraud")
    rows = _fraud_like()
    sent = pd.DataFrame(
        {
            "request_id": ["r1", "r1", "r3", "r4"],
            "event_id": ["1", "2", "3", "4"],
            "position": [0, 1, 0, 0],
            "status_code": [200, 200, 200, 500],
        }
    )
    t0 = rows[EVENT_TIMESTAMP].min()
    labels = impression_labels(sent, rows, fraud, t0 + timedelta(days=10))
    assert labels.to_dict("list") == {
        "request_id": ["r1/0", "r1/1"],
        "label": [1.0, 0.0],
        "oracle": [0.9, 0.8],
    }
    assert len(impression_labels(sent, rows, fraud)) == 3  # failed requests have no label


def test_label_time_needs_a_positive_label_delay():
    events = load_use_case("fraud").events
    common = {"columns": events.columns, "entity_keys": events.entity_keys, "label": events.label}
    with pytest.raises(UseCaseError, match="needs a label_delay"):
        EventSchema(**common, label_time=events.label_time)
    with pytest.raises(UseCaseError, match="must be positive"):
        EventSchema(**common, label_delay=timedelta(0))


def test_drift_service_config_is_the_use_cases():
    """The default use case's config is the monitor's defaults (its figures cannot move);
    another's names its own categorical inputs and entity groups, and drops calendar
    columns its model does not read."""
    defaults = MonitorConfig()
    ctr = monitor_config(load_use_case("ctr"))
    for field, value in ctr.items():
        assert getattr(defaults, field) == value, field
    fraud_spec = load_use_case("fraud")
    fraud = MonitorConfig.model_validate(monitor_config(fraud_spec))
    assert fraud.categorical == list(fraud_spec.transform.categorical)
    assert fraud.entity_groups == {e.name: list(e.features) for e in fraud_spec.entities}
    inputs = set(fraud_spec.model_input_columns())
    assert set(fraud.exclude_features) <= inputs
    assert fraud.stratify_by in inputs and fraud.season_by is None


def test_predictor_answers_the_decision_at_the_stored_threshold():
    """A version whose metrics hold a decision threshold (a use case with a decision
    policy) answers the action beside each score; one without answers scores only."""
    from models.predictor import CTRPredictor

    predictor = CTRPredictor("fraud", "/nonexistent", use_case="fraud")
    predictor.ready = True
    predictor.predict_columns = lambda columns, n, numbers=None: [0.2, 0.015, 0.01][:n]
    row = dict.fromkeys(predictor.input_fields.names)  # every field null: imputed
    body = {"instances": [row, row, row]}
    predictor.metadata = {"version": "v0001", "metrics": {"decision_threshold": 0.015}}
    assert predictor.predict(body) == {
        "predictions": [0.2, 0.015, 0.01],
        "decisions": [1, 1, 0],
        "model_version": "v0001",
    }
    predictor.metadata = {"version": "v0002", "metrics": {}}
    assert "decisions" not in predictor.predict(body)
