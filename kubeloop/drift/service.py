"""The drift detector service: KServe logger CloudEvents in, drift alerts out.

    python -m kubeloop.drift.service --host 127.0.0.1 --port 8080 --reference_dir /mnt/models \\
        --state_dir /tmp/kubeloop-drift --alert_store sqlite:////tmp/kubeloop-drift/alerts.db \\
        --inference_service ctr --namespace kubeloop --kube

Endpoints (an ASGI app from `build_app`, served by uvicorn):

    POST /         one CloudEvent (binary mode, as KServe's logger sends it; structured
                   mode accepted too). Requests and responses are paired by ce-id and fed
                   to the `DriftMonitor`. 200 with {"paired": ..., "alerts": [...]}; a bad
                   event gets 400 with {"error": <what is wrong>, "reason": <label>}; a
                   body over --max_body_bytes or an event of more than --max_event_rows
                   rows gets 413, and nothing of it is stored.
    POST /labels   delayed labels {"labels": [{"request_id": "...", "click": 0|1}, ...]}.
    POST /flush    close and evaluate every open window (end of a replay).
    POST /feedback, POST /requestlog, GET /requestlog/records
                   with --request_log: the label CloudEvents, the shadow answers and the
                   records the rollout controller reads
                   (`kubeloop.serving.request_log.feedback`); every accepted logger event is
                   kept in that log too.
    GET  /healthz  liveness/readiness: 200 once the reference is loaded and state is readable.
    GET  /status   open windows, pending halves, counters (JSON).
    GET  /metrics  Prometheus text format (kubeloop_drift_* series, see `DriftMetrics`).

With `--kube` (default: on when running in a pod, i.e. KUBERNETES_SERVICE_HOST is set),
every alert is also posted as a Kubernetes Event on the InferenceService through
`kubeloop.cluster.events`, from a background thread; failures are logged and counted in
`kubeloop_drift_kube_events_total{result="failed"}`, never raised.

The reference directory is an exported model version (`kubeloop models export`):
metadata.json, reference.parquet and the model files, which are used to score the
reference sample for the prediction-drift test (`--no_score_reference` skips that; the
monitor then learns reference scores from the first served windows).
"""

# No `from __future__ import annotations` here: FastAPI resolves the endpoints' annotations
# (Request, imported inside build_app) at definition time.
import argparse
import contextlib
import gc
import json
import logging
import math
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("kubeloop.drift.service")

DEFAULT_STATE_DIR = "/tmp/kubeloop-drift"
# What one logged request may hold: the servers' --max_batch_size default.
DEFAULT_MAX_EVENT_ROWS = 1024


class DriftMetrics:
    """The service's Prometheus series, on their own registry (so several apps can live in
    one process, as in tests).

    kubeloop_drift_events_total{type,variant}          CloudEvent halves accepted
    kubeloop_drift_bad_events_total{reason}            events refused with a 400
    kubeloop_drift_errors_total                        internal errors (500)
    kubeloop_drift_windows_evaluated_total{detector,variant,outcome}  tested | skipped
    kubeloop_drift_alerts_total{detector,variant}      alerts raised
    kubeloop_drift_last_p_value{detector,variant,version}   p-value of the latest test
    kubeloop_drift_labels_total{result}                matched | unknown
    kubeloop_drift_kube_events_total{result}           posted | failed | dropped
    kubeloop_drift_performance{source,metric,variant,version}  latest window's normalized
        entropy / AUC: source estimated (label-free, serving windows) or realized (labels)
    """

    def __init__(self, registry: Any = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()

        def metric(kind: Any, name: str, doc: str, *labels: str) -> Any:
            return kind(name, doc, list(labels), namespace="kubeloop_drift", registry=self.registry)

        self.events = metric(Counter, "events_total", "CloudEvents accepted", "type", "variant")
        self.bad_events = metric(Counter, "bad_events_total", "CloudEvents refused (400)", "reason")
        self.errors = metric(Counter, "errors_total", "internal errors (500)")
        self.windows = metric(
            Counter, "windows_evaluated_total", "closed windows per detector",
            "detector", "variant", "outcome",
        )  # fmt: skip
        self.alerts = metric(Counter, "alerts_total", "drift alerts raised", "detector", "variant")
        self.last_p = metric(
            Gauge, "last_p_value", "p-value of the latest test", "detector", "variant", "version"
        )
        self.labels = metric(Counter, "labels_total", "delayed labels received", "result")
        self.kube_events = metric(
            Counter, "kube_events_total", "alerts posted as Kubernetes Events", "result"
        )
        self.performance = metric(
            Gauge, "performance",
            "latest window's normalized entropy or AUC (estimated from scores, or realized)",
            "source", "metric", "variant", "version",
        )  # fmt: skip
        for result in ("posted", "failed", "dropped"):
            self.kube_events.labels(result=result)
        self.errors.inc(0)

    def on_evaluation(self, evaluation: Any) -> None:
        outcome = "skipped" if evaluation.result.skipped else "tested"
        self.windows.labels(evaluation.detector, evaluation.variant, outcome).inc()
        if not evaluation.result.skipped:
            self.last_p.labels(evaluation.detector, evaluation.variant, evaluation.version).set(
                evaluation.result.p_value
            )
            details = evaluation.result.details
            for source in ("estimated", "realized"):
                figures = details.get(source)
                if evaluation.detector == "performance" and source == "estimated":
                    continue  # the serving windows' estimate is the one to watch
                if not isinstance(figures, dict):
                    continue
                for metric, name in (("normalized_entropy", "ne"), ("auc", "auc")):
                    value = figures.get(metric)
                    if isinstance(value, float) and math.isfinite(value):
                        self.performance.labels(
                            source, name, evaluation.variant, evaluation.version
                        ).set(value)

    def on_alert(self, alert: Any) -> None:
        self.alerts.labels(alert.detector, alert.variant).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class KubeAlertPoster:
    """Posts alerts as Events on the InferenceService from a background thread.

    The Kubernetes client and `kubeloop.cluster.events` are imported on the first alert;
    any failure is logged and reported to `on_result("failed")`. A full queue drops the
    alert (`on_result("dropped")`) rather than slow down ingestion.
    """

    def __init__(
        self,
        namespace: str,
        inference_service: str,
        *,
        on_result: Callable[[str], None] = lambda result: None,
        core_api: Any = None,
        custom_api: Any = None,
        max_queue: int = 1000,
    ):
        self.namespace = namespace
        self.inference_service = inference_service
        self.on_result = on_result
        self._core, self._custom = core_api, custom_api
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self, alert: Any) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kube-events", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            log.warning("Kubernetes event queue full; alert %s not posted", alert.id)
            self.on_result("dropped")

    def _apis(self) -> tuple[Any, Any]:
        if self._core is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._core, self._custom = client.CoreV1Api(), client.CustomObjectsApi()
        return self._core, self._custom

    def post(self, alert: Any) -> None:
        """Post one alert now (raises on failure)."""
        from kubeloop.cluster.events import alert_event, post_alert_event

        core, custom = self._apis()
        isvc: dict[str, Any] = {
            "metadata": {"name": self.inference_service, "namespace": self.namespace}
        }
        if custom is not None:
            try:
                found = custom.get_namespaced_custom_object(
                    "serving.kserve.io", "v1beta1", self.namespace, "inferenceservices",
                    self.inference_service,
                )  # fmt: skip
                if isinstance(found, dict) and found.get("metadata"):
                    isvc = found
            except Exception as exc:  # noqa: BLE001 - the event still goes out, without uid
                log.warning("cannot read InferenceService %s: %s", self.inference_service, exc)
        instance = os.environ.get("HOSTNAME") or None
        post_alert_event(core, self.namespace, alert_event(alert, isvc, instance=instance))

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            try:
                self.post(alert)
                self.on_result("posted")
            except Exception as exc:  # noqa: BLE001 - never crash the service
                log.error("cannot post alert %s as a Kubernetes Event: %s", alert.id, exc)
                self.on_result("failed")
            finally:
                self._queue.task_done()

    def join(self) -> None:
        """Wait until every queued alert was handled (tests, shutdown)."""
        self._queue.join()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)


class GroupCommit:
    """Feeds CloudEvents to the monitor in batches, one transaction per batch.

    Each HTTP handler thread `submit`s its event and waits; one writer thread takes every
    event queued so far (up to `max_batch`), hands them to `monitor.ingest_many` (one
    transaction) and wakes the handlers with their results. A handler answers only after
    the transaction holding its event committed, so an acknowledged event survives a
    SIGKILL as before; under load, events that arrive while a transaction commits share
    the next one instead of paying a commit each.
    """

    def __init__(self, monitor: Any, max_batch: int = 256):
        self.monitor = monitor
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0
        self.events = 0

    def submit(self, event: Any) -> Any:
        """Ingest one event; returns its IngestResult, raises what `ingest` would."""
        from concurrent.futures import Future

        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="drift-writer", daemon=True)
                self._thread.start()
        future: Future = Future()
        self._queue.put((event, future))
        result = future.result()
        if isinstance(result, BaseException):
            raise result
        return result

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
            try:
                results = self._ingest([event for event, _ in batch])
            except Exception as exc:  # noqa: BLE001 - the whole batch rolled back: all fail
                results = [exc] * len(batch)
            self.batches += 1
            self.events += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)

    def _ingest(self, events: list[Any]) -> list[Any]:
        many = getattr(self.monitor, "ingest_many", None)
        if many is not None:
            return many(events)
        # A monitor with `ingest` only (a stand-in in tests): one event at a time.
        results: list[Any] = []
        for event in events:
            try:
                results.append(self.monitor.ingest(event))
            except Exception as exc:  # noqa: BLE001 - returned to that event's handler
                results.append(exc)
        return results

    def close(self) -> None:
        """Stop the writer once the queued events are written (a later `submit` starts
        a new one)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout=30)


def build_app(
    monitor: Any,
    *,
    inference_service: str | None = None,
    metrics: DriftMetrics | None = None,
    kube: KubeAlertPoster | None = None,
    revision_variant: Callable[[str], str | None] | None = None,
    max_body_bytes: int | None = None,
    max_event_rows: int = DEFAULT_MAX_EVENT_ROWS,
    feedback: Any = None,
):
    """The FastAPI app serving `monitor` (a `kubeloop.drift.DriftMonitor`).

    `feedback` (a `kubeloop.serving.request_log.feedback.FeedbackService`) mounts the label
    endpoint and the request log's routes, and keeps every accepted logger event.

    Nothing over the limits is parsed or stored: a body over `max_body_bytes` (default
    `kubeloop.serving.edge.DEFAULT_MAX_BODY_BYTES`) is refused with 413 at the edge, and
    an event of more than `max_event_rows` instances or predictions with 413 before the
    monitor sees it. A bad `ce-id` (the id of the request) is a 400 naming it.

    `revision_variant(revision)` names the variant a Knative revision serves (KServe's logger
    does not say; `kubeloop.cluster.traffic.RevisionVariants` reads it off the
    InferenceService status); None keeps ce-variant/ce-endpoint only.

    Registers the metrics (and `kube`, when given) as the monitor's callbacks. With
    `inference_service`, events of another InferenceService are refused.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    from kubeloop.drift.events import BadEventError, parse_event
    from kubeloop.serving.edge import DEFAULT_MAX_BODY_BYTES, EdgeMiddleware, id_problem

    metrics = metrics or DriftMetrics()
    monitor.on_evaluation.append(metrics.on_evaluation)
    monitor.on_alert.append(metrics.on_alert)
    if kube is not None:
        monitor.on_alert.append(kube)
        kube.on_result = lambda result: metrics.kube_events.labels(result=result).inc()

    writer = GroupCommit(monitor)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any):
        yield
        writer.close()  # the queued events are written before the monitor closes

    app = FastAPI(title="kubeloop drift detector", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.monitor = monitor
    app.state.writer = writer
    app.state.metrics = metrics
    app.add_middleware(
        EdgeMiddleware,
        max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY_BYTES,
        on_reject=lambda rejection: metrics.bad_events.labels(reason=rejection.reason).inc(),
    )

    def bad(reason: str, message: str, status: int = 400) -> JSONResponse:
        metrics.bad_events.labels(reason=reason).inc()
        return JSONResponse({"error": message, "reason": reason}, status_code=status)

    def check_limits(event: Any) -> None:
        problem = id_problem(event.id.encode("utf-8"))
        if problem is not None:
            raise BadEventError("bad_id", f"ce-id: {problem}")
        for name, values in (("instances", event.instances), ("predictions", event.predictions)):
            if values is not None and len(values) > max_event_rows:
                raise BadEventError(
                    "too_many_rows",
                    f"{name}: {len(values)} rows is over this detector's limit of "
                    f"{max_event_rows} per event (--max_event_rows)",
                )

    def internal(exc: BaseException) -> JSONResponse:
        log.exception("internal error")
        metrics.errors.inc()
        return JSONResponse(
            {"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500
        )

    def ingest(headers: dict[str, str], body: bytes) -> JSONResponse:
        try:
            event = parse_event(headers, body, revision_variant=revision_variant)
            check_limits(event)
            if (
                inference_service
                and event.inference_service
                and event.inference_service != inference_service
            ):
                raise BadEventError(
                    "wrong_inference_service",
                    f"event of InferenceService {event.inference_service!r}; this detector "
                    f"monitors {inference_service!r}",
                )
            metrics.events.labels(type=event.kind, variant=event.variant).inc()
            result = writer.submit(event)
            if feedback is not None:
                feedback.tap(
                    headers, body, variant=event.variant, model_version=event.model_version
                )
        except BadEventError as exc:
            return bad(exc.reason, str(exc), 413 if exc.reason == "too_many_rows" else 400)
        except RecursionError:
            return bad("undecodable_body", "body: JSON nested too deeply")
        except Exception as exc:  # noqa: BLE001 - one bad event must not take the service down
            return internal(exc)
        return JSONResponse(
            {
                "status": "accepted",
                "id": event.id,
                "type": event.kind,
                "paired": result.paired,
                "alerts": [a.id for a in result.alerts],
            }
        )

    @app.post("/")
    async def receive(request: Request) -> Response:
        try:
            body = await request.body()
        except Exception as exc:  # noqa: BLE001 - a client that hangs up mid-body
            return bad("unreadable_body", f"cannot read the request body: {exc}")
        return await run_in_threadpool(ingest, dict(request.headers), body)

    def labels(body: bytes) -> JSONResponse:
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            return bad("bad_labels", f"the labels body is not JSON: {exc or 'nested too deeply'}")
        items = data.get("labels") if isinstance(data, dict) else None
        if not isinstance(items, list):
            return bad(
                "bad_labels", 'expected {"labels": [{"request_id": ..., "click": 0|1}, ...]}'
            )
        pairs = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "request_id" not in item:
                return bad("bad_labels", f"label {i} has no request_id")
            value = item.get("click", item.get("label"))
            pairs.append((str(item["request_id"]), value))
        try:
            result = monitor.add_labels(pairs)
        except ValueError as exc:
            return bad("bad_labels", str(exc))
        except Exception as exc:  # noqa: BLE001
            return internal(exc)
        metrics.labels.labels(result="matched").inc(result.matched)
        metrics.labels.labels(result="unknown").inc(result.unknown)
        return JSONResponse(
            {
                "matched": result.matched,
                "unknown": result.unknown,
                "alerts": [a.id for a in result.alerts],
            }
        )

    @app.post("/labels")
    async def post_labels(request: Request) -> Response:
        return await run_in_threadpool(labels, await request.body())

    def flush() -> JSONResponse:
        try:
            alerts = monitor.flush()
        except Exception as exc:  # noqa: BLE001
            return internal(exc)
        return JSONResponse({"alerts": [a.id for a in alerts]})

    @app.post("/flush")
    async def post_flush() -> Response:
        return await run_in_threadpool(flush)

    @app.get("/healthz")
    async def healthz() -> Response:
        try:
            status = await run_in_threadpool(monitor.status)
        except Exception as exc:  # noqa: BLE001
            return JSONResponse({"status": "error", "error": str(exc)}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "model": status["model"],
                "reference_version": status["reference_version"],
                "open_windows": len(status["open_windows"]),
            }
        )

    @app.get("/status")
    async def get_status() -> Response:
        return JSONResponse(await run_in_threadpool(monitor.status))

    @app.get("/timeline")
    async def get_timeline() -> Response:
        """Every evaluated window's figures (estimates, realized, data quality), oldest first."""
        return JSONResponse(await run_in_threadpool(monitor.timeline))

    def alert_page(alert_id: str) -> Response:
        from fastapi.responses import HTMLResponse

        from kubeloop.drift.alert_report import alert_html

        store = monitor.alert_store
        if store is None:
            return bad("no_alert_store", "this detector keeps no alert store", 404)
        every = store.list()
        found = [a for a in every if a.id == alert_id]
        if not found:
            return bad("unknown_alert", f"no alert with id {alert_id!r}", 404)
        alert = found[0]
        key = (alert.model, alert.version, alert.variant)
        history = [a for a in every if (a.model, a.version, a.variant) == key]
        return HTMLResponse(alert_html(alert, history, monitor.timeline(key)))

    @app.get("/alerts/{alert_id}/report")
    async def get_alert_report(alert_id: str) -> Response:
        """The alert's self-contained HTML page (as `kubeloop alerts show ID --html`)."""
        return await run_in_threadpool(alert_page, alert_id)

    @app.get("/metrics")
    async def get_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    if feedback is not None:
        feedback.mount(app)
    return app


def _parser() -> argparse.ArgumentParser:
    from kubeloop.drift.backends import detector_names
    from kubeloop.serving.edge import DEFAULT_HOST, DEFAULT_MAX_BODY_BYTES, positive_int

    BACKENDS = detector_names()
    p = argparse.ArgumentParser(
        prog="python -m kubeloop.drift.service",
        description="Drift detector for KServe logger CloudEvents (see the module docstring).",
    )

    def opt(name: str, **kwargs: Any) -> None:
        # The manifests spell options with underscores (KServe's style); accept dashes too.
        p.add_argument(f"--{name}", f"--{name.replace('_', '-')}", dest=name, **kwargs)

    opt("port", type=int, default=8080, help="HTTP port (default 8080)")
    opt(
        "host",
        default=DEFAULT_HOST,
        help=f"bind address (default {DEFAULT_HOST}; the cluster manifests pass 0.0.0.0)",
    )
    opt(
        "max_body_bytes",
        type=positive_int,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"largest request body; larger ones get 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )
    opt(
        "max_event_rows",
        type=positive_int,
        default=DEFAULT_MAX_EVENT_ROWS,
        help=f"most instances/predictions one event may carry (default {DEFAULT_MAX_EVENT_ROWS})",
    )
    opt("reference_dir", required=True, type=Path, help="exported model version directory")
    opt("state_dir", type=Path, default=Path(DEFAULT_STATE_DIR), help="monitor state directory")
    opt(
        "alert_store",
        default=None,
        help="sqlite:///path.db or postgresql://... (default: <state_dir>/alerts.db)",
    )
    opt("inference_service", default=None, help="InferenceService monitored; others are refused")
    opt("namespace", default=None, help="namespace of the InferenceService (Kubernetes Events)")
    p.add_argument(
        "--kube",
        dest="kube",
        action="store_true",
        default=None,
        help="post alerts as Kubernetes Events (default: when running in a pod)",
    )
    p.add_argument("--no-kube", "--no_kube", dest="kube", action="store_false")
    opt("config", type=Path, default=None, help="MonitorConfig as a JSON or YAML file")
    opt(
        "backend",
        choices=BACKENDS,
        default=None,
        help="statistical backend of both detectors (overrides --config)",
    )
    # The earlier spelling: `--detector` names a check kind elsewhere (kubeloop alerts).
    p.add_argument("--detector", dest="backend", choices=BACKENDS, help=argparse.SUPPRESS)
    opt("canary_version", default=None, help="version of the canary when events do not say")
    opt(
        "request_log",
        type=Path,
        default=None,
        help="SQLite request log kept beside the monitor: mounts /feedback and /requestlog",
    )
    p.add_argument(
        "--no_score_reference",
        "--no-score-reference",
        dest="score_reference",
        action="store_false",
        default=True,
        help="do not score the reference sample with the model",
    )
    opt("log_level", default="info", help="logging level (default info)")
    return p


def _load_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def build_from_args(args: argparse.Namespace):
    """The monitor, app and (optional) Kubernetes poster that `args` describe."""
    from kubeloop.drift.alerts import open_alert_store
    from kubeloop.drift.config import MonitorConfig
    from kubeloop.drift.monitor import DriftMonitor
    from kubeloop.drift.reference import Reference

    data = _load_config(args.config)
    if args.backend:
        for field in ("feature_detector", "prediction_detector"):
            data[field] = {**data.get(field, {}), "type": args.backend}
    if args.canary_version:
        data.setdefault("variant_versions", {})["canary"] = args.canary_version
    config = MonitorConfig.model_validate(data)
    state_dir = Path(args.state_dir)
    store_url = args.alert_store or str(state_dir / "alerts.db")
    reference = Reference.from_dir(args.reference_dir, score=args.score_reference)
    monitor = DriftMonitor(
        reference, state_dir, config=config, alert_store=open_alert_store(store_url)
    )
    kube_on = (
        args.kube if args.kube is not None else bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    )
    kube = None
    if kube_on:
        namespace = args.namespace or os.environ.get("POD_NAMESPACE") or "default"
        kube = KubeAlertPoster(namespace, args.inference_service or reference.model)
    revision_variant = None
    if kube_on:
        from kubeloop.cluster.traffic import RevisionVariants

        # Which revision is the canary: from the InferenceService status (needs `get` on it).
        revision_variant = RevisionVariants.for_inference_service(
            args.inference_service or reference.model, kube.namespace
        )
    feedback = None
    if args.request_log is not None:
        from kubeloop.serving.request_log.feedback import FeedbackService
        from kubeloop.serving.request_log.sinks import SQLiteRequestLog

        feedback = FeedbackService(SQLiteRequestLog(args.request_log), on_labels=monitor.add_labels)
    app = build_app(
        monitor, inference_service=args.inference_service, kube=kube,
        revision_variant=revision_variant, max_body_bytes=args.max_body_bytes,
        max_event_rows=args.max_event_rows, feedback=feedback,
    )  # fmt: skip
    log.info(
        "drift detector for %s:%s (reference %d rows, scores %s), state %s, alerts %s, kube %s",
        reference.model, reference.version, len(reference.features),
        "from the model" if reference.predictions is not None else "learned online",
        state_dir, store_url, "on" if kube else "off",
    )  # fmt: skip
    return monitor, app, kube


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from kubeloop.errors import KubeloopError

    try:
        monitor, app, kube = build_from_args(args)
    except (KubeloopError, ValueError, OSError) as exc:  # config and reference problems
        log.error("%s", exc)
        return 2
    import uvicorn

    # What is built by now (the libraries, the reference, the detectors: about 500k objects)
    # lives as long as the process. Frozen, it leaves the collector's full passes, each of
    # which otherwise walks all of it (about 0.2 s of CPU with alibi-detect loaded).
    gc.freeze()
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    finally:
        if kube is not None:
            kube.close()
        monitor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
