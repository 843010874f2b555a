"""Offline metrics on hand-computed cases, slices, and the evaluation plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from kubeloop.evaluation.metrics import (
    EvaluationReport,
    base_rate_report,
    binary_entropy,
    evaluate,
    evaluate_frame,
    expected_calibration_error,
    log_loss,
    reliability_bins,
    roc_auc,
    slice_columns,
    write_metrics,
)
from kubeloop.evaluation.plots import save_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _sample(n: int = 4000, seed: int = 0):
    rng = np.random.default_rng(seed)
    true_ctr = 1 / (1 + np.exp(-rng.normal(-2.0, 1.0, n)))
    y = (rng.random(n) < true_ctr).astype(int)
    return y, true_ctr


def test_log_loss_and_auc_by_hand():
    assert log_loss([1, 0], [0.8, 0.3]) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    # pairs (pos, neg): (0.35 vs 0.1 ✓, 0.35 vs 0.4 ✗, 0.8 vs both ✓) -> 3/4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert binary_entropy(0.5) == pytest.approx(math.log(2))
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15))  # clipped, finite


def test_base_rate_predictor_has_ne_one_and_calibration_one():
    y, _ = _sample()
    report = evaluate(y, np.full(len(y), y.mean()))
    assert report.normalized_entropy == pytest.approx(1.0)
    assert report.calibration_ratio == pytest.approx(1.0)
    assert report.auc == pytest.approx(0.5)
    assert report.ece == pytest.approx(0.0, abs=1e-12)
    assert report.base_rate == pytest.approx(y.mean())


def test_calibration_ratio_of_scaled_predictions():
    y, true_ctr = _sample()
    p = true_ctr * (y.mean() / true_ctr.mean())  # mean prediction == observed rate
    assert evaluate(y, p).calibration_ratio == pytest.approx(1.0)
    assert evaluate(y, p * 1.2).calibration_ratio == pytest.approx(1.2)


def test_ece_small_cases():
    # two equal-mass bins: {0.1, 0.1} observed 1/2 -> |0.1-0.5| ; {0.9, 0.9} observed 1 -> 0.1
    y, p = [0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    bins = reliability_bins(y, p, n_bins=2)
    assert [b.n for b in bins] == [2, 2]
    assert [b.observed_rate for b in bins] == [0.5, 1.0]
    # a constant prediction is one bin: ECE is |prediction - observed rate|
    assert expected_calibration_error([0, 0, 0, 1], [0.5] * 4, n_bins=10) == pytest.approx(0.25)


def test_equal_mass_bins_hold_similar_counts():
    y, true_ctr = _sample(5000)
    bins = reliability_bins(y, true_ctr, n_bins=10)
    assert len(bins) == 10
    assert all(abs(b.n - 500) <= 1 for b in bins)
    assert all(b.lower <= b.mean_prediction <= b.upper for b in bins)


def test_oracle_metrics_are_those_of_true_ctr():
    y, true_ctr = _sample()
    noisy = np.clip(true_ctr + np.random.default_rng(1).normal(0, 0.05, len(y)), 0.001, 0.999)
    report = evaluate(y, noisy, oracle=true_ctr)
    oracle = evaluate(y, true_ctr)
    assert report.oracle_auc == pytest.approx(oracle.auc)
    assert report.oracle_log_loss == pytest.approx(oracle.log_loss)
    assert report.oracle_normalized_entropy == pytest.approx(oracle.normalized_entropy)
    assert report.oracle_auc > report.auc
    assert report.oracle_normalized_entropy < report.normalized_entropy < 1.1


def test_degenerate_sets_report_null_instead_of_crashing():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.2, 0.3, 0.6, 0.7, 0.1, 0.8])
    slices = {"device": np.array(["a", "a", "b", "b", None, "b"], dtype=object)}
    report = evaluate(y, p, oracle=p, slices=slices)
    assert report.slices["device"]["a"].auc is None  # only negatives
    assert report.slices["device"]["b"].auc is None  # only positives
    assert report.slices["device"]["a"].calibration_ratio is None
    assert report.slices["device"]["b"].normalized_entropy is None
    assert report.slices["device"]["(missing)"].n == 1
    empty = evaluate([0, 0, 0], [0.1, 0.2, 0.3])
    assert (
        empty.auc is None and empty.normalized_entropy is None and empty.calibration_ratio is None
    )


def test_invalid_inputs_raise():
    with pytest.raises(ValueError):
        evaluate([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError):
        evaluate([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError):
        evaluate([0, 1], [0.5])
    with pytest.raises(ValueError):
        evaluate([], [])


def test_base_rate_report_predicts_the_training_rate():
    train = np.array([1] + [0] * 9)  # 10 %
    y, _ = _sample()
    report = base_rate_report(train, y)
    assert report.name == "base_rate"
    assert report.mean_prediction == pytest.approx(0.1)
    assert report.auc == pytest.approx(0.5)
    assert report.normalized_entropy >= 1.0  # the holdout's own rate is the best constant


def test_slice_columns_new_and_seen():
    train = pd.DataFrame(
        {"ad_id": [1, 2], "user_id": [10, 11], "device": ["m", "d"], "user_country": ["US", "DE"]}
    )
    holdout = pd.DataFrame(
        {
            "ad_id": [1, 3, 2],
            "user_id": [12, 10, 11],
            "device": ["m", None, "d"],
            "user_country": ["US", "FR", None],
        }
    )
    s = slice_columns(holdout, train)
    assert s["ad"].tolist() == ["seen", "new", "seen"]
    assert s["user"].tolist() == ["new", "seen", "seen"]
    assert s["device"].tolist() == ["m", None, "d"]
    assert set(s) == {"device", "user_country", "ad", "user"}


def test_report_is_json_roundtrippable(tmp_path):
    y, true_ctr = _sample(1000)
    frame = pd.DataFrame(
        {
            "click": y,
            "true_ctr": true_ctr,
            "device": np.where(y == 1, "m", "d"),
            "user_country": "US",
            "ad_id": np.arange(1000) % 7,
            "user_id": np.arange(1000),
        }
    )
    report = evaluate_frame(frame, true_ctr, train=frame.iloc[:500], name="oracle")
    assert report.slices["ad"]["seen"].n == 1000
    path = write_metrics(report, tmp_path)
    assert path.name == "metrics.json"
    assert EvaluationReport.model_validate(json.loads(path.read_text())) == report
    both = write_metrics({"a": report, "b": report}, tmp_path / "two")
    assert set(json.loads(both.read_text())) == {"a", "b"}


def test_plots_are_valid_pngs(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    y, true_ctr = _sample(2000)
    rng = np.random.default_rng(2)
    predictions = {
        "lightgbm": np.clip(true_ctr * rng.uniform(0.8, 1.2, len(y)), 0, 1),
        "torch": np.clip(true_ctr + rng.normal(0, 0.02, len(y)), 0, 1),
    }
    paths = save_plots(
        y,
        predictions,
        tmp_path,
        oracle=true_ctr,
        feature_importance={"slot_position": 0.5, "device": 0.3, "hour": 0.2},
    )
    assert [p.name for p in paths] == ["roc.png", "reliability.png", "feature_importance.png"]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert matplotlib.get_backend() == backend  # no process-wide backend switch
    # one array, no importance: two files
    assert len(save_plots(y, true_ctr, tmp_path / "one")) == 2
