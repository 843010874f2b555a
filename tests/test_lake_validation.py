"""A bad lake is refused with a message naming the file, the column and the fix, and
nothing is written."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubeloop.data.validate import validate_lake
from kubeloop.errors import LakeError
from kubeloop.features.build import FeatureBuildConfig, build_features
from usecases.ctr.schema import AD_FEATURES_FILE, EVENT_SCHEMA, USER_FEATURES_FILE

UTC = dt.UTC
DAYS = ["2024-03-01", "2024-03-02"]
CONFIG = FeatureBuildConfig(threads=1, memory_limit="256MB")


def events_table(day: str, n: int = 6) -> pa.Table:
    """`n` events of one day with EVENT_SCHEMA."""
    start = dt.datetime.fromisoformat(day).replace(tzinfo=UTC)
    columns = {
        "event_id": list(range(n)),
        "event_timestamp": [start + dt.timedelta(minutes=37 * i) for i in range(n)],
        "user_id": [i % 3 for i in range(n)],
        "ad_id": [i % 2 for i in range(n)],
        "user_segment": ["s"] * n,
        "user_country": ["fr"] * n,
        "user_device_pref": ["mobile"] * n,
        "advertiser_id": [1] * n,
        "ad_category": ["shoes"] * n,
        "ad_creative_age_days": [2.0] * n,
        "hour": [0] * n,
        "weekday": [0] * n,
        "device": ["mobile"] * n,
        "slot_position": [1] * n,
        "click": [i % 2 for i in range(n)],
        "true_ctr": [0.1] * n,
    }
    return pa.table(columns, schema=EVENT_SCHEMA)


def part(root: Path, day: str) -> Path:
    return root / "events" / f"day={day}" / "part-00000.parquet"


def write_good_lake(root: Path) -> Path:
    for day in DAYS:
        part(root, day).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(events_table(day), part(root, day))
    return root


def test_good_lake_manifest(tmp_path: Path) -> None:
    manifest = validate_lake(str(write_good_lake(tmp_path / "lake")))
    assert [p.day.isoformat() for p in manifest.partitions] == DAYS
    assert manifest.rows == 12
    assert manifest.files == [str(part(tmp_path / "lake", d)) for d in DAYS]


def test_hidden_and_non_parquet_files_are_skipped(tmp_path: Path) -> None:
    root = write_good_lake(tmp_path / "lake")
    (part(root, DAYS[0]).parent / "_SUCCESS").write_text("")
    (part(root, DAYS[0]).parent / "part-00001.parquet.tmp").write_bytes(b"half")
    assert validate_lake(str(root)).rows == 12


# Each case breaks a good lake and says what the message must name.
def missing_root(root: Path) -> tuple[str, str | None]:
    return str(root / "nowhere"), None


def missing_events_dir(root: Path) -> tuple[str, str | None]:
    (root / "events").rename(root / "evts")
    return str(root / "events"), None


def empty_day_dir(root: Path) -> tuple[str, str | None]:
    part(root, DAYS[1]).unlink()
    return str(part(root, DAYS[1]).parent), None


def zero_row_day(root: Path) -> tuple[str, str | None]:
    pq.write_table(events_table(DAYS[1]).slice(0, 0), part(root, DAYS[1]))
    return str(part(root, DAYS[1])), None


def corrupt_file(root: Path) -> tuple[str, str | None]:
    data = part(root, DAYS[1]).read_bytes()
    part(root, DAYS[1]).write_bytes(data[: len(data) // 2] + b"garbage")
    return str(part(root, DAYS[1])), None


def missing_column(root: Path) -> tuple[str, str | None]:
    pq.write_table(events_table(DAYS[1]).drop_columns(["ad_category"]), part(root, DAYS[1]))
    return str(part(root, DAYS[1])), "ad_category"


def mistyped_column(root: Path) -> tuple[str, str | None]:
    table = events_table(DAYS[0])
    index = table.schema.get_field_index("user_id")
    table = table.set_column(index, "user_id", table["user_id"].cast(pa.string()))
    pq.write_table(table, part(root, DAYS[0]))
    return str(part(root, DAYS[0])), "user_id"


def naive_timestamp(root: Path) -> tuple[str, str | None]:
    table = events_table(DAYS[0])
    index = table.schema.get_field_index("event_timestamp")
    naive = table["event_timestamp"].cast(pa.timestamp("us"))
    pq.write_table(table.set_column(index, "event_timestamp", naive), part(root, DAYS[0]))
    return str(part(root, DAYS[0])), "event_timestamp"


def null_key(root: Path) -> tuple[str, str | None]:
    table = events_table(DAYS[0])
    index = table.schema.get_field_index("ad_id")
    table = table.set_column(index, "ad_id", pa.array([None, 1, 0, 1, 0, 1], pa.int64()))
    pq.write_table(table, part(root, DAYS[0]))
    return str(part(root, DAYS[0])), "ad_id"


CASES = [
    missing_root,
    missing_events_dir,
    empty_day_dir,
    zero_row_day,
    corrupt_file,
    missing_column,
    mistyped_column,
    naive_timestamp,
    null_key,
]


@pytest.mark.parametrize("breakage", CASES, ids=[c.__name__ for c in CASES])
def test_bad_lake_is_named_and_nothing_is_written(tmp_path: Path, breakage) -> None:
    root = write_good_lake(tmp_path / "lake")
    out = tmp_path / "features"
    build_features(str(root), out, CONFIG, progress=False)
    before = {name: (out / name).read_bytes() for name in (USER_FEATURES_FILE, AD_FEATURES_FILE)}

    named_path, column = breakage(root)
    lake = named_path if breakage is missing_root else str(root)
    with pytest.raises(LakeError) as caught:
        validate_lake(lake)
    message = str(caught.value)
    assert named_path in message
    assert "\n" not in message
    if column is not None:
        assert repr(column) in message and caught.value.column == column
    if breakage in (missing_column, mistyped_column, naive_timestamp):
        assert "expected" in message
    if breakage in (missing_root, missing_events_dir):
        assert "kubeloop data generate --lake" in message

    with pytest.raises(LakeError):
        build_features(lake, out, CONFIG, progress=False)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".features.")] == []


def test_mistyped_column_message_states_both_types(tmp_path: Path) -> None:
    root = write_good_lake(tmp_path / "lake")
    mistyped_column(root)
    with pytest.raises(LakeError, match=r"has type string, expected int64"):
        validate_lake(str(root))


def test_cli_reports_one_line_and_fails(tmp_path: Path) -> None:
    root = write_good_lake(tmp_path / "lake")
    path, column = missing_column(root)
    kubeloop = Path(sys.executable).parent / "kubeloop"
    done = subprocess.run(
        [
            str(kubeloop),
            "features",
            "build",
            "--lake",
            str(root),
            "--out",
            str(tmp_path / "f"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and path in lines[0] and repr(column) in lines[0]
    assert not (tmp_path / "f").exists()


def test_cli_builds_and_prints_a_summary(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kubeloop.cli.main import app

    root = write_good_lake(tmp_path / "lake")
    out = tmp_path / "f"
    result = CliRunner().invoke(
        app,
        [
            "features",
            "build",
            "--lake",
            str(root),
            "--out",
            str(out),
            "--no-progress",
            "--ctr-prior",
            "0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "events read" in result.output and "12" in result.output
    assert (out / USER_FEATURES_FILE).exists() and (out / AD_FEATURES_FILE).exists()
