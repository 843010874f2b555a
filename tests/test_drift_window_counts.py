"""The monitor counts every closed window once per detector as evaluated, skipped or
failed, so a report tells "tested, no alert" from "never tested"."""

from __future__ import annotations

import pytest
from test_drift_detectors import feed, make_frame, scores_of, small_config

from kubeloop.drift import DriftMonitor
from kubeloop.drift.checks import FeatureDriftCheck
from kubeloop.drift.reference import Reference


@pytest.fixture(scope="module")
def reference() -> Reference:
    features = make_frame(4000, seed=1)
    metrics = {"normalized_entropy": 0.9, "log_loss": 0.18, "calibration_ratio": 1.0}
    return Reference("ctr", "v0001", features, scores_of(features), metrics)


def test_evaluated_and_skipped_windows(reference, tmp_path):
    with DriftMonitor(reference, tmp_path / "s", config=small_config()) as monitor:
        frame = make_frame(1050, seed=3)
        feed(monitor, frame, scores_of(frame))  # two full windows of 500, 50 left open
        monitor.flush()  # closes the last 50: too small to test
        counts = monitor.report()["windows_by_detector"]
    assert counts["feature"] == {"evaluated": 2, "skipped": 1, "failed": 0}
    assert counts["prediction"] == {"evaluated": 2, "skipped": 1, "failed": 0}
    # no labels were posted: the performance detector never saw a window
    assert counts["performance"] == {"evaluated": 0, "skipped": 0, "failed": 0}


def test_failed_windows_are_counted_apart(reference, tmp_path, monkeypatch):
    def broken(self, window, rng, strata=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(FeatureDriftCheck, "run", broken)
    with DriftMonitor(reference, tmp_path / "s", config=small_config()) as monitor:
        frame = make_frame(500, seed=5)
        feed(monitor, frame, scores_of(frame))
        counts = monitor.report()["windows_by_detector"]
    # the error condemns the whole window: both serving detectors count it as failed
    assert counts["feature"] == {"evaluated": 0, "skipped": 0, "failed": 1}
    assert counts["prediction"] == {"evaluated": 0, "skipped": 0, "failed": 1}
