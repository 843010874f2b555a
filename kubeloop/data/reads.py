"""Every read of the lake's Parquet files ends in the same error when a file is unreadable.

Readers differ in what they say about a corrupt file: pyarrow raises `OSError: Corrupt
snappy compressed data.`, DuckDB `Invalid Input Error: Failed to read file ...` or a bare
`Parquet file is likely corrupted`, and neither names the column (pyarrow not even the
file). So a reader wraps its work in :func:`lake_reads`; when the read fails, the files it
was reading are decoded again one column and one row group at a time, and the first one
that fails becomes a :class:`kubeloop.errors.LakeError` naming the file, the column, the
row group and the fix. A failure that no file explains (disk full while spilling, a bug in
a query) is not the lake's fault and is raised as it was.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kubeloop.errors import LakeError

# How a lake file is opened for reading through a Python file object: page CRCs checked,
# and no pre-buffering. With pre-buffering or threaded reads, pyarrow 18 can abort the
# whole process at exit ("terminate called without an active exception") after a read
# of a corrupt page from a Python file object failed; so the checks below also read
# with use_threads=False.
VERIFYING_OPEN = {"page_checksum_verification": True, "pre_buffer": False}


def one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def regenerate_hint(lake_root: str) -> str:
    """The fix for a lake that cannot be used as it is."""
    return f"regenerate the lake with `kubeloop data generate --lake {lake_root}`"


def read_error_types() -> tuple[type[BaseException], ...]:
    """What a Parquet reader raises for a file it cannot decode.

    Arrow's errors (ArrowInvalid is also a ValueError, ArrowIOError an OSError) and, when
    DuckDB has been imported by the reader, DuckDB's base error. DuckDB is looked up, not
    imported, so readers that do not use it do not pay for it.
    """
    types: list[type[BaseException]] = [pa.ArrowException, OSError, ValueError]
    duckdb = sys.modules.get("duckdb")
    if duckdb is not None:
        types.append(duckdb.Error)
    return tuple(types)


def _failing_column(parquet: pq.ParquetFile, row_group: int) -> str | None:
    """The first column of `row_group` that cannot be decoded on its own."""
    for name in parquet.schema_arrow.names:
        try:
            parquet.read_row_group(row_group, columns=[name], use_threads=False)
        except read_error_types():
            return name
    return None


def check_pages(parquet: pq.ParquetFile, shown: str, lake_root: str) -> None:
    """Decode every page of an open Parquet file; raise LakeError naming the first bad one.

    Open the file with ``**VERIFYING_OPEN``: pages written with a CRC
    (the lake's writer writes them) then fail on any flipped byte, not only on bytes that
    happen to break decompression or decoding.
    """
    for row_group in range(parquet.num_row_groups):
        try:
            parquet.read_row_group(row_group, use_threads=False)
        except read_error_types() as exc:
            column = _failing_column(parquet, row_group)
            raise LakeError(
                f"is corrupt: row group {row_group} cannot be decoded ({one_line(exc)}); "
                f"delete the file and {regenerate_hint(lake_root)}",
                path=shown,
                column=column,
            ) from exc


def check_file(path: str, lake_root: str) -> None:
    """Decode every page of one lake file (a local path or a URL); raise LakeError if any
    page, or the footer, cannot be read."""
    from fsspec.core import url_to_fs

    fs, inner = url_to_fs(path)
    try:
        with fs.open(inner, "rb") as fh:
            parquet = pq.ParquetFile(fh, **VERIFYING_OPEN)
            check_pages(parquet, path, lake_root)
    except LakeError:
        raise
    except read_error_types() as exc:
        raise LakeError(
            f"is not a readable Parquet file ({one_line(exc)}); delete it and "
            f"{regenerate_hint(lake_root)}",
            path=path,
        ) from exc


def locate_corruption(files: Iterable[str], lake_root: str) -> LakeError | None:
    """The LakeError of the first file in `files` that cannot be decoded, or None."""
    for path in files:
        try:
            check_file(path, lake_root)
        except LakeError as exc:
            return exc
    return None


@contextmanager
def lake_reads(files: Iterable[str], lake_root: str) -> Iterator[None]:
    """Run a read of `files` (local paths or URLs of lake Parquet files) so that a failure
    caused by an unreadable file is raised as the LakeError naming it (see the module
    docstring); any other failure is raised unchanged.

    `files` is only looked at after a failure, so it may be a lazily listed iterable.
    """
    try:
        yield
    except LakeError:
        raise
    except read_error_types() as exc:
        found = locate_corruption(files, lake_root)
        if found is None:
            raise
        raise found from exc


def external_path(fs: Any, path: str) -> str:
    """`path` of fsspec filesystem `fs` as lake_reads takes it: a plain path locally, a
    URL with its protocol otherwise."""
    from kubeloop.data.lake import _external

    return _external(fs, path)
