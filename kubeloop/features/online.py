"""Online lookup of the feature service, as the serving transformer does it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from kubeloop.errors import FeatureStoreError
from kubeloop.usecase import UseCase, resolve_use_case

if TYPE_CHECKING:
    from feast import FeatureStore


def online_columns(use_case: UseCase | str | None = None) -> list[str]:
    """Columns of `online_features`: the join keys, then every entity's features."""
    use_case = resolve_use_case(use_case)
    return [*use_case.join_keys, *use_case.feature_columns]


def _integer_features(use_case: UseCase) -> list[str]:
    return [
        f.name
        for spec in use_case.entities
        for f in spec.feature_schema
        if pa.types.is_integer(f.type) and f.name in spec.features
    ]


def online_features(
    store: FeatureStore, rows: list[dict[str, Any]], *, use_case: UseCase | str | None = None
) -> pd.DataFrame:
    """Look up every feature of the use case's feature service for each row's join keys.

    Returns one row per input row, in input order, with columns `online_columns()` (join
    keys, then each entity's features, in entity order). An entity the online store does
    not hold gets nulls; integer features use pandas' nullable Int64 so a missing value
    does not turn a column into floats.
    """
    use_case = resolve_use_case(use_case)
    columns = online_columns(use_case)
    join_keys = use_case.join_keys
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype="object") for name in columns})
    entity_rows = []
    for i, row in enumerate(rows):
        missing = [k for k in join_keys if row.get(k) is None]
        if missing:
            raise FeatureStoreError(f"entity row {i} has no {', '.join(missing)}: {row}")
        entity_rows.append({k: int(row[k]) for k in join_keys})

    service = store.get_feature_service(use_case.feature_service)
    response = store.get_online_features(
        features=service, entity_rows=entity_rows, full_feature_names=False
    )
    frame = response.to_df()[columns]
    for name in _integer_features(use_case):
        frame[name] = frame[name].astype("Int64")
    return frame
