"""SQL pieces of an hourly feature table, shared by every use case's queries.

A use case's query (`EntitySpec.query`) that buckets events into (entity, hour) rows and
stamps bucket h with T = h + 1 hour can take from here the windows over those buckets
(`window_clause`: `upto` for running values, `day` and `week` for [T - 24 h, T) and
[T - 168 h, T)) and the rows at which a window's content changes (`edge_buckets`), so a
lookup at any hour sees windows ending at that hour, not at the entity's last active one.
Plain SQL that DuckDB and Spark (through kubeloop/features/spark_sql.py) both run.
"""

from __future__ import annotations

from collections.abc import Sequence


def window_clause(key: str) -> str:
    """`WINDOW upto, day, week` over the `bucket` column of rows partitioned by `key`."""
    return f"""WINDOW
        upto AS (PARTITION BY {key} ORDER BY bucket ROWS UNBOUNDED PRECEDING),
        day AS (PARTITION BY {key} ORDER BY bucket
                RANGE BETWEEN INTERVAL 23 HOURS PRECEDING AND CURRENT ROW),
        week AS (PARTITION BY {key} ORDER BY bucket
                 RANGE BETWEEN INTERVAL 167 HOURS PRECEDING AND CURRENT ROW)"""


def edge_buckets(key: str, shifts: Sequence[tuple[str, int]]) -> str:
    """The UNION of (key, bucket + n hours) over `shifts`, (table, n) pairs: every hour at
    which a row of `table` enters (n = 0) or leaves (n = a window's length) a window."""
    parts = [
        f"SELECT {key}, bucket{f' + INTERVAL {n} HOUR' if n else ''} FROM {table}"
        for table, n in shifts
    ]
    return "\n    UNION ".join(parts)
