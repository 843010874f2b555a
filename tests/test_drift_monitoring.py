"""Monitoring a person can trust and read (issue 13): the label-free performance estimate,
seasonal matching, repeated entities, the false-alarm budget, data-quality checks, and the
alert's text and HTML page (CLI and drift service).

Frames come from the detector tests' generator (`test_drift_detectors.make_frame`)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from test_drift_detectors import T0, feed, make_frame, records, scores_of, small_config

from kubeloop.drift import DriftMonitor, MonitorConfig, Reference, open_alert_store
from kubeloop.drift.alert_report import alert_html, alert_text
from kubeloop.drift.checks import (
    Season,
    distinct_rows,
    season_matched_sample,
    tolerance_p_value,
)
from kubeloop.drift.estimate import estimate, expected_auc, realized, realized_auc
from kubeloop.drift.retrain import RetrainPolicy, decide_retrain


@pytest.fixture(scope="module")
def reference() -> Reference:
    features = make_frame(4000, seed=1)
    scores = scores_of(features)
    metrics = {"normalized_entropy": estimate(scores).normalized_entropy, "log_loss": 0.18}
    return Reference("ctr", "v0001", features, scores, metrics)


# -- the label-free estimate ------------------------------------------------------------


def test_expected_figures_match_labels_sampled_from_the_scores():
    rng = np.random.default_rng(3)
    p = rng.beta(1.5, 25, 3000)
    p[:300] = 0.05  # ties count one half
    expected = estimate(p)
    aucs, losses = [], []
    for _ in range(300):
        y = (rng.random(len(p)) < p).astype(float)
        aucs.append(realized_auc(p, y))
        losses.append(realized(p, y).log_loss)
    assert expected.auc == pytest.approx(np.mean(aucs), abs=0.004)
    assert expected.log_loss == pytest.approx(np.mean(losses), abs=0.003)  # ~4 SE of the mean
    assert expected.base_rate == pytest.approx(p.mean())
    # Weights are row counts: weight 2 is the row twice.
    w = np.ones(len(p))
    w[:100] = 2
    doubled = np.concatenate([p, p[:100]])
    assert expected_auc(p, w) == pytest.approx(expected_auc(doubled), abs=1e-3)
    assert estimate(p, w).log_loss == pytest.approx(estimate(doubled).log_loss)


def test_estimate_tracks_calibrated_labels_but_not_concept_drift():
    rng = np.random.default_rng(5)
    p = rng.beta(1.5, 25, 20_000)
    calibrated = (rng.random(len(p)) < p).astype(float)
    est, real = estimate(p), realized(p, calibrated)
    assert abs(real.normalized_entropy - est.normalized_entropy) < 0.02
    assert abs(real.auc - est.auc) < 0.02
    # Concept drift: P(y | x) changed, the scores did not. The estimate cannot see it.
    shuffled = (rng.random(len(p)) < rng.permutation(p)).astype(float)
    drifted = realized(p, shuffled)
    assert drifted.normalized_entropy - est.normalized_entropy > 0.05
    assert drifted.auc < 0.55 < est.auc


# -- matching, entities, tolerance, budget ------------------------------------------------


def test_windows_are_matched_on_day_type_when_the_reference_has_it():
    ref = pd.DataFrame({"hour": [9] * 200, "weekday": [0] * 100 + [6] * 100})
    season = Season("hour", "weekday", (5, 6))
    tuesday = pd.DataFrame({"hour": [9] * 50, "weekday": [1] * 50})
    index, seasonal = season_matched_sample(season, ref, tuesday, np.random.default_rng(0))
    assert seasonal and set(ref.weekday.iloc[index]) == {0}  # Monday rows, not Sunday's
    weekday_only = ref[ref.weekday == 0].reset_index(drop=True)
    saturday = pd.DataFrame({"hour": [9] * 50, "weekday": [5] * 50})
    index, seasonal = season_matched_sample(
        season, weekday_only, saturday, np.random.default_rng(0)
    )
    assert not seasonal and index is not None  # no weekend in the reference: hour only


def test_repeated_entities_count_once_and_featureless_rows_stay_apart():
    x = np.repeat(np.arange(10.0), 50).reshape(-1, 1)
    assert len(distinct_rows(x)) == 10
    lacks = np.zeros(len(x), dtype=bool)
    lacks[:50] = True  # entity 0 has no features: 50 separate rows
    assert len(distinct_rows(x, lacks)) == 9 + 50


def test_repeated_ads_do_not_make_a_window_drift(reference, tmp_path):
    # A window where 20 ads take every impression: per impression, the ad features look
    # nothing like the reference's spread; per distinct ad, they are ordinary draws.
    frame = make_frame(500, seed=21)
    ads = make_frame(20, seed=22)
    ad_cols = MonitorConfig().entity_groups["ad"]
    picks = np.random.default_rng(0).integers(0, 20, len(frame))
    frame[ad_cols] = ads[ad_cols].iloc[picks].to_numpy()
    per_row = MonitorConfig.model_validate(
        {**small_config().model_dump(), "entity_groups": {}, "ks_tolerance": 0.0}
    )
    evaluations = {}
    for name, config in (("rows", per_row), ("entities", small_config())):
        seen = []
        with DriftMonitor(
            reference, tmp_path / name, config=config, on_evaluation=[seen.append]
        ) as m:
            feed(m, frame, scores_of(frame))
        evaluations[name] = next(e for e in seen if e.detector == "feature")
    assert evaluations["rows"].result.is_drift  # 500 "samples" of 20 ads over-reject
    entities = evaluations["entities"].result
    assert not entities.is_drift, entities.features
    assert entities.details["distinct_rows"]["ad_ctr_1d"][1] == 20


def test_tolerance_p_value_bounds():
    assert tolerance_p_value(0.05, 1000, 1000, 0.1) == 1.0
    tight = tolerance_p_value(0.2, 1000, 1000, 0.0)
    assert tight < 1e-15 and tolerance_p_value(0.2, 1000, 1000, 0.1) > tight


def test_false_alarm_budget_sets_every_serving_threshold():
    config = MonitorConfig(windows_between_false_alarms=50_000)
    budget = config.false_alarm_budget()
    assert budget["expected_windows_between_false_alarms"] == pytest.approx(50_000)
    assert config.feature_detector.p_val == pytest.approx(0.4 / 50_000)
    assert config.data_quality.p_val == pytest.approx(0.2 / 50_000)
    with pytest.raises(ValueError, match="budget_split"):
        MonitorConfig(budget_split={"features": 1.0})


# -- data quality -----------------------------------------------------------------------


def test_data_quality_alerts_name_feature_and_check(reference, tmp_path):
    alerts = []
    frame = make_frame(500, seed=31)
    frame.loc[:149, "user_country"] = "ZZ"  # a country the reference never saw
    frame.loc[:99, "ad_ctr_7d"] = np.nan  # an upstream join broke
    frame.loc[:99, "user_impressions_1d"] = 10_000.0  # far above anything seen
    rows = records(frame)
    for row in rows[:50]:
        del row["slot_position"]  # a client that stopped sending it
    for row in rows[50:100]:
        row["ad_impressions_1d"] = "many"  # not a number
    with DriftMonitor(
        reference, tmp_path / "s", config=small_config(), on_alert=[alerts.append]
    ) as m:
        for s in range(0, len(rows), 50):
            m.observe(rows[s : s + 50], list(scores_of(frame)[s : s + 50]), request_id=f"q{s}",
                      event_time=T0 + s)  # fmt: skip
        counters = m.status()["counters"]
    (dq,) = [a for a in alerts if a.detector == "data_quality"]
    assert {
        "user_country:unseen",
        "ad_ctr_7d:null",
        "user_impressions_1d:out_of_range",
        "slot_position:schema",
        "ad_impressions_1d:schema",
    } <= set(dq.features)
    assert counters["alerts:data_quality"] == 1
    # The retrain policy ignores broken data unless told otherwise.
    assert not decide_retrain([dq], RetrainPolicy()).trigger
    assert decide_retrain(
        [dq], RetrainPolicy(detectors=["data_quality"], min_window_events=1)
    ).trigger
    assert "failed checks" in alert_text(dq) and "user_country unseen" in alert_text(dq)


def test_clean_traffic_passes_data_quality(reference, tmp_path):
    seen = []
    with DriftMonitor(
        reference, tmp_path / "s", config=small_config(), on_evaluation=[seen.append]
    ) as m:
        frame = make_frame(2000, seed=32)
        feed(m, frame, scores_of(frame))
    dq = [e for e in seen if e.detector == "data_quality"]
    assert len(dq) == 4 and not any(e.result.is_drift for e in dq)


# -- what a person reads -----------------------------------------------------------------


def drifted_run(reference, tmp_path):
    """A monitor that saw normal then shifted traffic, and labels: alerts and a timeline."""
    store = open_alert_store(tmp_path / "alerts.db")
    monitor = DriftMonitor(reference, tmp_path / "state", config=small_config(), alert_store=store)
    normal, shifted = make_frame(2000, seed=41), make_frame(1500, seed=42, drift=True)
    feed(monitor, normal, scores_of(normal))
    feed(monitor, shifted, scores_of(shifted), start=T0 + 10_000, prefix="d")
    rng = np.random.default_rng(0)
    ids = [f"r{s}/{i}" for s in range(0, 2000, 50) for i in range(50)]
    monitor.add_labels(
        dict(zip(ids, (rng.random(2000) < scores_of(normal)).astype(int), strict=True))
    )
    monitor.flush()
    return monitor, store


def test_alert_page_shows_what_moved_and_performance(reference, tmp_path):
    monitor, store = drifted_run(reference, tmp_path)
    alerts = store.list()
    feature = next(a for a in alerts if a.detector == "feature")
    assert {"device", "ad_creative_age_days"} <= set(feature.features)
    page = alert_html(feature, alerts, monitor.timeline())
    monitor.close()
    # Self-contained: inline SVG only, nothing fetched.
    assert not re.search(r"(src|href)=", page)
    assert page.count("<svg") >= len(feature.features) + 1
    for name in feature.features:
        assert f'aria-label="{name}"' in page
    assert 'data-name="estimated NE (serving windows)"' in page
    assert 'data-name="realized NE (labelled windows)"' in page
    assert "Alert history" in page and feature.id in page
    text = alert_text(feature)
    assert "device" in text and "reference vs window" in text and "p-values" in text


def test_cli_show_and_the_service_serve_the_page(reference, tmp_path):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from kubeloop.cli.main import app
    from kubeloop.drift.service import build_app

    workdir = tmp_path / "run"
    drift_dir = workdir / "drift"
    monitor, store = drifted_run(reference, drift_dir)
    (alert, *_) = [a for a in store.list() if a.detector == "feature"]
    with TestClient(build_app(monitor)) as client:
        served = client.get(f"/alerts/{alert.id}/report")
        assert served.status_code == 200 and "text/html" in served.headers["content-type"]
        assert 'aria-label="device"' in served.text
        assert client.get("/alerts/nosuch/report").status_code == 404
        timeline = client.get("/timeline").json()
        assert {r["detector"] for r in timeline} >= {
            "feature",
            "estimated_performance",
            "performance",
        }
    monitor.close()
    page = tmp_path / "page.html"
    runner = CliRunner()
    result = runner.invoke(
        app, ["alerts", "show", alert.id[:10], "--workdir", str(workdir), "--html", str(page)]
    )
    assert result.exit_code == 0, result.output
    assert "device" in result.output and alert.id in result.output
    assert 'data-name="realized NE (labelled windows)"' in page.read_text()
    missing = runner.invoke(app, ["alerts", "show", "nosuch", "--workdir", str(workdir)])
    assert missing.exit_code != 0 and "nosuch" in str(missing.exception)  # one line, by main()


def test_estimate_alerts_when_scores_lose_their_spread(reference, tmp_path):
    # The model's scores collapse to the base rate (a broken feature upstream, say): with
    # calibrated scores that means an uninformative model, seen before any label.
    alerts, seen = [], []
    frame = make_frame(1000, seed=51)
    flat = np.full(len(frame), float(np.mean(scores_of(frame))))
    with DriftMonitor(
        reference, tmp_path / "s", config=small_config(), on_alert=[alerts.append],
        on_evaluation=[seen.append],
    ) as m:  # fmt: skip
        feed(m, frame[:500], scores_of(frame[:500]))
        feed(m, frame[500:], flat[500:], start=T0 + 1000, prefix="f")
    est = [e for e in seen if e.detector == "estimated_performance"]
    assert [e.result.is_drift for e in est] == [False, True]
    (alert,) = [a for a in alerts if a.detector == "estimated_performance"]
    assert "estimated_auc" in alert.features
    assert alert.details["estimated"]["auc"] == pytest.approx(0.5)
    assert alert.details["reference_estimated"]["auc"] > 0.55
