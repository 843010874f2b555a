"""The drift detectors' front: one interface, one module per backend (as alibi-detect's `cd/`).

The interface, `DriftDetector`, is deliberately small: given a reference matrix, a window
matrix and which columns are categorical, run one univariate two-sample test per column
(Kolmogorov-Smirnov for numeric columns, chi-square on the contingency table for
categorical ones) and correct for testing several columns at once (Bonferroni, or the
Benjamini-Hochberg false discovery rate). Two implementations:

* `AlibiDriftDetector` (`type: alibi`, the default): alibi-detect's `TabularDrift`
  (`KSDrift` for a single numeric column). alibi-detect is under the Business Source
  License 1.1 since 0.11.5, so it is imported only when this detector is built, and a
  user who cannot accept that licence swaps it for
* `ScipyDriftDetector` (`type: scipy`): the same tests straight from scipy, with the same
  corrections and the same decision rule; the tests check that both agree.

Modules: `base` (the interface, `TestResult`, `corrected_threshold`), `alibi` and `scipy`
(one backend each). `make_detector(config)` builds the backend a config names
(by `type`, from the engine's plug-in table `kubeloop.plugins`, entry-point group
`kubeloop.drift_detectors`); the checks that use a detector are in
`kubeloop.drift.checks`, the reference in `kubeloop.drift.reference` and the configs in
`kubeloop.drift.config`.
"""

from kubeloop.drift.backends import make_detector
from kubeloop.drift.detectors.alibi import AlibiDriftDetector
from kubeloop.drift.detectors.base import DriftDetector, DriftError, TestResult, corrected_threshold
from kubeloop.drift.detectors.scipy import ScipyDriftDetector

__all__ = [
    "AlibiDriftDetector",
    "DriftDetector",
    "DriftError",
    "ScipyDriftDetector",
    "TestResult",
    "corrected_threshold",
    "make_detector",
]
