"""A use case: the problem the engine runs, as one typed spec.

The engine (`kubeloop/`) knows no problem by name. A use case lives in `usecases/<name>/`
and declares, in one `UseCase` object registered under the entry-point group
`kubeloop.usecases`:

* the event schema (`EventSchema`): the lake's columns, the entity keys, the label, an
  optional oracle column (the true probability of a synthetic source, scored against but
  never a feature) and the request context (numeric and categorical, with the ranges a
  request may carry);
* the entities and their features (`EntitySpec`): one Feast entity and feature view per
  entity, the offline table's Arrow schema and the DuckDB SQL that builds it from the
  events, plus the feature service's name;
* how the shared transform treats each column (`TransformRules`);
* request-time features (`RequestFeatures`): values computed at the request's own time
  from the request and the latest per-entity state (`StateSpec` tables, one row per event
  instant, materialized into the online store like any view), the same function offline
  at each event's time and online in the transformer;
* the data source: a generator (`SyntheticSource`) or a lake path (`LakeSource`);
* the metrics' slices and the gate's defaults (`MetricsSpec`);
* the request fields a client sends the transformer (`request_fields`);
* the defaults (`Defaults`): registry model name, scenario and the training config every
  run starts from.

Every stage takes the use case as configuration (`--use-case NAME`, default
`DEFAULT_USE_CASE`) and resolves it with `load_use_case(name)`.

What is the engine's and not a use case's: the lake's layout (`<root>/events/day=
YYYY-MM-DD/*.parquet`, `EVENTS_DIR`, `PARTITION_KEY`), the event id and event time columns
(`EVENT_ID`, `EVENT_TIMESTAMP`: Feast's point-in-time join keys every lookup on them) and
the offline tables' `FEATURE_TIMESTAMP`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from types import MappingProxyType
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kubeloop.errors import KubeloopError

DEFAULT_USE_CASE = "ctr"
"""The use case every command runs when `--use-case` is not given (the one place)."""

DEFAULT_MODEL_NAME = DEFAULT_USE_CASE
"""The model (and InferenceService) a serving or rollout command acts on when none is
named: the default use case's model, which is named after it (a test keeps them equal).
A constant rather than a lookup, so that `--help` needs no plug-in loaded."""

TIMESTAMP = pa.timestamp("us", tz="UTC")
EVENTS_DIR = "events"  # <lake root>/events/day=YYYY-MM-DD/part-00000.parquet
PARTITION_KEY = "day"
EVENT_ID = "event_id"
EVENT_TIMESTAMP = "event_timestamp"
# Offline feature tables: one row per entity per feature timestamp. A row at time T
# summarises only events with event_timestamp < T (strictly before).
FEATURE_TIMESTAMP = "feature_timestamp"

NumericKind = Literal["log1p", "rate", "hours"]


class UseCaseError(KubeloopError):
    """A use case is unknown or its spec contradicts itself."""


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class EventSchema:
    """One row of the lake: its columns and the role of each.

    `columns` must hold `EVENT_ID` (int64), `EVENT_TIMESTAMP` (`TIMESTAMP`), every entity
    key, the label, the oracle (if any) and the request context. Other columns (static
    attributes denormalised into the log, say) are allowed and read only by the ETL SQL.
    `context_ranges` bounds the integer request-context values a request may carry.

    Delayed labels: `label_delay` is how long after an event its label is final (a
    chargeback window, say); online evaluation scores an event only once that much time
    has passed since it (the matured cohort, which is unbiased where "positives known so
    far" is not). `label_time`, when set, is the column holding when a positive became
    known (null for negatives): a positive confirmed after the window counts as negative,
    as it would in production. None (the default): labels are known at once."""

    columns: pa.Schema
    entity_keys: tuple[str, ...]
    label: str
    oracle: str | None = None
    context_numeric: tuple[str, ...] = ()
    context_categorical: tuple[str, ...] = ()
    context_ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    label_delay: timedelta | None = None
    label_time: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "context_ranges", _frozen(self.context_ranges))
        names = self.columns.names
        roles = [EVENT_ID, EVENT_TIMESTAMP, *self.entity_keys, self.label]
        roles += [*self.context_numeric, *self.context_categorical]
        if self.oracle is not None:
            roles.append(self.oracle)
        if self.label_time is not None:
            roles.append(self.label_time)
            if self.label_delay is None:
                raise UseCaseError("event schema: label_time needs a label_delay")
        missing = [n for n in roles if n not in names]
        if missing:
            raise UseCaseError(f"event schema lacks the columns {missing} its roles name")
        if self.columns.field(EVENT_TIMESTAMP).type != TIMESTAMP:
            raise UseCaseError(f"event schema: {EVENT_TIMESTAMP} must be {TIMESTAMP}")
        if self.label_delay is not None and self.label_delay <= timedelta(0):
            raise UseCaseError(f"event schema: label_delay {self.label_delay} must be positive")
        unbounded = [c for c in self.context_numeric if c not in self.context_ranges]
        if unbounded:
            raise UseCaseError(f"event schema: context_ranges lacks {unbounded}")

    @property
    def non_null(self) -> tuple[str, ...]:
        """Columns validation requires to have no nulls."""
        return (EVENT_ID, EVENT_TIMESTAMP, *self.entity_keys, self.label)

    @property
    def entity_columns(self) -> list[str]:
        """The columns of the entity dataframe of the point-in-time join: ids and time,
        entity keys, request context, label and oracle."""
        out = [EVENT_ID, EVENT_TIMESTAMP, *self.entity_keys]
        out += [*self.context_numeric, *self.context_categorical, self.label]
        return [*out, self.oracle] if self.oracle is not None else out


@dataclass(frozen=True)
class EntitySpec:
    """One entity: its Feast entity and feature view, the offline table and its SQL.

    `query` is DuckDB SQL over a view named `events` (the lake's columns) that returns the
    table's columns (`feature_schema`: the join key, `FEATURE_TIMESTAMP`, then the
    features). It may use the parameters `$prior_positives` and `$prior_strength` (see
    `kubeloop.features.build.FeatureBuildConfig`). A row at T must summarise only events
    strictly before T, which is what makes the point-in-time join leak-free."""

    name: str
    join_key: str
    feature_view: str
    feature_schema: pa.Schema
    query: str
    description: str = ""
    view_description: str = ""

    def __post_init__(self) -> None:
        names = self.feature_schema.names
        if names[:2] != [self.join_key, FEATURE_TIMESTAMP]:
            raise UseCaseError(
                f"entity {self.name!r}: feature_schema must start with "
                f"[{self.join_key!r}, {FEATURE_TIMESTAMP!r}], got {names[:2]}"
            )

    @property
    def features_file(self) -> str:
        """The offline table's file name inside the features directory."""
        return f"{self.feature_view}.parquet"

    @property
    def features(self) -> list[str]:
        """Feature columns: everything but the join key and timestamp."""
        return [n for n in self.feature_schema.names if n not in (self.join_key, FEATURE_TIMESTAMP)]


def table_schema(join_key: str, columns: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """An offline table's schema: the int64 join key, `FEATURE_TIMESTAMP`, then `columns`
    (the shape `EntitySpec.feature_schema` requires)."""
    return pa.schema([(join_key, pa.int64()), (FEATURE_TIMESTAMP, TIMESTAMP), *columns])


@dataclass(frozen=True)
class StateSpec(EntitySpec):
    """The latest state of one entity, for request-time features: an offline table with one
    row per instant at which the entity had events, stamped with that instant
    (`FEATURE_TIMESTAMP` = the events' `event_timestamp`) and holding the state *after*
    them (last event time, running counts and sums...). `entity` is the `EntitySpec.name`
    whose Feast entity keys it; `name` names the table (it must differ from every
    entity's). A request at time t reads the row of the greatest instant strictly before
    t: offline an as-of join, online the store materialized as of t."""

    entity: str = ""


RequestCompute = Callable[[Mapping[str, Any], Any], dict[str, Any]]
"""`compute(inputs, now_us)`: `inputs` maps every state column (float64 arrays, NaN where
the entity has no state yet) and every request-context column (numeric as float64,
categorical as object arrays) to one value per row; `now_us` is the request time of each
row, epoch microseconds (int64 array). Returns one float64 array per output feature."""


@dataclass(frozen=True)
class RequestFeatures:
    """Features computed at request time from the request and the latest stored state.

    `states` are the state tables; `schema` lists the outputs (name and Arrow type, float64)
    in the order the model reads them; `compute` is the one function both the training-set
    builder (at each event's own time) and the transformer (at the request's time) call.

    `state_freshness_seconds` is how fresh the online store's state is at a request: 0, a
    streaming writer (the state of every event strictly before the request); N > 0, a batch
    materialization every N seconds (the state as of the request's time floored to N, as
    the demo's hourly feed and an hourly materialization job leave it). The training set
    reads the state the same way, so the two never skew; `now` is the request's own time
    in both."""

    states: tuple[StateSpec, ...]
    schema: pa.Schema
    compute: RequestCompute
    state_freshness_seconds: int = 0

    @property
    def features(self) -> list[str]:
        """The output features' names, in order."""
        return list(self.schema.names)


@dataclass(frozen=True)
class TransformRules:
    """How the shared feature transform treats the use case's model inputs.

    `categorical` columns get a vocabulary; a numeric column takes the kind of the first
    `numeric` (fnmatch pattern, kind) that matches its name (`log1p`: a count, missing is
    0; `rate`: missing is the training label rate, flagged; `hours`: a recency, missing is
    a long time, flagged), else the training median. `cyclic_hours` columns also get
    sin/cos of a 24-hour period. `crosses` are the default crossed categorical pairs."""

    categorical: tuple[str, ...] = ()
    numeric: tuple[tuple[str, NumericKind], ...] = ()
    cyclic_hours: tuple[str, ...] = ()
    crosses: tuple[tuple[str, str], ...] = ()

    def numeric_kind(self, column: str) -> NumericKind | None:
        """The kind of `column`'s rule, None for the median-filled default."""
        for pattern, kind in self.numeric:
            if fnmatch.fnmatchcase(column, pattern):
                return kind
        return None


@dataclass(frozen=True)
class DecisionPolicy:
    """A use case that acts on a score (alerts, blocks) sets how its decision threshold is
    chosen and what a decision costs.

    The threshold is chosen offline, on the validation split, so that a share
    `alert_budget` of rows score at or above it, and is stored with the model version.
    Evaluation reports, at that threshold, precision, recall and the expected cost: each
    missed positive costs its `value_column` (or 1 without one) and each alert costs
    `review_cost`; and the recall at `min_precision` (the best threshold that keeps
    precision at least that)."""

    alert_budget: float
    min_precision: float = 0.5
    value_column: str | None = None
    review_cost: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.alert_budget < 1:
            raise UseCaseError(f"decision policy: alert_budget {self.alert_budget} not in (0, 1)")
        if not 0 < self.min_precision <= 1:
            raise UseCaseError(f"decision policy: min_precision {self.min_precision} not in (0, 1]")


@dataclass(frozen=True)
class MetricsSpec:
    """What evaluation slices by, and the gate's defaults for this use case.

    `slices` are columns of the holdout whose values each get their own scores;
    `seen_entities` name entities whose holdout rows are sliced into "seen" (the key is in
    the training split) and "new". `gate` holds `GateConfig` keys applied under the run's
    own gate config. `decision`, when set, adds a decision threshold and its figures."""

    slices: tuple[str, ...] = ()
    seen_entities: tuple[str, ...] = ()
    gate: Mapping[str, Any] = field(default_factory=dict)
    decision: DecisionPolicy | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "gate", _frozen(self.gate))


class SyntheticConfig(BaseModel):
    """What every synthetic source's config has: the stages (demo, pipeline) read these
    fields; a source's own config class subclasses this one, gives `events`, `days`,
    `seed`, `scenario` and `change_day` its defaults and adds its knobs."""

    model_config = ConfigDict(extra="forbid")

    events: int
    days: int
    seed: int
    start_date: date = Field(date(2026, 1, 5), description="Date of the first partition (UTC).")
    scenario: str
    change_day: int
    chunk_size: int = Field(
        500_000,
        gt=0,
        description="Most rows generated and written (as one row group) at a time; bounds "
        "memory (runs of whole minutes: only a minute holding more rows can exceed it).",
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> SyntheticConfig:
        if self.events < self.days:
            raise ValueError(
                f"events ({self.events}) must be at least days ({self.days}) so every day "
                "partition has an event"
            )
        if self.scenario != "baseline" and not 0 < self.change_day < self.days:
            raise ValueError(
                f"change_day ({self.change_day}) must satisfy 0 < change_day < days "
                f"({self.days}) for scenario {self.scenario!r}: the lake needs days both "
                "before and after the change"
            )
        return self

    def day_dates(self) -> list[date]:
        """The date of every partition, in order."""
        return [self.start_date + timedelta(days=i) for i in range(self.days)]

    def day_sizes(self) -> list[int]:
        """Events per day: an even split of `events`, the remainder to the first days."""
        base, extra = divmod(self.events, self.days)
        return [base + (1 if i < extra else 0) for i in range(self.days)]


class GenerationSummary(BaseModel):
    """What a synthetic source's `generate` did (its own class may add fields)."""

    model_config = ConfigDict(extra="forbid")

    events: int
    days: int
    partitions: int
    scenario: str
    seconds: float
    lake: str
    seed: int
    change_day: int | None
    events_per_second: float

    def label_stats(self) -> dict[str, float]:
        """The label and oracle figures the run report's `data` section shows."""
        return {}


@dataclass(frozen=True)
class SyntheticSource:
    """A seeded generator: the lake is written by `generate(config, lake_root, progress)`,
    and `iter_day_tables(config)` yields the same rows day by day (what the demo replays)."""

    config_class: type[SyntheticConfig]
    generate: Callable[[Any, str, bool], GenerationSummary]
    iter_day_tables: Callable[[Any], Iterator[tuple[date, pa.Table]]]
    scenarios: tuple[str, ...] = ("baseline",)


@dataclass(frozen=True)
class LakeSource:
    """Real data: a lake already written in the engine's layout at `path` (a local path
    or an fsspec URL), read-only to kubeloop."""

    path: str


@dataclass(frozen=True)
class Defaults:
    """What a run uses when not told otherwise.

    `training` holds `TrainingConfig` keys (split settings, and a model kind's section of
    hyperparameters under the kind's name) that every training run of the use case starts
    from: the train, evaluate and register steps lay the run's own training config over
    them, a model kind's section key by key (`TrainingConfig.over_defaults`). Settings that
    suit one problem's data (its label rate, its features' signal) belong here rather
    than in the engine's defaults, which every use case shares."""

    model_name: str
    scenario: str = "baseline"
    training: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Frozen one level down too: a kind's section is a mapping of its own.
        sections = {
            key: _frozen(value) if isinstance(value, Mapping) else value
            for key, value in self.training.items()
        }
        object.__setattr__(self, "training", _frozen(sections))


@dataclass(frozen=True, eq=False)
class UseCase:
    """One problem for the engine to run (see the module docstring). Compared and hashed by
    identity: a registered use case is one object, so derived tables can be cached on it."""

    name: str
    description: str
    events: EventSchema
    entities: tuple[EntitySpec, ...]
    feature_service: str
    transform: TransformRules
    source: SyntheticSource | LakeSource
    defaults: Defaults
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    request_fields: tuple[str, ...] = ()
    """What a client sends per row (the order a replay writes them in): every join key and
    request-context column. Empty: join keys, then numeric, then categorical context."""
    request_features: RequestFeatures | None = None

    def __post_init__(self) -> None:
        keys = tuple(e.join_key for e in self.entities)
        entity_names = {e.name for e in self.entities}
        for state in self.state_tables:
            if state.entity not in entity_names or state.name in entity_names:
                raise UseCaseError(
                    f"use case {self.name!r}: state table {state.name!r} must name one of the "
                    f"entities {sorted(entity_names)} and be named differently from them"
                )
            if state.join_key != self.entity(state.entity).join_key:
                raise UseCaseError(
                    f"use case {self.name!r}: state table {state.name!r} is keyed by "
                    f"{state.join_key!r}, not its entity's join key"
                )
        expected = [*keys, *self.events.context_numeric, *self.events.context_categorical]
        if not self.request_fields:
            object.__setattr__(self, "request_fields", tuple(expected))
        elif sorted(self.request_fields) != sorted(expected):
            raise UseCaseError(
                f"use case {self.name!r}: request_fields {list(self.request_fields)} must be "
                f"the join keys and request context {expected}, in any order"
            )
        if keys != self.events.entity_keys:
            raise UseCaseError(
                f"use case {self.name!r}: entities' join keys {list(keys)} are not the event "
                f"schema's entity keys {list(self.events.entity_keys)}"
            )
        names = set(self.feature_columns) | set(self.events.columns.names)
        unknown = [c for c in self.transform.categorical if c not in names]
        unknown += [c for pair in self.transform.crosses for c in pair if c not in names]
        if unknown:
            raise UseCaseError(f"use case {self.name!r}: transform names unknown columns {unknown}")
        decision = self.metrics.decision
        if decision is not None and decision.value_column not in (None, *self.events.columns.names):
            raise UseCaseError(
                f"use case {self.name!r}: decision value_column {decision.value_column!r} "
                "is not an event column"
            )

    def entity(self, name: str) -> EntitySpec:
        """The entity called `name`."""
        for spec in self.entities:
            if spec.name == name:
                return spec
        raise UseCaseError(f"use case {self.name!r} has no entity {name!r}")

    @property
    def join_keys(self) -> list[str]:
        """Every entity's join key, in entity order (what a request carries)."""
        return [e.join_key for e in self.entities]

    @property
    def state_tables(self) -> tuple[StateSpec, ...]:
        """The request-time features' state tables (none without request features)."""
        return self.request_features.states if self.request_features is not None else ()

    @property
    def tables(self) -> tuple[EntitySpec, ...]:
        """Every offline table the feature build writes and materialization loads: each
        entity's feature table, then each state table."""
        return (*self.entities, *self.state_tables)

    @property
    def request_feature_columns(self) -> list[str]:
        """The request-time features' names (empty without request features)."""
        return self.request_features.features if self.request_features is not None else []

    @property
    def feature_columns(self) -> list[str]:
        """Every feature of every entity, in entity order (the feature service's), then the
        request-time features."""
        return [name for e in self.entities for name in e.features] + self.request_feature_columns

    @property
    def training_columns(self) -> list[str]:
        """Columns of the training set: the entity dataframe's plus every feature."""
        return [*self.events.entity_columns, *self.feature_columns]

    def model_input_columns(self) -> list[str]:
        """Raw columns a model reads, in a fixed order: the request context, then each
        entity's features. Ids, label, oracle and timestamps are never inputs."""
        ctx = [*self.events.context_numeric, *self.events.context_categorical]
        return [*ctx, *self.feature_columns]

    def column_types(self) -> dict[str, pa.DataType]:
        """The Arrow type of every event and feature column by name."""
        types = {f.name: f.type for f in self.events.columns}
        for spec in self.entities:
            types.update({f.name: f.type for f in spec.feature_schema})
        if self.request_features is not None:
            types.update({f.name: f.type for f in self.request_features.schema})
        return types

    def training_schema(self) -> pa.Schema:
        """Arrow schema of the training set: `training_columns` with their types."""
        types = self.column_types()
        return pa.schema([(name, types[name]) for name in self.training_columns])

    @property
    def synthetic(self) -> SyntheticSource:
        """The generator; a one-line error for a use case that reads a real lake."""
        if not isinstance(self.source, SyntheticSource):
            raise UseCaseError(
                f"use case {self.name!r} reads a lake ({self.source.path}) and has no generator; "
                "generating data needs a synthetic use case"
            )
        return self.source

    def generator_config(self, data: Mapping[str, Any] | SyntheticConfig | None) -> SyntheticConfig:
        """`data` as the generator's own typed config (its defaults where unset)."""
        config_class = self.synthetic.config_class
        if isinstance(data, config_class):
            return data
        if isinstance(data, BaseModel):
            data = data.model_dump(exclude_unset=True)
        return config_class.model_validate(dict(data or {}))


def load_use_case(name: str) -> UseCase:
    """The use case registered as `name` (entry-point group `kubeloop.usecases`)."""
    from kubeloop import plugins

    found = plugins.load(plugins.USECASES, name)
    if not isinstance(found, UseCase):
        raise UseCaseError(f"use case {name!r} is a {type(found).__name__}, not a UseCase")
    return found


def resolve_use_case(use_case: UseCase | str | None) -> UseCase:
    """A UseCase from a spec, a registered name, or None (`DEFAULT_USE_CASE`)."""
    if isinstance(use_case, UseCase):
        return use_case
    return load_use_case(use_case or DEFAULT_USE_CASE)


def use_case_names() -> list[str]:
    """Names of the registered use cases (nothing is imported)."""
    from kubeloop import plugins

    return plugins.names(plugins.USECASES)
