"""Pluggable drift backends by short name: the statistical detector and the alert store.

Each backend is a pydantic `<Name>Config` (unknown keys refused, a `Literal` `type` field)
plus the dotted path of the class that takes it, imported only when built, so choosing
the scipy detector never imports alibi-detect (BSL 1.1; see `kubeloop.drift.detectors.alibi`); the configs are in `kubeloop.drift.config`:

    detector:     alibi (default) | scipy
    alert store:  sqlite (default) | postgres

    make_detector({"type": "scipy", "p_val": 1e-4})
    make_alert_store({"type": "postgres", "dsn": "postgresql://...", "table": "drift_alerts"})
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from kubeloop.drift.config import AlibiDetectorConfig, DetectorConfig, ScipyDetectorConfig
from kubeloop.errors import KubeloopError


class DriftConfigError(KubeloopError, ValueError):
    """A drift detector or alert store configuration is invalid."""


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


AlertStoreConfig = Annotated[
    SQLiteAlertStoreConfig | PostgresAlertStoreConfig, Field(discriminator="type")
]

_DETECTORS: dict[str, tuple[type[BaseModel], str]] = {
    "alibi": (AlibiDetectorConfig, "kubeloop.drift.detectors.alibi.AlibiDriftDetector"),
    "scipy": (ScipyDetectorConfig, "kubeloop.drift.detectors.scipy.ScipyDriftDetector"),
}
_ALERT_STORES: dict[str, tuple[type[BaseModel], str]] = {
    "sqlite": (SQLiteAlertStoreConfig, "kubeloop.drift.alerts.SQLiteAlertStore"),
    "postgres": (PostgresAlertStoreConfig, "kubeloop.drift.alerts.PostgresAlertStore"),
}

DEFAULT_DETECTOR = "alibi"
DEFAULT_ALERT_STORE = "sqlite"


def detector_names() -> list[str]:
    """Short names of the available detector backends."""
    return sorted(_DETECTORS)


def alert_store_names() -> list[str]:
    """Short names of the available alert stores."""
    return sorted(_ALERT_STORES)


def _parse(
    what: str, table: dict[str, tuple[type[BaseModel], str]], default: str, data: Any
) -> BaseModel:
    if isinstance(data, BaseModel):
        kind = getattr(data, "type", None)
        if kind in table and isinstance(data, table[kind][0]):
            return data
        raise DriftConfigError(f"{type(data).__name__} is not a {what} config")
    if not isinstance(data, Mapping):
        raise DriftConfigError(f"a {what} config must be a mapping, not {type(data).__name__}")
    kind = data.get("type", default)
    if kind not in table:
        raise DriftConfigError(
            f"unknown {what} type {kind!r}; available: {', '.join(sorted(table))}"
        )
    try:
        return table[kind][0].model_validate({**data, "type": kind})
    except ValidationError as exc:
        raise DriftConfigError(f"invalid {kind} {what} config: {exc}") from exc


def _build(table: dict[str, tuple[type[BaseModel], str]], config: BaseModel) -> Any:
    module_name, _, class_name = table[config.type][1].rpartition(".")  # type: ignore[attr-defined]
    return getattr(importlib.import_module(module_name), class_name)(config)


def parse_detector_config(data: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
    """Validate a detector config (`type` defaults to alibi)."""
    return _parse("drift detector", _DETECTORS, DEFAULT_DETECTOR, data or {})


def make_detector(config: Mapping[str, Any] | BaseModel | None = None):
    """The `DriftDetector` that `config` describes."""
    return _build(_DETECTORS, parse_detector_config(config))


def parse_alert_store_config(data: Mapping[str, Any] | BaseModel) -> BaseModel:
    """Validate an alert-store config (`type` defaults to sqlite)."""
    return _parse("alert store", _ALERT_STORES, DEFAULT_ALERT_STORE, data)


def make_alert_store(config: Mapping[str, Any] | BaseModel):
    """The `AlertStore` that `config` describes."""
    return _build(_ALERT_STORES, parse_alert_store_config(config))


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
