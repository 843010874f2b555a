"""Garbage in the middle of a data page of a real lake file: every reader of the lake (the
validation, `kubeloop data validate`, the feature build through DuckDB, the training
set's reads) stops with the one LakeError naming the file and the column, on one line,
and nothing half-written is left in its output."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from kubeloop.data.validate import validate_lake
from kubeloop.errors import LakeError
from kubeloop.features.build import FeatureBuildConfig, build_features
from kubeloop.features.training_set import build_training_set
from usecases.ctr.generator import GeneratorConfig, generate_lake
from usecases.ctr.schema import AD_FEATURES_FILE, USER_FEATURES_FILE

KUBELOOP = str(Path(sys.executable).with_name("kubeloop"))
CONFIG = FeatureBuildConfig(threads=1, memory_limit="256MB")
SMALL = GeneratorConfig(events=3_000, days=3, users=200, ads=40, change_day=2)
# A fixed pattern, not random bytes, so that every run breaks the page the same way.
GARBAGE = b"\xff\x00\xa5\x5a" * 16


@pytest.fixture(scope="module")
def good_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("good") / "lake"
    generate_lake(SMALL, str(root), progress=False)
    return root


def copy_lake(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def lake_file(root: Path, index: int = 1) -> Path:
    return sorted((root / "events").glob("day=*/part-*.parquet"))[index]


def corrupt_data_page(path: Path, column: str) -> None:
    """Overwrite bytes in the middle of `column`'s (first) data page, after any dictionary
    page: the footer stays intact, so only reading the values can find it."""
    meta = pq.ParquetFile(path).metadata
    index = [meta.schema.column(i).path for i in range(meta.num_columns)].index(column)
    chunk = meta.row_group(0).column(index)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    end = start + chunk.total_compressed_size
    middle = (chunk.data_page_offset + end) // 2
    assert chunk.data_page_offset < middle - len(GARBAGE) // 2 and middle + len(GARBAGE) < end
    with open(path, "r+b") as fh:
        fh.seek(middle - len(GARBAGE) // 2)
        fh.write(GARBAGE)


def assert_names(exc: LakeError, path: Path, column: str) -> None:
    message = str(exc)
    assert str(path) in message and exc.path == str(path)
    assert exc.column == column and repr(column) in message
    assert "\n" not in message and "kubeloop data generate --lake" in message


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [KUBELOOP, *args], check=False, capture_output=True, text=True, timeout=120, env=env
    )


def assert_one_line_error(done: subprocess.CompletedProcess, path: Path, column: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and str(path) in lines[0] and repr(column) in lines[0]


# A dictionary-encoded key every reader reads, and a plain float column whose corruption
# decompresses fine: only the page CRC that the lake writer now writes can catch it.
@pytest.mark.parametrize("column", ["user_id", "true_ctr"])
def test_validation_names_the_file_and_column_of_a_corrupt_page(
    good_lake: Path, tmp_path: Path, column: str
) -> None:
    root = copy_lake(good_lake, tmp_path / "lake")
    bad = lake_file(root)
    validate_lake(str(root))  # the copy is good before the damage
    corrupt_data_page(bad, column)

    with pytest.raises(LakeError) as caught:
        validate_lake(str(root))
    assert_names(caught.value, bad, column)
    assert "is corrupt" in str(caught.value)
    # Footers alone cannot see it: the pages check is what finds it.
    assert validate_lake(str(root), pages=False).rows == SMALL.events


def test_cli_validate_and_features_build_print_one_line_and_write_nothing(
    good_lake: Path, tmp_path: Path
) -> None:
    root = copy_lake(good_lake, tmp_path / "lake")
    out = tmp_path / "features"
    build_features(str(root), out, CONFIG, progress=False)
    before = {name: (out / name).read_bytes() for name in (USER_FEATURES_FILE, AD_FEATURES_FILE)}
    bad = lake_file(root)
    corrupt_data_page(bad, "user_id")

    assert_one_line_error(run_cli("data", "validate", "--lake", str(root)), bad, "user_id")
    done = run_cli(
        "features", "build", "--lake", str(root), "--out", str(out), "--no-progress",
        "--threads", "1",
    )  # fmt: skip
    assert_one_line_error(done, bad, "user_id")
    # The previous tables are untouched and no staging directory is left beside them.
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "lake"]


def test_duckdb_read_failure_is_the_same_error(
    good_lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With validation reduced to footers, DuckDB itself meets the bad page: its error
    (which names no column, sometimes no file) becomes the LakeError naming both."""
    from kubeloop.features import build

    root = copy_lake(good_lake, tmp_path / "lake")
    bad = lake_file(root)
    corrupt_data_page(bad, "event_id")
    monkeypatch.setattr(build, "validate_lake", functools.partial(validate_lake, pages=False))
    out = tmp_path / "features"

    with pytest.raises(LakeError) as caught:
        build_features(str(root), out, CONFIG, progress=False)
    assert_names(caught.value, bad, "event_id")
    assert "duckdb" in type(caught.value.__cause__).__module__
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lake"]


def test_training_set_read_names_the_file_and_writes_nothing(
    good_lake: Path, tmp_path: Path
) -> None:
    root = copy_lake(good_lake, tmp_path / "lake")
    bad = lake_file(root, 0)
    corrupt_data_page(bad, "user_id")
    out = tmp_path / "train" / "training_set.parquet"
    # The first day is read before the store is asked anything but its engine.
    store = SimpleNamespace(config=SimpleNamespace(offline_store=None))

    with pytest.raises(LakeError) as caught:
        build_training_set(store, str(root), out, progress=False)
    assert_names(caught.value, bad, "user_id")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_read_failures_that_no_file_explains_are_not_blamed_on_the_lake(
    good_lake: Path,
) -> None:
    from kubeloop.data.reads import lake_reads

    files = [str(p) for p in sorted((good_lake / "events").glob("day=*/part-*.parquet"))]
    with pytest.raises(OSError, match="disk full"), lake_reads(files, str(good_lake)):
        raise OSError("disk full")
