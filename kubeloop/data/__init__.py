"""The event data lake: its on-disk layout (Parquet partitioned by day, any fsspec
filesystem), validation against a use case's event schema, and the one read path whose
errors name file and column. Generators belong to use cases (`usecases/<name>/`)."""

from kubeloop.data.lake import DayFile, Partition, list_partitions, staged_events, write_day

__all__ = [
    "DayFile",
    "Partition",
    "list_partitions",
    "staged_events",
    "write_day",
]
