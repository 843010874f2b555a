"""The champion choice ("start simple") and the promotion gate, on crafted reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kubeloop.evaluation.gate import GateConfig, choose_champion, gate
from kubeloop.evaluation.metrics import EvaluationReport, base_rate_report, evaluate


def report(
    ne: float, ratio: float = 1.0, ece: float = 0.001, digest: str = "h1", name: str | None = None
) -> EvaluationReport:
    """A report with only the figures the gate reads set to meaningful values."""
    return EvaluationReport(
        name=name,
        n=10_000,
        n_positive=500,
        holdout_digest=digest,
        base_rate=0.05,
        mean_prediction=0.05 * ratio,
        auc=0.75,
        log_loss=ne * 0.1985,
        normalized_entropy=ne,
        calibration_ratio=ratio,
        ece=ece,
        ece_bins=10,
        reliability=[],
    )


CFG = GateConfig()


def test_defaults_and_strict_config():
    assert CFG.ne_margin == 0.002 and CFG.calibration_bounds == (0.9, 1.1)
    assert CFG.ladder_margin == 0.005 and CFG.max_ece is None
    with pytest.raises(ValueError):
        GateConfig(ne_margn=0.01)
    with pytest.raises(ValueError):
        GateConfig(calibration_bounds=(1.1, 0.9))


def test_passes_when_beating_production_by_the_margin():
    d = gate(report(0.900), report(0.905), report(1.0), CFG)
    assert d.passed and d.compared_against == "production"
    assert d.candidate_ne == 0.900 and d.reference_ne == 0.905
    assert any("0.90000" in r and "0.90500" in r for r in d.reasons)


def test_fails_when_improvement_is_below_the_margin():
    d = gate(report(0.904), report(0.905), report(1.0), CFG)
    assert not d.passed
    assert any("does not improve" in r and "0.00100" in r for r in d.reasons)
    # a worse candidate fails too
    assert not gate(report(0.91), report(0.905), report(1.0), CFG).passed


@pytest.mark.parametrize("ratio", [0.85, 1.15])
def test_fails_outside_calibration_bounds(ratio):
    d = gate(report(0.80, ratio=ratio), report(0.905), report(1.0), CFG)
    assert not d.passed
    assert any("outside [0.9, 1.1]" in r and f"{ratio:.4f}" in r for r in d.reasons)


def test_calibration_bounds_are_inclusive_and_configurable():
    assert gate(report(0.80, ratio=1.1), report(0.905), report(1.0), CFG).passed
    loose = GateConfig(calibration_bounds=(0.8, 1.2))
    assert gate(report(0.80, ratio=1.15), report(0.905), report(1.0), loose).passed


def test_max_ece_rule():
    strict = GateConfig(max_ece=0.005)
    assert gate(report(0.80, ece=0.004), None, report(1.0), strict).passed
    d = gate(report(0.80, ece=0.02), None, report(1.0), strict)
    assert not d.passed and any("ECE 0.02000 exceeds" in r for r in d.reasons)


def test_without_production_the_base_rate_is_the_reference():
    d = gate(report(0.95), None, report(1.0), CFG)
    assert d.passed and d.compared_against == "base_rate"
    assert any("base-rate model" in r for r in d.reasons)
    d = gate(report(0.999), None, report(1.0), CFG)
    assert not d.passed and d.compared_against == "base_rate"


def test_reports_from_different_holdouts_fail():
    d = gate(report(0.80), report(0.905, digest="other"), report(1.0), CFG)
    assert not d.passed
    assert any("not evaluated on the same holdout" in r for r in d.reasons)


def test_gate_on_real_reports_against_the_base_rate():
    rng = np.random.default_rng(0)
    true_ctr = 1 / (1 + np.exp(-rng.normal(-2.5, 1.0, 20_000)))
    y = (rng.random(len(true_ctr)) < true_ctr).astype(int)
    train_labels = (rng.random(50_000) < y.mean()).astype(int)
    baseline = base_rate_report(train_labels, y)
    good = evaluate(y, true_ctr, name="oracle")
    assert gate(good, None, baseline, CFG).passed
    # the base-rate model itself cannot pass against itself
    assert not gate(baseline, None, baseline, CFG).passed


def test_champion_start_simple():
    close = choose_champion({"lightgbm": report(0.900), "torch": report(0.897)}, CFG)
    assert close.champion == "lightgbm"
    assert any(r.startswith("lightgbm (rank 1) kept: torch beats it by") for r in close.reasons)
    clear = choose_champion({"torch": report(0.890), "lightgbm": report(0.900)}, CFG)
    assert clear.champion == "torch"
    assert any(r.startswith("torch (rank 2) replaces lightgbm (rank 1)") for r in clear.reasons)
    # a better simple model is kept, of course
    assert (
        choose_champion({"lightgbm": report(0.89), "torch": report(0.90)}, CFG).champion
        == "lightgbm"
    )


def test_ladder_keeps_the_simplest_model_not_beaten_by_the_margin():
    """logistic (rank 0) -> lightgbm (1) -> torch (2), ranks from the registered specs."""
    close = {"logistic": report(0.9000), "lightgbm": report(0.8996), "torch": report(0.8990)}
    decision = choose_champion(close, CFG)
    assert decision.champion == "logistic"
    assert decision.reasons[0].startswith(
        "Ladder, simplest first: logistic (rank 0) -> lightgbm (rank 1) -> torch (rank 2)"
    )
    assert any(
        r.startswith("logistic (rank 0) kept: lightgbm beats it by 0.00040 NE < margin 0.005")
        for r in decision.reasons
    )
    worse = choose_champion({"logistic": report(0.90), "lightgbm": report(0.95)}, CFG)
    assert "logistic (rank 0) kept: lightgbm does not beat it (NE 0.95000 vs 0.90000)." in (
        worse.reasons
    )
    # the top rung wins only by beating the champion below it, not the bottom rung
    climb = {"logistic": report(0.900), "lightgbm": report(0.890), "torch": report(0.887)}
    assert choose_champion(climb, CFG).champion == "lightgbm"
    # explicit ranks override the specs' (e.g. for a kind the table does not know)
    flipped = choose_champion(close, CFG, ranks={"torch": 0, "lightgbm": 1, "logistic": 2})
    assert flipped.champion == "torch"


def test_champion_skips_miscalibrated_candidates():
    d = choose_champion({"lightgbm": report(0.90), "torch": report(0.85, ratio=1.3)}, CFG)
    assert d.champion == "lightgbm"
    assert any("not considered" in r for r in d.reasons)
    only_bad = choose_champion({"lightgbm": report(0.90, ratio=0.5)}, CFG)
    assert only_bad.champion == "lightgbm"


def test_champion_needs_comparable_candidates():
    with pytest.raises(ValueError):
        choose_champion({}, CFG)
    with pytest.raises(ValueError):
        choose_champion({"lightgbm": report(0.9), "torch": report(0.8, digest="x")}, CFG)


def test_decisions_are_json_serialisable():
    champion = choose_champion({"lightgbm": report(0.90), "torch": report(0.89)}, CFG)
    decision = gate(report(0.9), report(0.95), report(1.0), CFG)
    for obj in (champion, decision, CFG):
        assert json.loads(json.dumps(obj.model_dump(mode="json")))
    assert type(decision).model_validate_json(decision.model_dump_json()) == decision
