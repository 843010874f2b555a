"""Online lookup of the feature service: `online_features` (Feast's
`get_online_features`, a DataFrame) and `OnlineReader`, the serving transformer's path
(Feast's online-store read, resolved once, no DataFrame)."""

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
    store: FeatureStore,
    rows: list[dict[str, Any]],
    *,
    use_case: UseCase | str | None = None,
    now: int | None = None,
) -> pd.DataFrame:
    """Look up every feature of the use case's feature service for each row's join keys.

    Returns one row per input row, in input order, with columns `online_columns()` (join
    keys, then each entity's features, in entity order). An entity the online store does
    not hold gets nulls; integer features use pandas' nullable Int64 so a missing value
    does not turn a column into floats. Request-time features are computed at `now` (epoch
    microseconds; the clock when None) from the state views and each row's context.
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
    request = use_case.request_feature_columns
    frame = response.to_df()[[c for c in columns if c not in request]]
    for name in _integer_features(use_case):
        frame[name] = frame[name].astype("Int64")
    if use_case.request_features is not None:
        from kubeloop.features.request_time import online_request_features

        refs = [f"{s.feature_view}:{n}" for s in use_case.state_tables for n in s.features]
        state = store.get_online_features(
            features=refs, entity_rows=entity_rows, full_feature_names=False
        ).to_dict()
        names = [n for s in use_case.state_tables for n in s.features]
        computed = online_request_features(use_case, rows, {n: state[n] for n in names}, now)
        for name in request:
            frame[name] = pd.array(computed[name], dtype="Float64")
    return frame[columns]


def _python_value(value: Any) -> Any:
    """A Feast ValueProto as a Python scalar (None when unset or null); non-scalar kinds
    go through Feast's own converter."""
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    if kind.endswith("_list_val"):
        from feast.type_map import feast_value_type_to_python_type

        return feast_value_type_to_python_type(value)
    return getattr(value, kind)


class OnlineReader:
    """The use case's feature service read through Feast's online-store read API.

    Resolved once (`OnlineReader(store, use_case)`): the feature views of the service,
    their join keys and their entity value types, and the provider whose online store
    keeps its connection (SQLite) or client pool (Redis) between calls. `read(rows)` then
    makes one `online_read` per feature view for the whole batch (each distinct entity
    once), with no registry lookup
    and no DataFrame, and returns one list of Python values per column of
    `online_columns()`. Same values as `online_features` (tests/test_feature_store.py);
    integers stay ints, a missing entity or feature is None.
    """

    def __init__(self, store: FeatureStore, use_case: UseCase | str | None = None):
        self.store = store
        self.use_case = resolve_use_case(use_case)
        self.columns = online_columns(self.use_case)
        self.join_keys = list(self.use_case.join_keys)
        service = store.get_feature_service(self.use_case.feature_service)
        self._provider = store._get_provider()  # Feast's own: holds the store's connection
        self._views: list[tuple[Any, str, Any, list[str]]] = []
        for projection in service.feature_view_projections:
            if projection.join_key_map or projection.name_alias:
                raise FeatureStoreError(
                    f"feature service {service.name!r}: projection {projection.name!r} renames "
                    "columns or join keys, which the online reader does not support"
                )
            view = store.get_feature_view(projection.name)
            self._views.append(self._resolved(view, [f.name for f in projection.features]))
        # The request-time features' state tables: read like a view, never model inputs.
        for state in self.use_case.state_tables:
            view = store.get_feature_view(state.feature_view)
            self._views.append(self._resolved(view, list(state.features)))

    def _resolved(self, view: Any, features: list[str]) -> tuple[Any, str, Any, list[str]]:
        keys = [c.name for c in view.entity_columns]
        if len(keys) != 1 or keys[0] not in self.join_keys:
            raise FeatureStoreError(
                f"feature view {view.name!r}: the online reader needs one join key among "
                f"{self.join_keys}, it has {keys}"
            )
        return view, keys[0], view.entity_columns[0].dtype.to_value_type(), features

    def _entity_keys(self, join_key: str, value_type: Any, ids: list[int]) -> list[Any]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.value_type import ValueType

        if value_type == ValueType.INT64:
            values = [Value(int64_val=i) for i in ids]
        else:
            from feast.type_map import python_values_to_proto_values

            values = python_values_to_proto_values(ids, value_type)
        return [EntityKey(join_keys=[join_key], entity_values=[v]) for v in values]

    def read(self, rows: list[dict[str, Any]], now: int | None = None) -> dict[str, list[Any]]:
        """Every column of `online_columns()` for `rows` (their join keys), in input
        order: one `online_read` per feature view for the batch; the request-time features
        at `now` (epoch microseconds; the clock when None) from the state views' values and
        the rows' request context."""
        ids: dict[str, list[int]] = {k: [] for k in self.join_keys}
        for i, row in enumerate(rows):
            missing = [k for k in self.join_keys if row.get(k) is None]
            if missing:
                raise FeatureStoreError(f"entity row {i} has no {', '.join(missing)}: {row}")
            for k in self.join_keys:
                ids[k].append(int(row[k]))
        out: dict[str, list[Any]] = dict(ids)
        config = self.store.config
        for view, join_key, value_type, features in self._views:
            if not rows:
                for name in features:
                    out[name] = []
                continue
            # Each distinct entity once (a batch often repeats a user or an ad).
            position: dict[int, int] = {}
            for entity_id in ids[join_key]:
                position.setdefault(entity_id, len(position))
            keys = self._entity_keys(join_key, value_type, list(position))
            answers = self._provider.online_read(
                config=config, table=view, entity_keys=keys, requested_features=features
            )
            if len(answers) != len(keys):
                raise FeatureStoreError(
                    f"the online store answered {len(answers)} rows for {len(keys)} entities"
                )
            order = [position[entity_id] for entity_id in ids[join_key]]
            for name in features:
                distinct = [
                    _python_value(values[name]) if values is not None and name in values else None
                    for _, values in answers
                ]
                out[name] = [distinct[i] for i in order]
        if self.use_case.request_features is not None:
            from kubeloop.features.request_time import online_request_features

            state = {name: out[name] for s in self.use_case.state_tables for name in s.features}
            out.update(online_request_features(self.use_case, rows, state, now))
        return {name: out.get(name, [None] * len(rows)) for name in self.columns}
