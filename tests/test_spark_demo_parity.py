"""`kubeloop demo --features-engine spark` gives the same features, and so the same models and
metrics on the same seed, as the default engine (issue 16's "must show").

The whole offline loop (data, the training pipeline on kfp.local: features, training set,
the model ladder, gate, registry) runs twice on one small seeded lake, once per engine. The
feature tables must be equal value for value, and the training section of report.json equal
figure for figure, times excepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from kubeloop.demo import DemoConfig, run_demo
from kubeloop.workdir import Workdir
from usecases.ctr.generator import GeneratorConfig

SMALL = GeneratorConfig(events=20_000, days=6, users=500, ads=80, seed=11)
FAST_TRAINING = {"torch": {"max_epochs": 1, "importance_rows": 200}, "lightgbm": {"max_rounds": 30}}


def _without_times(value: Any) -> Any:
    """`value` with every figure that measures time (keys ending in `seconds`) left out."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if not k.endswith("seconds")}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def _tables(features: Path) -> dict[str, Any]:
    return {p.name: pq.read_table(p) for p in sorted(features.glob("*.parquet"))}


@pytest.mark.spark
@pytest.mark.slow
def test_the_demo_on_spark_gives_the_same_features_and_metrics(spark, tmp_path: Path) -> None:
    reports, tables = {}, {}
    for engine in ("duckdb", "spark"):
        workdir = Workdir.at(tmp_path / engine)
        config = DemoConfig(
            generator=SMALL, train_config=FAST_TRAINING, train_until_day=5, progress=False,
            serve=False, monitor=False, features_engine=engine,
        )
        reports[engine] = run_demo(config, workdir)
        tables[engine] = _tables(workdir.features)

    duck, spark_ = tables["duckdb"], tables["spark"]
    assert sorted(spark_) == sorted(duck) and duck
    for name, table in duck.items():
        assert spark_[name].schema.remove_metadata() == table.schema.remove_metadata(), name
        assert spark_[name].equals(table), f"{name} differs between the engines"

    a, b = reports["duckdb"], reports["spark"]
    assert _without_times(b["features"]) == _without_times(a["features"])
    assert set(a["training"]["models"]) == {"logistic", "lightgbm", "torch"}
    assert _without_times(b["training"]) == _without_times(a["training"])
    assert b["registry"]["version"] == a["registry"]["version"]
