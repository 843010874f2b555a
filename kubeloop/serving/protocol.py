"""Request parsing and validation shared by the KServe predictor and transformer.

Both servers accept a batch of rows over either KServe protocol:

* v1: ``{"instances": [{<field>: value, ...}, ...], "request_id": "optional"}``
* v2: an ``InferRequest`` with one named input per field, shape ``[n]``, datatype
  INT64/INT32 for integers, FP64/FP32 (or an integer type) for numbers, BYTES for strings;
  its ``id`` is the request id.

`parse_request` turns either into a `ParsedRequest` (one dict per row, in order), and
`parse_columns` into a `ParsedColumns` (one list per field: the request path of the
predictor, checked column-wise with C-level calls first), or either raises
`kserve.errors.InvalidInput` whose message names every bad field by its path, e.g.
``instances[3].hour: expected integer 0..23, got 'x'`` or
``inputs['hour'].data[3]: expected integer 0..23, got 25``. A batch over the limit raises
`RequestTooLarge` (413 with the error handlers of `kubeloop.serving.model_server`, else
KServe's 400 for `InvalidInput`). The parsing and validation functions are pure; the
server glue both entry points share is `kubeloop.serving.model_server`.

Two field sets come from a use case (`kubeloop.usecase.UseCase`): `client_fields(use_case)`,
what a client sends the transformer (entity ids and request context, none nullable), and
`model_fields(use_case)`, what the predictor takes (every column of the use case's
`model_input_columns()`, each nullable: the model's feature transform imputes a missing
value exactly as in training). `CLIENT_FIELDS` and `MODEL_FIELDS` are the default use
case's, resolved on first access.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from kubeloop.serving.request_log.ids import uuid7
from kubeloop.usecase import UseCase, resolve_use_case

DEFAULT_MAX_BATCH_SIZE = 1024
MAX_STRING_LENGTH = 256
MAX_REQUEST_ID_LENGTH = 128
MAX_REPORTED_ERRORS = 10
REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_FIELD = "request_id"
OUTPUT_NAME = "probability"

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

Kind = Literal["int", "number", "string"]

_INT_DATATYPES = ("INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8")
_FLOAT_DATATYPES = ("FP64", "FP32")
_DATATYPES: dict[str, tuple[str, ...]] = {
    "int": _INT_DATATYPES,
    "number": (*_FLOAT_DATATYPES, *_INT_DATATYPES),
    "string": ("BYTES",),
}
# The datatype a field is sent with on the transformer -> predictor v2 hop.
WIRE_DATATYPE: dict[str, str] = {"int": "INT64", "number": "FP64", "string": "BYTES"}


class RequestTooLarge(InvalidInput):
    """The batch has more rows than the server's limit (HTTP 413 with the handlers of
    `kubeloop.serving.model_server`, 400 without them)."""

    status_code = 413


class UpstreamError(InferenceError):
    """A service behind this server (the predictor, the online store) failed or answered
    nonsense (HTTP 502 with `kubeloop.serving.model_server`, 500 without them)."""

    status_code = 502

    def __init__(self, reason: str):
        super().__init__(reason)


@dataclass(frozen=True)
class FieldSpec:
    """One field of a row: its JSON kind, an inclusive integer range, and whether null
    (None) is allowed."""

    name: str
    kind: Kind
    minimum: int | None = None
    maximum: int | None = None
    nullable: bool = False

    def describe(self) -> str:
        if self.kind == "int":
            lo = INT64_MIN if self.minimum is None else self.minimum
            hi = INT64_MAX if self.maximum is None else self.maximum
            text = f"integer {lo}..{hi}"
        elif self.kind == "number":
            text = "finite number"
        else:
            text = f"string of at most {MAX_STRING_LENGTH} characters"
        return f"{text} or null" if self.nullable else text

    def accepts(self, value: Any) -> bool:
        """Whether `value` (a decoded JSON value) is valid for this field."""
        if value is None:
            return self.nullable
        if self.kind == "string":
            return isinstance(value, str) and len(value) <= MAX_STRING_LENGTH
        if isinstance(value, bool):  # bool is an int subclass; JSON true is not a number
            return False
        if self.kind == "int":
            if not isinstance(value, int):
                return False
            lo = INT64_MIN if self.minimum is None else self.minimum
            hi = INT64_MAX if self.maximum is None else self.maximum
            return lo <= value <= hi
        if isinstance(value, int):
            return INT64_MIN <= value <= INT64_MAX
        return isinstance(value, float) and math.isfinite(value)


@dataclass(frozen=True)
class FieldSet:
    """The fields of one request format, in order, and what to call them in messages."""

    fields: tuple[FieldSpec, ...]
    label: str

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def __getitem__(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)


_ENTITY_ID = {"minimum": 0, "maximum": INT64_MAX}


def _context_fields(use_case: UseCase, nullable: bool) -> list[FieldSpec]:
    events = use_case.events
    out = [
        FieldSpec(name, "int", *events.context_ranges[name], nullable=nullable)
        for name in events.context_numeric
    ]
    out += [FieldSpec(name, "string", nullable=nullable) for name in events.context_categorical]
    return out


@functools.cache
def _model_fields(use_case: UseCase) -> FieldSet:
    context = {f.name: f for f in _context_fields(use_case, nullable=True)}
    arrow_types = use_case.column_types()
    specs = []
    for name in use_case.model_input_columns():
        if name in context:
            specs.append(context[name])
        elif pa.types.is_string(arrow_types[name]):
            specs.append(FieldSpec(name, "string", nullable=True))
        else:
            # Counts are int64 in the tables but float after a join with missing rows; an
            # integer-valued category is keyed by its value (17 == 17.0).
            specs.append(FieldSpec(name, "number", nullable=True))
    return FieldSet(tuple(specs), "model_input_columns()")


@functools.cache
def _client_fields(use_case: UseCase) -> FieldSet:
    ids = [FieldSpec(key, "int", **_ENTITY_ID) for key in use_case.join_keys]
    return FieldSet((*ids, *_context_fields(use_case, nullable=False)), "the client request fields")


def client_fields(use_case: UseCase | str | None = None) -> FieldSet:
    """What a client sends the transformer per row: entity ids and the request context."""
    return _client_fields(resolve_use_case(use_case))


def model_fields(use_case: UseCase | str | None = None) -> FieldSet:
    """What the predictor takes per row: every column of `model_input_columns()`, nullable."""
    return _model_fields(resolve_use_case(use_case))


def __getattr__(name: str) -> FieldSet:
    # CLIENT_FIELDS / MODEL_FIELDS: the default use case's, looked up on first access rather
    # than at import (the use case is a plug-in).
    if name == "CLIENT_FIELDS":
        return client_fields()
    if name == "MODEL_FIELDS":
        return model_fields()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class ParsedRequest:
    """A validated batch: `rows[i]` maps every field name to its value (None = missing)."""

    protocol: Literal["v1", "v2"]
    rows: list[dict[str, Any]]
    request_id: str | None = None

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class ParsedColumns:
    """A validated batch by column: `columns[name]` is the list of that field's values,
    one per row (None = missing), for every field; `n` rows. What a server that feeds a
    numpy transform wants, without a dict per row.

    `numbers`, when the column-wise check built it on the way (None otherwise): the
    int and number fields, in field order (`number_fields(fields)`), as one (n, k)
    float64 matrix, NaN for null: `np.array([columns[f] for f in ...], float64).T`."""

    protocol: Literal["v1", "v2"]
    columns: dict[str, list[Any]]
    n: int
    request_id: str | None = None
    numbers: np.ndarray | None = None

    def __len__(self) -> int:
        return self.n

    def rows(self) -> list[dict[str, Any]]:
        """The same batch as one dict per row."""
        names = list(self.columns)
        return [{name: self.columns[name][i] for name in names} for i in range(self.n)]


class _Errors:
    """Collects field errors and raises one InvalidInput naming them all (the first few)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.messages) < MAX_REPORTED_ERRORS:
            self.messages.append(message)

    def raise_if_any(self) -> None:
        if not self.count:
            return
        text = "; ".join(self.messages)
        if self.count > len(self.messages):
            text += f"; ... ({self.count} errors in all)"
        raise InvalidInput(text)


def show(value: Any, limit: int = 60) -> str:
    """Short repr of a client value for an error message."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return text[: limit - 3] + "..."


def check_request_id(value: Any, path: str) -> str:
    """A request id is 1..128 printable ASCII characters without spaces (it travels as an
    HTTP header to the next hop)."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_REQUEST_ID_LENGTH
        or not all("!" <= ch <= "~" for ch in value)
    ):
        raise InvalidInput(
            f"{path}: expected a string of 1..{MAX_REQUEST_ID_LENGTH} printable ASCII "
            f"characters without spaces, got {show(value)}"
        )
    return value


def check_batch_size(n: int, path: str, max_batch_size: int) -> None:
    if n > max_batch_size:
        raise RequestTooLarge(
            f"{path}: batch of {n} rows is over this server's limit of {max_batch_size} "
            "rows (--max_batch_size); split it into smaller requests"
        )


def decode_json(body: bytes | bytearray | memoryview | str) -> Any:
    """Decode a raw body (KServe passes the bytes on when the content type is not exactly
    application/json, e.g. `application/json; charset=utf-8`)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body: not valid JSON ({exc})") from None


def _check_row(row: Any, path: str, fields: FieldSet, errors: _Errors) -> dict[str, Any] | None:
    if not isinstance(row, dict):
        errors.add(f"{path}: expected an object with the fields of {fields.label}, got {show(row)}")
        return None
    out: dict[str, Any] = {}
    missing = []
    for spec in fields.fields:
        if spec.name not in row:
            missing.append(spec)
            continue
        value = row[spec.name]
        if not spec.accepts(value):
            errors.add(f"{path}.{spec.name}: expected {spec.describe()}, got {show(value)}")
            continue
        out[spec.name] = value
    if len(missing) == 1:
        errors.add(f"{path}.{missing[0].name}: missing (expected {missing[0].describe()})")
    elif missing:
        names = ", ".join(spec.name for spec in missing)
        errors.add(f"{path}: missing fields {names} (of {fields.label})")
    if len(row) > len(fields.fields) - len(missing):  # keys other than the fields
        known = set(fields.names)
        unknown = [show(key, 40) for key in row if key not in known]
        if unknown:
            errors.add(
                f"{path}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                f"(expected only those of {fields.label})"
            )
    return out


def _v1_instances(body: Any, max_batch_size: int) -> tuple[list[Any], str | None]:
    """The top level of a v1 body: its instances (a list, within the batch limit) and its
    request id, or InvalidInput naming what is wrong."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        body = decode_json(body)
    if not isinstance(body, dict):
        raise InvalidInput(f'body: expected a JSON object {{"instances": [...]}}, got {show(body)}')
    unknown = [k for k in body if k not in ("instances", REQUEST_ID_FIELD)]
    if unknown:
        raise InvalidInput(
            f"{show(unknown[0], 40)}: unknown top-level field (expected 'instances' and "
            f"optionally '{REQUEST_ID_FIELD}')"
        )
    request_id = None
    if body.get(REQUEST_ID_FIELD) is not None:
        request_id = check_request_id(body[REQUEST_ID_FIELD], REQUEST_ID_FIELD)
    if "instances" not in body:
        raise InvalidInput("instances: missing (expected a list of row objects)")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f"instances: expected a list of row objects, got {show(instances)}")
    check_batch_size(len(instances), "instances", max_batch_size)
    return instances, request_id


def _v1_rows(instances: list[Any], fields: FieldSet) -> list[dict[str, Any]]:
    """Every instance checked field by field (the messages name each bad value)."""
    errors = _Errors()
    rows = []
    for i, row in enumerate(instances):
        checked = _check_row(row, f"instances[{i}]", fields, errors)
        if checked is not None:
            rows.append(checked)
    errors.raise_if_any()
    return rows


def parse_v1(
    body: Any, fields: FieldSet, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> ParsedRequest:
    """Validate a v1 body ``{"instances": [row, ...], "request_id": optional}`` (decoded
    JSON, or the raw bytes KServe hands on for a non-JSON content type)."""
    parsed = parse_v1_columns(body, fields, max_batch_size=max_batch_size)
    return ParsedRequest("v1", parsed.rows(), parsed.request_id)


# --- the column-wise fast path -------------------------------------------------------------
#
# `column_ok` accepts a column only when every value would pass `FieldSpec.accepts`, with a
# handful of C-level calls per column (the exact types as a set, min/max, isfinite over a
# map) instead of a Python call per value. It may refuse a column `accepts` takes (it does
# not, today, but that is the contract); every refusal sends the request through the
# value-by-value check, which either names the bad values or gives the same columns. So the
# fast path never accepts what the slow one refuses, and the messages are the slow path's.

_NONE = type(None)
_MISSING = object()  # a field absent from a row: its type is never an allowed one
_INT_TYPES = frozenset({int})
_NUMBER_TYPES = frozenset({int, float})
_STRING_TYPES = frozenset({str})


@functools.cache
def _column_rules(spec: FieldSpec) -> tuple[frozenset, int, int]:
    """The exact types a column of `spec` may hold, and its integer range."""
    base = {"int": _INT_TYPES, "number": _NUMBER_TYPES, "string": _STRING_TYPES}[spec.kind]
    lo = INT64_MIN if spec.minimum is None else spec.minimum
    hi = INT64_MAX if spec.maximum is None else spec.maximum
    return (base | {_NONE} if spec.nullable else base), lo, hi


def column_ok(values: list[Any], spec: FieldSpec) -> bool:
    """Whether every value of `values` is valid for `spec` (see the comment above)."""
    return _values_ok(values, *_column_rules(spec), spec.kind == "string")


def _values_ok(values: list[Any], allowed: frozenset, lo: int, hi: int, string: bool) -> bool:
    types = set(map(type, values))
    if not types <= allowed:
        return False
    present = values if _NONE not in types else [v for v in values if v is not None]
    if not present:
        return True
    if string:
        return max(map(len, present)) <= MAX_STRING_LENGTH
    if int in types:
        ints = present if float not in types else [v for v in present if type(v) is int]
        if min(ints) < lo or max(ints) > hi:
            return False
    # ints are within int64 here, so isfinite cannot overflow on them.
    return float not in types or all(map(math.isfinite, present))


Rules = tuple[tuple[str, frozenset, int, int, bool], ...]
# FieldSet -> (the FieldSet, its rules), by identity: hashing a FieldSet hashes every
# spec, which cost more than the checks of a small batch. The field sets are few and live
# as long as the process (functools.cache of the use case's).
_RULES: dict[int, tuple[FieldSet, Rules]] = {}


def _rules_of(fields: FieldSet) -> Rules:
    """Per field, in order: its name, the exact types its values may have, its integer
    range, whether it is a string."""
    held = _RULES.get(id(fields))
    if held is None or held[0] is not fields:
        rules = tuple(
            (spec.name, *_column_rules(spec), spec.kind == "string") for spec in fields.fields
        )
        held = _RULES[id(fields)] = (fields, rules)
    return held[1]


# Below this many rows the value-by-value check is the cheaper one (a column-wise check
# costs a few calls per column whatever the batch).
COLUMNWISE_MIN_ROWS = 4


def number_fields(fields: FieldSet) -> list[str]:
    """The int and number fields of `fields`, in order: the columns of
    `ParsedColumns.numbers`."""
    return [spec.name for spec in fields.fields if spec.kind != "string"]


# Integers whose float64 compares with a bound exactly (see `_Groups`).
_EXACT_FLOAT = 2**53
# The float64 bounds of an int64 (or number) column on the matrix: |value| < 2**63. An
# int beyond int64 reads as a float64 of at least 2**63 in size (so do 2**63 - 1 and
# -2**63, refused here and accepted by the value-by-value check).
_BELOW_2_63 = float(np.nextafter(2.0**63, 0.0))


@dataclass(frozen=True)
class _Groups:
    """A field set's columns grouped by rule (kind, nullable, integer range), so that a
    batch is checked with a few C-level passes per group and a few numpy calls in all,
    instead of per column.

    `strings` and `numbers`: (field positions, the exact types allowed, the integer
    bounds to check on the ints themselves or None) per group. `numeric`: the positions
    of the int and number fields (`number_fields`); `lo`/`hi` their float64 bounds on the
    matrix. An int field whose bounds lie within +-2**53 is range-checked on the matrix
    (exact there: rounding is monotone and every integer of that range is a float64),
    any other int field on its ints (its matrix bounds are those of int64)."""

    names: tuple[str, ...]
    strings: tuple[tuple[tuple[int, ...], frozenset], ...]
    numbers: tuple[tuple[tuple[int, ...], frozenset, tuple[int, int] | None], ...]
    numeric: tuple[int, ...]
    lo: np.ndarray
    hi: np.ndarray


def _exact_bounds(lo: int, hi: int) -> bool:
    return -_EXACT_FLOAT < lo and hi < _EXACT_FLOAT


def _grouped(fields: FieldSet) -> _Groups:
    by_rule: dict[tuple[str, frozenset, int, int], list[int]] = {}
    for i, spec in enumerate(fields.fields):
        by_rule.setdefault((spec.kind, *_column_rules(spec)), []).append(i)
    strings, numbers = [], []
    for (kind, allowed, lo, hi), positions in by_rule.items():
        if kind == "string":
            strings.append((tuple(positions), allowed))
            continue
        full = lo <= INT64_MIN and hi >= INT64_MAX
        on_ints = None if kind == "number" or full or _exact_bounds(lo, hi) else (lo, hi)
        numbers.append((tuple(positions), allowed, on_ints))
    numeric = tuple(i for i, spec in enumerate(fields.fields) if spec.kind != "string")
    bounds = []
    for i in numeric:
        _, lo, hi = _column_rules(fields.fields[i])
        exact = fields.fields[i].kind == "int" and _exact_bounds(lo, hi)
        bounds.append((float(lo), float(hi)) if exact else (-_BELOW_2_63, _BELOW_2_63))
    lo_hi = np.array(bounds, dtype=np.float64).reshape(-1, 2)
    return _Groups(
        tuple(fields.names), tuple(strings), tuple(numbers), numeric, lo_hi[:, 0].copy(),
        lo_hi[:, 1].copy(),
    )  # fmt: skip


_GROUPS: dict[int, tuple[FieldSet, _Groups]] = {}


def _groups_of(fields: FieldSet) -> _Groups:
    """`_grouped(fields)`, kept per field set (by identity, as `_rules_of`)."""
    held = _GROUPS.get(id(fields))
    if held is None or held[0] is not fields:
        held = _GROUPS[id(fields)] = (fields, _grouped(fields))
    return held[1]


def _grouped_ok(values: list[list[Any]], groups: _Groups) -> np.ndarray | None:
    """The float64 matrix of the int and number columns (`ParsedColumns.numbers`) when
    every column of `values` passes `column_ok`, else None. Per group the exact types
    (and string lengths, or unusual integer bounds), counted nulls; then on the matrix:
    NaN only where a null was (no NaN or infinite float), every value within its
    bounds."""
    chain = itertools.chain.from_iterable
    for positions, allowed in groups.strings:
        columns = [values[i] for i in positions]
        if not set(map(type, chain(columns))) <= allowed:
            return None
        if max(map(len, filter(None, chain(columns))), default=0) > MAX_STRING_LENGTH:
            return None
    nulls = 0
    for positions, allowed, on_ints in groups.numbers:
        columns = [values[i] for i in positions]
        types = set(map(type, chain(columns)))
        if not types <= allowed:
            return None
        if _NONE in types:
            nulls += operator.countOf(chain(columns), None)
        if on_ints is not None and int in types:
            ints = [v for v in chain(columns) if type(v) is int]
            if min(ints) < on_ints[0] or max(ints) > on_ints[1]:
                return None
    n = len(values[0]) if values else 0
    if not groups.numeric:
        return np.zeros((n, 0), dtype=np.float64)
    try:
        matrix = np.array([values[i] for i in groups.numeric], dtype=np.float64).T
    except OverflowError:  # an int beyond float64 (and so beyond int64)
        return None
    if matrix.size - np.count_nonzero(np.isfinite(matrix)) != nulls:
        return None
    if ((matrix < groups.lo) | (matrix > groups.hi)).any():  # NaN compares False
        return None
    return matrix


def _v1_columns(
    instances: list[Any], fields: FieldSet
) -> tuple[dict[str, list[Any]], np.ndarray] | None:
    """The instances as columns, with their `numbers` matrix, when every one is an object
    with exactly the fields and every column passes `column_ok`; None otherwise (the
    caller checks value by value)."""
    groups = _groups_of(fields)
    names = groups.names
    if not instances:
        return {name: [] for name in names}, np.zeros((0, len(groups.numeric)))
    if set(map(type, instances)) != {dict} or set(map(len, instances)) != {len(names)}:
        return None
    try:
        picked = list(map(operator.itemgetter(*names), instances))
    except KeyError:  # a field missing (and, the count being equal, an unknown key)
        return None
    values = [list(c) for c in zip(*picked, strict=True)] if len(names) > 1 else [picked]
    matrix = _grouped_ok(values, groups)
    if matrix is None:
        return None
    return dict(zip(names, values, strict=True)), matrix


def _row_ok(row: Any, rules: Rules) -> bool:
    """Whether `row` is an object with exactly the fields, each value valid: the check of
    `_check_row` for a row that passes it, in one loop of cheap tests (a refusal sends the
    row through `_check_row`, which names what is wrong)."""
    if type(row) is not dict or len(row) != len(rules):
        return False
    for name, allowed, lo, hi, _ in rules:
        value = row.get(name, _MISSING)
        kind = type(value)
        if kind not in allowed:
            return False
        if kind is int:
            if value < lo or value > hi:
                return False
        elif kind is float:
            if not math.isfinite(value):
                return False
        elif kind is str and len(value) > MAX_STRING_LENGTH:
            return False
    return True


def _small_columns(instances: list[Any], fields: FieldSet) -> dict[str, list[Any]] | None:
    """The few instances of a small batch as columns when every row passes `_row_ok`;
    None otherwise (the caller checks value by value)."""
    rules = _rules_of(fields)
    if not all(_row_ok(row, rules) for row in instances):
        return None
    return {rule[0]: [row[rule[0]] for row in instances] for rule in rules}


def _columns_of_rows(rows: list[dict[str, Any]], fields: FieldSet) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in fields.names}


def parse_v1_columns(
    body: Any, fields: FieldSet, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> ParsedColumns:
    """`parse_v1` by column: the same validation and messages, checked column-wise first."""
    instances, request_id = _v1_instances(body, max_batch_size)
    numbers = None
    if len(instances) >= COLUMNWISE_MIN_ROWS:
        checked = _v1_columns(instances, fields)
        columns, numbers = checked if checked is not None else (None, None)
    else:
        columns = _small_columns(instances, fields)
    if columns is None:
        columns = _columns_of_rows(_v1_rows(instances, fields), fields)
    return ParsedColumns("v1", columns, len(instances), request_id, numbers)


def _input_values(infer_input: Any, path: str) -> list[Any]:
    """The flat list of values of one v2 input (JSON data, or binary/gRPC contents)."""
    data = infer_input.data
    if isinstance(data, list) and getattr(infer_input, "_raw_data", None) is None:
        return data
    try:
        array = infer_input.as_numpy()
    except (ValueError, TypeError) as exc:  # raw bytes that do not match shape/datatype
        raise InvalidInput(
            f"{path}.data: cannot be decoded as {infer_input.datatype} ({exc})"
        ) from None
    values = array.ravel().tolist()
    if infer_input.datatype == "BYTES":
        try:
            values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
        except UnicodeDecodeError:
            raise InvalidInput(f"{path}.data: BYTES values must be UTF-8 text") from None
    return values


def parse_v2(
    request: InferRequest, fields: FieldSet, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> ParsedRequest:
    """Validate a v2 InferRequest with one input per field, each of shape [n]."""
    parsed = parse_v2_columns(request, fields, max_batch_size=max_batch_size)
    return ParsedRequest("v2", parsed.rows(), parsed.request_id)


def parse_v2_columns(
    request: InferRequest, fields: FieldSet, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> ParsedColumns:
    """`parse_v2` by column (its values are columns already)."""
    request_id = None
    if request.id is not None:
        request_id = check_request_id(request.id, "id")
    inputs = list(request.inputs or [])
    by_name: dict[str, Any] = {}
    errors = _Errors()
    for infer_input in inputs:
        name = infer_input.name
        path = f"inputs[{show(name, 40)}]"
        if name not in fields.names:
            errors.add(f"{path}: unknown input (expected one per field of {fields.label})")
        elif name in by_name:
            errors.add(f"{path}: given more than once")
        else:
            by_name[name] = infer_input
    missing = [spec for spec in fields.fields if spec.name not in by_name]
    if len(missing) == 1:
        errors.add(
            f"inputs['{missing[0].name}']: missing (expected datatype "
            f"{WIRE_DATATYPE[missing[0].kind]}, shape [n])"
        )
    elif missing:
        names = ", ".join(spec.name for spec in missing)
        errors.add(f"inputs: missing inputs {names} (one per field of {fields.label})")
    errors.raise_if_any()

    n: int | None = None
    shape_of: str | None = None
    columns: dict[str, list[Any]] = {}
    for name in fields.names:
        infer_input = by_name[name]
        spec = fields[name]
        path = f"inputs['{name}']"
        shape = infer_input.shape
        if (
            not isinstance(shape, (list, tuple))
            or len(shape) != 1
            or isinstance(shape[0], bool)
            or not isinstance(shape[0], int)
            or shape[0] < 0
        ):
            errors.add(f"{path}.shape: expected [n] (one value per row), got {show(shape)}")
            continue
        if n is None:
            n, shape_of = shape[0], name
            check_batch_size(n, f"{path}.shape", max_batch_size)
        elif shape[0] != n:
            errors.add(
                f"{path}.shape: expected [{n}] like inputs['{shape_of}'], got {show(list(shape))}"
            )
            continue
        if infer_input.datatype not in _DATATYPES[spec.kind]:
            errors.add(
                f"{path}.datatype: expected one of {', '.join(_DATATYPES[spec.kind])}, "
                f"got {show(infer_input.datatype)}"
            )
            continue
        values = _input_values(infer_input, path)
        if len(values) != n:
            errors.add(f"{path}.data: expected a flat list of {n} values, got {len(values)}")
            continue
        if type(values) is not list:
            values = list(values)
        if not column_ok(values, spec):
            for i, value in enumerate(values):
                if not spec.accepts(value):
                    errors.add(f"{path}.data[{i}]: expected {spec.describe()}, got {show(value)}")
        columns[name] = values
    errors.raise_if_any()
    return ParsedColumns("v2", {name: columns[name] for name in fields.names}, n or 0, request_id)


def parse_columns(
    body: Any, fields: FieldSet, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> ParsedColumns:
    """Validate a request body of either protocol (see the module docstring), by column:
    no dict per row."""
    if isinstance(body, InferRequest):
        return parse_v2_columns(body, fields, max_batch_size=max_batch_size)
    return parse_v1_columns(body, fields, max_batch_size=max_batch_size)


def parse_request(
    body: Any, fields: FieldSet, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> ParsedRequest:
    """`parse_columns` as one dict per row."""
    parsed = parse_columns(body, fields, max_batch_size=max_batch_size)
    return ParsedRequest(parsed.protocol, parsed.rows(), parsed.request_id)


EXAMPLE_STRINGS = {"device": "mobile"}


def example_row(fields: FieldSet) -> dict[str, Any]:
    """One valid row of `fields` (what `kubeloop serve` prints as its example): each
    integer the smallest positive value in its range, each string an example value."""
    row: dict[str, Any] = {}
    for spec in fields.fields:
        if spec.kind == "string":
            row[spec.name] = EXAMPLE_STRINGS.get(spec.name, "unknown")
        elif spec.kind == "number":
            row[spec.name] = 0.0
        else:
            lo = INT64_MIN if spec.minimum is None else spec.minimum
            hi = INT64_MAX if spec.maximum is None else spec.maximum
            row[spec.name] = min(max(lo, 1), hi)
    return row


def lower_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """A private, lower-cased copy of request headers (Starlette lower-cases them already;
    in-process callers may not)."""
    return {str(k).lower(): v for k, v in (headers or {}).items()}


def resolve_request_id(body_request_id: str | None, headers: Mapping[str, str]) -> str:
    """The id of a request: the body's (v1 `request_id`, v2 `id`) if given, else the
    `x-request-id` header, else a new time-ordered UUIDv7 (the request log indexes ids:
    random ones land on random index pages). `headers` must have lower-case keys."""
    if body_request_id:
        return body_request_id
    header = headers.get(REQUEST_ID_HEADER)
    if header:
        return check_request_id(header, f"{REQUEST_ID_HEADER} header")
    return uuid7()


def probabilities_from_response(response: Any) -> list[float]:
    """The click probabilities in a predictor response (v1 dict or v2 InferResponse);
    raises UpstreamError when the response is not one."""
    if isinstance(response, InferResponse):
        output = next((o for o in response.outputs if o.name == OUTPUT_NAME), None)
        if output is None:
            raise UpstreamError(f"the predictor's v2 response has no output '{OUTPUT_NAME}'")
        try:
            values = output.as_numpy().ravel().tolist()
        except (ValueError, TypeError) as exc:
            raise UpstreamError(
                f"the predictor's output '{OUTPUT_NAME}' is unreadable: {exc}"
            ) from None
    elif isinstance(response, dict) and isinstance(response.get("predictions"), list):
        values = response["predictions"]
    else:
        raise UpstreamError(
            f"the predictor answered {show(response)}, not {{'predictions': [...]}}"
        )
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UpstreamError("the predictor's predictions are not all numbers")
    return [float(v) for v in values]


def decisions_from_response(response: Any, n: int) -> list[int] | None:
    """The decisions of a v1 predictor response (``"decisions": [0 or 1, ...]``, one per
    prediction: the action at the version's stored threshold), None when it has none;
    raises UpstreamError when they are not `n` zeros and ones."""
    if not isinstance(response, dict) or response.get("decisions") is None:
        return None
    decisions = response["decisions"]
    if (
        not isinstance(decisions, list)
        or len(decisions) != n
        or not all(type(d) is int and d in (0, 1) for d in decisions)
    ):
        raise UpstreamError(
            f"the predictor's decisions are not {n} zeros and ones: {show(decisions)}"
        )
    return decisions


def v2_response(
    probabilities: Sequence[float],
    request: InferRequest,
    model_name: str,
    *,
    request_id: str | None = None,
    model_version: str | None = None,
) -> InferResponse:
    """The v2 answer to `request`: one FP64 output `probability` of shape [n]. Honours the
    request's binary_data_output parameter and its requested outputs."""
    output = InferOutput(
        name=OUTPUT_NAME, shape=[len(probabilities)], datatype="FP64", data=list(probabilities)
    )
    return InferResponse(
        response_id=request_id or request.id or str(uuid.uuid4()),
        model_name=model_name,
        model_version=model_version,
        infer_outputs=[output],
        use_binary_outputs=bool(request.use_binary_outputs),
        requested_outputs=request.request_outputs,
    )


def model_server_options(args: Any) -> dict[str, Any]:
    """`kserve.ModelServer` keyword arguments from an argparse namespace parsed with
    `kserve.model_server.parser` as a parent (KServe's own defaults come from sys.argv,
    parsed when kserve.model_server is imported; passing them makes `main(argv)` honour
    its argv)."""
    return {
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        "workers": args.workers,
        "max_threads": args.max_threads,
        "max_asyncio_workers": args.max_asyncio_workers,
        "enable_grpc": args.enable_grpc,
        "enable_docs_url": args.enable_docs_url,
        "enable_latency_logging": args.enable_latency_logging,
        "access_log_format": args.access_log_format,
        "event_loop": args.event_loop,
        "timeout_keep_alive": args.timeout_keep_alive,
    }
