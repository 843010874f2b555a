"""bench/serving_bench.py's cell selection (`--cells`): which targets and servers a
partial run measures, where it writes, and that its report holds only the ratios its
cells give."""

from __future__ import annotations

from pathlib import Path

import pytest
from _bench_module import bench_module


@pytest.fixture(scope="module")
def bench():
    yield from bench_module("serving_bench")


def test_select_cells_keeps_report_order_and_adds_the_predictor(bench):
    assert bench.select_cells("null, bare") == ("predictor", "bare", "null")
    assert bench.select_cells("stack") == ("predictor", "stack")
    assert bench.select_cells(None) == bench.TARGET_KEYS
    with pytest.raises(ValueError, match="unknown.*'nope'"):
        bench.select_cells("bare,nope")


def test_a_target_starts_every_server_on_its_path(bench):
    assert bench.target_servers("bare") == ("bare",)
    assert bench.target_servers("stack") == ("stack", "router", "predictor")
    # Every hop forwards to a server that is itself a target (so it gets started).
    for key in bench.TARGET_KEYS:
        assert set(bench.target_servers(key)) <= set(bench.TARGET_KEYS)


def test_partial_runs_write_beside_the_full_results(bench):
    args = bench.parse_args(["--quick", "--cells", "bare"])
    assert args.cells == ("predictor", "bare")
    assert args.json == bench.PARTIAL_JSON and args.out == bench.PARTIAL_OUT
    assert bench.parse_args(["--quick"]).json == bench.DEFAULT_JSON
    explicit = bench.parse_args(["--quick", "--cells", "bare", "--json", "/tmp/x.json"])
    assert explicit.json == Path("/tmp/x.json")


def _cell(rps: float) -> dict:
    stats = {"n": 10, "rps": rps, "p50": 0.01, "p99": 0.02, "server_cpu": 0.001,
             "client_cpu": 0.0002, "others": 0.1, "rps_min": rps, "rps_max": rps}  # fmt: skip
    return {"label": "x", "size": 1, "servers": ["x"], "stats": stats, "server_cpu": {}}


def test_goal_ratios_of_a_partial_run_are_those_its_cells_give(bench):
    cells = {
        f"{k}/{s}": _cell(r * s) for k, r in (("predictor", 3.0), ("bare", 2.0)) for s in (1, 64)
    }
    ratios = bench.goal_ratios({"cells": cells, "breakdown": {}})
    assert [(r["what"].split(",")[0], r["rows"], r["ratio"]) for r in ratios] == [
        ("predictor alone vs bare kserve.Model", 1, 1.5),
        ("predictor alone vs bare kserve.Model", 64, 1.5),
    ]
