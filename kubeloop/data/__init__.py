"""The impression data lake: a seeded generator whose true click probability is known,
and the lake's on-disk layout (Parquet partitioned by day, any fsspec filesystem)."""

from kubeloop.data.generator import (
    GenerationSummary,
    GeneratorConfig,
    Population,
    build_population,
    click_model_on,
    generate_lake,
    iter_day_tables,
    true_click_probability,
)
from kubeloop.data.lake import DayFile, Partition, list_partitions, staged_events, write_day
from kubeloop.data.scenarios import SCENARIOS, ClickModel, Scenario, Traffic

__all__ = [
    "SCENARIOS",
    "ClickModel",
    "DayFile",
    "GenerationSummary",
    "GeneratorConfig",
    "Partition",
    "Population",
    "Scenario",
    "Traffic",
    "build_population",
    "click_model_on",
    "generate_lake",
    "iter_day_tables",
    "list_partitions",
    "staged_events",
    "true_click_probability",
    "write_day",
]
