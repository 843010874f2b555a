"""`CloudEventLogger`: exchanges in, KServe-logger CloudEvents out, off the request path
(written to a sink, and POSTed to HTTP consumers such as the drift detector)."""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar, Self

from kubeloop.cloudevents import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    SPEC_VERSION,
    VARIANT_ENDPOINTS,
)
from kubeloop.serving.request_log.events import Exchange, LoggedEvent, iso_time
from kubeloop.serving.request_log.ids import uuid7_strings
from kubeloop.serving.request_log.sinks import RequestLogSink, SQLiteRequestLog

log = logging.getLogger(__name__)


_STOP = object()


# The counters of a CloudEventLogger, in the order `LoggerStats.as_dict` reports them.
COUNTERS = ("logged", "dropped", "sink_errors", "sent", "send_failures", "send_dropped")


class LoggerStats:
    """Thread-safe counters of a CloudEventLogger (events, not exchanges), by the names in
    `COUNTERS`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(COUNTERS, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


class CloudEventLogger:
    """Logs exchanges as KServe-logger CloudEvents, off the request path.

    `log(exchange)` and `log_served(...)` only append to a bounded in-memory queue (a
    deque: no lock, no thread woken per request); a daemon thread takes what arrived
    within `batch_wait` seconds (at most `batch_size` exchanges), makes the two events of
    each, writes them to `sink` in one call and queues them for `urls` (each URL gets
    every request event and every response event with status 200, POSTed in binary mode
    by a second thread). When a queue is full or a POST fails, the event is dropped and
    counted in `stats`. `flush()` waits for everything queued so far; `close()` flushes
    and stops the threads (and closes the sink when `close_sink`).
    """

    def __init__(
        self,
        sink: RequestLogSink,
        *,
        inference_service: str,
        namespace: str = "kubeloop",
        component: str = "predictor",
        source: str | None = None,
        urls: Iterable[str] = (),
        queue_size: int = 10_000,
        batch_size: int = 256,
        batch_wait: float = 0.1,
        send_timeout: float = 2.0,
        close_sink: bool = True,
    ):
        self.sink = sink
        self.inference_service = inference_service
        self.namespace = namespace
        self.component = component
        self.source = source or f"http://localhost/{component}"
        self.urls = tuple(urls)
        self.queue_size = queue_size
        self.batch_size = batch_size
        # How long the writer lets exchanges gather before a write. A write (a SQLite
        # transaction, a thread wake-up) costs the serving process about 0.4 ms of CPU
        # at ~200 requests/s: one per request cost ~0.2 ms a request, a 20 ms window
        # ~0.13 ms, a 100 ms window ~0.03 ms (in-process against a raw backend).
        self.batch_wait = batch_wait
        self.send_timeout = send_timeout
        self.close_sink = close_sink
        self.stats = LoggerStats()
        # The request path appends here and wakes the writer only when it is parked
        # (`_parked`): deque.append is atomic, so no lock is taken per request.
        self._pending: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._parked = False
        self._hurry = False
        # The attributes shared by every event of one (variant, version, revision,
        # metadata): built once, not per exchange.
        self._templates: dict[tuple, dict[str, str]] = {}
        # The same attributes as row fields, for the SQLite rows `_rows` makes.
        self._row_parts: dict[tuple, tuple] = {}
        # An SQLite log takes rows made without events, unless its class writes otherwise.
        self._rows_sink = (
            isinstance(sink, SQLiteRequestLog) and type(sink).write is SQLiteRequestLog.write
        )
        self._send_queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="kubeloop-log", daemon=True)
        self._writer.start()
        self._sender: threading.Thread | None = None
        if self.urls:
            self._sender = threading.Thread(
                target=self._send_loop, name="kubeloop-log-send", daemon=True
            )
            self._sender.start()

    # The request path -------------------------------------------------------------------

    def log(self, exchange: Exchange) -> bool:
        """Queue `exchange` for logging; False (and counted as dropped) if the queue is full
        or the logger is closed."""
        return self._enqueue(exchange)

    def log_served(
        self,
        request_body: bytes,
        response_body: bytes,
        status_code: int,
        variant: str,
        model_version: str | None,
        latency_ms: float,
        request_id: str | None,
        request_time: float,
        content_type: str,
        rejected: str | None = None,
    ) -> bool:
        """`log` for the router's hot path: the fields of an `Exchange` as they are, the
        response time being `request_time + latency_ms / 1000` and a missing request id
        a new UUID (both worked out by the writer thread, like the events)."""
        return self._enqueue(
            (request_body, response_body, status_code, variant, model_version, latency_ms,
             request_id, request_time, content_type, rejected)
        )  # fmt: skip

    def _enqueue(self, item: Exchange | tuple) -> bool:
        pending = self._pending
        if self._closed or len(pending) >= self.queue_size:
            self.stats.add("dropped", 2)
            return False
        pending.append(item)
        if self._parked:
            self._parked = False
            self._wake.set()
        return True

    # Making events ----------------------------------------------------------------------

    def revision_of(self, model_version: str | None) -> str | None:
        """The local revision name of a model version: `<isvc>-<component>-<version>` (one
        predictor process serves one version, as one Knative revision runs one spec)."""
        if not model_version:
            return None
        return f"{self.inference_service}-{self.component}-{model_version}"

    def _template(
        self, variant: str, model_version: str | None, revision: str | None, metadata: str
    ) -> dict[str, str]:
        """The attributes after recordedtime that every event of one variant, version,
        revision and metadata (JSON) carries, in CE_ATTRIBUTES order; built once."""
        key = (variant, model_version, revision, metadata)
        template = self._templates.get(key)
        if template is None:
            attrs = {
                "inferenceservicename": self.inference_service,
                "namespace": self.namespace,
                "component": self.component,
                "endpoint": VARIANT_ENDPOINTS.get(variant, variant),
                "metadata": metadata,
                "revision": revision or self.revision_of(model_version),
                "modelversion": model_version,
                "variant": variant,
            }
            # CloudEvents attributes are strings; an unknown one is left out, not sent empty.
            template = {k: v for k, v in attrs.items() if v}
            if len(self._templates) < 1024:  # bounded: metadata values may vary freely
                self._templates[key] = template
        return template

    def _pair(
        self,
        recorded: str,
        ce_id: str,
        variant: str,
        model_version: str | None,
        revision: str | None,
        metadata: str,
        content_type: str,
        request_body: bytes,
        response_body: bytes,
        request_time: float,
        response_time: float,
        latency_ms: float,
        status_code: int,
    ) -> tuple[LoggedEvent, LoggedEvent]:
        """The request and response events of one exchange, from its fields."""
        shared = self._template(variant, model_version, revision, metadata)
        head = {"specversion": SPEC_VERSION, "id": ce_id, "source": self.source}
        head["recordedtime"] = recorded
        request = LoggedEvent.made(
            {**head, **shared, "type": REQUEST_TYPE, "time": iso_time(request_time)},
            request_body, variant, model_version, None, None, content_type,
        )  # fmt: skip
        response = LoggedEvent.made(
            {**head, **shared, "type": RESPONSE_TYPE, "time": iso_time(response_time)},
            response_body, variant, model_version, latency_ms, status_code, content_type,
        )  # fmt: skip
        return request, response

    def _exchange_pair(self, x: Exchange, recorded: str) -> tuple[LoggedEvent, LoggedEvent]:
        metadata = json.dumps(x.metadata, separators=(",", ":")) if x.metadata else "{}"
        return self._pair(
            recorded, x.request_id, x.variant, x.model_version, x.revision, metadata,
            x.content_type, x.request_body, x.response_body, x.request_time, x.response_time,
            x.latency_ms, x.status_code,
        )  # fmt: skip

    def events_for(self, exchange: Exchange) -> tuple[LoggedEvent, LoggedEvent]:
        """The request and response events of `exchange` (same ce-id)."""
        return self._exchange_pair(exchange, iso_time(time.time()))

    # Background threads -----------------------------------------------------------------

    def _write_loop(self) -> None:
        pending = self._pending
        while True:
            if not pending:
                # Park until the request path appends (it sets the event only when it
                # sees `_parked`): announce first, then look again, so no append is missed.
                self._wake.clear()
                self._parked = True
                if not pending:
                    self._wake.wait()
                self._parked = False
            if len(pending) < self.batch_size and self.batch_wait > 0:
                # Let the batch gather (one write for all). flush() and close() cut the
                # window short: they set `_hurry` before the event, and it is read after
                # the clear, so neither is missed. Requests only wake a parked writer.
                self._wake.clear()
                if not self._hurry:
                    self._wake.wait(self.batch_wait)
            self._hurry = False
            items = [pending.popleft() for _ in range(min(len(pending), self.batch_size))]
            markers = [x for x in items if isinstance(x, threading.Event)]
            stop = any(x is _STOP for x in items)
            if markers or stop:
                items = [x for x in items if x is not _STOP and not isinstance(x, threading.Event)]
            try:
                self._write(items)
            except Exception:
                log.exception("request log: could not make the events of %d exchanges", len(items))
                self.stats.add("dropped", 2 * len(items))
            for marker in markers:
                marker.set()
            if stop:
                return

    def _write(self, items: list[Exchange | tuple]) -> None:
        """Make the events of the queued `items` (Exchanges and `log_served` tuples, whose
        response time and missing ids are worked out here) and write them in one call."""
        if not items:
            return
        recorded = iso_time(time.time())
        # Ids for the requests that brought none, time-ordered from their request times.
        new_ids = iter(uuid7_strings([x[7] for x in items if type(x) is tuple and x[6] is None]))
        if self._sender is None and self._rows_sink:
            # Nothing is POSTed: the SQLite log's rows are made straight from the fields,
            # without the event objects (the same rows `SQLiteRequestLog.write` makes).
            rows = self._rows(items, recorded, new_ids)
            self._store(self.sink.write_rows, rows)
            return
        events: list[LoggedEvent] = []
        local_only: set[int] = set()
        for x in items:
            if type(x) is tuple:
                body, answer, status, variant, version, latency, ce_id, at, kind, rejected = x
                pair = self._pair(
                    recorded, ce_id or next(new_ids), variant, version, None, "{}", kind,
                    body, answer, at, at + latency / 1000.0, latency, status,
                )  # fmt: skip
            else:
                pair = self._exchange_pair(x, recorded)
                rejected = x.rejected
            if rejected is not None:
                local_only.update(id(event) for event in pair)
            events.extend(pair)
        self._store(self.sink.write, events)
        if self._sender is not None:
            for event in events:
                if event.type == RESPONSE_TYPE and event.status_code != 200:
                    continue  # KServe's agent logs only successful responses
                if id(event) in local_only:
                    continue
                try:
                    self._send_queue.put_nowait(event)
                except queue.Full:
                    self.stats.add("send_dropped", len(self.urls))

    def _store(self, write: Callable[[list], None], records: list) -> None:
        """`write(records)` (events or rows, two per exchange), counted in `stats`."""
        try:
            write(records)
            self.stats.add("logged", len(records))
        except Exception:
            self.stats.add("sink_errors", 1)
            self.stats.add("dropped", len(records))
            log.exception("request log: could not write %d events", len(records))

    def _rows(self, items: list[Exchange | tuple], recorded: str, new_ids: Iterator[str]) -> list:
        """The SQLite rows (`ROW_COLUMNS` order) of the request and response events of
        each item: the fields `_pair`'s events would carry."""
        rows: list[tuple] = []
        source, parts = self.source, self._row_parts
        for x in items:
            if type(x) is tuple:
                body, answer, status, variant, version, latency, ce_id, at, kind, _ = x
                ce_id, answered, revision, metadata = (
                    ce_id or next(new_ids),
                    at + latency / 1000.0,
                    None,
                    "{}",
                )
            else:
                body, answer, status, variant, version = (
                    x.request_body,
                    x.response_body,
                    x.status_code,
                    x.variant,
                    x.model_version,
                )
                latency, ce_id, at, answered, kind, revision = (
                    x.latency_ms, x.request_id, x.request_time, x.response_time,
                    x.content_type, x.revision,
                )  # fmt: skip
                metadata = json.dumps(x.metadata, separators=(",", ":")) if x.metadata else "{}"
            key = (variant, version, revision, metadata)
            part = parts.get(key)
            if part is None:
                t = self._template(variant, version, revision, metadata)
                part = (
                    (t.get("inferenceservicename"), t.get("namespace"), t.get("component"),
                     t.get("endpoint")),
                    t.get("revision"),
                    t.get("metadata"),
                )  # fmt: skip
                if len(parts) < 1024:  # bounded, as the templates
                    parts[key] = part
            (isvc, namespace, component, endpoint), rev, meta = part
            rows.append(
                (ce_id, REQUEST_TYPE, source, SPEC_VERSION, iso_time(at), isvc, namespace,
                 component, endpoint, kind, body, variant, version, None, None, rev, recorded,
                 meta)
            )  # fmt: skip
            rows.append(
                (ce_id, RESPONSE_TYPE, source, SPEC_VERSION, iso_time(answered), isvc,
                 namespace, component, endpoint, kind, answer, variant, version, latency,
                 status, rev, recorded, meta)
            )  # fmt: skip
        return rows

    def _send_loop(self) -> None:
        import httpx

        with httpx.Client(timeout=self.send_timeout) as client:
            while True:
                event = self._send_queue.get()
                try:
                    if event is _STOP:
                        return
                    # What cloudevents' to_binary(event.to_cloudevent()) gives, header for
                    # header and byte for byte, at a tenth of its CPU (~10 vs ~130 us).
                    headers, body = event.headers(), event.data
                    for url in self.urls:
                        try:
                            response = client.post(url, headers=headers, content=body)
                            if response.status_code >= 300:
                                raise httpx.HTTPStatusError(
                                    f"status {response.status_code}",
                                    request=response.request,
                                    response=response,
                                )
                            self.stats.add("sent", 1)
                        except httpx.HTTPError as exc:
                            self.stats.add("send_failures", 1)
                            log.debug("request log: POST to %s failed: %s", url, exc)
                finally:
                    self._send_queue.task_done()

    # Lifecycle --------------------------------------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything logged so far is written (and sent); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._writer.is_alive():
            # A marker behind everything queued so far: the writer sets it once the batch
            # before it is written.
            marker = threading.Event()
            self._pending.append(marker)
            self._hurry = True
            self._wake.set()
            if not marker.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
                return False
        while self._send_queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush, stop the threads and close the sink (if `close_sink`)."""
        if self._closed:
            return
        self._closed = True
        self._pending.append(_STOP)
        self._hurry = True
        self._wake.set()
        self._writer.join(timeout)
        if self._sender is not None:
            self._send_queue.put(_STOP)
            self._sender.join(timeout)
        if self.close_sink:
            self.sink.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- analysis -----------------------------------------------------------------------------


class LoggerMetrics:
    """A Prometheus collector of a CloudEventLogger's counters, read at scrape time (so
    the request path does no metrics work): `kubeloop_request_log_events_total{result}`
    with result logged, dropped (queue full), sink_error, sent, send_failed and
    send_dropped."""

    RESULTS: ClassVar[dict[str, str]] = {
        "logged": "logged",
        "dropped": "dropped",
        "sink_error": "sink_errors",
        "sent": "sent",
        "send_failed": "send_failures",
        "send_dropped": "send_dropped",
    }

    def __init__(self, logger: CloudEventLogger):
        self.logger = logger

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        stats = self.logger.stats.as_dict()
        family = CounterMetricFamily(
            "kubeloop_request_log_events",
            "Request-log events by what became of them (dropped: the bounded queue was full)",
            labels=["result"],
        )
        for result, key in self.RESULTS.items():
            family.add_metric([result], stats[key])
        yield family
