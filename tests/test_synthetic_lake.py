"""The synthetic use cases' generators write the same lake on the same seed: the default
demo's figures must not move when the generator code is refactored (their shared engine
part is `kubeloop.data.synthetic`). A change to a generator's draws must update the pins
on purpose, saying why.

What is pinned is the lake's content, not its bytes: every non-float column exactly (one
sha256 over the files' paths and values) and each float column's sum to 1e-9. numpy's
exp/log kernels differ in the last bit between CPUs (AVX-512 or not), so a byte digest
taken on one machine failed on another although every draw, id and label was the same;
a changed draw moves an id, a label or a sum far beyond 1e-9."""

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
        "1c44b6e51b9f39154d4954e5be8efc106a1a524f7078fe48e48c880338274bd9",
        {"ad_creative_age_days": 1347005.95326101, "true_ctr": 1274.8163129238935},
        {"events": 30_000, "partitions": 4, "click_rate": 0.042366666666666664},
    ),
    "fraud": (
        {"events": 20_000, "days": 4, "cards": 500, "merchants": 60, "seed": 4,
         "chunk_size": 3_000, "scenario": "new_fraud_pattern", "change_day": 2},
        "da09a768977cab63208891fc4fbb583fdd572c54c18143aeb5bc43e0872f23c5",
        {"fraud_probability": 86.29594395734004},
        {"events": 20_035, "partitions": 4, "frauds": 92},
    ),
}  # fmt: skip


def lake_fingerprint(root: Path) -> tuple[str, dict[str, float]]:
    """sha256 over every Parquet file's path and non-float columns' values, in path order,
    and the sum of each float column over the lake."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import pyarrow.types as pt

    digest, sums = hashlib.sha256(), {}
    for path in sorted(root.rglob("*.parquet")):
        table = pq.read_table(path)
        digest.update(str(path.relative_to(root)).encode())
        for name in table.schema.names:
            column = table[name]
            if pt.is_floating(column.type):
                sums[name] = sums.get(name, 0.0) + pc.sum(column).as_py()
            else:
                digest.update(name.encode())
                digest.update(repr(column.to_pylist()).encode())
    return digest.hexdigest(), sums


@pytest.mark.parametrize("name", sorted(LAKES))
def test_generated_lake_is_the_same_on_the_same_seed(tmp_path, name):
    config, expected_digest, expected_sums, expected_summary = LAKES[name]
    source = load_use_case(name).synthetic
    typed = source.config_class.model_validate(config)
    summary = source.generate(typed, str(tmp_path), False)
    digest, sums = lake_fingerprint(tmp_path)
    assert digest == expected_digest
    assert sums == pytest.approx(expected_sums, rel=1e-9)
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
