"""kubeloop.drift.frame: a window's frame from mirrored columns is the frame
`DataFrame.from_records` builds of the same rows, and the mirror follows the windows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kubeloop.drift.frame import WindowColumns, column_kinds, frame_of

NAMES = ["a", "b", "c"]
KEY = ("m", "v", "primary")

COLUMNS = {
    "ints": [1, 2, -3, 0],
    "floats": [1.5, -0.0, math.nan, math.inf],
    "ints and floats": [1, 2.5, 3, -4.0],
    "ints and None": [1, None, 3, 4],
    "floats and None": [0.1, None, None, 2.0],
    "text": ["x", "y", "x", "z"],
    "text and None": ["x", None, "y", None],
    "numbers near 2**53": [2**53 - 1, 0.5, 1, 2],
}
UNSTATED = {
    "None only": [None, None, None, None],
    "bools": [True, False, True, True],
    "bools and None": [True, None, False, True],
    "text and numbers": ["x", 1, 2.0, None],
    "big ints": [2**63, 1, 2, 3],
    "big ints and floats": [2**60, 1.5, 2, 3],
}


def _frames(values: list) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    rows = [(v, i, "k") for i, v in enumerate(values)]
    columns = list(zip(*rows, strict=True))
    return pd.DataFrame.from_records(rows, columns=NAMES), frame_of(
        columns, column_kinds(columns), NAMES
    )


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_frame_of_equals_from_records(name):
    expected, got = _frames(COLUMNS[name])
    assert got is not None
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert list(got.dtypes) == list(expected.dtypes)


@pytest.mark.parametrize("name", sorted(UNSTATED))
def test_frame_of_leaves_other_columns_to_pandas(name):
    assert _frames(UNSTATED[name])[1] is None


def test_frame_of_refuses_repeated_names():
    columns = [(1, 2), (3, 4)]
    assert frame_of(columns, column_kinds(columns), ["a", "a"]) is None


def _rows(start: int, n: int) -> list[tuple]:
    return [(i, float(i) / 2, f"s{i % 3}") for i in range(start, start + n)]


def test_window_columns_split_chunks_across_windows():
    mirror = WindowColumns()
    batches = [_rows(0, 5), _rows(5, 5), _rows(10, 5)]
    for rows in batches:
        mirror.add(0, KEY, rows)
    every = [r for b in batches for r in b]
    # A window of 7 rows closes inside the second batch, the next one holds the rest.
    for window in (every[:7], every[7:]):
        columns, kinds = mirror.take(0, KEY, window)
        expected = pd.DataFrame.from_records(window, columns=NAMES)
        pd.testing.assert_frame_equal(frame_of(columns, kinds, NAMES), expected)
    assert mirror.take(0, KEY, every[:1]) is None  # nothing left


def test_window_columns_out_of_line_skips_to_the_next_window():
    mirror = WindowColumns()
    first, second = _rows(0, 6), _rows(6, 4)
    mirror.add(0, KEY, first)
    mirror.add(0, KEY, second)
    # A window whose rows are not the mirrored objects (reloaded from the store).
    reloaded = [tuple(r) for r in [list(x) for x in first[:4]]]
    assert mirror.take(0, KEY, reloaded[:3] + [first[3]]) is None
    columns, kinds = mirror.take(0, KEY, first[4:] + second)
    assert frame_of(columns, kinds, NAMES)["a"].tolist() == list(range(4, 10))


def test_window_columns_dropped_when_the_generation_moves():
    mirror = WindowColumns()
    rows = _rows(0, 3)
    mirror.add(0, KEY, rows)
    assert mirror.take(1, KEY, rows) is None  # a rollback dropped the mirror


def test_frame_of_keeps_float_values_bit_for_bit():
    values = list(np.random.default_rng(0).normal(size=50))
    values = [float(v) for v in values]
    expected, got = _frames(values)
    assert got["a"].to_numpy().tobytes() == expected["a"].to_numpy().tobytes()


def test_monitor_frames_from_the_mirror_are_from_records_frames(tmp_path, monkeypatch):
    """Batches straddling windows, a request with a text in a numeric input (the slow
    path) and a restart mid-window: every window's frame is the `from_records` one."""
    from test_drift_batches import _requests
    from test_drift_detectors import make_frame, scores_of, small_config

    from kubeloop.drift import DriftMonitor, Reference

    features = make_frame(4000, seed=1)
    metrics = {"normalized_entropy": 0.9, "log_loss": 0.18, "calibration_ratio": 1.0}
    reference = Reference("ctr", "v0001", features, scores_of(features), metrics)
    frame = make_frame(1400, seed=5)
    requests = _requests(frame, scores_of(frame))
    numeric = next(c for c in frame.columns if frame[c].dtype.kind == "f")
    requests[30].instances[0][numeric] = "n/a"
    checked = {"mirrored": 0, "windows": 0}
    original = DriftMonitor._window_frame

    def both(self, values, mirrored=None):
        got = original(self, values, mirrored)
        expected = original(self, values, None)
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
        checked["windows"] += 1
        checked["mirrored"] += mirrored is not None
        return got

    monkeypatch.setattr(DriftMonitor, "_window_frame", both)
    config = small_config()
    with DriftMonitor(reference, tmp_path / "s", config=config) as m:
        for start in range(0, 120, 36):
            m.observe_many(requests[start : start + 36])
    with DriftMonitor(reference, tmp_path / "s", config=config) as m:  # restarted
        for start in range(120, len(requests), 36):
            m.observe_many(requests[start : start + 36])
        m.flush()
    assert checked["windows"] >= 3 and 0 < checked["mirrored"] < checked["windows"]
