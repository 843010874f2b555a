"""Drift detectors and the monitor: injected drift is found and named, unchanged data
stays quiet, alibi-detect and scipy agree, windows survive a restart, variants do not mix,
delayed labels drive the performance check.

Synthetic frames carry the model's input columns (`model_input_columns()`), with missing
values and a long tail of advertisers, drawn from fixed seeds."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from kubeloop.drift import (
    DriftMonitor,
    MonitorConfig,
    Reference,
    ScipyDriftDetector,
    make_detector,
)
from kubeloop.drift.backends import DriftConfigError, parse_detector_config
from kubeloop.drift.checks import (
    OTHER_CODE,
    FeatureDriftCheck,
    FeatureEncoder,
    matched_sample,
    strata_of,
)
from kubeloop.drift.detectors import corrected_threshold
from kubeloop.drift.estimate import estimate
from kubeloop.errors import MissingExtraError
from kubeloop.training.transform import model_input_columns

CATEGORICAL_INPUTS = MonitorConfig().categorical

T0 = datetime(2026, 1, 15, tzinfo=UTC).timestamp()
DEVICES = ["mobile", "desktop", "tablet"]
SEGMENTS = ["student", "parent", "gamer", "traveler"]
COUNTRIES = ["US", "GB", "DE", "IN"]
CATEGORIES = ["retail", "travel", "finance", "gaming", "food"]


def make_frame(n: int, seed: int, *, drift: bool = False) -> pd.DataFrame:
    """`n` rows of model inputs. With `drift`, the device mix moves to mobile and creative
    ages shift up; every other column keeps its distribution."""
    rng = np.random.default_rng(seed)
    device_p = [0.85, 0.1, 0.05] if drift else [0.55, 0.35, 0.10]
    imp7 = rng.gamma(2.0, 60.0, n)
    clk7 = rng.binomial(imp7.astype(int), 0.05).astype(float)
    frame = pd.DataFrame(
        {
            "hour": rng.integers(0, 24, n),
            "weekday": rng.integers(0, 7, n),
            "slot_position": rng.integers(1, 6, n),
            "device": rng.choice(DEVICES, n, p=device_p),
            "user_segment": rng.choice(SEGMENTS, n),
            "user_country": rng.choice(COUNTRIES, n, p=[0.4, 0.2, 0.2, 0.2]),
            "user_device_pref": rng.choice(DEVICES, n),
            "user_impressions_1d": rng.poisson(20, n).astype(float),
            "user_clicks_1d": rng.poisson(1, n).astype(float),
            "user_ctr_1d": rng.beta(2, 40, n),
            "user_impressions_7d": imp7,
            "user_clicks_7d": clk7,
            "user_ctr_7d": rng.beta(2, 40, n),
            "user_hours_since_last": rng.exponential(3.0, n),
            "advertiser_id": rng.integers(1, 31, n).astype(float),
            "ad_category": rng.choice(CATEGORIES, n),
            "ad_creative_age_days": rng.uniform(0, 90, n) + (25.0 if drift else 0.0),
            "ad_impressions_1d": rng.poisson(40, n).astype(float),
            "ad_clicks_1d": rng.poisson(2, n).astype(float),
            "ad_ctr_1d": rng.beta(2, 40, n),
            "ad_impressions_7d": rng.gamma(2.0, 400.0, n),
            "ad_clicks_7d": rng.poisson(20, n).astype(float),
            "ad_ctr_7d": rng.beta(2, 40, n),
            "ad_hours_since_last": rng.exponential(0.5, n),
        }
    )
    # Cold-start users: their history is missing (NaN), as after the Feast join.
    cold = rng.random(n) < 0.02
    for col in ("user_impressions_7d", "user_ctr_7d", "user_hours_since_last"):
        frame.loc[cold, col] = np.nan
    frame.loc[cold, "user_segment"] = None
    assert sorted(frame.columns) == sorted(model_input_columns())
    return frame[model_input_columns()]


def scores_of(frame: pd.DataFrame, *, shift: float = 0.0) -> np.ndarray:
    """A fake model: a logistic score of a few inputs (shifted on request)."""
    logit = (
        -3.0
        + 0.4 * (frame["device"] == "mobile")
        - 0.2 * frame["slot_position"]
        + 0.3 * np.sin(frame["hour"] / 24 * 2 * np.pi)
        + shift
    )
    return (1 / (1 + np.exp(-logit))).to_numpy(dtype=float)


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-like dicts (NaN -> None), as a V1 request carries them."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


@pytest.fixture(scope="module")
def reference() -> Reference:
    features = make_frame(4000, seed=1)
    scores = scores_of(features)
    # The metrics a calibrated model with these scores has on its holdout.
    ne = estimate(scores).normalized_entropy
    metrics = {"normalized_entropy": ne, "log_loss": 0.18, "calibration_ratio": 1.0}
    return Reference("ctr", "v0001", features, scores, metrics)


def feed(monitor: DriftMonitor, frame: pd.DataFrame, scores, *, variant="primary", start=T0,
         step=1.0, prefix="r", batch=50, labels=None) -> None:  # fmt: skip
    rows = records(frame)
    for s in range(0, len(rows), batch):
        monitor.observe(
            rows[s : s + batch],
            list(scores[s : s + batch]),
            request_id=f"{prefix}{s}",
            variant=variant,
            event_time=start + s * step,
        )


def small_config(**overrides) -> MonitorConfig:
    data = {
        "window": {"max_events": 500, "max_seconds": None, "min_events": 100},
        "performance": {"window": {"max_events": 2000, "max_seconds": None, "min_events": 500}},
    }
    data.update(overrides)
    return MonitorConfig.model_validate(data)


# -- detectors ----------------------------------------------------------------------------


def test_feature_drift_names_the_shifted_columns(reference):
    check = FeatureDriftCheck(
        reference.features,
        make_detector(MonitorConfig().feature_detector),  # the default: alibi-detect, 1e-6
        categorical=CATEGORICAL_INPUTS,
        exclude=["hour", "weekday"],
    )
    rng = np.random.default_rng(0)
    drifted = check.run(make_frame(1000, seed=7, drift=True), rng)
    assert drifted.is_drift
    assert set(drifted.features) == {"device", "ad_creative_age_days"}
    assert drifted.p_value < drifted.threshold
    share = MonitorConfig().false_alarm_budget()["feature"]
    assert drifted.threshold == pytest.approx(share / len(check.columns))
    assert "hour" not in check.columns  # the stratification column is matched, not tested

    same = check.run(make_frame(1000, seed=8), rng)
    assert not same.is_drift and same.features == []
    assert min(same.details["p_values"].values()) > same.threshold


def test_alibi_and_scipy_agree():
    rng = np.random.default_rng(3)
    x_ref = np.c_[rng.normal(size=600), rng.integers(0, 4, 600), rng.exponential(size=600)]
    x = np.c_[rng.normal(0.3, 1, 400), rng.integers(0, 5, 400), rng.exponential(size=400)]
    for correction in ("bonferroni", "fdr"):
        cfg = {"p_val": 0.05, "correction": correction}
        a = make_detector({"type": "alibi", **cfg}).test(x_ref, x, categorical=[1])
        s = make_detector({"type": "scipy", **cfg}).test(x_ref, x, categorical=[1])
        np.testing.assert_allclose(a.p_values, s.p_values, rtol=1e-4, atol=1e-30)
        np.testing.assert_allclose(a.statistics, s.statistics, rtol=1e-4)
        assert a.threshold == pytest.approx(s.threshold)
        assert (a.drifted == s.drifted).all() and a.drifted[0] and a.drifted[1]


def test_corrections_match_alibi():
    from alibi_detect.utils.statstest import fdr

    p = np.array([0.001, 0.008, 0.039, 0.041, 0.2, 0.7])
    assert corrected_threshold(p, 0.05, "bonferroni") == pytest.approx(0.05 / 6)
    is_drift, threshold = fdr(p, q_val=0.05)
    assert is_drift and corrected_threshold(p, 0.05, "fdr") == pytest.approx(threshold)
    quiet = np.array([0.3, 0.5, 0.9])
    assert corrected_threshold(quiet, 0.05, "fdr") == pytest.approx(0.05 / 3)


def test_encoding_other_code_and_median_imputation():
    ref = pd.DataFrame(
        {"device": ["mobile"] * 6 + ["desktop"] * 5 + ["tv"], "age": [1.0, 2.0, 3.0, None] * 3}
    )
    enc = FeatureEncoder(ref, ["device", "age"], ["device"], min_category_count=5)
    window = pd.DataFrame(
        {"device": ["mobile", "tv", "watch", None], "age": [None, 5.0, 1.0, None]}
    )
    x = enc.encode(window)
    assert x[0, 0] == enc.vocab["device"]["mobile"]
    # "tv" is too rare in the reference, "watch" and missing were never seen: all "other".
    assert list(x[1:, 0]) == [OTHER_CODE] * 3
    assert enc.fill["age"] == 2.0  # the reference median fills missing values on both sides
    assert list(x[:, 1]) == [2.0, 5.0, 1.0, 2.0]
    # An id that became float after a join is the same category as the integer.
    ids = FeatureEncoder(pd.DataFrame({"a": [7] * 5}), ["a"], ["a"])
    assert ids.encode(pd.DataFrame({"a": [7.0, "7", 8]}))[:, 0].tolist() == [1, 1, OTHER_CODE]


def test_matched_sample_reproduces_the_window_mix():
    ref = np.array([str(h) for h in np.repeat(np.arange(24), 100)], dtype=object)
    window = np.array(["3"] * 300 + ["4"] * 100, dtype=object)
    idx = matched_sample(ref, window, np.random.default_rng(0))
    picked = pd.Series(ref[idx]).value_counts()
    assert picked.to_dict() == {"3": 100, "4": 33}
    assert matched_sample(ref, np.array(["25"], dtype=object), np.random.default_rng(0)) is None
    assert (strata_of(pd.DataFrame({"h": [1, 2.0]}), "h") == ["1", "2"]).all()


def test_backend_configs_refuse_unknown_keys_and_types():
    assert parse_detector_config({"type": "scipy"}).p_val == 1e-4
    # Swapping the backend of the monitor keeps the monitor's thresholds.
    swapped = MonitorConfig(
        feature_detector={"type": "scipy"},
        prediction_detector={"type": "scipy"},
        windows_between_false_alarms=None,
    )
    assert (swapped.feature_detector.type, swapped.feature_detector.p_val) == ("scipy", 1e-6)
    assert swapped.prediction_detector.p_val == 1e-4
    # With the false-alarm budget (the default) the budget sets the thresholds.
    budgeted = MonitorConfig(feature_detector={"type": "scipy"})
    assert budgeted.feature_detector.type == "scipy"
    assert budgeted.false_alarm_budget()["expected_windows_between_false_alarms"] == (
        pytest.approx(budgeted.windows_between_false_alarms)
    )
    assert MonitorConfig(feature_detector={"p_val": 0.01}).feature_detector.type == "alibi"
    with pytest.raises(DriftConfigError, match="unknown drift detector type 'mmd'"):
        parse_detector_config({"type": "mmd"})
    with pytest.raises(DriftConfigError, match="p_vall"):
        parse_detector_config({"type": "alibi", "p_vall": 0.1})
    assert isinstance(make_detector({"type": "scipy"}), ScipyDriftDetector)


def test_missing_alibi_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "alibi_detect", None)
    with pytest.raises(MissingExtraError, match="alibi-detect==0.13.0"):
        make_detector({"type": "alibi"})


# -- the monitor --------------------------------------------------------------------------


def test_unchanged_data_stays_quiet_over_20_windows(reference, tmp_path):
    evaluations = []
    with DriftMonitor(
        reference, tmp_path / "state", config=small_config(), on_evaluation=[evaluations.append]
    ) as monitor:
        frame = make_frame(20 * 500, seed=11)
        feed(monitor, frame, scores_of(frame))
        tested = [e for e in evaluations if e.result.skipped is None]
        # 20 windows x (feature, prediction, estimated performance, data quality)
        assert len(tested) == 80
        assert [e.alert for e in evaluations if e.alert] == []
        report = monitor.report()
        assert report["windows_evaluated"] == {
            "feature": 20,
            "prediction": 20,
            "estimated_performance": 20,
            "data_quality": 20,
        }
        budget = monitor.config.false_alarm_budget()
        assert report["alerts"] == {}
        assert report["thresholds"]["feature_p_val"] == budget["feature"]
        assert len(report["performance_by_window"]) == 20


def test_drift_raises_alerts_naming_features(reference, tmp_path):
    alerts = []
    with DriftMonitor(
        reference, tmp_path / "s", config=small_config(), on_alert=[alerts.append]
    ) as m:
        frame = make_frame(1000, seed=12, drift=True)
        feed(m, frame, scores_of(frame, shift=0.8))
    by_detector = {a.detector: a for a in alerts}
    # Creative ages moved 25 days past the reference's oldest: out of range too.
    assert set(by_detector) == {"feature", "prediction", "data_quality"}
    assert "ad_creative_age_days:out_of_range" in by_detector["data_quality"].features
    feature = by_detector["feature"]
    assert set(feature.features) == {"device", "ad_creative_age_days"}
    assert (feature.model, feature.version, feature.variant) == ("ctr", "v0001", "primary")
    assert feature.window.n == 500 and feature.window.index in (0, 1)
    assert feature.severity == "critical" and feature.p_value < feature.threshold
    assert feature.details["p_values"]["device"] < feature.threshold


def test_restart_mid_window_loses_no_event(reference, tmp_path):
    state = tmp_path / "state"
    frame = make_frame(500, seed=13)
    scores = scores_of(frame)
    first = DriftMonitor(reference, state, config=small_config())
    feed(first, frame.iloc[:250], scores[:250], prefix="a")
    assert first.status()["open_windows"][0]["n"] == 250
    first.close()  # the process goes away mid-window

    evaluations = []
    second = DriftMonitor(
        reference, state, config=small_config(), on_evaluation=[evaluations.append]
    )
    assert second.status()["open_windows"][0]["n"] == 250
    feed(second, frame.iloc[250:], scores[250:], prefix="b", start=T0 + 250)
    closed = {e.detector: e for e in evaluations}
    assert closed["feature"].n == 500 and closed["feature"].window_index == 0
    assert closed["feature"].start == datetime.fromtimestamp(T0, UTC)
    assert second.status()["open_windows"] == []
    # Predictions of both halves still await their labels.
    assert second.add_labels({"a0/0": 1, "b0/0": 0, "nope": 1}).matched == 2
    second.close()


def test_pending_half_survives_restart(reference, tmp_path):
    from kubeloop.drift.events import InferenceEvent

    def event(kind, **kw):
        return InferenceEvent(
            id="req-1", kind=kind, source="/p", time=datetime.fromtimestamp(T0, UTC),
            inference_service="ctr", namespace="ns", component="predictor",
            endpoint="canary", variant="canary", model_version="v0002", **kw,
        )  # fmt: skip

    row = records(make_frame(1, seed=2))
    with DriftMonitor(reference, tmp_path / "s", config=small_config()) as m:
        assert not m.ingest(event("response", predictions=[0.1])).paired
    with DriftMonitor(reference, tmp_path / "s", config=small_config()) as m:
        result = m.ingest(event("request", instances=row))
        assert result.paired and result.rows == 1
        (window,) = m.status()["open_windows"]
        assert (window["version"], window["variant"], window["n"]) == ("v0002", "canary", 1)


def test_pending_halves_come_back_as_stored(tmp_path):
    """A waiting half is read back after a restart with the values it arrived with: NaN,
    infinities, None, -0.0, ints beyond 64 bits and text saying "null" included (orjson
    writes the plain ones, json the others)."""
    import math

    from kubeloop.drift.state import StateStore

    halves = {
        "plain": {"time": 1.5, "instances": [{"a": 1, "b": "x", "c": None, "d": -0.0}]},
        "nan": {"predictions": [float("nan"), 0.25], "instances": [{"a": float("inf")}]},
        "null_text": {"instances": [{"b": "null", "c": None}]},
        "big": {"instances": [{"a": 2**70, "b": [None, True]}]},
    }
    store = StateStore(tmp_path / "s")
    with store.transaction():
        for name, half in halves.items():
            store.put_pending(name, "request", half, 100)
    store.close()
    store = StateStore(tmp_path / "s")
    with store.transaction():
        back = {name: store.pop_pending(name, "request") for name in halves}
    store.close()
    assert back["plain"] == halves["plain"]
    assert math.copysign(1.0, back["plain"]["instances"][0]["d"]) == -1.0
    nan, inf = back["nan"]["predictions"][0], back["nan"]["instances"][0]["a"]
    assert math.isnan(nan) and inf == math.inf and back["nan"]["predictions"][1] == 0.25
    assert back["null_text"] == halves["null_text"] and back["big"] == halves["big"]


def test_variants_get_separate_windows(reference, tmp_path):
    evaluations = []
    cfg = small_config(window={"max_events": 400, "max_seconds": None, "min_events": 100})
    with DriftMonitor(
        reference, tmp_path / "s", config=cfg, on_evaluation=[evaluations.append]
    ) as m:
        base, shifted = make_frame(400, seed=21), make_frame(300, seed=22, drift=True)
        feed(m, base.iloc[:300], scores_of(base)[:300], prefix="p")
        feed(m, shifted, scores_of(shifted), variant="canary", prefix="c")
        assert {(w["variant"], w["n"]) for w in m.status()["open_windows"]} == {
            ("primary", 300), ("canary", 300),
        }  # fmt: skip
        feed(m, base.iloc[300:], scores_of(base)[300:], prefix="q")
        assert {(e.variant, e.n) for e in evaluations} == {("primary", 400)}
        assert all(e.alert is None for e in evaluations)  # canary rows did not leak in
        m.flush()
    canary = [e for e in evaluations if e.variant == "canary"]
    assert canary and canary[0].n == 300 and canary[0].version == "unknown"
    assert any(e.alert is not None and e.detector == "feature" for e in canary)


def hourly_config(**window) -> MonitorConfig:
    """Windows of up to 10,000 events or an hour (with `window`'s other limits)."""
    return small_config(
        window={"max_events": 10_000, "max_seconds": 3600, "min_events": 100, **window}
    )


def test_time_window_closes_on_event_time(reference, tmp_path):
    evaluations = []
    cfg = hourly_config(time_limit_min_events=150)
    with DriftMonitor(
        reference, tmp_path / "s", config=cfg, on_evaluation=[evaluations.append]
    ) as m:
        frame = make_frame(300, seed=5)
        feed(m, frame.iloc[:200], scores_of(frame)[:200], step=10.0)  # 2000 s of events
        assert evaluations == []
        feed(m, frame.iloc[200:], scores_of(frame)[200:], start=T0 + 3600, prefix="late")
    assert {e.n for e in evaluations} == {200}
    assert all(e.end.timestamp() < T0 + 3600 for e in evaluations)


def test_thin_window_runs_past_the_hour_until_it_can_be_tested(reference, tmp_path):
    """An hour of night traffic (fewer events than time_limit_min_events) does not close
    at the hour: it runs on until it holds enough events, or until max_open_seconds."""
    evaluations = []
    cfg = hourly_config(time_limit_min_events=300, max_open_seconds=4 * 3600)
    with DriftMonitor(
        reference, tmp_path / "s", config=cfg, on_evaluation=[evaluations.append]
    ) as m:
        frame = make_frame(1000, seed=5)
        scores = scores_of(frame)
        # 200 events an hour for 2 h: the window passes the hour with 200 < 300 events.
        feed(m, frame.iloc[:400], scores[:400], step=18.0, batch=10)
        assert [e.n for e in evaluations if e.detector == "feature"] == [300]
        assert evaluations[0].end.timestamp() - evaluations[0].start.timestamp() > 3600
        # Then 100 events over the next 4 h: the hard limit closes the thin window.
        feed(m, frame.iloc[400:500], scores[400:500], start=T0 + 7200, step=144.0, batch=10)
    feature = [e for e in evaluations if e.detector == "feature"]
    # 100 left over from the first feed, then 90 more until an event 4 h after its first
    assert [e.n for e in feature] == [300, 190]
    assert feature[1].end.timestamp() - feature[1].start.timestamp() < 4 * 3600


def test_learned_prediction_reference_when_model_is_absent(reference, tmp_path):
    no_scores = Reference("ctr", "v0001", reference.features, None, reference.metrics)
    cfg = small_config(stratify_by=None, learned_reference_per_stratum=400)
    evaluations = []
    with DriftMonitor(
        no_scores, tmp_path / "s", config=cfg, on_evaluation=[evaluations.append]
    ) as m:
        frame = make_frame(1500, seed=31)
        scores = scores_of(frame)
        scores[1000:] = scores_of(frame.iloc[1000:], shift=1.0)
        feed(m, frame, scores)
    pred = [e for e in evaluations if e.detector == "prediction"]
    assert "learning" in pred[0].result.skipped
    assert pred[1].result.skipped is None and pred[1].alert is None
    assert pred[2].alert is not None and pred[2].alert.detector == "prediction"


def test_delayed_labels_drive_performance_drift(reference, tmp_path):
    alerts = []
    with DriftMonitor(
        reference, tmp_path / "s", config=small_config(), on_alert=[alerts.append]
    ) as m:
        frame = make_frame(4000, seed=41)
        scores = scores_of(frame)
        feed(m, frame, scores)
        rng = np.random.default_rng(0)
        ids = [f"r{s}/{i}" for s in range(0, 4000, 50) for i in range(50)]
        calibrated = (rng.random(2000) < scores[:2000]).astype(int)
        result = m.add_labels(dict(zip(ids[:2000], calibrated, strict=True)))
        assert result.matched == 2000 and result.alerts == []
        # The world changed: clicks fall to half of what the model predicts.
        halved = (rng.random(2000) < scores[2000:] * 0.5).astype(int)
        result = m.add_labels(dict(zip(ids[2000:], halved, strict=True)))
    (alert,) = result.alerts
    assert alert.detector == "performance" and "calibration_ratio" in alert.features
    assert alert.statistic > 1.5 and alert.window.n == 2000
    assert alert.details["reference_normalized_entropy"] == pytest.approx(
        estimate(reference.predictions).normalized_entropy
    )


def test_labels_must_be_binary(reference, tmp_path):
    with (
        DriftMonitor(reference, tmp_path / "s", config=small_config()) as m,
        pytest.raises(ValueError, match="not 0 or 1"),
    ):
        m.add_labels({"x": 2})


def test_a_failing_check_never_blocks_the_key(reference, tmp_path, monkeypatch):
    def broken(self, window, rng, strata=None, factorized=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(FeatureDriftCheck, "run", broken)
    evaluations = []
    with DriftMonitor(
        reference, tmp_path / "s", config=small_config(), on_evaluation=[evaluations.append]
    ) as m:
        frame = make_frame(700, seed=51)
        feed(m, frame, scores_of(frame))  # the window closes at 500 despite the error
        status = m.status()
    assert status["counters"]["evaluation_errors"] == 1
    assert [(w["n"]) for w in status["open_windows"]] == [200]
    assert "boom" in evaluations[0].result.skipped
