"""Pluggable drift backends by short name: the statistical detector and the alert store.

Both are found through the engine's one plug-in table (`kubeloop.plugins`, entry-point
groups `kubeloop.drift_detectors` and `kubeloop.alert_stores`). Each backend is a
`plugins.Backend`: a pydantic `<Name>Config` (unknown keys refused, a `Literal` `type`
field) plus the "module:Class" that takes it, imported only when built, so choosing the
scipy detector never imports alibi-detect (BSL 1.1; see `kubeloop.drift.detectors.alibi`);
the detector configs are in `kubeloop.drift.config`:

    detector:     alibi (default) | scipy
    alert store:  sqlite (default) | postgres

    make_detector({"type": "scipy", "p_val": 1e-4})
    make_alert_store({"type": "postgres", "dsn": "postgresql://...", "table": "drift_alerts"})

Another backend is one module with its config, its class and a `plugins.Backend` naming
both, plus one entry point in pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    TypeAdapter,
)

from kubeloop import plugins
from kubeloop.drift.config import (
    AlibiDetectorConfig,
    DetectorConfig,
    DriftConfigError,
    ScipyDetectorConfig,
    backend,
    parse_backend_config,
    parse_detector_config,
)


class SQLiteAlertStoreConfig(BaseModel):
    """Alerts in one SQLite file (WAL; safe for several writing processes)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["sqlite"] = "sqlite"
    path: Path
    timeout: float = Field(30.0, gt=0, description="seconds a writer waits for the lock")


class PostgresAlertStoreConfig(BaseModel):
    """Alerts in one PostgreSQL table."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["postgres"] = "postgres"
    dsn: str = Field(description="libpq connection string or postgresql:// URL")
    table: str = "drift_alerts"
    db_schema: str | None = Field(None, alias="schema", description="schema of the table")


# Registered in pyproject.toml as `kubeloop.drift_detectors: alibi, scipy` and
# `kubeloop.alert_stores: sqlite, postgres`.
ALIBI = plugins.Backend(AlibiDetectorConfig, "kubeloop.drift.detectors.alibi:AlibiDriftDetector")
SCIPY = plugins.Backend(ScipyDetectorConfig, "kubeloop.drift.detectors.scipy:ScipyDriftDetector")
SQLITE = plugins.Backend(SQLiteAlertStoreConfig, "kubeloop.drift.alerts:SQLiteAlertStore")
POSTGRES = plugins.Backend(PostgresAlertStoreConfig, "kubeloop.drift.alerts:PostgresAlertStore")

DEFAULT_ALERT_STORE = "sqlite"


def detector_names() -> list[str]:
    """Short names of the available detector backends."""
    return plugins.names(plugins.DRIFT_DETECTORS)


def alert_store_names() -> list[str]:
    """Short names of the available alert stores."""
    return plugins.names(plugins.ALERT_STORES)


def _build(group: plugins.PluginGroup, config: BaseModel) -> Any:
    return backend(group, config.type).make(config)  # type: ignore[attr-defined]


def parse_alert_store_config(data: Mapping[str, Any] | BaseModel) -> BaseModel:
    """Validate an alert-store config (`type` defaults to sqlite)."""
    return parse_backend_config("alert store", plugins.ALERT_STORES, DEFAULT_ALERT_STORE, data)


def make_detector(config: Mapping[str, Any] | BaseModel | None = None):
    """The `DriftDetector` that `config` describes."""
    return _build(plugins.DRIFT_DETECTORS, parse_detector_config(config))


def make_alert_store(config: Mapping[str, Any] | BaseModel):
    """The `AlertStore` that `config` describes."""
    return _build(plugins.ALERT_STORES, parse_alert_store_config(config))


# Any registered alert store's config, for fields of other configs (pydantic).
AlertStoreConfig = Annotated[SerializeAsAny[BaseModel], BeforeValidator(parse_alert_store_config)]


def alert_store_config_from_url(url: str) -> BaseModel:
    """A store config from a URL.

    SQLite URLs follow SQLAlchemy's convention: `sqlite:///relative/alerts.db`,
    `sqlite:////absolute/alerts.db` (three slashes, then the path); a URL-less path is a
    SQLite file too. `postgresql://...` (or `postgres://`) is PostgreSQL; its query
    parameters `table` and `schema` name the table and are removed from the DSN handed
    to libpq."""
    url = str(url).strip()
    if not url:
        raise DriftConfigError("empty alert store URL")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        extra = {k: query.pop(k) for k in ("table", "schema") if k in query}
        dsn = urlunsplit(parts._replace(query=urlencode(query)))
        return parse_alert_store_config({"type": "postgres", "dsn": dsn, **extra})
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise DriftConfigError(
                f"alert store URL {url!r} names no file: use sqlite:///relative.db or "
                "sqlite:////absolute/path.db"
            )
        return parse_alert_store_config({"type": "sqlite", "path": url[len("sqlite:///") :]})
    if scheme:
        raise DriftConfigError(
            f"unsupported alert store URL scheme {scheme!r} in {url!r}: use sqlite:/// or postgresql://"
        )
    return parse_alert_store_config({"type": "sqlite", "path": url})


# Validators usable by other configs (e.g. the monitor's) for union-typed fields.
detector_config_adapter: TypeAdapter = TypeAdapter(DetectorConfig)
