"""Offline evaluation of the loop: metrics on the holdout, plots, and the gate that
decides which model may be registered and deployed."""

from kubeloop.evaluation.gate import (
    ChampionDecision,
    GateConfig,
    GateDecision,
    choose_champion,
    gate,
)
from kubeloop.evaluation.metrics import (
    EvaluationReport,
    base_rate_report,
    evaluate,
    evaluate_frame,
    slice_columns,
    write_metrics,
)
from kubeloop.evaluation.plots import save_plots

__all__ = [
    "ChampionDecision",
    "EvaluationReport",
    "GateConfig",
    "GateDecision",
    "base_rate_report",
    "choose_champion",
    "evaluate",
    "evaluate_frame",
    "gate",
    "save_plots",
    "slice_columns",
    "write_metrics",
]
