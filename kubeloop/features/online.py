"""Online lookup of the feature service, as the serving transformer does it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from kubeloop import schema
from kubeloop.errors import FeatureStoreError

if TYPE_CHECKING:
    from feast import FeatureStore

JOIN_KEYS = ["user_id", "ad_id"]
ONLINE_COLUMNS = [*JOIN_KEYS, *schema.USER_FEATURES, *schema.AD_FEATURES]


def _integer_features() -> list[str]:
    return [
        f.name
        for table_schema in (schema.USER_FEATURE_SCHEMA, schema.AD_FEATURE_SCHEMA)
        for f in table_schema
        if pa.types.is_integer(f.type) and f.name in ONLINE_COLUMNS
    ]


def online_features(store: FeatureStore, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Look up every feature of the feature service for each (user_id, ad_id) in `rows`.

    Returns one row per input row, in input order, with columns `ONLINE_COLUMNS`
    (join keys, then user features, then ad features, as in kubeloop.schema). An
    entity the online store does not hold gets nulls; integer features use pandas'
    nullable Int64 so a missing value does not turn a column into floats.
    """
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype="object") for name in ONLINE_COLUMNS})
    entity_rows = []
    for i, row in enumerate(rows):
        missing = [k for k in JOIN_KEYS if row.get(k) is None]
        if missing:
            raise FeatureStoreError(f"entity row {i} has no {', '.join(missing)}: {row}")
        entity_rows.append({k: int(row[k]) for k in JOIN_KEYS})

    service = store.get_feature_service(schema.FEATURE_SERVICE)
    response = store.get_online_features(
        features=service, entity_rows=entity_rows, full_feature_names=False
    )
    frame = response.to_df()[ONLINE_COLUMNS]
    for name in _integer_features():
        frame[name] = frame[name].astype("Int64")
    return frame
