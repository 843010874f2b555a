"""Drift monitoring: detectors, windows, persisted state, alerts.

    from kubeloop.drift import DriftMonitor, Reference, open_alert_store

    monitor = DriftMonitor(Reference.from_dir(export_dir), state_dir,
                           alert_store=open_alert_store(f"sqlite:///{state_dir}/alerts.db"))
    monitor.observe(instances, predictions, request_id=rid, variant="canary", event_time=t)
    monitor.add_labels({rid: 1})

Modules, in alibi-detect's shape: `detectors` (the front: the `DriftDetector` interface,
one module per backend, `alibi` and `scipy`), `checks` (the feature / prediction /
performance checks), `reference` (what traffic is compared with), `config` (the backends'
and the monitor's configs), `backends` (short name -> config and class), `windows` (tumbling count/time windows), `state` (the SQLite state
file), `monitor` (`DriftMonitor`), `alerts` (the `Alert` record and the SQLite/PostgreSQL
stores), `events` (KServe logger CloudEvents). The HTTP service is `service` (`python -m kubeloop.drift.service`).

alibi-detect is under the Business Source License 1.1 (since 0.11.5); it is imported only
when the alibi detector is built. `MonitorConfig(feature_detector={"type": "scipy"}, ...)`
runs the same tests without it.

Importing this package imports neither alibi-detect nor a database driver.
"""

from kubeloop.drift.alerts import (
    Alert,
    AlertStore,
    AlertStoreError,
    AlertWindow,
    PostgresAlertStore,
    SQLiteAlertStore,
    open_alert_store,
)
from kubeloop.drift.backends import (
    PostgresAlertStoreConfig,
    SQLiteAlertStoreConfig,
    make_alert_store,
    make_detector,
)
from kubeloop.drift.checks import CheckResult
from kubeloop.drift.config import (
    AlibiDetectorConfig,
    MonitorConfig,
    PerformanceConfig,
    ScipyDetectorConfig,
)
from kubeloop.drift.detectors import (
    AlibiDriftDetector,
    DriftDetector,
    DriftError,
    ScipyDriftDetector,
)
from kubeloop.drift.events import BadEventError, InferenceEvent, parse_event
from kubeloop.drift.monitor import (
    DriftMonitor,
    IngestResult,
    LabelResult,
    ServedRequest,
    WindowEvaluation,
)
from kubeloop.drift.reference import Reference
from kubeloop.drift.windows import WindowConfig

__all__ = [
    "Alert",
    "AlertStore",
    "AlertStoreError",
    "AlertWindow",
    "AlibiDetectorConfig",
    "AlibiDriftDetector",
    "BadEventError",
    "CheckResult",
    "DriftDetector",
    "DriftError",
    "DriftMonitor",
    "InferenceEvent",
    "IngestResult",
    "LabelResult",
    "MonitorConfig",
    "PerformanceConfig",
    "PostgresAlertStore",
    "PostgresAlertStoreConfig",
    "Reference",
    "SQLiteAlertStore",
    "SQLiteAlertStoreConfig",
    "ScipyDetectorConfig",
    "ScipyDriftDetector",
    "ServedRequest",
    "WindowConfig",
    "WindowEvaluation",
    "make_alert_store",
    "make_detector",
    "open_alert_store",
    "parse_event",
]
