"""Evaluation plots written next to metrics.json: ROC curves, reliability diagram and
feature importance, as PNG files a person can open from the run directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kubeloop.evaluation.metrics import DEFAULT_ECE_BINS, reliability_bins, roc_auc

ROC_FILE = "roc.png"
RELIABILITY_FILE = "reliability.png"
IMPORTANCE_FILE = "feature_importance.png"


def _figure(width: float = 6.0, height: float = 5.0):
    # A Figure bound to an Agg canvas, without pyplot: Agg is used for this figure only,
    # and no process-wide backend or pyplot state is touched (safe in servers and tests).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _as_mapping(predictions: Mapping[str, object] | object) -> dict[str, np.ndarray]:
    if isinstance(predictions, Mapping):
        return {str(k): np.asarray(v, dtype=np.float64) for k, v in predictions.items()}
    return {"model": np.asarray(predictions, dtype=np.float64)}


def _finish(
    fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend: str | None = None
) -> Path:
    """Label one plot (and place its legend at `legend`), lay it out and write it to `path`."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend is not None:
        ax.legend(loc=legend, fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return path


def save_plots(
    y_true: object,
    predictions: Mapping[str, object] | object,
    out_dir: str | Path,
    *,
    oracle: object | None = None,
    oracle_name: str = "oracle",
    feature_importance: Mapping[str, float] | None = None,
    importance_title: str = "Feature importance",
    n_bins: int = DEFAULT_ECE_BINS,
    top_features: int = 20,
) -> list[Path]:
    """Write roc.png, reliability.png and (when `feature_importance` is given)
    feature_importance.png into `out_dir`; return their paths.

    `predictions` is one array of probabilities or a mapping name -> array (e.g. both
    candidates), drawn on the same axes. `oracle` (true probabilities) adds the oracle to both
    curves plots, labelled "oracle (<oracle_name>)".
    Reliability uses the same equal-mass bins as the ECE in metrics.json.
    """
    from sklearn.metrics import roc_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y_true, dtype=np.float64).ravel()
    curves = _as_mapping(predictions)
    if oracle is not None:
        curves[f"oracle ({oracle_name})"] = np.asarray(oracle, dtype=np.float64).ravel()
    written: list[Path] = []

    fig = _figure()
    ax = fig.add_subplot()
    for name, p in curves.items():
        auc = roc_auc(y, p)
        if auc is None:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        style = "--" if name.startswith("oracle") else "-"
        ax.plot(fpr, tpr, style, label=f"{name} (AUC {auc:.4f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="random (AUC 0.5)")
    written.append(
        _finish(
            fig, ax, out / ROC_FILE, "False positive rate", "True positive rate",
            "ROC curve on the holdout", legend="lower right",
        )
    )  # fmt: skip

    fig = _figure()
    ax = fig.add_subplot()
    top = 0.0
    for name, p in curves.items():
        bins = reliability_bins(y, p, n_bins)
        xs = [b.mean_prediction for b in bins]
        ys = [b.observed_rate for b in bins]
        top = max([top, *xs, *ys])
        style = "o--" if name.startswith("oracle") else "o-"
        ax.plot(xs, ys, style, label=name, markersize=4)
    top = top * 1.05 if top > 0 else 1.0
    ax.plot([0, top], [0, top], ":", color="grey", label="perfect calibration")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    written.append(
        _finish(
            fig, ax, out / RELIABILITY_FILE, f"Mean predicted CTR (equal-mass bins, {n_bins})",
            "Observed click rate", "Reliability diagram on the holdout", legend="upper left",
        )
    )  # fmt: skip

    if feature_importance:
        items = sorted(feature_importance.items(), key=lambda kv: kv[1], reverse=True)
        items = items[:top_features][::-1]
        fig = _figure(7.0, max(3.0, 0.3 * len(items) + 1.2))
        ax = fig.add_subplot()
        ax.barh([k for k, _ in items], [v for _, v in items])
        ax.tick_params(axis="y", labelsize="small")
        written.append(
            _finish(
                fig, ax, out / IMPORTANCE_FILE, "Share of total importance", "Feature",
                importance_title,
            )
        )  # fmt: skip
    return written
