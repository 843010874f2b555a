"""The Feast repository of a run: online store backends, settings and feature_store.yaml.

Online stores are pluggable by short name, each with a typed config that forbids unknown
keys (the pattern of feast's own `repo_config.py`): SQLite is the embedded default and
needs no service; Redis is what the cluster runs. Online and offline stores are found
through the engine's one plug-in table (`kubeloop.plugins`, entry-point groups
`kubeloop.online_stores` and `kubeloop.offline_stores`): another online store is one
config class with a `Literal` `type` and `feast_config()`, plus one entry point. The
repository directory holds `feature_store.yaml`, the file registry and (for SQLite) the
online database, so the real `feast -c DIR ...` command works on it as well.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    SerializeAsAny,
    ValidationError,
    field_validator,
)

from kubeloop import plugins
from kubeloop.atomic import atomic_write_text
from kubeloop.errors import FeatureStoreError
from kubeloop.usecase import UseCase

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

FEATURE_STORE_YAML = "feature_store.yaml"
# Written beside feature_store.yaml so `feast -c DIR apply` registers the same objects
# as `kubeloop features apply`; Feast imports every .py file of a repo and collects the
# module-level objects.
REPO_DEFINITIONS_PY = "kubeloop_definitions.py"

# Offline stores are the plug-in group `kubeloop.offline_stores`. "file" is Feast's own
# Dask store; "asof" is the same store with kubeloop's as-of merge for historical
# retrieval (see kubeloop/features/training_set.py: Feast 0.47's Dask join drops and
# merges rows and is slow at demo scale). feature_store.yaml names each as Feast does
# (`plugins.feast_type`): "file", or the custom store's dotted class path.

# v1 (Feast's default) mis-serialises int64 keys and makes Feast warn; v2 is the
# version Feast recommends for new projects and both backends below read it.
ENTITY_KEY_SERIALIZATION_VERSION = 2


class SqliteStoreConfig(BaseModel):
    """Embedded online store: one SQLite file inside the repository directory."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["sqlite"] = "sqlite"
    path: str = "online_store.db"
    """Database file, relative to the repository directory (or absolute)."""

    def feast_config(self) -> dict[str, Any]:
        """The `online_store:` section of feature_store.yaml."""
        return {"type": "sqlite", "path": self.path}


class RedisStoreConfig(BaseModel):
    """Redis online store, the cluster backend.

    `connection_string` takes Feast's form (`host:port[,db=0,password=...,ssl=true]`)
    or a URL (`redis://[:password@]host:port[/db]`, `rediss://` for TLS), which is
    converted to Feast's form.
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["redis"] = "redis"
    connection_string: str = "127.0.0.1:6379"
    key_ttl_seconds: PositiveInt | None = None
    """Expire an entity's keys this long after its last write (None: never)."""

    @field_validator("connection_string")
    @classmethod
    def _to_feast_form(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("connection_string is empty")
        if "://" not in value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported scheme {parts.scheme!r}: use redis:// or rediss://")
        if not parts.hostname:
            raise ValueError(f"no host in {value!r}")
        out = [f"{parts.hostname}:{parts.port or 6379}"]
        db = parts.path.strip("/")
        if db:
            if not db.isdigit():
                raise ValueError(f"database in {value!r} must be a number, got {db!r}")
            out.append(f"db={db}")
        if parts.username:
            out.append(f"username={unquote(parts.username)}")
        if parts.password:
            out.append(f"password={unquote(parts.password)}")
        if parts.scheme == "rediss":
            out.append("ssl=true")
        return ",".join(out)

    def feast_config(self) -> dict[str, Any]:
        """The `online_store:` section of feature_store.yaml."""
        out: dict[str, Any] = {"type": "redis", "connection_string": self.connection_string}
        if self.key_ttl_seconds is not None:
            out["key_ttl_seconds"] = self.key_ttl_seconds
        return out


def online_store_names() -> list[str]:
    """Short names of the registered online stores."""
    return plugins.names(plugins.ONLINE_STORES)


def _online_store_class(name: Any, error: type[Exception] = FeatureStoreError) -> type[BaseModel]:
    try:
        return plugins.load(plugins.ONLINE_STORES, name)
    except plugins.PluginError as exc:
        raise error(str(exc)) from None


def _parse_online_store(value: Any) -> Any:
    # A config object of a registered store passes; a mapping is validated by the config
    # class its `type` names. A ValueError is what pydantic reports as a ValidationError.
    if isinstance(value, BaseModel):
        kind = getattr(value, "type", None)
        if not (
            isinstance(kind, str)
            and kind in online_store_names()
            and isinstance(value, _online_store_class(kind, ValueError))
        ):
            raise ValueError(f"{type(value).__name__} is not an online store config")
        return value
    if not isinstance(value, Mapping):
        # pydantic turns a ValueError, not a TypeError, into a ValidationError.
        raise ValueError(f"an online store config must be a mapping, not {type(value).__name__}")  # noqa: TRY004
    return _online_store_class(value.get("type"), ValueError).model_validate(dict(value))


OnlineStoreConfig = Annotated[SerializeAsAny[BaseModel], BeforeValidator(_parse_online_store)]
"""The config of any registered online store, chosen by its `type`."""


def online_store_config(name: str, **options: Any) -> BaseModel:
    """Build the config of the online store called `name` ("sqlite" or "redis").

    Options that are None are left at their defaults, so CLI flags can be passed straight.
    """
    cls = _online_store_class(name)
    given = {k: v for k, v in options.items() if v is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        raise FeatureStoreError(f"invalid {name} online store options: {exc}") from exc


def _offline_store(value: Any) -> Any:
    if isinstance(value, str):
        try:
            plugins.check_name(plugins.OFFLINE_STORES, value)
        except plugins.PluginError as exc:
            raise ValueError(str(exc)) from None
    return value


class FeatureStoreSettings(BaseModel):
    """Everything that goes into feature_store.yaml.

    The registry is a file and the offline store reads the Parquet tables written by the
    ETL: "file" is Feast's Dask-based store, "asof" the same with kubeloop's as-of merge
    for training-set retrieval. The online store is pluggable by short name.
    """

    model_config = ConfigDict(extra="forbid")

    project: str = "kubeloop"
    online_store: OnlineStoreConfig = Field(default_factory=SqliteStoreConfig)
    registry: str = "registry.db"
    """Registry file, relative to the repository directory (or absolute)."""
    offline_store: Annotated[str, BeforeValidator(_offline_store)] = "file"
    """A registered offline store (entry-point group `kubeloop.offline_stores`)."""

    @field_validator("project")
    @classmethod
    def _feast_project_name(cls, value: str) -> str:
        # Feast's own rule; checked here so the error names the setting, not a Feast internal.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_]*", value):
            raise ValueError(
                f"project {value!r} must be letters, digits and '_' and not start with '_'"
            )
        return value

    def feast_yaml(self) -> dict[str, Any]:
        """The content of feature_store.yaml as a dict."""
        return {
            "project": self.project,
            "provider": "local",
            "registry": self.registry,
            "online_store": self.online_store.feast_config(),
            "offline_store": {"type": plugins.feast_type(self.offline_store)},
            "entity_key_serialization_version": ENTITY_KEY_SERIALIZATION_VERSION,
        }


def repo_config(repo_dir: str | Path, settings: FeatureStoreSettings) -> RepoConfig:
    """Build the Feast RepoConfig for `settings`, with relative paths under `repo_dir`."""
    from feast.repo_config import RepoConfig

    return RepoConfig(repo_path=Path(repo_dir).resolve(), **settings.feast_yaml())


def write_repo(
    repo_dir: str | Path,
    settings: FeatureStoreSettings,
    features_dir: str | Path,
    *,
    use_case: str | None = None,
) -> Path:
    """Create the Feast repository `repo_dir` and return the path of its feature_store.yaml.

    Writes feature_store.yaml from `settings`, and a small definitions module that builds
    the objects of the use case named `use_case` (None: the default) over `features_dir`,
    so `feast -c repo_dir apply` / `feature-views list` / `materialize` behave like the
    kubeloop commands.
    """
    repo = Path(repo_dir).expanduser().resolve()
    repo.mkdir(parents=True, exist_ok=True)
    features = Path(features_dir).expanduser().resolve()
    # Validates the settings the way Feast will, before anything is written.
    repo_config(repo, settings)

    yaml_path = repo / FEATURE_STORE_YAML
    _write_text(yaml_path, yaml.safe_dump(settings.feast_yaml(), sort_keys=False))
    _write_text(
        repo / REPO_DEFINITIONS_PY,
        '"""Generated by kubeloop: the Feast objects of this repository."""\n\n'
        "from kubeloop.features.definitions import build_definitions\n\n"
        "# Feast collects the objects it finds as module attributes: one name per object.\n"
        f"for _obj in build_definitions({str(features)!r}, use_case={use_case!r}):\n"
        "    globals()[_obj.name] = _obj\n",
    )
    return yaml_path


def read_settings(repo_dir: str | Path) -> FeatureStoreSettings:
    """Read feature_store.yaml of `repo_dir` back into settings."""
    path = Path(repo_dir).expanduser() / FEATURE_STORE_YAML
    if not path.is_file():
        raise FeatureStoreError(
            f"{path} not found: run `kubeloop features apply --repo {repo_dir} --features DIR` first"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        offline_type = (raw.get("offline_store") or {}).get("type", "file")
        return FeatureStoreSettings(
            project=raw["project"],
            registry=raw.get("registry", "registry.db"),
            online_store=raw.get("online_store", {"type": "sqlite"}),
            offline_store=plugins.offline_store_name(offline_type) or offline_type,
        )
    except (KeyError, ValidationError, AttributeError) as exc:
        raise FeatureStoreError(f"{path} is not a kubeloop feature repository: {exc}") from exc


def open_store(repo_dir: str | Path) -> FeatureStore:
    """Open the Feast FeatureStore of a repository written by `write_repo`."""
    from feast import FeatureStore

    repo = Path(repo_dir).expanduser().resolve()
    settings = read_settings(repo)
    with warnings.catch_warnings():
        # Feast warns once per process about unrelated optional features.
        warnings.simplefilter("ignore", RuntimeWarning)
        # repo_path as well as config: with config alone Feast resolves a relative
        # registry path against the current directory, not the repository.
        return FeatureStore(repo_path=str(repo), config=repo_config(repo, settings))


def apply_definitions(
    store: FeatureStore, features_dir: str | Path, *, use_case: UseCase | str | None = None
) -> list:
    """`feast apply` the use case's entities, feature views and feature service over
    `features_dir` (`use_case`: a spec, a registered name, or None for the default).

    The offline tables are checked against the use case's feature schemas first, so a wrong
    table is reported by file and column here rather than later inside Feast. Returns the
    objects.
    """
    from kubeloop.features.definitions import build_definitions
    from kubeloop.features.materialize import validate_offline_tables

    features = Path(features_dir).expanduser().resolve()
    validate_offline_tables(features, use_case=use_case)
    objects = build_definitions(features, use_case=use_case)
    store.apply(objects)
    return objects


def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)
