"""Tumbling windows by event count and by event time, whichever closes first.

A window of one key (model, version, variant) opens with its first event. It closes

* after its `max_events`-th event, or
* when an event arrives whose event time is `max_seconds` or more after the window's
  first event (that event opens the next window) and the window holds at least
  `time_limit_min_events` events, or
* when such an event is `max_open_seconds` or more after the window's first event, however
  few events the window holds,

Why the time limit waits for `time_limit_min_events`: at night an hour holds a tenth of
a daytime hour's traffic (~200 events on the bench's lakes), and the reference holds as
few rows of that hour, so an hour's window can hardly show even a large shift under a
false-alarm budget of one in 100,000 windows (bench/drift_bench.py: the first window after
a midnight covariate shift alerted on 1 of 3 seeds). Letting a thin window run on until it
holds 1,000 events, up to `max_open_seconds` (6 h), gives it the power of a daytime window;
the matched reference follows the window's hour mix, so a window of five night hours is
compared with the same five hours.

`flush()` closes whatever is open (end of a replay, shutdown on request). A closed
window with fewer than `min_events` events is counted but not tested: a handful of events
cannot show drift, and chi-square tests are unreliable on tiny tables.

Windows advance on event time, never on the wall clock, so a replay of past traffic at
full speed windows the same way as live traffic. The buffered events live in the state
store (`kubeloop.drift.state`), so a restarted monitor continues the open window.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kubeloop.drift.state import Key, StateStore, WindowMeta

_TIME, _PAYLOAD = operator.itemgetter(0), operator.itemgetter(1)


class WindowConfig(BaseModel):
    """Size of tumbling windows."""

    model_config = ConfigDict(extra="forbid")

    max_events: int = Field(2000, ge=1, description="a window closes after this many events")
    max_seconds: float | None = Field(
        3600.0, gt=0, description="... or this many seconds of event time after its first event"
    )
    min_events: int = Field(200, ge=1, description="smaller closed windows are not tested")
    time_limit_min_events: int = Field(
        1000,
        ge=1,
        description=(
            "max_seconds closes a window only once it holds this many events (capped at "
            "max_events): thin night hours run on into one testable window"
        ),
    )
    max_open_seconds: float | None = Field(
        6 * 3600.0,
        gt=0,
        description=(
            "... and a window this many seconds old (at least max_seconds) closes however "
            "few events it holds"
        ),
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> WindowConfig:
        if self.min_events > self.max_events:
            raise ValueError(
                f"min_events {self.min_events} is larger than max_events {self.max_events}"
            )
        return self

    def closes_on_time(self, n: int, age: float) -> bool:
        """Whether an event `age` seconds after the first event of a window holding `n`
        events closes that window (and opens the next)."""
        if not n:
            return False
        if self.max_open_seconds is not None and age >= max(
            self.max_open_seconds, self.max_seconds or 0.0
        ):
            return True
        return (
            self.max_seconds is not None
            and age >= self.max_seconds
            and n >= min(self.time_limit_min_events, self.max_events)
        )


@dataclass
class ClosedWindow:
    """A window that just closed, with its buffered rows (payload dicts)."""

    kind: str
    key: Key
    index: int
    start: float
    end: float
    rows: list[dict]

    @property
    def n(self) -> int:
        return len(self.rows)


@dataclass
class _Open:
    """The in-memory copy of one key's open window: its meta and, when known, its rows
    (None: some rows were buffered by an earlier process, read them from the store)."""

    generation: int
    meta: WindowMeta
    rows: list[dict] | None


class TumblingWindows:
    """Open windows of one kind ("serve" or "labels") for every key, in a state store.

    Callers hold the store's transaction around `add`/`flush`, so appending an event and
    closing its window commit together. The rows are written to the store (encoded once)
    and mirrored in memory, so closing a window does not read back and decode what this
    process wrote; a rolled-back transaction (the store's `generation` moves) drops the
    mirror, which is then rebuilt from the store.
    """

    def __init__(self, state: StateStore, kind: str, config: WindowConfig):
        self.state = state
        self.kind = kind
        self.config = config
        self._open: dict[Key, _Open] = {}

    def _entry(self, key: Key) -> _Open:
        entry = self._open.get(key)
        if entry is None or entry.generation != self.state.generation:
            meta = self.state.window(self.kind, key)
            entry = _Open(self.state.generation, meta, None if meta.n else [])
            self._open[key] = entry
        return entry

    def add(self, key: Key, rows: Sequence[tuple[float, dict]]) -> list[ClosedWindow]:
        """Append `(event time, payload)` rows to the key's open window, closing windows
        as the rules say; returns the windows closed, oldest first."""
        closed: list[ClosedWindow] = []
        entry = self._entry(key)
        meta = entry.meta
        batch: list[tuple[float, dict]] = []
        config = self.config

        def spill() -> None:
            if batch:
                payloads = list(map(_PAYLOAD, batch))
                self.state.append_payloads(self.kind, key, float(batch[0][0]), payloads)
                if entry.rows is not None:
                    entry.rows.extend(payloads)
                batch.clear()

        times = list(map(float, map(_TIME, rows)))
        i, total = 0, len(rows)
        while i < total:
            if meta.start is None:
                meta.start = times[i]
            # The rows that fit before the count limit, cut at the first one the time
            # limits close the window on (found with one scan of the times, not a check
            # per row).
            stop = min(total, i + config.max_events - meta.n)
            cut = self._first_closing(times, i, stop, meta.n, meta.start)
            if cut > i:
                batch.extend(rows[i:cut])
                meta.n += cut - i
                span = times[i:cut]
                meta.end = max(span if meta.end is None else [meta.end, *span])
            i = cut
            if meta.n >= config.max_events or cut < stop:
                spill()
                closed.append(self._close(entry))
        spill()
        self.state.save_window(meta)
        return closed

    def _first_closing(self, times: list[float], i: int, stop: int, n: int, start: float) -> int:
        """The first of rows `i..stop-1` whose event time closes a window that holds `n`
        events before row `i` and opened at `start` (`WindowConfig.closes_on_time`, row k
        finding n + k - i events), else `stop`."""
        config = self.config
        limits = [x for x in (config.max_seconds, config.max_open_seconds) if x is not None]
        # No row is old enough for the shorter limit: none closes (the common batch).
        if not limits or i >= stop or max(times[i:stop]) - start < min(limits):
            return stop
        for k in range(i, stop):
            if config.closes_on_time(n + k - i, times[k] - start):
                return k
        return stop

    def _close(self, entry: _Open) -> ClosedWindow:
        meta = entry.meta
        rows = entry.rows if entry.rows is not None else self.state.window_rows(self.kind, meta.key)
        window = ClosedWindow(
            self.kind, meta.key, meta.index, float(meta.start or 0.0), float(meta.end or 0.0), rows
        )
        self.state.clear_rows(self.kind, meta.key)
        entry.rows = []
        meta.index += 1
        meta.start = meta.end = None
        meta.n = 0
        self.state.save_window(meta)
        return window

    def flush(self, key: Key | None = None) -> list[ClosedWindow]:
        """Close the open window of `key` (of every key when None)."""
        keys = [key] if key else [m.key for m in self.state.windows(self.kind)]
        entries = [self._entry(k) for k in keys]
        return [self._close(e) for e in entries if e.meta.n]

    def open_windows(self) -> list[WindowMeta]:
        """The open (non-empty) windows of this kind."""
        return [m for m in self.state.windows(self.kind) if m.n]
