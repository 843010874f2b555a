"""`DriftMonitor`: served traffic in, windows tested, alerts out.

The monitor is a plain Python object. The drift detector service (`python -m
kubeloop.drift.service`) feeds it KServe logger CloudEvents; the local demo calls it in
process:

    monitor = DriftMonitor(Reference.from_dir("runs/demo/export"), "runs/demo/drift/state",
                           alert_store=open_alert_store("runs/demo/drift/alerts.db"))
    monitor.observe(instances, predictions, request_id="r-17", variant="canary",
                    event_time=ts)          # a request and its response, already paired
    monitor.observe_many([ServedRequest(...), ...])  # a batch, one transaction
    monitor.ingest(parse_event(headers, body))   # or one CloudEvent half at a time
    monitor.add_labels({"r-17": 1})         # delayed clicks
    monitor.flush()                         # close open windows (end of a replay)

Traffic is keyed by (model, version, variant): the canary and the primary get separate
windows and separate alerts. The variant comes from the event (`kubeloop.drift.events`:
ce-variant, else the role of the event's Knative revision, else ce-endpoint); the version
from ce-modelversion or the response body's model_version when present, else
`config.variant_versions[variant]`, else the primary reference's version for the primary
and "unknown" for any other variant. The revision last seen on a key (read off ce-source
in a cluster) is put on that key's alerts.

Per key and window (`kubeloop.drift.windows`), the checks (`kubeloop.drift.checks`,
`kubeloop.drift.quality`, `kubeloop.drift.estimate`):

* feature     model inputs vs the reference sample (KS / chi-square, corrected);
* prediction  served scores vs the reference sample's scores (KS). The reference scores are
  the model's scores on the reference sample when the monitor was given them (the service
  scores the sample with the exported model); otherwise they are learned from the key's
  first served windows: up to `learned_reference_per_stratum` scores per hour of day are
  kept, windows are used to learn until every hour they contain is filled, and only then
  tested (so expect no prediction test during the first day of traffic);
* estimated_performance  the label-free estimate (expected NE and AUC of the window's
  scores, against the reference's scores reweighted to the window's mix);
* data_quality  unseen categories, missing rates, values out of the reference's range and
  request-schema violations, per feature;
* performance  labelled predictions (`add_labels`) in their own, larger windows:
  calibration and normalized entropy against the version's metrics, with the label-free
  estimate of the same rows beside the realized figures.

Why an alert on normal traffic is rare (measured by bench/drift_bench.py on generated
lakes; the defaults were tuned on baseline seeds 0-3 and scenario seed 100 and are
validated on the others):

* Windows are matched to reference rows of the same hours (`stratify_by`) and, when the
  reference has rows of the window's day type, of the same day type (`season_by`): a
  Tuesday is compared with a Monday, not with a Sunday. A reference of weekdays only
  (what `register_step` registers two days before a Wednesday deployment) cannot match a
  weekend window; the hour alone is matched then, and the tolerance below absorbs the
  weekend's uplift of the click-rate features.
* An entity's features (`entity_groups`: the user's, the ad's) are tested over the
  distinct entities of the window and of the matched reference. About 600 ads recur in a
  2,000-impression window, so per-impression values are not independent samples and a KS
  test on them over-rejects.
* A numeric shift smaller than `ks_tolerance` (KS distance 0.05) is not drift: the test is
  of H0 "distance <= tolerance" (`tolerance_p_value`). Without it, seed 1's Thursday and
  Friday evenings alerted on `ad_impressions_7d` (day-to-day variation that two reference
  days cannot show).
* One false-alarm budget, `windows_between_false_alarms` (100,000 serving windows), split
  over the serving detectors (`budget_split`), sets their family-wise per-window
  thresholds (Bonferroni over the features inside a window).
* The NE test uses the delta-method standard error of log loss / H(click rate) (a window
  with more clicks has more loss and more entropy, so the ratio is far steadier than the
  loss), and needs NE more than `max_ne_increase` (0.04) above the reference's: on
  concept_drift every labelled post-change window of seed 100 alerted (realized NE
  0.96-0.98 against 0.91) while baseline windows stayed below 0.025 above it.

Everything is persisted in `state_dir` (`kubeloop.drift.state`) inside one transaction per
call, so a monitor recreated on the same directory continues exactly where the previous
one stopped. `observe_many` and `ingest_many` take a batch in one call (the drift service
group-commits the CloudEvents that arrive while a transaction commits): a commit per
request cost more than the tests themselves (bench/drift_bench.py, part 1). Alert ids are deterministic, so a window re-evaluated after a crash does not
duplicate its alert.
"""

from __future__ import annotations

import itertools
import logging
import math
import operator
import threading
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from kubeloop.alert import DETECTORS, Alert, AlertWindow
from kubeloop.drift.alerts import AlertStore
from kubeloop.drift.backends import make_detector
from kubeloop.drift.checks import (
    CheckResult,
    EstimatedPerformanceCheck,
    FeatureDriftCheck,
    FrameKeys,
    PerformanceCheck,
    PredictionDriftCheck,
    Season,
)
from kubeloop.drift.config import MonitorConfig
from kubeloop.drift.detectors.base import DriftError
from kubeloop.drift.events import BadEventError, InferenceEvent
from kubeloop.drift.frame import WindowColumns, column_kinds, frame_of
from kubeloop.drift.quality import DataQualityCheck, schema_violations
from kubeloop.drift.reference import Reference
from kubeloop.drift.state import Key, StateStore, key_text
from kubeloop.drift.windows import ClosedWindow, TumblingWindows

log = logging.getLogger(__name__)

SERVE = "serve"
SERVE_KINDS = ("feature", "prediction", "estimated_performance", "data_quality")
LABELS = "labels"


@dataclass
class WindowEvaluation:
    """One detector's verdict on one closed window (alert set when it raised one)."""

    model: str
    version: str
    variant: str
    detector: str
    window_index: int
    start: datetime
    end: datetime
    n: int
    result: CheckResult
    alert: Alert | None = None


@dataclass
class IngestResult:
    """What `DriftMonitor.ingest` did with one CloudEvent half."""

    paired: bool
    rows: int = 0
    alerts: list[Alert] = field(default_factory=list)


@dataclass
class LabelResult:
    """What `DriftMonitor.add_labels` did: labels joined to a served prediction, labels
    for unknown (never served, already labelled, or expired) request ids, alerts raised."""

    matched: int
    unknown: int
    alerts: list[Alert] = field(default_factory=list)


@dataclass
class ServedRequest:
    """One served request for `DriftMonitor.observe_many`: the arguments of `observe`."""

    instances: Sequence[Mapping[str, Any]]
    predictions: Sequence[float]
    request_id: str | None = None
    variant: str = "primary"
    version: str | None = None
    event_time: datetime | float | str | None = None
    revision: str | None = None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def timeline_record(result: CheckResult) -> dict[str, Any]:
    """The compact figures of one evaluated window that reports plot over time."""
    d = result.details
    out: dict[str, Any] = {
        "n": result.n,
        "drift": bool(result.is_drift),
        "p_value": _finite(float(result.p_value)),
        "threshold": _finite(float(result.threshold)),
        "features": list(result.features),
    }
    if result.detector == "estimated_performance":
        out["estimated"] = d.get("estimated")
        out["reference_estimated"] = d.get("reference_estimated")
    elif result.detector == "performance":
        out["estimated"] = d.get("estimated")
        out["realized"] = d.get("realized")
        out["estimate_error_ne"] = d.get("estimate_error_ne")
    elif result.detector == "data_quality":
        out["failed"] = d.get("failed", [])
        worst: dict[str, float] = {}
        for c in d.get("checks", []):
            worst[c["check"]] = max(worst.get(c["check"], 0.0), c["rate"])
        out["worst_rate"] = worst
    for k in ("estimated", "reference_estimated", "realized"):
        if isinstance(out.get(k), dict):
            out[k] = {n: _finite(v) for n, v in out[k].items()}
    return out


def _epoch(value: datetime | float | str | None) -> float:
    if value is None:
        return datetime.now(UTC).timestamp()
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return float(value)


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _label(value: Any) -> int:
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    raise ValueError(f"label {value!r} is not 0 or 1")


def _floats(values: Sequence[Any]) -> list[float]:
    """`[float(v) for v in values]`; a float64 array converts in one call."""
    if type(values) is np.ndarray and values.dtype == np.float64 and values.ndim == 1:
        return values.tolist()
    return list(map(float, values))


def _clean(value: Any) -> Any:
    # JSON has no NaN: keep a missing numeric value as None in the buffered rows.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_ABSENT = object()

# One request as `DriftMonitor._encode_batch` takes it: instances, predictions, request id,
# event time (epoch seconds).
_Encodable = tuple[Sequence[Mapping[str, Any]], Sequence[float], str, float]


# The inputs of encoded rows as columns, and each column's value types (`_plain_rows`).
_Columns = tuple[list[tuple], list[set[type]]]

_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)
_ID, _SCORE, _INPUTS = operator.itemgetter("id"), operator.itemgetter("p"), operator.itemgetter("x")

_PLAIN_TYPES = frozenset({int, float, type(None)})
_TEXT_TYPES = _PLAIN_TYPES | {str}


def _row_values(
    instance: Mapping[str, Any],
    columns: Sequence[str],
    numeric: set[str],
    getter: Callable[[Mapping[str, Any]], tuple] | None = None,
    numeric_getter: Callable[[Sequence[Any]], tuple] | None = None,
) -> tuple[list[Any], list[str]]:
    """The instance's model inputs in `columns` order (NaN and infinities as None, or left
    as they are on the short path: the stored JSON writes them as null) and the inputs that
    break the request schema (`quality.schema_violations`). The common row (every input
    present, numbers, strings only in categorical inputs) takes a short path that looks at
    no value twice; `getter` is `operator.itemgetter(*columns)`, `numeric_getter` picks
    the numeric inputs out of the values (an itemgetter of their positions)."""
    if getter is not None and len(columns) > 1:
        try:
            values = list(getter(instance))
        except KeyError:
            values = None
        if values is not None:
            kinds = set(map(type, values))
            if kinds <= _PLAIN_TYPES or (
                kinds - _PLAIN_TYPES == {str}
                and numeric_getter is not None
                and str not in set(map(type, numeric_getter(values)))
            ):
                return values, []
    values = []
    bad: list[str] = []
    for col in columns:
        value = instance.get(col, _ABSENT)
        kind = type(value)
        if kind is float:
            values.append(value if math.isfinite(value) else None)
        elif kind is int or value is None or (kind is str and col not in numeric):
            values.append(value)
        elif value is _ABSENT:
            values.append(None)
            bad.append(col)
        else:
            values.append(_clean(value))
            bad.extend(schema_violations({col: value}, (col,), numeric))
    return values, bad


WINDOW_OUTCOMES = ("evaluated", "skipped", "failed")

# FeatureDriftCheck's keyword arguments and the MonitorConfig fields they come from.
_FEATURE_CHECK_OPTIONS = (
    ("categorical", "categorical"),
    ("exclude", "exclude_features"),
    ("stratify_by", "stratify_by"),
    ("min_category_count", "min_category_count"),
    ("entity_groups", "entity_groups"),
    ("ks_tolerance", "ks_tolerance"),
)


def _call_each(callbacks: Sequence[Callable[[Any], Any]], items: Sequence[Any], what: str) -> None:
    """Every callback on every item; an exception is logged, never raised."""
    for item in items:
        for callback in callbacks:
            try:
                callback(item)
            except Exception:
                log.exception("%s callback failed", what)


def window_counts(
    counters: Mapping[str, float], detectors: Iterable[str] = ()
) -> dict[str, dict[str, int]]:
    """Per detector, closed windows evaluated, skipped (too small, reference still being
    learned) and failed (an error), from the monitor's counters (`status()["counters"]`).
    Each of `detectors` is listed even with no window at all (all zeros)."""
    out: dict[str, dict[str, int]] = {d: dict.fromkeys(WINDOW_OUTCOMES, 0) for d in detectors}
    for name, value in counters.items():
        outcome, _, detector = name.partition(":")
        outcome = outcome.removeprefix("windows_")
        if outcome in WINDOW_OUTCOMES and detector:
            out.setdefault(detector, dict.fromkeys(WINDOW_OUTCOMES, 0))[outcome] = int(value)
    return dict(sorted(out.items()))


class DriftMonitor:
    """Windows, detectors and alerts for the traffic of one model (see the module doc).

    `references` is one `Reference` (the primary version's) or several (one per version
    that may serve; the first is the default). `alert_store` receives every alert;
    `on_alert(alert)` and `on_evaluation(evaluation)` callbacks run after each committed
    call (their exceptions are logged, never raised). Thread-safe.
    """

    def __init__(
        self,
        references: Reference | Sequence[Reference],
        state_dir: str | Path,
        *,
        config: MonitorConfig | Mapping[str, Any] | None = None,
        alert_store: AlertStore | None = None,
        on_alert: Iterable[Callable[[Alert], Any]] = (),
        on_evaluation: Iterable[Callable[[WindowEvaluation], Any]] = (),
        clock: Callable[[], datetime] | None = None,
    ):
        refs = [references] if isinstance(references, Reference) else list(references)
        if not refs:
            raise DriftError("the drift monitor needs at least one reference")
        self.config = (
            config
            if isinstance(config, MonitorConfig)
            else MonitorConfig.model_validate(config or {})
        )
        self.default = refs[0]
        self.references = {r.version: r for r in refs}
        self.alert_store = alert_store
        self.on_alert = list(on_alert)
        self.on_evaluation = list(on_evaluation)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._feature_detector = make_detector(self.config.feature_detector)
        self._prediction_detector = make_detector(self.config.prediction_detector)
        self._feature_checks: dict[str, FeatureDriftCheck] = {}
        self._performance_checks: dict[str, PerformanceCheck] = {}
        self._quality_checks: dict[str, DataQualityCheck] = {}
        self.season = Season(
            self.config.stratify_by, self.config.season_by, tuple(self.config.weekend_days)
        )
        self._prediction_check = PredictionDriftCheck(
            self._prediction_detector, ks_tolerance=self.config.ks_tolerance
        )
        self._estimate_check = EstimatedPerformanceCheck(self.config.estimate)
        for ref in refs:
            self._feature_check(ref)  # validate every reference up front
        self.columns = list(self.default.features.columns)
        cats = set(self.config.categorical)
        self._numeric_columns = {c for c in self.columns if c not in cats}
        self._row_getter = operator.itemgetter(*self.columns)
        numeric_at = [i for i, c in enumerate(self.columns) if c not in cats]
        # itemgetter of one position returns the value, not a 1-tuple: None falls back.
        self._numeric_getter = operator.itemgetter(*numeric_at) if len(numeric_at) > 1 else None
        self._numeric_at = numeric_at
        self._categorical_at = [i for i, c in enumerate(self.columns) if c in cats]
        self.state = StateStore(state_dir)
        self._revisions: dict[str, str | None] = {}
        self._revisions_generation = self.state.generation
        self._ref_strata: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._serve = TumblingWindows(self.state, SERVE, self.config.window)
        self._window_columns = WindowColumns()
        self._labels = TumblingWindows(self.state, LABELS, self.config.performance.window)

    @classmethod
    def from_reference_dir(
        cls, reference_dir: str | Path, state_dir: str | Path, *, score: bool = True, **kwargs: Any
    ) -> DriftMonitor:
        """A monitor for the exported version in `reference_dir` (metadata.json,
        reference.parquet and, to score the reference, the model files)."""
        return cls(Reference.from_dir(reference_dir, score=score), state_dir, **kwargs)

    # -- keys and references ------------------------------------------------------------

    def key(self, variant: str = "primary", version: str | None = None) -> Key:
        """The (model, version, variant) key traffic of `variant` is windowed under."""
        if not version:
            version = self.config.variant_versions.get(variant)
        if not version:
            version = self.default.version if variant == "primary" else "unknown"
        return (self.default.model, version, variant)

    def _reference_for(self, version: str) -> Reference:
        return self.references.get(version, self.default)

    def _feature_check(self, ref: Reference) -> FeatureDriftCheck:
        check = self._feature_checks.get(ref.version)
        if check is None:
            options = {arg: getattr(self.config, name) for arg, name in _FEATURE_CHECK_OPTIONS}
            check = FeatureDriftCheck(
                ref.features, self._feature_detector, season=self.season, **options
            )
            self._feature_checks[ref.version] = check
        return check

    def _quality_check(self, ref: Reference) -> DataQualityCheck:
        check = self._quality_checks.get(ref.version)
        if check is None:
            cfg = self.config
            # Calendar inputs differ from a reference of whole days by construction.
            calendar = [*cfg.exclude_features, *(c for c in (cfg.stratify_by, cfg.season_by) if c)]
            check = DataQualityCheck(ref.features, cfg.categorical, cfg.data_quality, calendar)
            self._quality_checks[ref.version] = check
        return check

    def _performance_check(self, ref: Reference) -> PerformanceCheck:
        check = self._performance_checks.get(ref.version)
        if check is None:
            check = PerformanceCheck(self.config.performance, ref.metrics)
            self._performance_checks[ref.version] = check
        return check

    # -- feeding ------------------------------------------------------------------------

    def observe(
        self,
        instances: Sequence[Mapping[str, Any]],
        predictions: Sequence[float],
        *,
        request_id: str | None = None,
        variant: str = "primary",
        version: str | None = None,
        event_time: datetime | float | str | None = None,
        revision: str | None = None,
    ) -> list[Alert]:
        """Add one served request (its model-input rows and their scores). Row ids, for
        `add_labels`, are `request_id` for a single instance, else `request_id/i`."""
        return self.observe_many(
            [
                ServedRequest(
                    instances, predictions, request_id, variant, version, event_time, revision
                )
            ]
        )

    def observe_many(self, requests: Iterable[ServedRequest | Mapping[str, Any]]) -> list[Alert]:
        """Add a batch of served requests (each `ServedRequest`, or a mapping of `observe`'s
        arguments) in one transaction: all of them are stored, or none (a DriftError for a
        request whose instances and predictions differ in number stores nothing)."""
        batch = [r if isinstance(r, ServedRequest) else ServedRequest(**r) for r in requests]
        for r in batch:
            if len(r.instances) != len(r.predictions):
                raise DriftError(
                    f"{len(r.instances)} instances but {len(r.predictions)} predictions for "
                    f"request {r.request_id}"
                )
        evaluations: list[WindowEvaluation] = []
        with self._lock, self.state.transaction():
            per_key: dict[Key, list[_Encodable]] = defaultdict(list)
            for r in batch:
                key = self.key(r.variant, r.version)
                self._note_revision(key, r.revision)
                per_key[key].append(
                    (r.instances, r.predictions, r.request_id or uuid.uuid4().hex,
                     _epoch(r.event_time))
                )  # fmt: skip
            for key, of_key in per_key.items():
                rows: list[tuple[float, dict]] = []
                columns = self._encode_batch(rows, of_key)
                self._add_rows(key, rows, evaluations, columns)
        return self._notify(evaluations)

    def ingest(self, event: InferenceEvent) -> IngestResult:
        """Add one CloudEvent half; rows enter a window when both halves of a request id
        have arrived (in either order). Raises BadEventError when the two halves disagree
        on the number of rows."""
        result = self.ingest_many([event])[0]
        if isinstance(result, BadEventError):
            raise result
        return result

    def ingest_many(self, events: Sequence[InferenceEvent]) -> list[IngestResult | BadEventError]:
        """Add a batch of CloudEvent halves in one transaction (the drift service's group
        commit); one result per event, in order: its IngestResult, or the BadEventError
        `ingest` would raise (a mismatched pair, dropped and committed). Two halves of one
        request id in the same batch pair in memory: neither is written to the pending
        table."""
        per_event: list[list[WindowEvaluation]] = [[] for _ in events]
        out: list[IngestResult | BadEventError] = []
        with self._lock, self.state.transaction():
            local: dict[tuple[str, str], dict[str, Any]] = {}
            for i, event in enumerate(events):
                self.state.incr(f"events:{event.kind}")
                other = "response" if event.kind == "request" else "request"
                partner = local.pop((event.id, other), None)
                if partner is None:
                    partner = self.state.pop_pending(event.id, other)
                if partner is None:
                    local[(event.id, event.kind)] = self._half(event)
                    out.append(IngestResult(paired=False))
                    continue
                mine = self._half(event)
                request, response = (mine, partner) if event.kind == "request" else (partner, mine)
                instances, predictions = request["instances"], response["predictions"]
                if len(instances) != len(predictions):
                    # Committed (the partner leaves the pending table), then reported.
                    self.state.incr("pairs_mismatched")
                    out.append(
                        BadEventError(
                            "mismatched_pair",
                            f"request {event.id} has {len(instances)} instances but its "
                            f"response {len(predictions)} predictions; the pair was dropped",
                        )
                    )
                    continue
                t = request["time"] if request["time"] is not None else response["time"]
                key = self.key(request["variant"], request["version"] or response["version"])
                self._note_revision(key, request.get("revision") or response.get("revision"))
                self.state.incr("pairs")
                rows: list[tuple[float, dict]] = []
                columns = self._encode_rows(rows, instances, predictions, event.id, _epoch(t))
                self._add_rows(key, rows, per_event[i], columns)
                out.append(IngestResult(paired=True, rows=len(instances)))
            for (event_id, kind), half in local.items():
                evicted = self.state.put_pending(event_id, kind, half, self.config.max_pending)
                if evicted:
                    self.state.incr("pending_evicted", evicted)
        for result, evaluations in zip(out, per_event, strict=True):
            alerts = self._notify(evaluations)
            if isinstance(result, IngestResult):
                result.alerts = alerts
        return out

    def _half(self, event: InferenceEvent) -> dict[str, Any]:
        return {
            "time": event.time.timestamp() if event.time is not None else _epoch(None),
            "variant": event.variant,
            "version": event.model_version,
            "revision": event.revision,
            "instances": event.instances,
            "predictions": event.predictions,
        }

    def _note_revision(self, key: Key, revision: str | None) -> None:
        """Remember the revision serving `key`, for its alerts (a meta row per key; the
        last value written is remembered in memory until a transaction rolls back)."""
        if not revision:
            return
        if self._revisions_generation != self.state.generation:
            self._revisions.clear()
            self._revisions_generation = self.state.generation
        name = f"revision:{key_text(key)}"
        if name not in self._revisions:
            self._revisions[name] = self.state.get_meta(name)
        if self._revisions[name] != revision:
            self.state.set_meta(name, revision)
            self._revisions[name] = revision

    def _encode_rows(
        self,
        out: list[tuple[float, dict]],
        instances: Sequence[Mapping[str, Any]],
        predictions: Sequence[float],
        request_id: str,
        t: float,
    ) -> _Columns | None:
        """Append one request's rows to `out` as (event time, buffered payload): the model
        inputs as a list in `self.columns` order, the score, and the schema violations
        when there are any (most rows have none). Returns the inputs' columns and their
        value types when the rows were plain (`_plain_rows`)."""
        scores = _floats(predictions)
        single = len(instances) == 1
        plain = self._plain_rows(instances)
        if plain is not None:
            # The common request: every row is plain (see `_plain_rows`), looked at as a
            # whole: no per-row checks, no violations to record.
            rows = plain[0]
            ids = [request_id] if single else [f"{request_id}/{i}" for i in range(len(rows))]
            out.extend(
                (t, {"id": i, "x": x, "p": p}) for i, x, p in zip(ids, rows, scores, strict=True)
            )
            return plain[1], plain[2]
        columns, numeric = self.columns, self._numeric_columns
        for i, (inst, p) in enumerate(zip(instances, scores, strict=True)):
            values, bad = _row_values(
                inst, columns, numeric, self._row_getter, self._numeric_getter
            )
            row: dict[str, Any] = {
                "id": request_id if single else f"{request_id}/{i}",
                "x": values,
                "p": p,
            }
            if bad:
                row["s"] = bad
            out.append((t, row))
        return None

    def _encode_batch(
        self,
        out: list[tuple[float, dict]],
        requests: Sequence[_Encodable],
    ) -> _Columns | None:
        """`_encode_rows` of several requests (instances, predictions, request id, event
        time) of one key, in order. When every row of the batch is plain, the rows are
        looked at once for the whole batch (a batch of 32 requests of 8 rows costs about
        what one request of 256 rows does); otherwise request by request."""
        if len(requests) > 1:
            plain = self._plain_rows(list(itertools.chain.from_iterable(r[0] for r in requests)))
            if plain is not None:
                rows = plain[0]
                ids: list[str] = []
                times: list[float] = []
                for instances, _, request_id, t in requests:
                    n = len(instances)
                    ids.extend([request_id] if n == 1 else [f"{request_id}/{i}" for i in range(n)])
                    times.extend([t] * n)
                scores = list(itertools.chain.from_iterable(_floats(r[1]) for r in requests))
                payloads = [
                    {"id": i, "x": x, "p": p} for i, x, p in zip(ids, rows, scores, strict=True)
                ]
                out.extend(zip(times, payloads, strict=True))
                return plain[1], plain[2]
        if len(requests) == 1:
            return self._encode_rows(out, *requests[0])
        for instances, predictions, request_id, t in requests:
            self._encode_rows(out, instances, predictions, request_id, t)
        return None

    def _plain_rows(
        self, instances: Sequence[Mapping[str, Any]]
    ) -> tuple[list[tuple], list[tuple], list[set[type]]] | None:
        """The instances' model inputs in `self.columns` order when every row is plain
        (every input present, each a number or None, strings only in categorical inputs:
        `_row_values`'s short path, checked for all rows at once); else None. Tuples: the
        stored JSON is the same array, and a tuple of plain values leaves the garbage
        collector's lists (a list never does). With them, their transposition and the value
        types of each column (`kubeloop.drift.frame`: the window's frame is built from
        them)."""
        if len(self.columns) < 2:
            return None
        try:
            rows = list(map(self._row_getter, instances))
        except KeyError:
            return None
        if not rows:
            return rows, [], []
        # One look at each value, column by column (one transposition, cheaper than picking
        # the numeric and the categorical values out of every row): numbers or None in
        # numeric inputs, strings also allowed in categorical ones.
        columns = list(zip(*rows, strict=True))
        kinds = column_kinds(columns)
        if not all(kinds[i] <= _PLAIN_TYPES for i in self._numeric_at):
            return None
        if not all(kinds[i] <= _TEXT_TYPES for i in self._categorical_at):
            return None
        return rows, columns, kinds

    def _add_rows(
        self,
        key: Key,
        rows: list[tuple[float, dict]],
        evaluations: list[WindowEvaluation],
        columns: _Columns | None = None,
    ) -> None:
        """Store encoded rows of `key`: awaiting their labels and in the open window
        (closed windows are evaluated into `evaluations`). `columns`: what the encoder
        returned (the inputs as columns, with their value types), when it did."""
        self.state.incr(f"rows:{key_text(key)}", len(rows))
        # Columns picked in C (itemgetter), not a tuple per row.
        payloads = list(map(_SECOND, rows))
        self._window_columns.add(
            self.state.generation, key, list(map(_INPUTS, payloads)), *(columns or (None, None))
        )
        evicted = self.state.put_awaiting_columns(
            key,
            list(map(_ID, payloads)),
            list(map(float, map(_FIRST, rows))),
            list(map(_SCORE, payloads)),
            self.config.max_awaiting_labels,
        )
        if evicted:
            self.state.incr("awaiting_evicted", evicted)
        for window in self._serve.add(key, rows):
            evaluations.extend(self._safely(self._evaluate_serve, window))

    def add_labels(self, labels: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> LabelResult:
        """Join delayed labels (request id -> 0/1) to served predictions; labelled
        predictions fill the performance windows. Raises ValueError for a label that is
        not 0/1 (nothing is applied then)."""
        items = list(labels.items()) if isinstance(labels, Mapping) else list(labels)
        parsed = {str(rid): _label(y) for rid, y in items}
        evaluations: list[WindowEvaluation] = []
        with self._lock, self.state.transaction():
            found = self.state.pop_awaiting(list(parsed))
            self.state.incr("labels:matched", len(found))
            self.state.incr("labels:unknown", len(parsed) - len(found))
            by_key: dict[Key, list[tuple[float, dict]]] = defaultdict(list)
            for rid, key, t, p in found:
                by_key[key].append((t, {"id": rid, "p": p, "y": parsed[rid]}))
            for key, rows in by_key.items():
                rows.sort(key=lambda r: r[0])
                for window in self._labels.add(key, rows):
                    evaluations.extend(self._safely(self._evaluate_labels, window))
        return LabelResult(len(found), len(parsed) - len(found), self._notify(evaluations))

    def flush(self) -> list[Alert]:
        """Close and evaluate every open window (serving and labelled)."""
        evaluations: list[WindowEvaluation] = []
        with self._lock, self.state.transaction():
            for window in self._serve.flush():
                evaluations.extend(self._safely(self._evaluate_serve, window))
            for window in self._labels.flush():
                evaluations.extend(self._safely(self._evaluate_labels, window))
        return self._notify(evaluations)

    # -- evaluation -----------------------------------------------------------------------

    def _rng(self, window: ClosedWindow) -> np.random.Generator:
        return np.random.default_rng(
            [self.config.seed, window.index, zlib.crc32(key_text(window.key).encode())]
        )

    def _safely(
        self, evaluate: Callable[[ClosedWindow], list[WindowEvaluation]], window: ClosedWindow
    ) -> list[WindowEvaluation]:
        """Evaluate a closed window; an error is logged and counted, and the window stays
        closed, so one bad window can never block its key."""
        try:
            return evaluate(window)
        except Exception as exc:
            log.exception("evaluating window %d of %s failed", window.index, window.key)
            self.state.incr("evaluation_errors")
            detectors = ("performance",) if window.kind == LABELS else SERVE_KINDS
            reason = f"error: {type(exc).__name__}: {exc}"
            return [
                self._evaluation(window, CheckResult(d, n=window.n, skipped=reason), failed=True)
                for d in detectors
            ]

    def _evaluate_serve(self, window: ClosedWindow) -> list[WindowEvaluation]:
        version = window.key[1]
        # Taken first, also from a window too small to test: the mirror follows every window.
        inputs = list(map(_INPUTS, window.rows))
        columns = self._window_columns.take(self.state.generation, window.key, inputs)
        self.state.incr("windows_closed:serve")
        if window.n < self.config.window.min_events:
            self.state.incr("windows_too_small:serve")
            reason = f"{window.n} events, fewer than {self.config.window.min_events}"
            return [
                self._evaluation(window, CheckResult(d, n=window.n, skipped=reason))
                for d in SERVE_KINDS
            ]
        ref = self._reference_for(version)
        frame = self._window_frame(inputs, columns)
        scores = np.fromiter(map(_SCORE, window.rows), dtype=np.float64, count=window.n)
        rng = self._rng(window)
        # One factorization of each column for the strata, the encoding and the checks.
        factorized = FrameKeys(frame)
        strata = (
            self.season.strata(frame, True, factorized),
            self.season.strata(frame, False, factorized),
        )
        check = self._feature_check(ref)
        feature = check.run(
            frame, rng, strata=strata if check.season == self.season else None,
            factorized=factorized,
        )  # fmt: skip
        out = [self._evaluation(window, feature)]
        out.append(
            self._evaluation(window, self._prediction_result(window, ref, scores, strata, rng))
        )
        out.append(self._evaluation(window, self._estimate_result(window, ref, scores, strata)))
        if self.config.data_quality.enabled:
            violations: dict[str, int] = defaultdict(int)
            for r in window.rows:
                for c in r.get("s", ()):
                    violations[c] += 1
            result = self._quality_check(ref).run(frame, violations, factorized)
        else:
            result = CheckResult("data_quality", n=window.n, skipped="data_quality disabled")
        out.append(self._evaluation(window, result))
        return out

    def _window_frame(self, values: list[Any], mirrored: _Columns | None = None) -> pd.DataFrame:
        """The buffered rows' model inputs (`values`, one per row) as a frame (rows buffered
        by an earlier release carry them as a column -> value mapping). `mirrored`: the
        same as columns with their value types (`WindowColumns.take`), when known."""
        columns = self.columns
        frame = frame_of(*mirrored, columns) if mirrored is not None else None
        if frame is None:
            if dict in set(map(type, values)):
                values = [[x.get(c) for c in columns] if isinstance(x, dict) else x for x in values]
            # from_records: the same column inference as the DataFrame constructor, less
            # of its dispatch.
            frame = pd.DataFrame.from_records(values, columns=columns)
        # Infinities are missing values, as the stored rows (JSON null) have them.
        floats = frame.select_dtypes(include="float").columns
        if len(floats) and np.isinf(frame[floats].to_numpy()).any():
            frame[floats] = frame[floats].replace([np.inf, -np.inf], np.nan)
        return frame

    def _reference_strata(self, ref: Reference) -> tuple[np.ndarray, np.ndarray]:
        """A reference's strata (with day type, without), computed once per version."""
        strata = self._ref_strata.get(ref.version)
        if strata is None:
            strata = (
                self.season.strata(ref.features, True),
                self.season.strata(ref.features, False),
            )
            self._ref_strata[ref.version] = strata
        return strata

    def _estimate_result(
        self,
        window: ClosedWindow,
        ref: Reference,
        scores: np.ndarray,
        strata: tuple[np.ndarray, np.ndarray],
    ) -> CheckResult:
        if not self.config.estimate.enabled:
            return CheckResult("estimated_performance", n=len(scores), skipped="estimate disabled")
        if ref.predictions is None or ref.version != window.key[1]:
            return CheckResult(
                "estimated_performance",
                n=len(scores),
                skipped="no model scores on this version's reference",
            )
        return self._estimate_check.run(
            ref.predictions, self._reference_strata(ref), scores, strata
        )

    def _prediction_result(
        self,
        window: ClosedWindow,
        ref: Reference,
        scores: np.ndarray,
        strata_pair: tuple[np.ndarray, np.ndarray],
        rng: np.random.Generator,
    ) -> CheckResult:
        version = window.key[1]
        if ref.predictions is not None and ref.version == version:
            return self._prediction_check.run(
                ref.predictions, self._reference_strata(ref), scores, strata_pair, rng
            )
        strata = strata_pair[1]  # learned scores are kept per hour only
        # No model scores for this version: learn per-stratum reference scores first.
        cap = self.config.learned_reference_per_stratum
        learned = self.state.learned(window.key)
        counts: dict[str, int] = defaultdict(int)
        for s, _ in learned:
            counts[s] += 1
        needed = set(strata.tolist())
        if all(counts[s] >= cap for s in needed):
            ref_strata = np.array([s for s, _ in learned], dtype=object)
            ref_scores = np.array([v for _, v in learned], dtype=np.float64)
            result = self._prediction_check.run(ref_scores, ref_strata, scores, strata, rng)
            result.details["reference"] = "learned from served traffic"
            return result
        add: list[tuple[str, float]] = []
        for s, v in zip(strata.tolist(), scores.tolist(), strict=True):
            if counts[s] < cap:
                counts[s] += 1
                add.append((s, v))
        self.state.add_learned(window.key, add)
        return CheckResult(
            "prediction",
            n=len(scores),
            skipped="learning reference predictions from served traffic "
            f"({len(add)} scores kept from this window)",
        )

    def _evaluate_labels(self, window: ClosedWindow) -> list[WindowEvaluation]:
        self.state.incr("windows_closed:labels")
        ref = self._reference_for(window.key[1])
        p = np.array([r["p"] for r in window.rows], dtype=np.float64)
        y = np.array([r["y"] for r in window.rows], dtype=np.float64)
        return [self._evaluation(window, self._performance_check(ref).run(p, y))]

    def _evaluation(
        self, window: ClosedWindow, result: CheckResult, failed: bool = False
    ) -> WindowEvaluation:
        model, version, variant = window.key
        evaluation = WindowEvaluation(
            model, version, variant, result.detector, window.index,
            _dt(window.start), _dt(window.end), window.n, result,
        )  # fmt: skip
        # Every closed window lands in exactly one of three counters per detector, so a
        # report can tell "tested, no alert" from "never tested" (skipped or failed).
        if failed:
            self.state.incr(f"windows_failed:{result.detector}")
        elif result.skipped is None:
            self.state.incr(f"windows_evaluated:{result.detector}")
        else:
            self.state.incr(f"windows_skipped:{result.detector}")
        if result.skipped is None and not failed:
            self.state.put_timeline(
                window.key, result.detector, window.index, window.start, window.end,
                timeline_record(result),
            )  # fmt: skip
        if result.is_drift:
            evaluation.alert = self._raise(window, result)
        return evaluation

    def _raise(self, window: ClosedWindow, result: CheckResult) -> Alert | None:
        model, version, variant = window.key
        cooldown = self.config.alert_cooldown_seconds
        last = self.state.last_alert(window.key, result.detector)
        if cooldown and last is not None and window.end - last < cooldown:
            self.state.incr(f"alerts_suppressed:{result.detector}")
            return None
        critical = result.p_value < result.threshold * self.config.critical_factor or (
            result.detector == "performance" and len(result.features) > 1
        )
        start = _dt(window.start)
        alert = Alert(
            id=Alert.make_id(model, version, variant, result.detector, window.index, start),
            time=self._clock(),
            model=model,
            version=version,
            variant=variant,
            revision=self.state.get_meta(f"revision:{key_text(window.key)}"),
            detector=result.detector,  # type: ignore[arg-type]
            statistic=result.statistic,
            p_value=result.p_value,
            threshold=result.threshold,
            features=list(result.features),
            window=AlertWindow(start=start, end=_dt(window.end), n=window.n, index=window.index),
            severity="critical" if critical else "warning",
            details={**result.details, "n_reference": result.n_reference},
        )
        if self.alert_store is not None:
            try:
                self.alert_store.add(alert)
            except Exception:  # a store outage must not stop monitoring
                log.exception("cannot store alert %s", alert.id)
                self.state.incr("alert_store_errors")
        self.state.incr(f"alerts:{result.detector}")
        self.state.set_last_alert(window.key, result.detector, window.end)
        return alert

    def _notify(self, evaluations: list[WindowEvaluation]) -> list[Alert]:
        alerts = [e.alert for e in evaluations if e.alert is not None]
        _call_each(self.on_evaluation, evaluations, "on_evaluation")
        _call_each(self.on_alert, alerts, "on_alert")
        return alerts

    # -- inspection -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Open windows, pending halves, predictions awaiting labels and counters."""
        with self._lock:
            windows = [
                {
                    "kind": m.kind,
                    "model": m.key[0],
                    "version": m.key[1],
                    "variant": m.key[2],
                    "index": m.index,
                    "n": m.n,
                    "start": _dt(m.start).isoformat() if m.start is not None else None,
                    "end": _dt(m.end).isoformat() if m.end is not None else None,
                }
                for m in self.state.windows()
                if m.n
            ]
            return {
                "model": self.default.model,
                "reference_version": self.default.version,
                "reference_rows": len(self.default.features),
                "reference_predictions": self.default.predictions is not None,
                "open_windows": windows,
                "pending_halves": self.state.pending_count(),
                "awaiting_labels": self.state.awaiting_count(),
                "counters": self.state.counters(),
            }

    def report(self) -> dict[str, Any]:
        """Figures for the run report's `drift` section: what was monitored, with which
        thresholds, how many windows were tested and how many alerts each detector raised."""
        with self._lock:
            counters = self.state.counters()

            def count(prefix: str) -> dict[str, int]:
                return {
                    name[len(prefix) :]: int(value)
                    for name, value in counters.items()
                    if name.startswith(prefix)
                }

            cfg = self.config
            return {
                "model": self.default.model,
                "reference_version": self.default.version,
                "reference_rows": len(self.default.features),
                "reference_predictions": "model"
                if self.default.predictions is not None
                else "learned",
                "detector_backend": cfg.feature_detector.type,
                "false_alarm_budget": cfg.false_alarm_budget(),
                "thresholds": {
                    "ks_tolerance": cfg.ks_tolerance,
                    "estimate_max_ne_increase": cfg.estimate.max_ne_increase,
                    "feature_p_val": cfg.feature_detector.p_val,
                    "feature_correction": cfg.feature_detector.correction,
                    "prediction_p_val": cfg.prediction_detector.p_val,
                    "calibration_bounds": list(cfg.performance.calibration_bounds),
                    "max_ne_increase": cfg.performance.max_ne_increase,
                },
                "window": cfg.window.model_dump(),
                "rows": {
                    name[len("rows:") :]: int(v)
                    for name, v in counters.items()
                    if name.startswith("rows:")
                },
                "windows_evaluated": count("windows_evaluated:"),
                "windows_by_detector": window_counts(counters, DETECTORS),
                "alerts": count("alerts:"),
                "labels": count("labels:"),
                "open_windows": len([m for m in self.state.windows() if m.n]),
                "performance_by_window": self.performance_timeline(),
                "data_quality_by_window": [
                    {
                        k: r[k]
                        for k in (
                            "key",
                            "index",
                            "start",
                            "end",
                            "n",
                            "drift",
                            "failed",
                            "worst_rate",
                        )
                    }
                    for r in self.state.timeline(detector="data_quality")
                ],
            }

    def timeline(self, key: Key | None = None) -> list[dict[str, Any]]:
        """Every evaluated window's compact record (`timeline_record`), oldest first."""
        with self._lock:
            return self.state.timeline(key)

    def performance_timeline(self, key: Key | None = None) -> list[dict[str, Any]]:
        """Per window: the label-free estimate (serving windows) and, per labelled window,
        the estimate beside the realized figures."""
        with self._lock:
            rows = self.state.timeline(key)
        out = []
        for r in rows:
            if r["detector"] == "estimated_performance":
                out.append(
                    {
                        "kind": "serve", "key": r["key"], "index": r["index"],
                        "start": r["start"], "end": r["end"], "n": r["n"],
                        "estimated": r.get("estimated"),
                        "reference_estimated": r.get("reference_estimated"),
                        "alert": r["drift"],
                    }
                )  # fmt: skip
            elif r["detector"] == "performance":
                out.append(
                    {
                        "kind": "labels", "key": r["key"], "index": r["index"],
                        "start": r["start"], "end": r["end"], "n": r["n"],
                        "estimated": r.get("estimated"), "realized": r.get("realized"),
                        "alert": r["drift"],
                    }
                )  # fmt: skip
        return out

    def close(self) -> None:
        """Release the state file and the alert store."""
        with self._lock:
            self.state.close()
            if self.alert_store is not None:
                self.alert_store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
