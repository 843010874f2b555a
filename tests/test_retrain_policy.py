"""Which drift alerts trigger a retraining run (severity, window size, variant, cool-down)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kubeloop.drift.alerts import Alert, AlertWindow
from kubeloop.drift.retrain import RetrainPolicy, decide_retrain

NOW = datetime(2026, 1, 20, 12, tzinfo=UTC)


def alert(detector="feature", variant="primary", n=2000, severity="warning", i=0) -> Alert:
    return Alert(
        id=f"a{i}",
        time=NOW,
        model="ctr",
        version="v0001",
        variant=variant,
        detector=detector,
        statistic=0.3,
        p_value=1e-12,
        threshold=4.5e-8,
        features=["device", "user_country"],
        window=AlertWindow(start=NOW - timedelta(hours=1), end=NOW, n=n, index=i),
        severity=severity,
    )


def test_a_qualifying_alert_triggers_and_names_what_drifted():
    decision = decide_retrain([alert()], RetrainPolicy(), now=NOW)
    assert decision.trigger and decision.alert_ids == ["a0"]
    assert "device" in decision.reasons[-1] and "feature" in decision.reasons[-1]


def test_small_windows_canary_alerts_and_low_severity_are_ignored():
    policy = RetrainPolicy(min_severity="critical", min_window_events=1000)
    alerts = [alert(n=100, i=1), alert(variant="canary", severity="critical", i=2), alert(i=3)]
    decision = decide_retrain(alerts, policy, now=NOW)
    assert not decision.trigger
    assert "0 qualifying alert(s), 3 ignored" in decision.reasons[0]


def test_cool_down_blocks_a_second_run():
    policy = RetrainPolicy(cooldown=timedelta(hours=6))
    assert not decide_retrain([alert()], policy, last_run=NOW - timedelta(hours=1), now=NOW).trigger
    assert decide_retrain([alert()], policy, last_run=NOW - timedelta(hours=7), now=NOW).trigger


def test_min_alerts():
    policy = RetrainPolicy(min_alerts=2)
    assert not decide_retrain([alert()], policy, now=NOW).trigger
    assert decide_retrain([alert(i=0), alert(i=1, detector="performance")], policy, now=NOW).trigger
