"""The one feature transformation shared by training and serving.

Training fits a `FeatureTransform` on the training split and stores it as
`transform.json` beside the model; the KServe transformer loads that same file and calls
the same `transform()` on a DataFrame built from the request and the Feast online lookup.
There is no second implementation to drift apart from this one, and the tests check that a
whole training frame and the same rows sent one at a time as JSON-like dicts give
bit-identical arrays.

Rules (fitted values are stored in the JSON, so serving never recomputes them):

The use case says which columns are categorical and which numeric rule each column takes
(`kubeloop.usecase.TransformRules`); `fit` reads it and the fitted transform stores every
resolved rule, so serving needs no use case.

* categorical columns (`TransformRules.categorical`) become integer codes from a vocabulary of the training set; index 0 is reserved for unknown, rare
  (below `min_count`) and missing values, so a new category at serving time is never an
  error. Integer-valued ids are keyed by their decimal string, so `17`, `17.0` (an id column
  that became float after a join with missing rows) and `"17"` are the same category.
* count columns (kind `log1p`) take log1p; missing means the entity had no history, which
  is a count of zero.
* rate columns (kind `rate`) are undefined without events: missing is filled with the
  training label rate and flagged by a `<name>_missing` indicator.
* recency columns (kind `hours`) are filled with `hours_since_default` (longer than any
  feature window), take log1p, and are flagged by a `<name>_missing` indicator.
* every other numeric column is filled with its training median.
* an hour-of-day column (`TransformRules.cyclic_hours`) is kept and also encoded as sin/cos
  so a model sees 23:00 next to 00:00.
* configured pairs of categorical inputs are crossed into extra categorical columns
  (`<a>_x_<b>`; the use case's `TransformRules.crosses` by default): a pair effect that an
  embedding model or a tree otherwise has to assemble from two separate columns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from kubeloop.errors import KubeloopError
from kubeloop.training.key_codes import KeyCodes, column_key_codes
from kubeloop.usecase import UseCase, resolve_use_case

# 2: the label and the hour-of-day columns are stored (`label`, `cyclic_hours`) instead of
# implied by the ad-CTR names.
FORMAT_VERSION = 2
UNKNOWN_INDEX = 0


class TransformError(KubeloopError, ValueError):
    """The input frame cannot be transformed (a required column is absent)."""


def model_input_columns(use_case: UseCase | str | None = None) -> list[str]:
    """Raw columns a model needs, in a fixed order (`UseCase.model_input_columns`).

    Request context, then each entity's features. Ids, label, oracle probability and
    timestamps are never inputs. The serving transformer asks Feast for exactly the
    feature part of this list and takes the context part from the request.
    """
    return resolve_use_case(use_case).model_input_columns()


def categorical_inputs(use_case: UseCase | str | None = None) -> list[str]:
    """The model inputs the use case declares categorical."""
    return list(resolve_use_case(use_case).transform.categorical)


def _categorical_columns(use_case: UseCase) -> list[str]:
    categorical = use_case.transform.categorical
    return [c for c in use_case.model_input_columns() if c in categorical]


def _numeric_columns(use_case: UseCase) -> list[str]:
    categorical = use_case.transform.categorical
    return [c for c in use_case.model_input_columns() if c not in categorical]


class TransformConfig(BaseModel):
    """Settings of `FeatureTransform.fit`."""

    model_config = ConfigDict(extra="forbid")

    min_count: int = Field(5, ge=1, description="categories seen fewer times map to index 0")
    max_vocab: int = Field(10_000, ge=1, description="most frequent categories kept per column")
    hours_since_default: float = Field(
        24.0 * 30, gt=0, description="recency filled in for an entity with no history"
    )
    hour_cyclic: bool = True
    crosses: list[tuple[str, str]] | None = Field(
        None,
        description=(
            "pairs of categorical inputs crossed into one extra categorical column "
            "'<a>_x_<b>' (its own vocabulary; missing if either side is missing); None: "
            "the use case's default crosses (a fitted transform stores the pairs it used)"
        ),
    )

    @field_validator("crosses")
    @classmethod
    def _pairs(cls, value: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
        for pair in value or []:
            if pair[0] == pair[1]:
                raise ValueError(f"a cross needs two different columns, got {pair}")
        return value

    def resolved(self, use_case: UseCase) -> TransformConfig:
        """This config with the use case's default crosses filled in, checked against its
        categorical inputs (a one-line error naming the unknown column)."""
        crosses = (
            [tuple(p) for p in use_case.transform.crosses] if self.crosses is None else self.crosses
        )
        categorical = list(use_case.transform.categorical)
        for pair in crosses:
            unknown = [c for c in pair if c not in categorical]
            if unknown:
                raise TransformError(
                    f"transform config: crosses name {unknown}, not among the categorical "
                    f"inputs of use case {use_case.name!r}: {categorical}"
                )
        return self.model_copy(update={"crosses": crosses})


def cross_name(a: str, b: str) -> str:
    """Name of the crossed categorical column of inputs `a` and `b`."""
    return f"{a}_x_{b}"


def _output_keys(
    keys_of: Callable[[str], list[str | None]],
    column: str,
    crosses: Mapping[str, tuple[str, str]],
) -> list[str | None]:
    """Category keys of one categorical output column (a raw input or a cross);
    `keys_of(name)` gives the keys of a raw input column."""
    if column not in crosses:
        return keys_of(column)
    a, b = crosses[column]
    return [
        f"{x}|{y}" if x is not None and y is not None else None
        for x, y in zip(keys_of(a), keys_of(b))
    ]


def _frame_key_codes(
    frame: pd.DataFrame, crosses: Mapping[str, tuple[str, str]]
) -> Callable[[str], KeyCodes]:
    """The keys of one categorical output column of `frame` (a raw input or a cross) as
    `KeyCodes`: the whole-frame equivalent of `_output_keys`, each raw column read once."""
    read: dict[str, KeyCodes] = {}

    def raw(column: str) -> KeyCodes:
        if column not in read:
            read[column] = column_key_codes(frame[column], category_key)
        return read[column]

    def of(column: str) -> KeyCodes:
        if column not in crosses:
            return raw(column)
        a, b = crosses[column]
        return raw(a).crossed(raw(b))

    return of


class NumericRule(BaseModel):
    """How one raw numeric column becomes model inputs."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["raw", "log1p", "rate", "hours"]
    fill: float
    indicator: bool = False


@dataclass(frozen=True)
class TransformedBatch:
    """Model-ready arrays: float32 numeric features and int64 categorical codes.

    `numeric_names[i]` names `numeric[:, i]`, `categorical_names[j]` names
    `categorical[:, j]`; `names` is both lists in that order (the layout of `matrix()`).
    """

    numeric: np.ndarray
    categorical: np.ndarray
    numeric_names: tuple[str, ...]
    categorical_names: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [*self.numeric_names, *self.categorical_names]

    def __len__(self) -> int:
        return int(self.numeric.shape[0])

    def matrix(self) -> np.ndarray:
        """Numeric columns then categorical codes as one float64 matrix (LightGBM's input)."""
        return np.hstack([self.numeric.astype(np.float64), self.categorical.astype(np.float64)])

    def take(self, index: np.ndarray) -> TransformedBatch:
        """Rows `index` of the batch."""
        return TransformedBatch(
            self.numeric[index], self.categorical[index], self.numeric_names, self.categorical_names
        )


def _rule_for(
    column: str, frame: pd.DataFrame, base_rate: float, cfg: TransformConfig, use_case: UseCase
) -> NumericRule:
    kind = use_case.transform.numeric_kind(column)
    if kind == "log1p":
        return NumericRule(kind="log1p", fill=0.0)
    if kind == "rate":
        return NumericRule(kind="rate", fill=base_rate, indicator=True)
    if kind == "hours":
        return NumericRule(kind="hours", fill=cfg.hours_since_default, indicator=True)
    values = _numeric_values(frame[column])
    finite = values[np.isfinite(values)]
    median = float(np.median(finite)) if finite.size else 0.0
    return NumericRule(kind="raw", fill=median)


def _numeric_values(series: pd.Series) -> np.ndarray:
    """float64 values with None, pd.NA, unparseable strings and infinities as NaN."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    values = values.copy()
    values[~np.isfinite(values)] = np.nan
    return values


def category_key(value: Any) -> str | None:
    """Canonical text of a category value, shared by training, serving and drift detection:
    17, 17.0 and "17" are one category; missing values (None, NaN, pd.NA) are None."""
    if type(value) is str:  # the common case first: request strings
        return value
    if value is None or value is pd.NA:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)


# Python types a JSON number decodes to; a column of only these (and None) is the float64
# column pandas would build, so the fast path reads it with numpy directly.
_PLAIN_TYPES = frozenset({int, float, type(None)})


def _plain_numbers(values: Sequence[Any]) -> bool:
    """Every value None or an int/float (bools, strings and others are left to pandas)."""
    # The exact types (a bool is not an int here), collected in C.
    return set(map(type, values)) <= _PLAIN_TYPES


def _fast_numeric(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """`_numeric_values` of the column pandas would build from `values`, without pandas
    for plain numbers (the request path)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        out = values.astype(np.float64)
    elif not isinstance(values, np.ndarray) and _plain_numbers(values):
        # numpy reads None as NaN in a float64 array.
        out = np.array(values, dtype=np.float64)
    else:
        return _numeric_values(pd.Series(list(values)))
    out[~np.isfinite(out)] = np.nan
    return out


def _fast_keys(values: Sequence[Any] | np.ndarray) -> list[str | None]:
    """The keys the frame path (`key_codes.column_key_codes`) gives the column pandas
    would build from `values`: a column of plain numbers is float64 there (ints included),
    anything else object."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind in "fiu":
            return [category_key(v) for v in values.astype(np.float64).tolist()]
        return [category_key(v) for v in values.tolist()]
    if _plain_numbers(values) and not all(v is None for v in values):
        return [None if v is None else category_key(float(v)) for v in values]
    return [category_key(v) for v in values]


def _check_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TransformError(
            f"the feature transform needs columns {missing} which the input lacks; "
            f"the model inputs are the use case's model_input_columns()"
        )


@dataclass(frozen=True, eq=False)
class _NumericPlan:
    """The numeric rules as whole-matrix operations, worked out once per fitted transform:
    the same element-wise arithmetic for a 1-row request and a training frame, with a
    fixed handful of numpy calls per batch instead of a handful per column."""

    columns: tuple[str, ...]
    fills: np.ndarray
    log_index: np.ndarray
    cyclic_index: np.ndarray
    indicator_index: np.ndarray
    order: np.ndarray

    def __eq__(self, other: object) -> bool:
        # Derived from the rules, so two transforms with equal rules have equal plans
        # (pydantic's == compares private attributes too).
        return (
            isinstance(other, _NumericPlan)
            and self.columns == other.columns
            and all(
                np.array_equal(getattr(self, f), getattr(other, f))
                for f in ("fills", "log_index", "cyclic_index", "indicator_index", "order")
            )
        )

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def of(cls, rules: Mapping[str, NumericRule], cyclic_hours: Sequence[str]) -> _NumericPlan:
        columns = tuple(rules)
        k = len(columns)
        cyclic = [i for i, c in enumerate(columns) if c in cyclic_hours]
        indicators = [i for i, c in enumerate(columns) if rules[c].indicator]
        # Stacked layout: values (k), sin (len(cyclic)), cos, indicators; `order` picks
        # the output layout of `numeric_names` from it.
        order: list[int] = []
        for i, col in enumerate(columns):
            order.append(i)
            if i in cyclic:
                j = cyclic.index(i)
                order += [k + j, k + len(cyclic) + j]
            if rules[col].indicator:
                order.append(k + 2 * len(cyclic) + indicators.index(i))
        return cls(
            columns=columns,
            fills=np.array([rules[c].fill for c in columns], dtype=np.float64),
            log_index=np.array(
                [i for i, c in enumerate(columns) if rules[c].kind in ("log1p", "hours")],
                dtype=np.intp,
            ),
            cyclic_index=np.array(cyclic, dtype=np.intp),
            indicator_index=np.array(indicators, dtype=np.intp),
            order=np.array(order, dtype=np.intp),
        )

    def apply(self, n: int, numeric_of: Callable[[str], np.ndarray]) -> np.ndarray:
        """float32 numeric outputs of `n` rows; `numeric_of(name)` gives float64 values
        with NaN for missing."""
        if not self.columns:
            return np.zeros((n, 0), dtype=np.float32)
        raw = np.empty((n, len(self.columns)), dtype=np.float64)
        for i, col in enumerate(self.columns):
            raw[:, i] = numeric_of(col)
        return self.apply_raw(raw)

    def raw_of_lists(self, columns: Mapping[str, Any]) -> np.ndarray | None:
        """The (n, k) float64 input matrix in one numpy call when every numeric column is a
        list of plain numbers and None (a JSON request), NaN for missing and infinities;
        None otherwise (the caller reads column by column)."""
        lists = [columns[c] for c in self.columns]
        if not all(type(v) is list and _plain_numbers(v) for v in lists):
            return None
        raw = np.array(lists, dtype=np.float64).T
        raw[~np.isfinite(raw)] = np.nan
        return raw

    def apply_raw(self, raw: np.ndarray) -> np.ndarray:
        """float32 numeric outputs of the (n, k) float64 inputs `raw` (NaN: missing)."""
        missing = np.isnan(raw)
        value = np.where(missing, self.fills, raw)
        if self.log_index.size:
            # np.maximum: np.clip's result without its Python wrappers (a request's cost).
            value[:, self.log_index] = np.log1p(np.maximum(value[:, self.log_index], 0.0))
        angle = value[:, self.cyclic_index] * (2.0 * np.pi / 24.0)
        stacked = np.concatenate(
            [value, np.sin(angle), np.cos(angle), missing[:, self.indicator_index]],
            axis=1,
            dtype=np.float64,
        )
        return stacked[:, self.order].astype(np.float32)


class FeatureTransform(BaseModel):
    """A fitted feature transformation (see the module docstring for its rules).

    Build it with `FeatureTransform.fit(train_df, use_case=...)`, apply it with `transform(df)` or
    `transform_records(dicts)`, persist it with `save(path)` / `FeatureTransform.load(path)`.
    """

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    config: TransformConfig
    numeric_rules: dict[str, NumericRule]
    vocabularies: dict[str, list[str]]
    base_rate: float
    label: str
    """The use case's label column (what a trainer learns; `base_rate` is its mean)."""
    cyclic_hours: list[str] = Field(default_factory=list)

    _index: dict[str, dict[str, int]] = PrivateAttr(default_factory=dict)
    _plan: _NumericPlan | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        self._index = {
            col: {key: i + 1 for i, key in enumerate(vocab)}
            for col, vocab in self.vocabularies.items()
        }
        self._plan = _NumericPlan.of(self.numeric_rules, self.cyclic_hours)

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        config: TransformConfig | None = None,
        *,
        use_case: UseCase | str | None = None,
    ) -> FeatureTransform:
        """Learn vocabularies, fill values and the base rate from a training frame.

        `frame` needs every column of the use case's `model_input_columns()` (`use_case`: a
        spec, a registered name, or None for the default); the label is used, when present,
        only as the fill value of missing rates.
        """
        use_case = resolve_use_case(use_case)
        cfg = (config or TransformConfig()).resolved(use_case)
        _check_columns(frame, use_case.model_input_columns())
        if len(frame) == 0:
            raise TransformError("cannot fit the feature transform on an empty frame")
        base_rate = 0.0
        label = use_case.events.label
        if label in frame.columns:
            labels = _numeric_values(frame[label])
            if np.isfinite(labels).any():
                base_rate = float(np.nanmean(labels))
        rules = {
            c: _rule_for(c, frame, base_rate, cfg, use_case) for c in _numeric_columns(use_case)
        }
        vocabularies: dict[str, list[str]] = {}
        crosses = {cross_name(a, b): (a, b) for a, b in cfg.crosses or []}
        key_codes = _frame_key_codes(frame, crosses)
        for col in [*_categorical_columns(use_case), *crosses]:
            keys = key_codes(col)
            counts = keys.counts().tolist()
            kept = [(key, n) for key, n in zip(keys.keys, counts) if n >= cfg.min_count]
            # Frequency order, ties broken by key, so refitting on the same data is stable.
            kept.sort(key=lambda kv: (-kv[1], kv[0]))
            vocabularies[col] = [key for key, _ in kept[: cfg.max_vocab]]
        cyclic = (
            [c for c in use_case.transform.cyclic_hours if c in rules] if cfg.hour_cyclic else []
        )
        return cls(
            config=cfg,
            numeric_rules=rules,
            vocabularies=vocabularies,
            base_rate=base_rate,
            label=label,
            cyclic_hours=cyclic,
        )

    @property
    def numeric_names(self) -> list[str]:
        """Names of the numeric output columns, in output order."""
        names: list[str] = []
        for col, rule in self.numeric_rules.items():
            names.append(col)
            if col in self.cyclic_hours:
                names += [f"{col}_sin", f"{col}_cos"]
            if rule.indicator:
                names.append(f"{col}_missing")
        return names

    @property
    def _crosses(self) -> dict[str, tuple[str, str]]:
        return {cross_name(a, b): (a, b) for a, b in self.config.crosses or []}

    @property
    def input_columns(self) -> list[str]:
        """Raw columns this fitted transform reads (those of `model_input_columns()`)."""
        crosses = self._crosses
        return [*self.numeric_rules, *(c for c in self.vocabularies if c not in crosses)]

    @property
    def categorical_names(self) -> list[str]:
        """Names of the categorical output columns, in output order."""
        return list(self.vocabularies)

    @property
    def cardinalities(self) -> list[int]:
        """Number of codes per categorical output column, the reserved 0 included."""
        return [len(v) + 1 for v in self.vocabularies.values()]

    def transform(self, frame: pd.DataFrame) -> TransformedBatch:
        """Turn raw model inputs into arrays. Extra columns are ignored; rows keep their order.

        Works element by element, so a row's output does not depend on the other rows in
        the batch (the serving path sends one row at a time).
        """
        _check_columns(frame, self.input_columns)
        key_codes = _frame_key_codes(frame, self._crosses)
        return self._assemble(
            len(frame),
            lambda column: _numeric_values(frame[column]),
            lambda column: key_codes(column).lookup(self._index[column], UNKNOWN_INDEX),
        )

    def transform_columns(
        self, columns: Mapping[str, Sequence[Any] | np.ndarray], n: int | None = None
    ) -> TransformedBatch:
        """The serving fast path: raw values per input column (lists of JSON values, or
        numpy arrays from v2 binary tensors), no DataFrame.

        Gives exactly what `transform(pd.DataFrame(columns))` gives (the tests check it
        on random rows with nulls, NaN and unseen categories): each column's values are
        read the way pandas would type that column, then the same `_assemble` runs.
        """
        missing = [c for c in self.input_columns if c not in columns]
        if missing:
            _check_columns(pd.DataFrame(columns={c: [] for c in columns}), self.input_columns)
        if n is None:
            n = len(columns[self.input_columns[0]]) if self.input_columns else 0
        keys: dict[str, list[str | None]] = {}

        def keys_of(column: str) -> list[str | None]:
            if column not in keys:
                keys[column] = _fast_keys(columns[column])
            return keys[column]

        crosses = self._crosses

        def codes_of(column: str) -> list[int]:
            index = self._index[column]
            return [
                index.get(key, UNKNOWN_INDEX) if key is not None else UNKNOWN_INDEX
                for key in _output_keys(keys_of, column, crosses)
            ]

        plan = self._plan or _NumericPlan.of(self.numeric_rules, self.cyclic_hours)
        return self._assemble(
            n, lambda column: _fast_numeric(columns[column]), codes_of, plan.raw_of_lists(columns)
        )

    def _assemble(
        self,
        n: int,
        numeric_of: Callable[[str], np.ndarray],
        codes_of: Callable[[str], Sequence[int] | np.ndarray],
        raw: np.ndarray | None = None,
    ) -> TransformedBatch:
        """The rules of the module docstring over already read columns: `numeric_of(name)`
        gives float64 values with NaN for missing (or `raw` all of them as one matrix),
        `codes_of(name)` the vocabulary codes of a categorical output column."""
        plan = self._plan
        if plan is None:  # a model_construct'ed transform skips model_post_init
            plan = self._plan = _NumericPlan.of(self.numeric_rules, self.cyclic_hours)
        numeric = plan.apply_raw(raw) if raw is not None else plan.apply(n, numeric_of)
        categorical = np.zeros((n, len(self.vocabularies)), dtype=np.int64)
        for j, col in enumerate(self.vocabularies):
            categorical[:, j] = codes_of(col)
        return TransformedBatch(
            numeric, categorical, tuple(self.numeric_names), tuple(self.categorical_names)
        )

    def transform_records(self, records: Sequence[Mapping[str, Any]]) -> TransformedBatch:
        """Transform JSON-like dicts (a request joined with online features), through the
        fast path (`transform_columns`).

        Every input column must be a key of at least one record; None means missing.
        """
        records = list(records)
        present = {key for record in records for key in record}
        columns = {
            c: [record.get(c) for record in records] for c in self.input_columns if c in present
        }
        if len(columns) < len(self.input_columns):
            _check_columns(pd.DataFrame(columns=sorted(present)), self.input_columns)
        return self.transform_columns(columns, len(records))

    def save(self, path: str | Path) -> Path:
        """Write the transform as JSON to `path` (a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureTransform:
        """Read a transform written by `save`."""
        data = json.loads(Path(path).read_text())
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise TransformError(
                f"{path}: transform format_version {version!r} is not {FORMAT_VERSION}; "
                "retrain the model with this kubeloop version"
            )
        return cls.model_validate(data)
