"""A serving window's model inputs as a DataFrame, from columns kept while it filled.

`pd.DataFrame.from_records` of a 2,000-row window looks at every value as a Python object
to infer each column's dtype, after the encoder looked at each value's type already (to
tell plain rows from schema violations). `WindowColumns` keeps, per key, the open
window's inputs as the columns the encoder transposed and the set of value types of each
(`column_kinds`); `frame_of` builds the frame the same inference gives from them, one
numpy conversion per column. A column whose inference this module does not state (bools,
mixed kinds, integers beyond int64) returns None: the caller then uses `from_records`,
so the frame is always the one `from_records` builds (tests/test_drift_frame.py).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kubeloop.drift.state import Key

_INT, _FLOAT, _NONE, _STR = int, float, type(None), str
_NUMBERS = frozenset({_INT, _FLOAT})
_NUMERIC = frozenset({_INT, _FLOAT, _NONE})
_TEXT = frozenset({_STR, _NONE})
# Below 2**53 in magnitude every integer is exactly a float64, as pandas converts it.
_EXACT = 2**53


def column_kinds(columns: Sequence[Sequence[Any]]) -> list[set[type]]:
    """The exact types of the values of each column."""
    return [set(map(type, c)) for c in columns]


def _array(values: Sequence[Any], kinds: set[type]) -> np.ndarray | None:
    """The array `from_records` makes of one column of values of exactly `kinds`, or None
    where this module does not state that inference."""
    if kinds == {_INT}:
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:  # uint64 or objects in pandas
            return None
    if kinds <= _NUMERIC and kinds & _NUMBERS:
        if _INT in kinds and any(type(v) is _INT and not -_EXACT < v < _EXACT for v in values):
            return None
        return np.array(values, dtype=np.float64)  # None -> NaN, as pandas makes it
    if kinds <= _TEXT and _STR in kinds:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    return None


def frame_of(
    columns: Sequence[Sequence[Any]], kinds: Sequence[set[type]], names: Sequence[str]
) -> pd.DataFrame | None:
    """The frame `pd.DataFrame.from_records(rows, columns=names)` builds of the rows whose
    transposition is `columns` (`kinds`: `column_kinds` of them), or None when a column's
    inference is not one this module states, or the names repeat."""
    if len(columns) != len(names) or len(set(names)) != len(names) or not names:
        return None
    arrays = {}
    for name, values, k in zip(names, columns, kinds, strict=True):
        array = _array(values, k)
        if array is None:
            return None
        arrays[name] = array
    return pd.DataFrame(arrays, copy=False)


@dataclass
class _Chunk:
    """Rows added to a key's open window together: their inputs (row objects), the same
    transposed, and each column's value types."""

    rows: list[Any]
    columns: list[Sequence[Any]]
    kinds: list[set[type]]


class WindowColumns:
    """Per key, the inputs of the rows of its open serving window, as columns.

    `add` them in the order the rows enter the window; `take` the first n of them when a
    window of n rows closes. They are a mirror: `take` checks that they are the window's
    own rows (the same objects, first and last) and returns None otherwise (rows reloaded
    from the state store, or dropped with a rolled-back transaction: `generation`)."""

    def __init__(self) -> None:
        self._chunks: dict[Key, deque[_Chunk]] = {}
        self._generation: int | None = None

    def _check(self, generation: int) -> None:
        if generation != self._generation:
            self._chunks.clear()
            self._generation = generation

    def add(
        self,
        generation: int,
        key: Key,
        rows: list[Any],
        columns: list[Sequence[Any]] | None = None,
        kinds: list[set[type]] | None = None,
    ) -> None:
        """Mirror `rows` (each a sequence of input values) entering `key`'s open window;
        `columns`/`kinds`: their transposition and its `column_kinds`, when known."""
        self._check(generation)
        if not rows:
            return
        if columns is None:
            try:
                columns = list(zip(*rows, strict=True))
            except (TypeError, ValueError):  # not rows of equal length: not mirrored
                return  # (the next `take` finds the mirror out of line and skips it)
        if kinds is None:
            kinds = column_kinds(columns)
        self._chunks.setdefault(key, deque()).append(_Chunk(rows, columns, kinds))

    def take(
        self, generation: int, key: Key, window_rows: Sequence[Any]
    ) -> tuple[list[Sequence[Any]], list[set[type]]] | None:
        """(columns, kinds) of the first len(`window_rows`) mirrored rows of `key`, removed
        from the mirror; None when they are not the window's rows `window_rows` (the
        mirror then skips past the window's last row, to line up with the next one)."""
        self._check(generation)
        chunks = self._chunks.get(key)
        n = len(window_rows)
        if not n:
            return None
        if not chunks or chunks[0].rows[0] is not window_rows[0]:
            self._skip_through(key, window_rows[-1])
            return None
        parts: list[_Chunk] = []
        need = n
        while need and chunks:
            chunk = chunks[0]
            if len(chunk.rows) <= need:
                parts.append(chunks.popleft())
                need -= len(chunk.rows)
                continue
            # The window closed inside this chunk: split it, each part's types anew.
            head = [c[:need] for c in chunk.columns]
            tail = [c[need:] for c in chunk.columns]
            parts.append(_Chunk(chunk.rows[:need], head, column_kinds(head)))
            chunks[0] = _Chunk(chunk.rows[need:], tail, column_kinds(tail))
            need = 0
        if need or parts[-1].rows[-1] is not window_rows[-1]:
            self._skip_through(key, window_rows[-1])
            return None
        if len(parts) == 1:
            return parts[0].columns, parts[0].kinds
        width = len(parts[0].columns)
        chain = itertools.chain.from_iterable
        columns = [list(chain(p.columns[j] for p in parts)) for j in range(width)]
        kinds = [set().union(*(p.kinds[j] for p in parts)) for j in range(width)]
        return columns, kinds

    def _skip_through(self, key: Key, last: Any) -> None:
        """Drop the mirrored rows of `key` up to and including the row object `last` (the
        closed window's last row), so the mirror lines up with the next window again; all
        of them when `last` is not mirrored."""
        chunks = self._chunks.get(key)
        while chunks:
            chunk = chunks[0]
            at = next((i for i, row in enumerate(chunk.rows) if row is last), None)
            if at is None:
                chunks.popleft()
                continue
            rest = [c[at + 1 :] for c in chunk.columns]
            if at + 1 < len(chunk.rows):
                chunks[0] = _Chunk(chunk.rows[at + 1 :], rest, column_kinds(rest))
            else:
                chunks.popleft()
            return
