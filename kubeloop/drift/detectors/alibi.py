"""The alibi backend (`type: alibi`, the default): alibi-detect's TabularDrift / KSDrift.

alibi-detect is under the Business Source License 1.1 since 0.11.5, so it is imported only
when this detector is built; `kubeloop.drift.detectors.scipy` runs the same tests without it.
"""

from __future__ import annotations

from typing import Any

from kubeloop.drift.detectors.base import DriftDetector
from kubeloop.errors import MissingExtraError


def _alibi_cd():
    try:
        from alibi_detect import cd
    except ImportError as exc:
        raise MissingExtraError(
            "alibi_detect",
            "the alibi drift detector (or choose the scipy detector: type: scipy)",
            "alibi-detect==0.13.0",
        ) from exc
    return cd


class AlibiDriftDetector(DriftDetector):
    """alibi-detect TabularDrift / KSDrift behind the `DriftDetector` interface."""

    name = "alibi"

    def __init__(self, config: Any = None):
        super().__init__(config)
        self._cd = _alibi_cd()  # fail at construction, not at the first window

    def _scores(self, x_ref, x, categorical):
        if x_ref.shape[1] == 1 and not categorical:
            det = self._cd.KSDrift(
                x_ref, p_val=self.p_val, correction=self.correction, x_ref_preprocessed=True
            )
        else:
            # {column: None}: the categories are those present in the (matched) reference;
            # alibi adds the window's own categories to the contingency table itself.
            det = self._cd.TabularDrift(
                x_ref,
                p_val=self.p_val,
                categories_per_feature={int(i): None for i in categorical},
                correction=self.correction,
                x_ref_preprocessed=True,
            )
        out = det.predict(x, drift_type="batch", return_p_val=True, return_distance=True)
        return out["data"]["p_val"], out["data"]["distance"]
