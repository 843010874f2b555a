"""The column-wise check of a v1 batch (`protocol._v1_columns`, grouped by rule, with its
float64 matrix of the number fields) accepts exactly what the value-by-value check
(`protocol._v1_rows`) accepts, with the same columns, and its matrix is those columns
read as float64; a refusal only ever sends a batch to the value-by-value check."""

from __future__ import annotations

import random

import numpy as np
import pytest
from kserve.errors import InvalidInput

from kubeloop.serving import protocol
from kubeloop.serving.protocol import (
    MAX_STRING_LENGTH,
    MODEL_FIELDS,
    FieldSet,
    FieldSpec,
    number_fields,
    parse_columns,
)

# A field set with every rule the groups tell apart: bounds within +-2**53 and beyond,
# the full int64 range, nullable and not.
WIDE = FieldSet(
    (
        FieldSpec("small", "int", 0, 23, nullable=True),
        FieldSpec("big", "int", -(2**60), 2**60),
        FieldSpec("any_int", "int", nullable=True),
        FieldSpec("x", "number", nullable=True),
        FieldSpec("y", "number"),
        FieldSpec("s", "string", nullable=True),
        FieldSpec("t", "string"),
    ),
    "test fields",
)


def _value(spec: FieldSpec, rng: random.Random, valid: bool, extremes: float = 0.0):
    if not valid:
        return rng.choice(
            [True, "1", 1.5, float("nan"), float("inf"), -float("inf"), 2**63, -(2**63) - 1,
             [1], None, 24, -1, 2**60 + 1, 10**400, "x" * (MAX_STRING_LENGTH + 1), 3]
        )  # fmt: skip
    if spec.nullable and rng.random() < 0.15:
        return None
    if spec.kind == "string":
        return rng.choice(["a", "mobile", "", "x" * MAX_STRING_LENGTH])
    lo = spec.minimum if spec.minimum is not None else -(2**63)
    hi = spec.maximum if spec.maximum is not None else 2**63 - 1
    extreme = rng.random() < extremes  # bounds, huge floats: what the matrix check refuses
    if spec.kind == "int" or rng.random() < 0.4:
        if extreme:
            return rng.choice([lo, hi, rng.randint(lo, hi)])
        return rng.randint(max(lo, -5), min(hi, 5))
    return rng.choice([1e300, 2.0**63]) if extreme else rng.choice([rng.uniform(-1e6, 1e6), -0.0])


def _slow(instances: list, fields: FieldSet):
    """The value-by-value outcome: the columns, or the error message."""
    try:
        rows = protocol._v1_rows(instances, fields)
    except InvalidInput as exc:
        return str(exc)
    return protocol._columns_of_rows(rows, fields)


@pytest.mark.parametrize("fields", [WIDE, MODEL_FIELDS], ids=["wide", "model"])
@pytest.mark.parametrize("seed", range(4))
def test_column_wise_check_accepts_what_the_value_by_value_check_accepts(fields, seed):
    rng = random.Random(seed)
    accepted = refused = 0
    for _ in range(200):
        n = rng.choice([4, 5, 17, 64])
        extremes = 0.05 if rng.random() < 0.15 else 0.0
        rows = [{s.name: _value(s, rng, True, extremes) for s in fields.fields} for _ in range(n)]
        if rng.random() < 0.4:
            spec = rng.choice(fields.fields)
            rows[rng.randrange(n)][spec.name] = _value(spec, rng, False)
        slow = _slow(rows, fields)
        fast = protocol._v1_columns(rows, fields)
        if fast is None:
            refused += 1
            # Refused: the request takes the value-by-value path, whatever it says.
            parsed = None if isinstance(slow, str) else parse_columns({"instances": rows}, fields)
            assert parsed is None or parsed.columns == slow
            continue
        accepted += 1
        columns, numbers = fast
        assert not isinstance(slow, str), slow  # never accepts what the slow path refuses
        assert columns == slow
        assert [list(map(type, c)) for c in columns.values()] == [
            list(map(type, c)) for c in slow.values()
        ]
        want = np.array([slow[f] for f in number_fields(fields)], dtype=np.float64).T
        np.testing.assert_array_equal(numbers, want.reshape(n, -1))
    assert accepted > 50 and refused > 50


def test_parse_columns_hands_the_matrix_on():
    rows = [{s.name: _value(s, random.Random(i), True) for s in WIDE.fields} for i in range(6)]
    parsed = parse_columns({"instances": rows}, WIDE)
    assert parsed.numbers is not None and parsed.numbers.shape == (6, 5)
    np.testing.assert_array_equal(
        parsed.numbers[:, 0], np.array(parsed.columns["small"], dtype=np.float64)
    )
    # Small batches are checked row by row: no matrix, the columns alone.
    assert parse_columns({"instances": rows[:2]}, WIDE).numbers is None
