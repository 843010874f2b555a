"""The detector interface: `DriftDetector` (univariate tests per column plus one shared
multiple-testing correction and decision), `TestResult` and `DriftError`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from kubeloop.errors import KubeloopError


class DriftError(KubeloopError):
    """A drift check cannot run: bad reference, missing columns, unusable configuration."""


@dataclass(frozen=True)
class TestResult:
    """Outcome of one batch of univariate tests.

    `p_values[i]` and `statistics[i]` belong to column i (KS distance for numeric columns,
    the chi-square statistic for categorical ones). `threshold` is the corrected bar: a
    column drifted when its p-value is below it (`drifted`); `is_drift` when any did.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class

    p_values: np.ndarray
    statistics: np.ndarray
    threshold: float
    drifted: np.ndarray
    is_drift: bool


def corrected_threshold(p_values: np.ndarray, p_val: float, correction: str) -> float:
    """The per-column p-value bar of a batch of tests.

    bonferroni: `p_val / n`. fdr (Benjamini-Hochberg, strict inequality as alibi-detect):
    `p_val * k / n` for the largest k whose k-th smallest p-value is below it, else
    `p_val / n` (the bar the smallest p-value missed).
    """
    p = np.asarray(p_values, dtype=float)
    n = max(len(p), 1)
    if correction == "bonferroni" or n == 1:
        return p_val / n
    if correction != "fdr":
        raise DriftError(f"unknown correction {correction!r}: use bonferroni or fdr")
    ranks = np.arange(1, n + 1)
    bars = p_val * ranks / n
    below = np.sort(p) < bars
    return float(bars[np.nonzero(below)[0].max()]) if below.any() else p_val / n


class DriftDetector(ABC):
    """Univariate two-sample tests per column with a multiple-testing correction.

    Subclasses take their pydantic config (`kubeloop.drift.backends`) and implement
    `_scores`; the correction and the decision are shared, so every implementation
    decides the same way on the same p-values.
    """

    name: ClassVar[str] = "abstract"

    def __init__(self, config: Any = None):
        from kubeloop.drift.backends import parse_detector_config

        if config is None:
            config = {"type": self.name}
        self.config = parse_detector_config(config)
        self.p_val = float(self.config.p_val)
        self.correction = str(self.config.correction)

    @abstractmethod
    def _scores(
        self, x_ref: np.ndarray, x: np.ndarray, categorical: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """p-values and statistics per column."""

    def test(self, x_ref: np.ndarray, x: np.ndarray, categorical: Sequence[int] = ()) -> TestResult:
        """Test every column of `x` (window) against the same column of `x_ref`.

        Both are 2-D float arrays with the same columns; categorical columns hold integer
        codes. Raises DriftError on empty input or mismatched shapes.
        """
        x_ref = np.asarray(x_ref, dtype=np.float64)
        x = np.asarray(x, dtype=np.float64)
        if x_ref.ndim == 1:
            x_ref = x_ref.reshape(-1, 1)
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        if x_ref.shape[1] != x.shape[1]:
            raise DriftError(f"reference has {x_ref.shape[1]} columns, window {x.shape[1]}")
        if len(x_ref) == 0 or len(x) == 0:
            raise DriftError("cannot test an empty reference or window")
        p, stat = self._scores(x_ref, x, list(categorical))
        p = np.asarray(p, dtype=np.float64)
        threshold = corrected_threshold(p, self.p_val, self.correction)
        drifted = p < threshold
        return TestResult(
            p, np.asarray(stat, dtype=np.float64), threshold, drifted, bool(drifted.any())
        )
