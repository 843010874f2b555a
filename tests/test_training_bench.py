"""bench/training_bench.py's verdict: the three paths train with the same settings, and
the headline says whether they saved the same booster and were measured quietly before it
claims a ratio (the old report put a quiet component run beside a disturbed plain run)."""

from __future__ import annotations

import json

import pytest
from _bench_module import bench_module


@pytest.fixture(scope="module")
def bench():
    yield from bench_module("training_bench")


def _run(seconds: float, others: float, digest: str = "a", train: float | None = None) -> dict:
    return {
        "seconds": seconds,
        "train_seconds": seconds - 1.0 if train is None else train,
        "others": others,
        "cpu_s": seconds / 2,
        "model_sha256": digest,
        "best_iteration": 50,
    }


def test_fixed_rounds_reach_every_path_alike(bench):
    settings = bench.lgb_settings(50, 1)
    # Early stopping as long as the rounds: it never stops early, every path runs 50.
    assert settings == {"max_rounds": 50, "early_stopping_rounds": 50, "num_threads": 1}
    assert json.loads(bench.train_config_json(settings)) == {"lightgbm": settings}
    assert bench.plain_params(settings)["num_threads"] == 1
    bench.check_plain_params(settings)  # the trainer's parameters are the plain path's
    assert bench.lgb_settings(None, None) == {
        "max_rounds": 500,
        "early_stopping_rounds": 30,
        "num_threads": 2,
    }


def test_quiet_like_for_like_runs_give_a_trusted_ratio(bench):
    results = {
        "component": [_run(12.0, 0.1), _run(30.0, 1.5)],
        "train_step": [_run(10.5, 0.2), _run(25.0, 1.2)],
        "plain": [_run(10.0, 0.0), _run(40.0, 1.4)],
    }
    v = bench.verdict(results)
    assert v["same_model"] and v["all_paths_quiet"]
    # The quiet runs only: 12 / 10, not the disturbed ones.
    assert v["component_vs_plain"] == pytest.approx(1.2)
    assert v["meets_target"]
    assert "like-for-like" in bench.trust_line(v)
    # CPU seconds over all runs, quiet or not: (12 + 30) / 2 over (10 + 40) / 2.
    assert v["component_vs_plain_cpu"] == pytest.approx(42 / 50)


def test_a_quiet_run_is_not_compared_with_disturbed_ones_unflagged(bench):
    # The old report's case: one quiet component run, the plain path never quiet.
    results = {
        "component": [_run(65.3, 1.54), _run(5.9, 0.01)],
        "train_step": [_run(28.7, 1.21), _run(9.5, 0.79)],
        "plain": [_run(59.4, 1.53), _run(42.7, 1.03)],
    }
    v = bench.verdict(results)
    assert not v["all_paths_quiet"]
    assert "only indicative" in bench.trust_line(v)


def test_different_boosters_are_not_the_same_work(bench):
    results = {
        "component": [_run(12.0, 0.0, "a")],
        "train_step": [_run(11.0, 0.0, "a")],
        "plain": [_run(10.0, 0.0, "b")],
    }
    v = bench.verdict(results)
    assert not v["same_model"] and v["model_digests"] == 2
    assert "do not compare like for like" in bench.trust_line(v)


def test_the_overhead_is_the_time_outside_the_core_training(bench):
    results = {
        "component": [_run(14.0, 0.0, train=10.0)],
        "train_step": [_run(11.0, 0.0, train=10.0)],
        "plain": [_run(10.5, 0.0, train=10.0)],
    }
    v = bench.verdict(results)
    assert v["component_overhead_seconds"] == pytest.approx(3.5)
    assert v["train_step_overhead_seconds"] == pytest.approx(0.5)
