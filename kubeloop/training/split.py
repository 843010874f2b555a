"""Time-ordered train / validation / holdout split.

A model is always used on traffic that comes after the data it learnt from, so the
offline evaluation must look the same: train on the oldest period, stop early on the next,
and report on the latest one (the holdout), which no training decision has seen.
A random split would leak the future (feature values and ad popularity move over time) and
flatter the model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kubeloop.usecase import EVENT_TIMESTAMP, UseCase, resolve_use_case

# How far (absolute share of rows) a day-aligned part may drift from the requested share
# before the split falls back to exact timestamp cuts.
_DAY_TOLERANCE = 0.05


def _day_cuts(days: np.ndarray, counts: np.ndarray, valid_fraction: float, holdout_fraction: float):
    """Indexes (v, h) into `days` such that train = days[:v], valid = days[v:h],
    holdout = days[h:], or None when whole days cannot come close to the fractions."""
    total = counts.sum()
    n = len(days)
    need_valid = valid_fraction > 0
    suffix = np.cumsum(counts[::-1])[::-1] / total  # share of rows on or after days[i]
    best = None
    for h in range(1 + int(need_valid), n):
        holdout_share = suffix[h]
        if abs(holdout_share - holdout_fraction) > _DAY_TOLERANCE:
            continue
        if need_valid:
            for v in range(1, h):
                valid_share = suffix[v] - suffix[h]
                if abs(valid_share - valid_fraction) > _DAY_TOLERANCE:
                    continue
                err = abs(holdout_share - holdout_fraction) + abs(valid_share - valid_fraction)
                if best is None or err < best[0]:
                    best = (err, v, h)
        else:
            err = abs(holdout_share - holdout_fraction)
            if best is None or err < best[0]:
                best = (err, h, h)
    return None if best is None else (best[1], best[2])


def time_split(
    df: pd.DataFrame, valid_fraction: float = 0.1, holdout_fraction: float = 0.2
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split `df` by `event_timestamp` into (train, valid, holdout), oldest to newest.

    Every valid timestamp is later than every train timestamp, and every holdout timestamp
    is later than every valid and train timestamp (strictly: rows sharing a timestamp never
    straddle a cut). The fractions are shares of rows.

    The cuts fall on UTC day boundaries when whole days can get each part within 5
    percentage points of its requested share (so the holdout is "the last day(s)", as a
    daily retraining job would see it). Otherwise — too few days, or very uneven days — the
    cuts are the row-quantile timestamps. `valid_fraction` may be 0 (empty valid frame);
    `holdout_fraction` must be positive. Each part is sorted by time with a fresh index.
    """
    if not 0 <= valid_fraction < 1 or not 0 < holdout_fraction < 1:
        raise ValueError("need 0 <= valid_fraction < 1 and 0 < holdout_fraction < 1")
    if valid_fraction + holdout_fraction >= 1:
        raise ValueError("valid_fraction + holdout_fraction must leave rows for training")
    if len(df) == 0:
        raise ValueError("cannot split an empty frame")
    # Naive datetime64 in UTC: tz-aware Series.to_numpy() would give slow object arrays.
    ts = pd.to_datetime(df["event_timestamp"], utc=True).dt.tz_convert(None)
    order = np.argsort(ts.to_numpy(), kind="stable")
    data = df.iloc[order].reset_index(drop=True)
    values = ts.to_numpy()[order]

    days, counts = np.unique(values.astype("datetime64[D]"), return_counts=True)
    cuts = _day_cuts(days, counts, valid_fraction, holdout_fraction)
    if cuts is not None:
        valid_start = days[cuts[0]].astype(values.dtype)
        holdout_start = days[cuts[1]].astype(values.dtype)
    else:
        n = len(values)
        holdout_start = values[min(n - 1, round(n * (1 - holdout_fraction)))]
        valid_start = (
            values[min(n - 1, round(n * (1 - holdout_fraction - valid_fraction)))]
            if valid_fraction > 0
            else holdout_start
        )
    # Rows at a cut timestamp go to the later part, which keeps the ordering strict.
    is_holdout = values >= holdout_start
    is_valid = (values >= valid_start) & ~is_holdout
    is_train = ~(is_holdout | is_valid)
    parts = tuple(data[mask].reset_index(drop=True) for mask in (is_train, is_valid, is_holdout))
    return parts  # type: ignore[return-value]


def split_summary(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    use_case: UseCase | str | None = None,
) -> dict[str, dict[str, object]]:
    """Rows, label rate (`click_rate`) and time range of each part, for the run report."""
    label = resolve_use_case(use_case).events.label
    out: dict[str, dict[str, object]] = {}
    for name, part in (("train", train), ("valid", valid), ("holdout", holdout)):
        ts = pd.to_datetime(part[EVENT_TIMESTAMP], utc=True) if len(part) else None
        out[name] = {
            "rows": len(part),
            "click_rate": float(part[label].mean()) if len(part) else None,
            "start": ts.min().isoformat() if ts is not None else None,
            "end": ts.max().isoformat() if ts is not None else None,
        }
    return out
