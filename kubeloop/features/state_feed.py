"""Streaming request-time state for a replay: before each request, the online store gets
each of its entities' newest state row strictly before the request's time, the state a
streaming writer (`RequestFeatures.state_freshness_seconds == 0`) leaves and the training
set's as-of join reads (`kubeloop.features.request_time.offline_request_features`).

The hourly `OnlineFeed` is exact for batch-materialized state only: a use case whose state
is streamed would be served the state as of the hour's start, up to an hour staler than the
training set's. `StateFeed.write(requests)` instead writes, for each request's entities, that
row, skipping the entities whose row the store already holds; a request reading an entity
of an earlier one still in flight must wait for its answer (`dependencies`), or it would
overwrite that request's state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kubeloop.usecase import FEATURE_TIMESTAMP, UseCase, resolve_use_case

if TYPE_CHECKING:
    from feast import FeatureStore

_NS_UTC = "datetime64[ns, UTC]"


def streams_state(use_case: UseCase | str | None) -> bool:
    """True when the use case's request-time state is streamed (freshness 0): a replay must
    feed it per request, not per hour."""
    spec = resolve_use_case(use_case)
    features = spec.request_features
    return features is not None and bool(spec.state_tables) and not features.state_freshness_seconds


class _Table:
    """One state table, sorted by (key, time), with each key's row range."""

    def __init__(self, frame: pd.DataFrame, key: str):
        frame = frame.assign(
            **{
                FEATURE_TIMESTAMP: pd.to_datetime(frame[FEATURE_TIMESTAMP], utc=True).astype(
                    _NS_UTC
                )
            }
        )
        self.frame = frame.sort_values([key, FEATURE_TIMESTAMP], kind="stable").reset_index(
            drop=True
        )
        self.key = key
        self.times = self.frame[FEATURE_TIMESTAMP].astype("int64").to_numpy()
        keys = self.frame[key].to_numpy(dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else []
        ends = list(starts[1:]) + [len(keys)]
        self.ranges = {int(keys[s]): (int(s), int(e)) for s, e in zip(starts, ends)}

    def newest_before(self, key: int, at_ns: int) -> int | None:
        """Row index of `key`'s newest state strictly before `at_ns`, None without one."""
        span = self.ranges.get(key)
        if span is None:
            return None
        start, end = span
        i = start + int(np.searchsorted(self.times[start:end], at_ns, side="left")) - 1
        return i if i >= start else None


class StateFeed:
    """Writes the use case's state tables into the online store per request (see the
    module docstring). The offline state tables are read once, at the paths the feature
    views name."""

    def __init__(
        self,
        store: FeatureStore,
        *,
        use_case: UseCase | str | None = None,
        held_as_of: Any = None,
    ):
        """`held_as_of`: the time the online store's state tables were materialized to
        (every row strictly before it), so rows it already holds are not written again;
        None: nothing is assumed held."""
        self.store = store
        self.use_case = resolve_use_case(use_case)
        self.tables: dict[str, _Table] = {}
        for state in self.use_case.state_tables:
            view = store.get_feature_view(state.feature_view)
            frame = pd.read_parquet(
                view.batch_source.path, columns=[state.join_key, FEATURE_TIMESTAMP, *state.features]
            )
            self.tables[state.feature_view] = _Table(frame, state.join_key)
        self._as_of_ns = None if held_as_of is None else pd.Timestamp(held_as_of).value
        # (view, key) -> the row index the online store holds
        self.held: dict[tuple[str, int], int | None] = {}
        self.rows_written = 0

    def keys_of(self, rows: Sequence[dict[str, Any]]) -> set[tuple[str, int]]:
        """The (state view, entity key) pairs a request of `rows` reads."""
        return {
            (view, int(row[table.key]))
            for view, table in self.tables.items()
            for row in rows
            if row.get(table.key) is not None
        }

    def _held(self, view: str, key: int) -> int | None:
        if (view, key) not in self.held:
            at = self._as_of_ns
            self.held[(view, key)] = (
                None if at is None else self.tables[view].newest_before(key, at)
            )
        return self.held[(view, key)]

    def write(self, requests: Iterable[tuple[Any, Sequence[dict[str, Any]]]]) -> int:
        """For each (request time, rows): each row's entity gets its newest state row
        strictly before the request time, unless the store holds it already (none is
        written for an entity without one: the store holds no later one either). Returns
        the rows written."""
        picks: dict[str, dict[int, int]] = {view: {} for view in self.tables}
        for at, rows in requests:
            at_ns = pd.Timestamp(at).value
            for view, key in self.keys_of(rows):
                i = self.tables[view].newest_before(key, at_ns)
                if i is not None and i != self._held(view, key):
                    picks[view][key] = i
        written = 0
        for view, chosen in picks.items():
            if chosen:
                rows = self.tables[view].frame.iloc[sorted(chosen.values())]
                self.store.write_to_online_store(view, rows)
                self.held.update({(view, key): i for key, i in chosen.items()})
                written += len(rows)
        self.rows_written += written
        return written


def dependencies(keys: Sequence[set]) -> list[set[int]]:
    """For each request (the keys it reads, in time order), the latest earlier request
    reading each of its keys: what must be answered before its state may be written."""
    latest: dict[Any, int] = {}
    out = []
    for i, request_keys in enumerate(keys):
        out.append({latest[k] for k in request_keys if k in latest})
        for k in request_keys:
            latest[k] = i
    return out
