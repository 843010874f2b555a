"""The synthetic use cases' generators write the same bytes on the same seed: the default
demo's figures must not move when the generator code is refactored (their shared engine
part is `kubeloop.data.synthetic`). The digests were taken before that move; a change to a
generator's draws must update them on purpose, saying why."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kubeloop.usecase import load_use_case

# Several chunks per day, a scenario with a change day: every code path of the stream.
LAKES = {
    "ctr": (
        {"events": 30_000, "days": 4, "seed": 3, "chunk_size": 7_000,
         "scenario": "concept_drift", "change_day": 2},
        "bd8e2993e016e449773cc5698b532bd98d2816410161b6a1379ff2bd20b6a322",
        {"events": 30_000, "partitions": 4, "click_rate": 0.042366666666666664},
    ),
    "fraud": (
        {"events": 20_000, "days": 4, "cards": 500, "merchants": 60, "seed": 4,
         "chunk_size": 3_000, "scenario": "new_fraud_pattern", "change_day": 2},
        "0c6f830e4fc6fb4a2894062aa45388c9a997feca625161294c18fa335d5195db",
        {"events": 20_035, "partitions": 4, "frauds": 92},
    ),
}  # fmt: skip


def lake_digest(root: Path) -> str:
    """sha256 over every Parquet file of the lake, path and bytes, in path order."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.parquet")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", sorted(LAKES))
def test_generated_lake_is_byte_identical_on_the_same_seed(tmp_path, name):
    config, expected_digest, expected_summary = LAKES[name]
    source = load_use_case(name).synthetic
    typed = source.config_class.model_validate(config)
    summary = source.generate(typed, str(tmp_path), False)
    assert lake_digest(tmp_path) == expected_digest
    assert {k: getattr(summary, k) for k in expected_summary} == expected_summary
    # The replay stream is the lake's own rows, day by day.
    import pyarrow as pa
    import pyarrow.parquet as pq

    streamed = pa.concat_tables([t for _, t in source.iter_day_tables(typed)])
    written = pa.concat_tables(
        [pq.read_table(p) for p in sorted(tmp_path.rglob("*.parquet"))]
    ).select(streamed.schema.names)
    assert streamed.num_rows == summary.events
    assert streamed.equals(written.cast(streamed.schema))
