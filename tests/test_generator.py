"""Tests of the seeded impression generator, its scenarios and the lake writer."""

from __future__ import annotations

import tracemalloc
import uuid
from datetime import timedelta
from functools import cache
from typing import get_args

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from scipy.stats import chi2_contingency
from typer.testing import CliRunner

from kubeloop.cli import data as data_cli
from kubeloop.data import list_partitions, staged_events, write_day
from kubeloop.data.lake import PART_FILE
from kubeloop.errors import LakeError
from usecases.ctr.generator import (
    GeneratorConfig,
    ScenarioName,
    build_population,
    click_model_on,
    generate_lake,
    iter_day_tables,
    true_click_probability,
)
from usecases.ctr.scenarios import BASELINE_CLICK_MODEL, SCENARIOS
from usecases.ctr.schema import EVENT_SCHEMA, EVENTS_DIR, PARTITION_KEY
from usecases.ctr.usecase import USE_CASE

SMALL = {
    "events": 20_000,
    "days": 6,
    "users": 800,
    "ads": 200,
    "advertisers": 20,
    "change_day": 3,
    "new_ads": 60,
}
INPUT_COLUMNS = [f.name for f in EVENT_SCHEMA if f.name not in ("click", "true_ctr")]


def small(**overrides) -> GeneratorConfig:
    return GeneratorConfig(**{**SMALL, **overrides})


@cache
def lake_table(scenario: str = "baseline", seed: int = 7, chunk_size: int = 500_000) -> pa.Table:
    """The whole small lake of a scenario, generated once per test session."""
    cfg = small(scenario=scenario, seed=seed, chunk_size=chunk_size)
    return pa.concat_tables(t for _, t in iter_day_tables(cfg))


def frame(scenario: str = "baseline") -> pd.DataFrame:
    df = lake_table(scenario).to_pandas()
    start = pd.Timestamp(SMALL_START, tz="UTC")
    df["day_index"] = (df["event_timestamp"] - start).dt.days
    return df


SMALL_START = GeneratorConfig().start_date


def chi2_pvalue(a: pd.Series, b: pd.Series) -> float:
    counts = pd.concat([a.value_counts(), b.value_counts()], axis=1).fillna(0).to_numpy()
    return chi2_contingency(counts.T)[1]


def memory_url() -> str:
    # A fresh in-memory lake per test: the memory filesystem is process-global.
    return f"memory://kubeloop-test-{uuid.uuid4().hex}"


# --- configuration ----------------------------------------------------------------------


def test_config_defaults_match_the_issue():
    cfg = GeneratorConfig()
    assert (cfg.events, cfg.days, cfg.users, cfg.ads, cfg.advertisers, cfg.seed) == (
        600_000, 14, 4_000, 600, 60, 7,
    )  # fmt: skip
    assert (cfg.scenario, cfg.change_day, cfg.new_ads) == ("baseline", 10, 150)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"users": 0}, "greater than 0"),
        ({"events": 3, "days": 6}, "at least days"),
        ({"scenario": "new_ads", "change_day": 6}, "0 < change_day < days"),
        ({"scenario": "concept_drift", "change_day": 0}, "greater than 0"),
        ({"scenario": "nope"}, "baseline"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_config_rejects_bad_values_with_a_clear_message(overrides, fragment):
    with pytest.raises(ValidationError, match=fragment):
        small(**overrides)


def test_day_sizes_add_up_to_events():
    cfg = small(events=20_003)
    assert sum(cfg.day_sizes()) == 20_003
    assert max(cfg.day_sizes()) - min(cfg.day_sizes()) <= 1


# --- reproducibility ------------------------------------------------------------------


def test_same_seed_gives_identical_tables_and_different_seed_does_not():
    again = pa.concat_tables(t for _, t in iter_day_tables(small()))
    assert again.equals(lake_table())
    other = lake_table(seed=8)
    assert not other.equals(lake_table())
    assert not np.array_equal(other["user_id"].to_numpy(), lake_table()["user_id"].to_numpy())


def test_same_seed_gives_byte_identical_files(tmp_path):
    cfg = small(events=6_000, days=3)
    generate_lake(cfg, str(tmp_path / "a"), progress=False)
    generate_lake(cfg, str(tmp_path / "b"), progress=False)
    files_a = sorted((tmp_path / "a").rglob("*.parquet"))
    files_b = sorted((tmp_path / "b").rglob("*.parquet"))
    assert [f.relative_to(tmp_path / "a") for f in files_a] == [
        f.relative_to(tmp_path / "b") for f in files_b
    ]
    assert all(fa.read_bytes() == fb.read_bytes() for fa, fb in zip(files_a, files_b))


def test_chunk_size_changes_batching_but_not_data():
    chunked = list(iter_day_tables(small(chunk_size=700)))
    assert all(t.num_rows <= 700 for _, t in chunked)
    assert len(chunked) > SMALL["days"]
    assert pa.concat_tables(t for _, t in chunked).equals(lake_table())


# --- schema and layout ---------------------------------------------------------------


def test_lake_layout_schema_and_event_ids(tmp_path):
    cfg = small()
    summary = generate_lake(cfg, str(tmp_path), progress=False)
    assert (summary.events, summary.days, summary.partitions, summary.scenario) == (
        20_000, 6, 6, "baseline",
    )  # fmt: skip
    assert summary.seconds > 0

    parts = list_partitions(str(tmp_path))
    assert [p.day for p in parts] == cfg.day_dates()
    tables = []
    for part, size in zip(parts, cfg.day_sizes()):
        assert part.path.endswith(f"{EVENTS_DIR}/{PARTITION_KEY}={part.day.isoformat()}")
        assert [f.rsplit("/", 1)[-1] for f in part.files] == [PART_FILE]
        assert pq.read_schema(part.files[0]).remove_metadata().equals(EVENT_SCHEMA)
        # ParquetFile, not read_table: the latter would add `day` back from the hive path
        table = pq.ParquetFile(part.files[0]).read()
        assert PARTITION_KEY not in table.column_names
        assert table.num_rows == size
        ts = table["event_timestamp"].to_pandas()
        day_start = pd.Timestamp(part.day, tz="UTC")
        assert ts.min() >= day_start and ts.max() < day_start + timedelta(days=1)
        assert ts.is_monotonic_increasing
        assert (table["hour"].to_numpy() == ts.dt.hour.to_numpy()).all()
        assert (table["weekday"].to_numpy() == part.day.weekday()).all()
        tables.append(table)

    ids = np.concatenate([t["event_id"].to_numpy() for t in tables])
    assert len(np.unique(ids)) == len(ids) == cfg.events
    assert (np.diff(ids) > 0).all()
    assert pa.concat_tables(tables).equals(lake_table())


def test_value_domains_are_sane():
    df = frame()
    assert set(df["slot_position"]) <= {1, 2, 3, 4, 5}
    assert set(df["click"]) == {0, 1}
    assert df["true_ctr"].between(0, 1).all()
    assert df["ad_creative_age_days"].ge(0).all()
    assert df["user_id"].between(0, SMALL["users"] - 1).all()
    # each user and ad keeps its static attributes across all its impressions
    assert (
        df.groupby("user_id")[["user_segment", "user_country", "user_device_pref"]]
        .nunique()
        .max()
        .max()
        == 1
    )
    assert df.groupby("ad_id")[["advertiser_id", "ad_category"]].nunique().max().max() == 1
    # activity is heavy-tailed: the busiest users are well above the median
    per_user = df["user_id"].value_counts()
    assert per_user.quantile(0.99) > 4 * per_user.median()


def test_memory_url_and_chunked_row_groups():
    url = memory_url()
    cfg = small(events=12_000, days=3, chunk_size=1_000)
    generate_lake(cfg, url, progress=False)
    parts = list_partitions(url)
    assert len(parts) == 3 and all(p.files[0].startswith("memory://") for p in parts)
    fs, root = fsspec.core.url_to_fs(url)
    # nothing but events/ is left behind (no staging or temporary files)
    assert [e.rsplit("/", 1)[-1] for e in fs.ls(root, detail=False)] == [EVENTS_DIR]
    for part in parts:
        fs_part, path = fsspec.core.url_to_fs(part.files[0])
        with fs_part.open(path, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
        assert meta.num_row_groups >= 4  # 4,000 rows a day in chunks of at most 1,000
        assert all(meta.row_group(i).num_rows <= 1_000 for i in range(meta.num_row_groups))


def test_peak_memory_does_not_grow_with_days(tmp_path):
    # tracemalloc sees numpy's buffers and Python objects (Arrow's own allocations are
    # not traced); keeping every chunk alive would add ~0.7 MB per day here.
    def peak(days: int) -> int:
        cfg = small(events=5_000 * days, days=days, chunk_size=1_000)
        tracemalloc.start()
        try:
            generate_lake(cfg, str(tmp_path / f"d{days}"), progress=False)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(1)  # warm-up: lazy imports and caches must not count against the short run
    short, long = peak(2), peak(12)
    assert long < 1.25 * short, (short, long)


def test_regenerating_replaces_the_whole_events_dir(tmp_path):
    generate_lake(small(), str(tmp_path), progress=False)
    (tmp_path / "keep.txt").write_text("not part of events/")
    generate_lake(small(events=3_000, days=2), str(tmp_path), progress=False)
    assert [p.day for p in list_partitions(str(tmp_path))] == small(days=2).day_dates()
    assert (tmp_path / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [EVENTS_DIR, "keep.txt"]


def test_a_failed_write_leaves_no_part_file_and_the_old_lake_intact(tmp_path):
    generate_lake(small(events=3_000, days=2), str(tmp_path), progress=False)
    before = {p.day: p.files for p in list_partitions(str(tmp_path))}
    fs, root = fsspec.core.url_to_fs(str(tmp_path))
    first_chunk = next(iter_day_tables(small()))[1]

    def crashing():
        yield first_chunk
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"), staged_events(fs, root) as staging:
        write_day(fs, staging, SMALL_START, crashing(), schema=EVENT_SCHEMA)
    # the half-written day never got its final name, and the swap never happened
    assert {p.day: p.files for p in list_partitions(str(tmp_path))} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [EVENTS_DIR]
    assert not list(tmp_path.rglob(".*.tmp"))


def test_write_day_rejects_a_foreign_schema(tmp_path):
    fs, root = fsspec.core.url_to_fs(str(tmp_path))
    bad = pa.table({"event_id": pa.array([1], pa.int64())})
    with pytest.raises(LakeError, match="schema"):
        write_day(fs, root, SMALL_START, [bad], schema=EVENT_SCHEMA)
    assert not list(tmp_path.rglob("*.parquet"))


def test_list_partitions_of_a_missing_lake_says_how_to_create_it(tmp_path):
    with pytest.raises(LakeError, match="kubeloop data generate"):
        list_partitions(str(tmp_path / "nowhere"))


# --- the click model -----------------------------------------------------------------


def test_base_ctr_and_clicks_follow_true_ctr():
    df = frame()
    p = df["true_ctr"].mean()
    assert 0.03 <= p <= 0.06
    # the label is a Bernoulli draw of true_ctr: overall and within true_ctr quartiles
    se = np.sqrt(p * (1 - p) / len(df))
    assert abs(df["click"].mean() - p) < 4 * se
    for _, group in df.groupby(pd.qcut(df["true_ctr"], 4), observed=True):
        q = group["true_ctr"].mean()
        assert abs(group["click"].mean() - q) < 4 * np.sqrt(q * (1 - q) / len(group))


def test_oracle_function_reproduces_true_ctr():
    table = lake_table()
    population = build_population(small())
    np.testing.assert_array_equal(
        true_click_probability(table, population, BASELINE_CLICK_MODEL),
        table["true_ctr"].to_numpy(),
    )
    # the same through pandas and through plain dicts of arrays
    df = table.slice(0, 500).to_pandas()
    np.testing.assert_array_equal(true_click_probability(df, population), df["true_ctr"].to_numpy())


def test_oracle_function_rejects_unknown_values():
    df = lake_table().slice(0, 10).to_pandas()
    df.loc[0, "device"] = "fridge"
    with pytest.raises(ValueError, match="fridge"):
        true_click_probability(df, build_population(small()))


def test_baseline_inputs_are_stationary():
    # a drift detector must see nothing on baseline: compare the first and the last day
    df = frame()
    first, last = df[df.day_index == 0], df[df.day_index == SMALL["days"] - 1]
    for column in (
        "device",
        "user_country",
        "user_segment",
        "ad_category",
        "hour",
        "slot_position",
    ):
        assert chi2_pvalue(first[column], last[column]) > 1e-3, column
    # creatives refresh on a 90-day cycle: the mean age does not grow a day per day (it
    # would be +5 days here); a finite set of popular ads still moves it a little
    age = df.groupby("day_index")["ad_creative_age_days"].mean()
    assert abs(age.iloc[-1] - age.iloc[0]) < 3, age
    assert df["ad_creative_age_days"].max() < 90


def test_true_ctr_depends_on_observable_features():
    df = frame()
    # position bias and the segment x category interaction are visible in the oracle
    by_slot = df.groupby("slot_position")["true_ctr"].mean()
    assert by_slot.is_monotonic_decreasing
    by_pair = df.groupby(["user_segment", "ad_category"])["true_ctr"].mean()
    assert by_pair.max() > 3 * by_pair.min()


# --- scenarios -----------------------------------------------------------------------


def test_registry_config_and_cli_agree_on_scenario_names():
    names = {"baseline", "covariate_shift", "concept_drift", "new_ads"}
    declared = set(USE_CASE.synthetic.scenarios)
    assert set(SCENARIOS) == set(get_args(ScenarioName)) == declared == names
    assert all(SCENARIOS[name].name == name for name in names)


@pytest.mark.parametrize("scenario", ["covariate_shift", "concept_drift", "new_ads"])
def test_days_before_the_change_equal_baseline(scenario):
    cfg = small(scenario=scenario)
    changed = list(iter_day_tables(cfg))
    base = list(iter_day_tables(small()))
    for (day, t), (base_day, base_t) in zip(changed, base):
        assert day == base_day
        if day < cfg.day_dates()[cfg.change_day]:
            assert t.equals(base_t)
        else:
            assert not t.equals(base_t)


def test_covariate_shift_changes_device_and_country_but_not_the_click_model():
    base, shifted = frame(), frame("covariate_shift")
    after = SMALL["change_day"]
    b, s = base[base.day_index >= after], shifted[shifted.day_index >= after]
    assert chi2_pvalue(b["device"], s["device"]) < 1e-6
    assert chi2_pvalue(b["user_country"], s["user_country"]) < 1e-6
    assert s["device"].eq("mobile").mean() > b["device"].eq("mobile").mean() + 0.1
    assert s["user_country"].eq("IN").mean() > 2 * b["user_country"].eq("IN").mean()
    # P(click | features) is the baseline one on every day
    population = build_population(small(scenario="covariate_shift"))
    np.testing.assert_array_equal(
        true_click_probability(lake_table("covariate_shift"), population, BASELINE_CLICK_MODEL),
        shifted["true_ctr"].to_numpy(),
    )


def test_concept_drift_changes_labels_only():
    base, drift = lake_table(), lake_table("concept_drift")
    assert drift.select(INPUT_COLUMNS).equals(base.select(INPUT_COLUMNS))
    df_base, df_drift = frame(), frame("concept_drift")
    after = df_drift.day_index.to_numpy() >= SMALL["change_day"]
    p_base, p_drift = df_base["true_ctr"].to_numpy(), df_drift["true_ctr"].to_numpy()
    assert np.array_equal(p_base[~after], p_drift[~after])
    assert (p_base[after] != p_drift[after]).mean() > 0.5
    cfg = small(scenario="concept_drift")
    drifted = click_model_on(cfg, cfg.change_day)
    assert drifted != BASELINE_CLICK_MODEL
    np.testing.assert_array_equal(
        true_click_probability(drift.filter(pa.array(after)), build_population(cfg), drifted),
        p_drift[after],
    )
    # the change is big enough to matter: the CTR ranking of segment x category moves
    pairs_base = df_base[after].groupby(["user_segment", "ad_category"])["true_ctr"].mean()
    pairs_drift = df_drift[after].groupby(["user_segment", "ad_category"])["true_ctr"].mean()
    assert pairs_base.corr(pairs_drift, method="spearman") < 0.5


def test_new_ads_take_a_large_share_from_the_change_day_only():
    df = frame("new_ads")
    new = df["ad_id"] >= SMALL["ads"]
    assert df.loc[new, "ad_id"].max() < SMALL["ads"] + SMALL["new_ads"]
    assert not new[df.day_index < SMALL["change_day"]].any()
    share = new[df.day_index >= SMALL["change_day"]].mean()
    assert 0.35 < share < 0.45
    assert df.loc[new, "ad_id"].nunique() > SMALL["new_ads"] // 2
    # fresh creatives: age counts from the change day's midnight
    ages = df.loc[new, "ad_creative_age_days"]
    assert ages.min() >= 0 and ages.max() < SMALL["days"] - SMALL["change_day"]
    first_day = df.day_index == SMALL["change_day"]
    assert df.loc[new & first_day, "ad_creative_age_days"].max() < 1
    assert not (frame()["ad_id"] >= SMALL["ads"]).any()


def test_new_ads_leave_users_and_context_unchanged():
    base, wave = frame(), frame("new_ads")
    after = SMALL["change_day"]
    for column in ("device", "user_country", "hour"):
        assert (
            chi2_pvalue(
                base.loc[base.day_index >= after, column], wave.loc[wave.day_index >= after, column]
            )
            > 0.01
        )
    # stronger than "not significantly different": the user and context streams are untouched
    same = ["event_id", "event_timestamp", "user_id", "user_segment", "user_country",
            "user_device_pref", "hour", "weekday", "device", "slot_position"]  # fmt: skip
    assert lake_table("new_ads").select(same).equals(lake_table().select(same))
    np.testing.assert_array_equal(
        true_click_probability(lake_table("new_ads"), build_population(small(scenario="new_ads"))),
        wave["true_ctr"].to_numpy(),
    )


# --- command line --------------------------------------------------------------------


def test_cli_generate_and_describe(tmp_path):
    runner = CliRunner()
    lake = str(tmp_path / "lake")
    result = runner.invoke(
        data_cli.app,
        ["generate", "--lake", lake, "--events", "3000", "--days", "3", "--scenario", "new_ads",
         "--change-day", "1", "--users", "300", "--ads", "50", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "partitions" in result.output and "3,000" in result.output
    result = runner.invoke(data_cli.app, ["describe", "--lake", lake])
    assert result.exit_code == 0, result.output
    for day in small(days=3).day_dates():
        assert day.isoformat() in result.output


def test_cli_reports_bad_options_by_name(tmp_path):
    result = CliRunner().invoke(
        data_cli.app, ["generate", "--lake", str(tmp_path), "--users", "0", "--no-progress"]
    )
    assert result.exit_code != 0
    assert "--users" in result.output
