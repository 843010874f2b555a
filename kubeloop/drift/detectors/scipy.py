"""The scipy backend (`type: scipy`): two-sample KS and chi-square contingency tests straight
from scipy, with the same corrections and decision rule as the alibi backend."""

from __future__ import annotations

import numpy as np

from kubeloop.drift.detectors.base import DriftDetector


class ScipyDriftDetector(DriftDetector):
    """The same tests with scipy only (no alibi-detect)."""

    name = "scipy"

    def _scores(self, x_ref, x, categorical):
        from scipy.stats import chi2_contingency, ks_2samp

        cats = set(categorical)
        p = np.ones(x.shape[1])
        stat = np.zeros(x.shape[1])
        for j in range(x.shape[1]):
            if j in cats:
                values = np.union1d(np.unique(x_ref[:, j]), np.unique(x[:, j]))
                table = np.vstack(
                    [
                        [(x_ref[:, j] == v).sum() for v in values],
                        [(x[:, j] == v).sum() for v in values],
                    ]
                )
                stat[j], p[j] = chi2_contingency(table)[:2]
            else:
                res = ks_2samp(x_ref[:, j], x[:, j], alternative="two-sided", method="asymp")
                stat[j], p[j] = res.statistic, res.pvalue
        return p, stat
