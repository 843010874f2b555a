"""The Feast objects of a use case: one entity and one feature view per `EntitySpec`, and
the feature service over every view.

They are built by a function, not declared at module level, because the offline tables'
location is only known at run time (a workdir, a pipeline artifact), and a module-level
FileSource would freeze one path at import.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow as pa

from kubeloop.usecase import FEATURE_TIMESTAMP, EntitySpec, UseCase, resolve_use_case

# A feature row summarises up to 7 days of history and the ETL writes one row per
# entity per day, so a row older than 8 days is stale; the extra day covers an event
# late on the day after the last snapshot. The point-in-time join returns nulls past it.
DEFAULT_TTL = timedelta(days=8)


def _feast_dtype(arrow_type: pa.DataType):
    from feast.types import Float64, Int64, String

    if pa.types.is_int64(arrow_type):
        return Int64
    if pa.types.is_float64(arrow_type):
        return Float64
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return String
    raise TypeError(f"no Feast type for Arrow type {arrow_type}")


def _value_type(arrow_type: pa.DataType):
    from feast import ValueType

    if pa.types.is_int64(arrow_type):
        return ValueType.INT64
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return ValueType.STRING
    raise TypeError(f"no Feast join-key type for Arrow type {arrow_type}")


def _fields(table_schema: pa.Schema) -> list:
    from feast import Field

    # The join key is listed too: Feast then records it as the entity column instead of
    # inferring it by reading the file at apply time.
    return [
        Field(name=f.name, dtype=_feast_dtype(f.type))
        for f in table_schema
        if f.name != FEATURE_TIMESTAMP
    ]


def build_definitions(
    features_dir: str | Path,
    ttl: timedelta = DEFAULT_TTL,
    *,
    use_case: UseCase | str | None = None,
) -> list:
    """Build the Feast objects of `use_case` (a spec, a registered name, or None for the
    default) over the offline tables in `features_dir`.

    Returns, in this order: every entity (its `join_key`), then every feature view
    (`feature_view`, over `<feature_view>.parquet`, timestamp field `FEATURE_TIMESTAMP`),
    then every request-time state view (no ttl; not in the service: its columns are the
    request-time features' inputs, not the model's), then the feature service
    `use_case.feature_service` with every feature of every entity view. Paths are stored absolute, so the registry works from any current directory.
    """
    from feast import Entity, FeatureService, FeatureView, FileSource

    if ttl < timedelta(days=8):
        raise ValueError(f"ttl must be at least 8 days (a 7-day window plus a day), got {ttl}")
    use_case = resolve_use_case(use_case)
    root = Path(features_dir).expanduser().resolve()

    entities = {
        spec.name: Entity(
            name=spec.name,
            join_keys=[spec.join_key],
            value_type=_value_type(spec.feature_schema.field(spec.join_key).type),
            description=spec.description,
        )
        for spec in use_case.entities
    }

    def view(spec: EntitySpec, entity: str, view_ttl: timedelta) -> FeatureView:
        source = FileSource(
            name=f"{spec.feature_view}_source",
            path=str(root / spec.features_file),
            timestamp_field=FEATURE_TIMESTAMP,
        )
        return FeatureView(
            name=spec.feature_view,
            entities=[entities[entity]],
            ttl=view_ttl,
            schema=_fields(spec.feature_schema),
            source=source,
            online=True,
            description=spec.view_description,
        )

    views = [view(spec, spec.name, ttl) for spec in use_case.entities]
    # A state row stays the entity's state however old it is (a card's last transaction
    # a month ago is still its last): no ttl.
    states = [view(spec, spec.entity, timedelta(0)) for spec in use_case.state_tables]
    service = FeatureService(
        name=use_case.feature_service,
        features=views,
        description=f"Every feature the {use_case.name} model reads.",
    )
    return [*entities.values(), *views, *states, service]
