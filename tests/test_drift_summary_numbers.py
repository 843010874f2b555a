"""The summaries' quantiles and histograms, computed without numpy's dispatch, are exactly
numpy's: on random samples with ties, tiny samples, the extreme quantiles, values at and
beyond the edges and NaN."""

from __future__ import annotations

import numpy as np
import pytest

from kubeloop.drift.checks import histogram_counts, linear_quantiles

QUANTILES = [0.0, 0.005, 0.05, 0.25, 0.5, 0.75, 0.95, 0.995, 1.0]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 701, 2000])
def test_linear_quantiles_are_numpys_bit_for_bit(n):
    rng = np.random.default_rng(n)
    for values in (
        rng.normal(size=n),
        np.round(rng.exponential(size=n), 1),  # ties
        rng.integers(0, 5, size=n).astype(np.float64),
        np.full(n, 0.1),
    ):
        mine = linear_quantiles(np.sort(values), QUANTILES)
        assert mine.tolist() == np.quantile(values, QUANTILES).tolist()


def test_histogram_counts_are_numpys():
    rng = np.random.default_rng(3)
    values = rng.normal(size=3000)
    edges = np.linspace(-1.0, 1.0, 21)
    for sample in (
        values,
        np.clip(values, -1.0, 1.0),  # values on the first and the last edge
        np.concatenate([values, [np.nan, np.inf, -np.inf, 1.0, -1.0]]),
        values[:1],
        values[:0],
    ):
        assert histogram_counts(sample, edges).tolist() == np.histogram(sample, edges)[0].tolist()
    big = rng.normal(size=70_000)
    assert histogram_counts(big, edges).tolist() == np.histogram(big, edges)[0].tolist()
