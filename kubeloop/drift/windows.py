"""Tumbling windows by event count and by event time, whichever closes first.

A window of one key (model, version, variant) opens with its first event. It closes

* after its `max_events`-th event, or
* when an event arrives whose event time is `max_seconds` or more after the window's
  first event (that event opens the next window),

and `flush()` closes whatever is open (end of a replay, shutdown on request). A closed
window with fewer than `min_events` events is counted but not tested: a handful of events
cannot show drift, and chi-square tests are unreliable on tiny tables.

Windows advance on event time, never on the wall clock, so a replay of past traffic at
full speed windows the same way as live traffic. The buffered events live in the state
store (`kubeloop.drift.state`), so a restarted monitor continues the open window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kubeloop.drift.state import Key, StateStore, WindowMeta


class WindowConfig(BaseModel):
    """Size of tumbling windows."""

    model_config = ConfigDict(extra="forbid")

    max_events: int = Field(2000, ge=1, description="a window closes after this many events")
    max_seconds: float | None = Field(
        3600.0, gt=0, description="... or this many seconds of event time after its first event"
    )
    min_events: int = Field(200, ge=1, description="smaller closed windows are not tested")

    @model_validator(mode="after")
    def _min_le_max(self) -> WindowConfig:
        if self.min_events > self.max_events:
            raise ValueError(
                f"min_events {self.min_events} is larger than max_events {self.max_events}"
            )
        return self


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


class TumblingWindows:
    """Open windows of one kind ("serve" or "labels") for every key, in a state store.

    Callers hold the store's transaction around `add`/`flush`, so appending an event and
    closing its window commit together.
    """

    def __init__(self, state: StateStore, kind: str, config: WindowConfig):
        self.state = state
        self.kind = kind
        self.config = config

    def add(self, key: Key, rows: Sequence[tuple[float, dict]]) -> list[ClosedWindow]:
        """Append `(event time, payload)` rows to the key's open window, closing windows
        as the rules say; returns the windows closed, oldest first."""
        closed: list[ClosedWindow] = []
        meta = self.state.window(self.kind, key)
        batch: list[tuple[float, dict]] = []

        def spill() -> None:
            if batch:
                self.state.append_rows(self.kind, key, batch)
                batch.clear()

        for t, payload in rows:
            t = float(t)
            limit = self.config.max_seconds
            if meta.n and limit is not None and meta.start is not None and t - meta.start >= limit:
                spill()
                closed.append(self._close(meta))
            batch.append((t, payload))
            meta.n += 1
            meta.start = t if meta.start is None else meta.start
            meta.end = t if meta.end is None else max(meta.end, t)
            if meta.n >= self.config.max_events:
                spill()
                closed.append(self._close(meta))
        spill()
        self.state.save_window(meta)
        return closed

    def _close(self, meta: WindowMeta) -> ClosedWindow:
        rows = self.state.window_rows(self.kind, meta.key)
        window = ClosedWindow(
            self.kind, meta.key, meta.index, float(meta.start or 0.0), float(meta.end or 0.0), rows
        )
        self.state.clear_rows(self.kind, meta.key)
        meta.index += 1
        meta.start = meta.end = None
        meta.n = 0
        self.state.save_window(meta)
        return window

    def flush(self, key: Key | None = None) -> list[ClosedWindow]:
        """Close the open window of `key` (of every key when None)."""
        metas = [self.state.window(self.kind, key)] if key else self.state.windows(self.kind)
        return [self._close(m) for m in metas if m.n]

    def open_windows(self) -> list[WindowMeta]:
        """The open (non-empty) windows of this kind."""
        return [m for m in self.state.windows(self.kind) if m.n]
