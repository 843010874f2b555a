"""An event schema declared as data: a YAML file that names each column of the lake once,
with its type, and gives the columns their roles (`kubeloop.usecase.EventSchema`).

The lake's columns are the contract a data team owns, so a team can declare them without
writing pyarrow code, and the request context carries its range beside its name instead of
in a second list that must agree with the first:

```yaml
columns:                 # in lake order: name -> type (see COLUMN_TYPES)
  event_id: int64
  event_timestamp: timestamp
  customer_id: int64
  basket_value: int64
  channel: string
  purchased: int64
entity_keys: [customer_id]   # the entities' join keys, in entity order
label: purchased
oracle: null             # a column of true probabilities, when the data is synthetic
context:                 # what a request carries with it, never looked up
  numeric: {basket_value: [0, 100000]}   # each with the range a request may carry
  categorical: [channel]
label_delay: null        # e.g. 10d (kubeloop.duration's grammar), with label_time
label_time: null
```

`load_event_schema(path)` reads it through `EventSchemaFile` (unknown keys are errors) and
returns the `EventSchema`, which checks the roles against the columns."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kubeloop.errors import KubeloopError
from kubeloop.usecase import TIMESTAMP, EventSchema, UseCaseError

# The column types a file may name, and their Arrow types in the lake.
COLUMN_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float64": pa.float64(),
    "float32": pa.float32(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": TIMESTAMP,
}
ColumnType = Literal["int64", "int32", "float64", "float32", "string", "bool", "timestamp"]


class RequestContext(BaseModel):
    """The columns a request carries with it (never looked up in the online store)."""

    model_config = ConfigDict(extra="forbid")

    numeric: dict[str, tuple[int, int]] = Field(
        default_factory=dict, description="integer context columns, each with its [low, high]"
    )
    categorical: list[str] = Field(default_factory=list)


class EventSchemaFile(BaseModel):
    """The YAML form of `kubeloop.usecase.EventSchema` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    columns: dict[str, ColumnType] = Field(description="every column in lake order: name -> type")
    entity_keys: list[str]
    label: str
    oracle: str | None = None
    context: RequestContext = Field(default_factory=RequestContext)
    label_delay: str | None = Field(
        None, description="how long until a label is final, e.g. 10d (kubeloop.duration)"
    )
    label_time: str | None = None

    def event_schema(self) -> EventSchema:
        """The engine's event schema (which checks every role names a column)."""
        from kubeloop.duration import parse_duration

        return EventSchema(
            columns=pa.schema([(name, COLUMN_TYPES[kind]) for name, kind in self.columns.items()]),
            entity_keys=tuple(self.entity_keys),
            label=self.label,
            oracle=self.oracle,
            context_numeric=tuple(self.context.numeric),
            context_categorical=tuple(self.context.categorical),
            context_ranges=self.context.numeric,
            label_delay=parse_duration(self.label_delay) if self.label_delay else None,
            label_time=self.label_time,
        )


def load_event_schema(path: str | Path) -> EventSchema:
    """The event schema declared in the YAML file `path`; a `UseCaseError` naming the file
    and the problem for a file that cannot be read or does not declare one."""
    import yaml

    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text())
        return EventSchemaFile.model_validate(data).event_schema()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors()
        )
        raise UseCaseError(f"event schema {source}: {problems}") from None
    except (OSError, yaml.YAMLError, KubeloopError) as exc:
        raise UseCaseError(f"event schema {source}: {exc}") from None
