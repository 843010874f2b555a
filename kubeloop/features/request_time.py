"""Request-time features: computed from the request and the latest stored state of its
entities, at the request's own time, by the use case's one `RequestFeatures.compute`.

Offline (the training set), each event is its own request: its state is the row of the
greatest instant strictly before `event_timestamp` in each state table (an as-of join,
exact matches excluded), and its request time is `event_timestamp`. Online (the
transformer), the state is what the online store holds (materialized as of the request
time: Feast's materialization window `start <= ts < end` has the same strict bound) and
the request time is the request's (`REQUEST_TIME_HEADER`, else the clock). Both sides hand
`compute` the same arrays (state columns as float64 with NaN for "no state yet", numeric
context as float64, categorical context as object), so the same event gets the same
values; tests/test_request_time.py checks it through the transformer's code path.

Why not Feast on-demand feature views: Feast 0.47 applies them inside
`get_online_features`, which the transformer bypasses (it reads the online store through
`OnlineReader`, one `online_read` per view, for latency); their request data must come as
request fields, and kubeloop's request protocol names exactly the use case's fields; and
Feast's historical join takes the row at or before the event, which would let an event
see the state row of its own instant. The function is the use case's plain Python
(numpy), stored nowhere but in its package, instead of a dill-serialized UDF in the
registry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd

from kubeloop.errors import FeatureStoreError
from kubeloop.usecase import EVENT_TIMESTAMP, FEATURE_TIMESTAMP, UseCase

REQUEST_TIME_HEADER = "x-kubeloop-request-time"
"""Optional request header: the request's time (epoch seconds, or ISO 8601 with a zone).
A replay of past traffic sets it; live traffic leaves it out and the clock is used."""

_NS_UTC = "datetime64[ns, UTC]"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# pandas' datetime64[ns] ends at 2262-04-11 23:47:16 UTC.
_MAX_REQUEST_TIME_US = 9_223_372_036_854_775


def now_us() -> int:
    """The clock, epoch microseconds."""
    return time.time_ns() // 1000


def request_time_us(headers: Mapping[str, str] | None) -> int | None:
    """The request time `REQUEST_TIME_HEADER` carries (epoch microseconds), None without
    one; a value that is neither a number nor ISO 8601 with a zone is a FeatureStoreError."""
    if not headers:
        return None
    value = headers.get(REQUEST_TIME_HEADER)
    if value is None:
        return None
    # Exact to the microsecond: no float seconds in between.
    try:
        micros = int((Decimal(value) * 1_000_000).to_integral_value())
    except (InvalidOperation, ValueError, OverflowError):  # not a number, NaN, Infinity
        micros = None
    if micros is None:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise FeatureStoreError(f"{REQUEST_TIME_HEADER}: {value!r} is not a time") from exc
        if parsed.tzinfo is None:
            raise FeatureStoreError(f"{REQUEST_TIME_HEADER}: {value!r} has no time zone")
        micros = (parsed - _EPOCH) // timedelta(microseconds=1)
    # Outside pandas' nanosecond timestamps the state lookups would overflow later, as a 5xx.
    if not 0 <= micros < _MAX_REQUEST_TIME_US:
        raise FeatureStoreError(
            f"{REQUEST_TIME_HEADER}: {value!r} is outside 1970-01-01..2262-04-11 (UTC)"
        )
    return micros


def _as_float(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Numbers as float64, None/NA as NaN."""
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )


def _context(use_case: UseCase, column: Any, present: Any) -> dict[str, np.ndarray]:
    # Only the context columns at hand (a bare entity frame may have none); a compute that
    # reads a missing one fails with its name.
    events = use_case.events
    out = {name: _as_float(column(name)) for name in events.context_numeric if present(name)}
    for name in events.context_categorical:
        if present(name):
            out[name] = np.asarray(column(name), dtype=object)
    return out


def _compute(use_case: UseCase, inputs: dict[str, np.ndarray], now: np.ndarray) -> dict:
    spec = use_case.request_features
    assert spec is not None
    out = spec.compute(inputs, now)
    names = spec.features
    if sorted(out) != sorted(names):
        raise FeatureStoreError(
            f"use case {use_case.name!r}: request features computed {sorted(out)}, "
            f"the spec declares {names}"
        )
    n = len(now)
    result = {}
    for name in names:
        values = np.asarray(out[name], dtype=np.float64)
        if values.shape != (n,):
            raise FeatureStoreError(
                f"request feature {name!r} has shape {values.shape} for {n} rows"
            )
        result[name] = values
    return result


def state_columns(use_case: UseCase) -> dict[str, list[str]]:
    """The state columns of each state table, by feature view."""
    return {s.feature_view: s.features for s in use_case.state_tables}


def offline_request_features(
    use_case: UseCase, events: pd.DataFrame, state_paths: Mapping[str, str]
) -> pd.DataFrame:
    """The request-time features of `events` (event_timestamp, join keys, request
    context), each at its own time; one row per event, in `events`' order and index.
    `state_paths` maps each state table's feature view to its Parquet file."""
    n = len(events)
    ts = pd.to_datetime(events[EVENT_TIMESTAMP], utc=True).astype(_NS_UTC)
    row = "__kubeloop_row"
    freshness = use_case.request_features.state_freshness_seconds
    if freshness:
        # Batch-materialized state: what the store holds at the request is every state
        # row at or before the last materialization (the request's time floored).
        as_of, exact = ts.dt.floor(f"{freshness}s"), True
    else:
        # Streaming state: strictly before, so an event never sees its own instant's state.
        as_of, exact = ts, False
    left = pd.DataFrame({EVENT_TIMESTAMP: as_of.to_numpy(), row: np.arange(n)})
    inputs: dict[str, np.ndarray] = {}
    for state in use_case.state_tables:
        key = state.join_key
        left[key] = events[key].to_numpy(dtype=np.int64)
        right = pd.read_parquet(
            state_paths[state.feature_view], columns=[key, FEATURE_TIMESTAMP, *state.features]
        )
        right[FEATURE_TIMESTAMP] = pd.to_datetime(right[FEATURE_TIMESTAMP], utc=True).astype(
            _NS_UTC
        )
        right[key] = right[key].astype(np.int64)
        joined = pd.merge_asof(
            left.sort_values(EVENT_TIMESTAMP, kind="stable"),
            right.sort_values(FEATURE_TIMESTAMP, kind="stable"),
            left_on=EVENT_TIMESTAMP,
            right_on=FEATURE_TIMESTAMP,
            by=key,
            direction="backward",
            allow_exact_matches=exact,
        ).sort_values(row)
        for name in state.features:
            inputs[name] = _as_float(joined[name].to_numpy())
    inputs.update(
        _context(use_case, lambda name: events[name].to_numpy(), lambda name: name in events)
    )
    now = (ts.astype("int64") // 1000).to_numpy(dtype=np.int64)
    return pd.DataFrame(_compute(use_case, inputs, now), index=events.index)


def online_request_features(
    use_case: UseCase,
    rows: Sequence[Mapping[str, Any]],
    state: Mapping[str, Sequence[Any]],
    now: int | None = None,
) -> dict[str, list[Any]]:
    """The request-time features of request `rows` at time `now` (epoch microseconds, the
    clock when None), from `state` (every state column, one value per row, None where
    the online store holds no state): one list per feature, NaN as None."""
    n = len(rows)
    at = now_us() if now is None else int(now)
    inputs = {name: _as_float(values) for name, values in state.items()}
    inputs.update(_context(use_case, lambda name: [r.get(name) for r in rows], lambda name: True))
    out = _compute(use_case, inputs, np.full(n, at, dtype=np.int64))
    return {
        name: [None if np.isnan(v) else float(v) for v in values.tolist()]
        for name, values in out.items()
    }
