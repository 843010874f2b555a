"""compare_summary sorts each side once: the same summary as sorting for each figure."""

from __future__ import annotations

import numpy as np
import pytest

from kubeloop.drift.checks import compare_summary, histogram_counts, linear_quantiles


def _oracle(ref, win, bins=20):
    """The numeric summary computed figure by figure (each with its own sort)."""

    def side(values):
        finite = values[np.isfinite(values)]
        return {
            "kind": "numeric",
            "mean": float(finite.mean()) if finite.size else None,
            "quantiles": [float(q) for q in np.quantile(finite, [0.05, 0.5, 0.95])]
            if finite.size
            else [],
        }

    out = {"reference": side(ref), "window": side(win)}
    both = np.concatenate([ref[np.isfinite(ref)], win[np.isfinite(win)]])
    if both.size:
        lo, hi = linear_quantiles(np.sort(both), [0.005, 0.995])
        if hi <= lo:
            lo, hi = float(both.min()), float(both.max()) + 1e-9
        edges = np.linspace(lo, hi, bins + 1)
        out["bins"] = [float(e) for e in edges]
        out["reference"]["hist"] = histogram_counts(np.clip(ref, lo, hi), edges).tolist()
        out["window"]["hist"] = histogram_counts(np.clip(win, lo, hi), edges).tolist()
    return out


@pytest.mark.parametrize("seed", range(4))
def test_numeric_summary_is_the_figure_by_figure_one(seed):
    rng = np.random.default_rng(seed)
    ref, win = rng.normal(size=300), rng.normal(0.3, 1.2, size=200)
    if seed % 2:  # missing values and infinities on both sides
        ref[rng.integers(0, 300, 20)] = np.nan
        ref[:3] = [np.inf, -np.inf, np.inf]
        win[rng.integers(0, 200, 10)] = np.nan
        win[-2:] = [-np.inf, -np.inf]
    if seed == 2:  # a constant column: the degenerate bins
        ref, win = np.full(50, 3.0), np.full(40, 3.0)
    got = compare_summary(ref, win, False, None)
    assert got == _oracle(ref, win)
    for side in ("reference", "window"):
        assert sum(got[side]["hist"]) == int(
            (~np.isnan({"reference": ref, "window": win}[side])).sum()
        )


def test_categorical_summary_counts_codes():
    ref, win = np.array([1.0, 1.0, 2.0, 0.0]), np.array([2.0, 2.0, 3.0])
    got = compare_summary(ref, win, True, {"a": 1, "b": 2})
    assert got["reference"]["counts"] == {"a": 2, "b": 1, "other": 1}
    assert got["window"]["counts"] == {"b": 2, "other": 1}
