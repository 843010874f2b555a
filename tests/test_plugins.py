"""The engine's one plug-in table (kubeloop/plugins.py): every group's entry points load,
an unknown name is one line naming the known ones, and no other name -> class table is
written by hand anywhere in kubeloop/."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel, ValidationError

from kubeloop import plugins

ENGINE = Path(plugins.__file__).resolve().parent

# What each group's plug-ins must be (kubeloop/plugins.py's docstring).
BACKEND_GROUPS = (plugins.REGISTRIES, plugins.DRIFT_DETECTORS, plugins.ALERT_STORES)


def _type_default(config_class: type[BaseModel]) -> str:
    field = config_class.model_fields["type"]
    assert len(get_args(field.annotation)) == 1, "a backend config's type is one Literal"
    return field.default


def test_every_group_declares_names_and_every_entry_point_loads():
    from kubeloop.training.model_kind import ModelKind

    assert set(plugins.GROUPS) == {
        "model_kinds",
        "registries",
        "pipelines",
        "drift_detectors",
        "alert_stores",
        "online_stores",
        "offline_stores",
        "usecases",
    }
    for group in plugins.GROUPS.values():
        assert plugins.names(group), f"{group.entry_point_group} declares nothing"
        for name in plugins.names(group):
            declared = plugins.declared(group, name)
            assert re.fullmatch(r"[\w.]+:[\w.]+", declared), (group.name, name, declared)
            obj = plugins.load(group, name)
            if group is plugins.MODEL_KINDS:
                assert isinstance(obj, ModelKind) and obj.name == name
            elif group in BACKEND_GROUPS:
                assert isinstance(obj, plugins.Backend)
                assert issubclass(obj.config_class, BaseModel)
                assert obj.config_class.model_config.get("extra") == "forbid"
                assert _type_default(obj.config_class) == name
                assert isinstance(plugins.resolve(obj.factory), type), obj.factory
            elif group is plugins.ONLINE_STORES:
                assert issubclass(obj, BaseModel)
                assert obj.model_config.get("extra") == "forbid"
                assert _type_default(obj) == name and obj().feast_config()["type"]
            elif group is plugins.OFFLINE_STORES:
                from feast.infra.offline_stores.offline_store import OfflineStore

                assert issubclass(obj, OfflineStore)
            elif group is plugins.USECASES:
                from kubeloop.usecase import UseCase

                assert isinstance(obj, UseCase) and obj.name == name
            else:
                assert callable(obj)


@pytest.mark.parametrize("group", list(plugins.GROUPS.values()), ids=lambda g: g.name)
def test_unknown_name_is_one_line_naming_the_known_ones(group):
    with pytest.raises(plugins.PluginError) as info:
        plugins.load(group, "nope")
    message = str(info.value)
    assert message == f"unknown {group.noun} 'nope'; known: {', '.join(plugins.names(group))}"
    assert "\n" not in message
    with pytest.raises(plugins.PluginError, match="; known: "):
        plugins.check_name(group, "nope")


def test_the_fronts_report_the_table_error():
    from kubeloop.drift.backends import DriftConfigError, make_alert_store, make_detector
    from kubeloop.errors import FeatureStoreError
    from kubeloop.features.store import FeatureStoreSettings, online_store_config

    with pytest.raises(
        DriftConfigError, match="^unknown drift detector type 'mmd'; known: alibi, scipy$"
    ):
        make_detector({"type": "mmd"})
    with pytest.raises(
        DriftConfigError, match="^unknown alert store type 'mysql'; known: postgres, sqlite$"
    ):
        make_alert_store({"type": "mysql"})
    with pytest.raises(
        FeatureStoreError, match="^unknown online store 'memcached'; known: redis, sqlite$"
    ):
        online_store_config("memcached")
    with pytest.raises(ValidationError, match="unknown offline store 'spark'; known: asof, file"):
        FeatureStoreSettings(offline_store="spark")


def test_feature_store_yaml_names_offline_stores_as_feast_does():
    from kubeloop.features.training_set import ASOF_OFFLINE_STORE

    assert plugins.feast_type("file") == "file"
    assert plugins.feast_type("asof") == ASOF_OFFLINE_STORE
    for name in plugins.names(plugins.OFFLINE_STORES):
        assert plugins.offline_store_name(plugins.feast_type(name)) == name
    assert plugins.offline_store_name("feast.infra.offline_stores.dask.DaskOfflineStore") == "file"
    assert plugins.offline_store_name("bigquery") is None


# --- no second table --------------------------------------------------------------------

_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.\w+)+[.:][A-Z]\w*")


def _names_a_class(node: ast.expr) -> bool:
    """A class by name (CamelCase, not a CONSTANT) or by "pkg.mod:Cls"/"pkg.mod.Cls" path,
    alone or inside a tuple/list."""
    if isinstance(node, ast.Tuple | ast.List):
        return any(_names_a_class(elt) for elt in node.elts)
    if isinstance(node, ast.Name | ast.Attribute):
        name = node.id if isinstance(node, ast.Name) else node.attr
        return name[:1].isupper() and not name.isupper() and any(c.islower() for c in name)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(_CLASS_PATH.fullmatch(node.value))
    return False


def _hand_written_tables(source: str) -> list[str]:
    """Module-level dicts (literal or dict(...)) mapping names to classes or class paths."""
    found = []
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        else:
            continue
        if isinstance(value, ast.Dict):
            values = value.values
        elif isinstance(value, ast.Call) and getattr(value.func, "id", None) == "dict":
            values = [kw.value for kw in value.keywords]
        else:
            continue
        if any(_names_a_class(v) for v in values if v is not None):
            found.extend(ast.unparse(t) for t in targets)
    return found


def test_the_scan_finds_the_tables_it_replaced():
    old = """
_DETECTORS: dict[str, tuple[type[BaseModel], str]] = {
    "alibi": (AlibiDetectorConfig, "kubeloop.drift.detectors.alibi.AlibiDriftDetector"),
}
OFFLINE_STORES: dict[str, str] = {"file": "file", "asof": "kubeloop.features.training_set.AsofFileOfflineStore"}
ONLINE_STORES = {"sqlite": SqliteStoreConfig, "redis": RedisStoreConfig}
BACKENDS = dict(bentoml="kubeloop.registry.bentoml_store:BentoMLRegistry")
WIRE_DATATYPE: dict[str, str] = {"int": "INT64", "number": "FP64"}
RENDERERS = {"features": render_features}
LIMITS = {"a": MAX_ROWS}
"""
    assert _hand_written_tables(old) == [
        "_DETECTORS",
        "OFFLINE_STORES",
        "ONLINE_STORES",
        "BACKENDS",
    ]


def test_no_other_hand_written_name_to_class_table_in_the_engine():
    tables = {
        str(path.relative_to(ENGINE.parent)): found
        for path in sorted(ENGINE.rglob("*.py"))
        if path != ENGINE / "plugins.py"
        and (found := _hand_written_tables(path.read_text(encoding="utf-8")))
    }
    assert tables == {}, (
        "a backend table outside kubeloop/plugins.py: declare each backend as an entry "
        "point (pyproject.toml) in a kubeloop.plugins group instead"
    )
