"""Checks that a data lake can be read before any stage writes from it.

The layout and every Parquet footer are checked, then every data page is decoded (with
its CRC verified where the writer wrote one), so a corrupt page is found here rather than
half-way through a stage. Decoding is cheap next to what any stage does with the data:
about 0.1 s for the 600k-event demo lake; `pages=False` checks footers only. Every problem
is raised as a LakeError naming the file, the column where there is one, and what to do
about it (see kubeloop.data.reads for the same error from the readers themselves).
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
import re
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from kubeloop.data.reads import VERIFYING_OPEN, check_pages, one_line, regenerate_hint
from kubeloop.errors import LakeError
from kubeloop.usecase import EVENTS_DIR, PARTITION_KEY, EventSchema, UseCase, resolve_use_case

# Columns the feature build groups or counts by: a null there would silently create a
# phantom entity or under-count clicks, so the footer's null counts are checked for them.

_DAY_DIR = re.compile(rf"^{PARTITION_KEY}=(\d{{4}}-\d{{2}}-\d{{2}})$")
_UTC_NAMES = {"UTC", "Etc/UTC", "+00:00", "Z"}


class LakePartition(BaseModel):
    """One Parquet file of the lake: its day partition, where it is and how many rows it holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    day: dt.date
    path: str
    rows: int


class LakeManifest(BaseModel):
    """The validated files of a lake, in day order.

    `path` of each partition is what a reader opens: an absolute local path for a local
    lake, a full URL (with its protocol) otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lake_root: str
    local: bool
    partitions: list[LakePartition]

    @property
    def rows(self) -> int:
        """Events in the whole lake, as counted by the Parquet footers."""
        return sum(p.rows for p in self.partitions)

    @property
    def files(self) -> list[str]:
        """Every file of the lake, in day order."""
        return [p.path for p in self.partitions]

    @property
    def days(self) -> list[dt.date]:
        """The distinct days of the lake, oldest first."""
        return sorted({p.day for p in self.partitions})


def _fix_hint(lake_root: str) -> str:
    return regenerate_hint(lake_root)


def _same_type(expected: pa.DataType, found: pa.DataType) -> bool:
    """Whether `found` stores what `expected` means.

    Representation-only differences are accepted (large_string for string, a UTC alias for
    the time zone) because every reader downstream treats them alike; a different
    timestamp unit or a naive timestamp is not, since it changes what the values mean.
    """
    if expected == found:
        return True
    if pa.types.is_string(expected) and (
        pa.types.is_large_string(found) or pa.types.is_string_view(found)
    ):
        return True
    if pa.types.is_timestamp(expected) and pa.types.is_timestamp(found):
        return expected.unit == found.unit and found.tz in _UTC_NAMES and expected.tz in _UTC_NAMES
    return False


def _check_file(
    fs: Any, path: str, shown: str, lake_root: str, pages: bool, events: EventSchema
) -> int:
    """Validate one file against the event schema (and decode its pages); return its rows."""
    try:
        with fs.open(path, "rb") as fh:
            parquet = pq.ParquetFile(fh, **VERIFYING_OPEN)
            meta = parquet.metadata
            # schema_arrow restores what the writer meant (time zone, large types) from the
            # stored Arrow schema; the bare Parquet schema would lose it.
            schema = parquet.schema_arrow
            _check_footer(meta, schema, shown, lake_root, events)
            if pages:
                check_pages(parquet, shown, lake_root)
    except LakeError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise LakeError(
            f"is not a readable Parquet file ({one_line(exc)}); "
            f"delete it and {_fix_hint(lake_root)}",
            path=shown,
        ) from exc
    return meta.num_rows


def _check_footer(
    meta: Any, schema: pa.Schema, shown: str, lake_root: str, events: EventSchema
) -> None:
    """The footer's schema against the event schema, and the null counts of its key columns."""
    found = {field.name: field.type for field in schema}
    for field in events.columns:
        if field.name not in found:
            raise LakeError(
                f"is missing (expected type {field.type}, see the use case's event schema; "
                f"the file has {sorted(found)}); {_fix_hint(lake_root)}",
                path=shown,
                column=field.name,
            )
        if not _same_type(field.type, found[field.name]):
            raise LakeError(
                f"has type {found[field.name]}, expected {field.type} "
                f"(the use case's event schema); {_fix_hint(lake_root)}",
                path=shown,
                column=field.name,
            )

    # Parquet leaf columns are indexed apart from Arrow fields (nested extras would shift
    # them), so look the key columns up by their Parquet path.
    leaf = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    for name in events.non_null:
        index = leaf[name]
        for rg in range(meta.num_row_groups):
            stats = meta.row_group(rg).column(index).statistics
            if stats is not None and stats.has_null_count and stats.null_count > 0:
                raise LakeError(
                    f"has {stats.null_count} null values in row group {rg}; every event needs "
                    f"one; {_fix_hint(lake_root)}",
                    path=shown,
                    column=name,
                )


def validate_lake(
    lake_root: str, *, pages: bool = True, use_case: UseCase | str | None = None
) -> LakeManifest:
    """Check a lake's layout, every file's schema and (unless `pages` is False) every
    data page, and list its files.

    `lake_root` is a local path or any fsspec URL (``memory://``, ``s3://``, ...). The
    expected layout is ``<lake_root>/events/day=YYYY-MM-DD/*.parquet`` with exactly the
    columns of the use case's event schema in each file (`use_case`: a spec, a registered
    name, or None for the default; extra columns are
    ignored). Hidden files (``.x``, ``_x``) and files not ending in ``.parquet`` are
    skipped, so a writer's leftovers do not count as data.

    Raises :class:`kubeloop.errors.LakeError` naming the path (and column) for: a missing
    root or events directory, a directory that is not a day partition, a day without
    rows, an unreadable Parquet file or page (naming its column), a missing or mistyped
    column, or nulls in a key column.
    """
    from fsspec.core import url_to_fs
    from fsspec.implementations.local import LocalFileSystem

    events = resolve_use_case(use_case).events
    if "://" not in lake_root:
        lake_root = os.path.expanduser(lake_root)
    fs, root = url_to_fs(lake_root)
    local = isinstance(fs, LocalFileSystem)

    def shown(path: str) -> str:
        return path if local else fs.unstrip_protocol(path)

    events_dir = posixpath.join(root.rstrip("/"), EVENTS_DIR)
    for path in (root, events_dir):
        if not fs.isdir(path):
            raise LakeError(
                f"does not exist or is not a directory; create the lake with "
                f"`kubeloop data generate --lake {lake_root}`",
                path=shown(path),
            )

    partitions: list[LakePartition] = []
    day_dirs = sorted(fs.ls(events_dir, detail=True), key=lambda e: e["name"])
    for entry in day_dirs:
        name = posixpath.basename(entry["name"].rstrip("/"))
        if name.startswith((".", "_")):
            continue
        match = _DAY_DIR.match(name)
        day: dt.date | None = None
        if match and entry["type"] == "directory":
            try:
                day = dt.date.fromisoformat(match.group(1))
            except ValueError:
                day = None
        if day is None:
            raise LakeError(
                f"is not a day partition ({PARTITION_KEY}=YYYY-MM-DD directory); move it out "
                f"of {shown(events_dir)} or {_fix_hint(lake_root)}",
                path=shown(entry["name"]),
            )

        files = sorted(
            f["name"]
            for f in fs.ls(entry["name"], detail=True)
            if f["type"] == "file"
            and f["name"].endswith(".parquet")
            and not posixpath.basename(f["name"]).startswith((".", "_"))
        )
        if not files:
            raise LakeError(
                f"is an empty day: it holds no Parquet file; delete the directory or "
                f"{_fix_hint(lake_root)}",
                path=shown(entry["name"]),
            )
        day_parts = [
            LakePartition(
                day=day, path=shown(f), rows=_check_file(fs, f, shown(f), lake_root, pages, events)
            )
            for f in files
        ]
        if sum(p.rows for p in day_parts) == 0:
            raise LakeError(
                f"is an empty day: its files hold 0 rows; delete the directory or "
                f"{_fix_hint(lake_root)}",
                path=", ".join(p.path for p in day_parts),
            )
        partitions.extend(day_parts)

    if not partitions:
        raise LakeError(
            f"holds no {PARTITION_KEY}=YYYY-MM-DD partition; {_fix_hint(lake_root)}",
            path=shown(events_dir),
        )
    return LakeManifest(lake_root=lake_root, local=local, partitions=partitions)
