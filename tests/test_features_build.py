"""Point-in-time correctness, output contract, determinism and atomicity of the feature build."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubeloop.features import build as build_mod
from kubeloop.features.build import FeatureBuildConfig, build_features
from usecases.ctr.schema import (
    AD_FEATURE_SCHEMA,
    AD_FEATURES_FILE,
    AD_STATE_VIEW,
    EVENT_SCHEMA,
    USER_FEATURE_SCHEMA,
    USER_FEATURES_FILE,
    USER_STATE_VIEW,
)

UTC = dt.UTC
D1 = dt.datetime(2024, 3, 1, tzinfo=UTC)
D2 = D1 + dt.timedelta(days=1)
H = dt.timedelta(hours=1)
M = dt.timedelta(minutes=1)

CONFIG = FeatureBuildConfig(ctr_prior=0.04, prior_strength=20.0, threads=1, memory_limit="256MB")


def write_lake(root: Path, events: list[dict]) -> Path:
    """Write `events` into root/events/day=YYYY-MM-DD/part-00000.parquet with EVENT_SCHEMA.

    Each event needs user_id, ad_id, ts and click; every other column gets a value derived
    from the ids so that static attributes stay static per entity.
    """
    rows = []
    for i, e in enumerate(sorted(events, key=lambda e: e["ts"])):
        ts = e["ts"]
        rows.append(
            {
                "event_id": e.get("event_id", i),
                "event_timestamp": ts,
                "user_id": e["user_id"],
                "ad_id": e["ad_id"],
                "user_segment": f"seg{e['user_id'] % 3}",
                "user_country": f"c{e['user_id'] % 2}",
                "user_device_pref": "mobile" if e["user_id"] % 2 else "desktop",
                "advertiser_id": 100 + e["ad_id"] % 4,
                "ad_category": f"cat{e['ad_id'] % 5}",
                "ad_creative_age_days": e.get(
                    "age", 1.0 + e["ad_id"] + (ts - D1).total_seconds() / 86400
                ),
                "hour": ts.hour,
                "weekday": ts.weekday(),
                "device": "mobile",
                "slot_position": 1,
                "click": e["click"],
                "true_ctr": 0.05,
            }
        )
    frame = pd.DataFrame(rows)
    frame["day"] = frame["event_timestamp"].map(lambda t: t.date().isoformat())
    for day, part in frame.groupby("day"):
        table = pa.Table.from_pandas(
            part.drop(columns="day"), schema=EVENT_SCHEMA, preserve_index=False
        )
        path = root / "events" / f"day={day}"
        path.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path / "part-00000.parquet")
    return root


def read_rows(path: Path, key: str, entity: int) -> list[dict]:
    frame = pq.read_table(path).to_pandas()
    return frame[frame[key] == entity].sort_values("feature_timestamp").to_dict("records")


def ctr(clicks: int, impressions: int) -> float:
    return (clicks + 20.0 * 0.04) / (impressions + 20.0)


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory) -> Path:
    """Features of a lake small enough to work out every expected value by hand."""
    root = tmp_path_factory.mktemp("hand")
    events = [
        # user 1 / ad 7: the example of the design brief
        {"user_id": 1, "ad_id": 7, "ts": D1 + 10 * H + 15 * M, "click": 1, "age": 3.0},
        {"user_id": 1, "ad_id": 7, "ts": D1 + 10 * H + 40 * M, "click": 0, "age": 3.5},
        {"user_id": 1, "ad_id": 7, "ts": D1 + 11 * H + 5 * M, "click": 1, "age": 4.0},
        {"user_id": 1, "ad_id": 7, "ts": D2 + 10 * H + 30 * M, "click": 0, "age": 5.0},
        # user 3 / ad 8: events exactly on hour boundaries and a microsecond before one
        {"user_id": 3, "ad_id": 8, "ts": D1 + 11 * H, "click": 1},
        {"user_id": 3, "ad_id": 8, "ts": D2 + 11 * H - dt.timedelta(microseconds=1), "click": 0},
        {"user_id": 3, "ad_id": 8, "ts": D2 + 11 * H, "click": 1},
    ]
    write_lake(root / "lake", events)
    out = root / "features"
    build_features(str(root / "lake"), out, CONFIG, progress=False)
    return out


def test_user_rows_match_hand_computed_values(hand_built: Path) -> None:
    rows = read_rows(hand_built / USER_FEATURES_FILE, "user_id", 1)
    # Active hours' rows, plus day2 12:00, when the 11:05 impression leaves the 1-day window
    # (the 7-day edges fall after the lake's last hour).
    stamps = [D1 + 11 * H, D1 + 12 * H, D2 + 11 * H, D2 + 12 * H]
    assert [r["feature_timestamp"] for r in rows] == stamps

    first, second, third, fourth = rows
    # T = day1 11:00 sees 10:15 (click) and 10:40
    assert (first["user_impressions_1d"], first["user_clicks_1d"]) == (2, 1)
    assert (first["user_impressions_7d"], first["user_clicks_7d"]) == (2, 1)
    assert first["user_ctr_1d"] == pytest.approx(ctr(1, 2))
    # T = day1 12:00 adds 11:05 (click)
    assert (second["user_impressions_1d"], second["user_clicks_1d"]) == (3, 2)
    assert second["user_ctr_7d"] == pytest.approx(ctr(2, 3))
    # T = day2 11:00: the 1-day window [day1 11:00, day2 11:00) drops 10:15 and 10:40
    assert (third["user_impressions_1d"], third["user_clicks_1d"]) == (2, 1)
    assert (third["user_impressions_7d"], third["user_clicks_7d"]) == (4, 2)
    assert third["user_ctr_1d"] == pytest.approx(ctr(1, 2))
    assert third["user_ctr_7d"] == pytest.approx(ctr(2, 4))
    # T = day2 12:00 (no impression that hour): the 1-day window holds day2 10:30 only
    assert (fourth["user_impressions_1d"], fourth["user_clicks_1d"]) == (1, 0)
    assert (fourth["user_impressions_7d"], fourth["user_clicks_7d"]) == (4, 2)
    assert {(r["user_segment"], r["user_country"], r["user_device_pref"]) for r in rows} == {
        ("seg1", "c1", "mobile")
    }


def test_window_edges_are_half_open(hand_built: Path) -> None:
    rows = read_rows(hand_built / USER_FEATURES_FILE, "user_id", 3)
    by_ts = {r["feature_timestamp"]: r for r in rows}
    assert sorted(by_ts) == [D1 + 12 * H, D2 + 11 * H, D2 + 12 * H]
    # T = day2 11:00 includes the event at exactly T-24h and the one 1 µs before T,
    # and not the one at exactly T
    at_11 = by_ts[D2 + 11 * H]
    assert (at_11["user_impressions_1d"], at_11["user_clicks_1d"]) == (2, 1)
    # T = day2 12:00: day1 11:00 is now older than 24h
    at_12 = by_ts[D2 + 12 * H]
    assert (at_12["user_impressions_1d"], at_12["user_clicks_1d"]) == (2, 1)
    assert (at_12["user_impressions_7d"], at_12["user_clicks_7d"]) == (3, 2)


def test_ad_rows_match_hand_computed_values(hand_built: Path) -> None:
    rows = read_rows(hand_built / AD_FEATURES_FILE, "ad_id", 7)
    stamps = [D1 + 11 * H, D1 + 12 * H, D2 + 11 * H, D2 + 12 * H]
    assert [r["feature_timestamp"] for r in rows] == stamps
    assert [r["ad_impressions_1d"] for r in rows] == [2, 3, 2, 1]
    assert [r["ad_clicks_7d"] for r in rows] == [1, 2, 2, 2]
    # creative age at T = age on the last event before T + hours since it / 24
    ages = [r["ad_creative_age_days"] for r in rows]
    expected = [3.5 + (20 / 60) / 24, 4.0 + (55 / 60) / 24, 5.0 + 0.5 / 24, 5.0 + 1.5 / 24]
    assert ages == pytest.approx(expected)
    assert {(r["advertiser_id"], r["ad_category"]) for r in rows} == {(103, "cat2")}


def test_output_schemas_are_exactly_the_contract(hand_built: Path) -> None:
    assert pq.read_schema(hand_built / USER_FEATURES_FILE).remove_metadata() == USER_FEATURE_SCHEMA
    assert pq.read_schema(hand_built / AD_FEATURES_FILE).remove_metadata() == AD_FEATURE_SCHEMA
    assert sorted(p.name for p in hand_built.iterdir()) == sorted(
        [
            USER_FEATURES_FILE,
            AD_FEATURES_FILE,
            f"{USER_STATE_VIEW}.parquet",
            f"{AD_STATE_VIEW}.parquet",
        ]
    )


def test_state_rows_are_each_impression_instant(hand_built: Path) -> None:
    """The request-time recency state: one row per (user, instant), stamped with it."""
    rows = read_rows(hand_built / f"{USER_STATE_VIEW}.parquet", "user_id", 3)
    instants = [D1 + 11 * H, D2 + 11 * H - dt.timedelta(microseconds=1), D2 + 11 * H]
    assert [r["feature_timestamp"] for r in rows] == instants
    assert [r["user_state_last_us"] for r in rows] == [int(t.timestamp() * 1e6) for t in instants]


def random_events(seed: int, n: int = 1500) -> list[dict]:
    rng = np.random.default_rng(seed)
    # 10 days of microsecond timestamps, a quarter of them snapped to a whole hour so
    # the boundaries are exercised
    offsets = rng.integers(0, 10 * 86_400_000_000, n)
    snap = rng.random(n) < 0.25
    offsets[snap] = offsets[snap] // 3_600_000_000 * 3_600_000_000
    return [
        {
            "user_id": int(rng.integers(0, 12)),
            "ad_id": int(rng.integers(0, 8)),
            "ts": D1 + dt.timedelta(microseconds=int(o)),
            "click": int(rng.random() < 0.2),
        }
        for o in offsets
    ]


@pytest.fixture(scope="module")
def random_lake(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("random")
    write_lake(root / "lake", random_events(seed=7))
    events = pq.read_table(root / "lake" / "events").to_pandas()
    return root, events


@pytest.mark.parametrize(
    "key,prefix,file", [("user_id", "user", USER_FEATURES_FILE), ("ad_id", "ad", AD_FEATURES_FILE)]
)
def test_rows_only_count_events_strictly_before_their_timestamp(
    random_lake, key, prefix, file
) -> None:
    root, events = random_lake
    out = root / "features"
    if not (out / file).exists():
        build_features(str(root / "lake"), out, CONFIG, progress=False)
    features = pq.read_table(out / file).to_pandas()

    # one row per (entity, hour with events), stamped at the end of that hour, and one
    # where a window drops that hour (24 h and 168 h later), up to the lake's last hour
    active = events["event_timestamp"].dt.floor("h")
    last = active.max() + pd.Timedelta(hours=1)
    expected_keys = {
        (k, t)
        for shift in (1, 25, 169)
        for k, t in zip(events[key], active + pd.Timedelta(hours=shift))
        if t <= last
    }
    assert set(zip(features[key], features["feature_timestamp"])) == expected_keys
    assert len(features) == len(expected_keys)

    by_entity = {k: g for k, g in events.groupby(key)}
    sample = features.sample(n=min(300, len(features)), random_state=0)
    for row in sample.itertuples(index=False):
        t = row.feature_timestamp
        mine = by_entity[getattr(row, key)]
        before = mine[mine["event_timestamp"] < t]
        day = before[before["event_timestamp"] >= t - pd.Timedelta(days=1)]
        week = before[before["event_timestamp"] >= t - pd.Timedelta(days=7)]
        assert getattr(row, f"{prefix}_impressions_1d") == len(day)
        assert getattr(row, f"{prefix}_clicks_1d") == day["click"].sum()
        assert getattr(row, f"{prefix}_impressions_7d") == len(week)
        assert getattr(row, f"{prefix}_clicks_7d") == week["click"].sum()
        assert getattr(row, f"{prefix}_ctr_7d") == pytest.approx(
            ctr(week["click"].sum(), len(week))
        )


def test_output_is_deterministic(random_lake) -> None:
    root, _ = random_lake
    first, second = root / "det1", root / "det2"
    build_features(str(root / "lake"), first, CONFIG, progress=False)
    build_features(
        str(root / "lake"), second, CONFIG.model_copy(update={"threads": 2}), progress=False
    )
    for name in (USER_FEATURES_FILE, AD_FEATURES_FILE):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_failure_mid_write_keeps_previous_tables(tmp_path: Path, monkeypatch) -> None:
    write_lake(tmp_path / "lake", random_events(seed=1, n=200))
    out = tmp_path / "features"
    build_features(str(tmp_path / "lake"), out, CONFIG, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}  # every table, state too

    write_lake(tmp_path / "lake", random_events(seed=2, n=300))  # new data, new tables
    real = build_mod._write_query

    def fail_on_ads(con, spec, params, path):
        if spec.join_key == "ad_id":
            path.write_bytes(b"half a file")
            raise OSError("disk full")
        return real(con, spec, params, path)

    monkeypatch.setattr(build_mod, "_write_query", fail_on_ads)
    with pytest.raises(OSError, match="disk full"):
        build_features(str(tmp_path / "lake"), out, CONFIG, progress=False)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)
    assert leftovers(out) == []


def test_failure_while_swapping_rolls_back(tmp_path: Path, monkeypatch) -> None:
    write_lake(tmp_path / "lake", random_events(seed=1, n=200))
    out = tmp_path / "features"
    build_features(str(tmp_path / "lake"), out, CONFIG, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}  # every table, state too

    write_lake(tmp_path / "lake", random_events(seed=2, n=300))
    real_replace = build_mod.os.replace
    calls = []

    def replace_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the first table has moved, the second fails
            raise OSError("device vanished")
        return real_replace(src, dst)

    monkeypatch.setattr(build_mod.os, "replace", replace_then_fail)
    with pytest.raises(OSError, match="device vanished"):
        build_features(str(tmp_path / "lake"), out, CONFIG, progress=False)
    monkeypatch.undo()
    assert {name: (out / name).read_bytes() for name in before} == before
    assert leftovers(out) == []


def test_reads_a_lake_through_an_fsspec_url(tmp_path: Path) -> None:
    import fsspec

    local = write_lake(tmp_path / "lake", random_events(seed=3, n=100))
    fs = fsspec.filesystem("memory")
    url_root = f"memory://kubeloop-test-{tmp_path.name}"
    try:
        for path in sorted((local / "events").rglob("*.parquet")):
            fs.pipe(f"{url_root}/{path.relative_to(local).as_posix()}", path.read_bytes())
        via_url = build_features(url_root, tmp_path / "url", CONFIG, progress=False)
        via_path = build_features(str(local), tmp_path / "path", CONFIG, progress=False)
    finally:
        fs.rm(url_root, recursive=True)
    assert via_url.model_dump(exclude={"seconds"}) == via_path.model_dump(exclude={"seconds"})
    assert via_url.events == 100
    for name in (USER_FEATURES_FILE, AD_FEATURES_FILE):
        assert (tmp_path / "url" / name).read_bytes() == (tmp_path / "path" / name).read_bytes()


def test_hour_buckets_are_utc_whatever_the_local_time_zone(tmp_path: Path, monkeypatch) -> None:
    import time

    # A half-hour offset would move every bucket edge if DuckDB truncated in local time.
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        write_lake(
            tmp_path / "lake", [{"user_id": 1, "ad_id": 1, "ts": D1 + 10 * H + 40 * M, "click": 0}]
        )
        build_features(str(tmp_path / "lake"), tmp_path / "f", CONFIG, progress=False)
    finally:
        monkeypatch.undo()
        time.tzset()
    table = pq.read_table(tmp_path / "f" / USER_FEATURES_FILE)
    assert table.schema.field("feature_timestamp").type == pa.timestamp("us", tz="UTC")
    assert table.column("feature_timestamp").to_pylist() == [D1 + 11 * H]
