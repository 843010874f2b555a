"""`CloudEventLogger`: exchanges in, KServe-logger CloudEvents out, off the request path
(written to a sink, and POSTed to HTTP consumers such as the drift detector)."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterable
from typing import Any, ClassVar, Self

from kubeloop.cloudevents import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    SPEC_VERSION,
    VARIANT_ENDPOINTS,
)
from kubeloop.serving.request_log.events import Exchange, LoggedEvent, iso_time
from kubeloop.serving.request_log.sinks import RequestLogSink

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

    `log(exchange)` only puts the exchange on a bounded queue; a daemon thread makes the
    two events, writes them to `sink` in batches (what arrives within `batch_wait` seconds
    of a batch's first exchange, at most `batch_size`) and queues them for `urls` (each URL gets
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
        batch_wait: float = 0.02,
        send_timeout: float = 2.0,
        close_sink: bool = True,
    ):
        self.sink = sink
        self.inference_service = inference_service
        self.namespace = namespace
        self.component = component
        self.source = source or f"http://localhost/{component}"
        self.urls = tuple(urls)
        self.batch_size = batch_size
        # How long the writer waits for more exchanges after the first of a batch: at a
        # few hundred requests/s one transaction per request cost the serving process
        # ~0.2 ms of CPU per request; waiting gathers them into one.
        self.batch_wait = batch_wait
        self.send_timeout = send_timeout
        self.close_sink = close_sink
        self.stats = LoggerStats()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
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
        if self._closed:
            self.stats.add("dropped", 2)
            return False
        try:
            self._queue.put_nowait(exchange)
        except queue.Full:
            self.stats.add("dropped", 2)
            return False
        return True

    # Making events ----------------------------------------------------------------------

    def revision_of(self, model_version: str | None) -> str | None:
        """The local revision name of a model version: `<isvc>-<component>-<version>` (one
        predictor process serves one version, as one Knative revision runs one spec)."""
        if not model_version:
            return None
        return f"{self.inference_service}-{self.component}-{model_version}"

    def _pair_attributes(
        self, ce_id: str, exchange: Exchange, recorded: float
    ) -> tuple[dict[str, str], str]:
        """The attributes both events of `exchange` share (without type and time), and
        the recorded time; worked out once per exchange (the writer thread's CPU is the
        serving process's)."""
        attrs = {
            "specversion": SPEC_VERSION,
            "id": ce_id,
            "source": self.source,
            "recordedtime": iso_time(recorded),
            "inferenceservicename": self.inference_service,
            "namespace": self.namespace,
            "component": self.component,
            "endpoint": VARIANT_ENDPOINTS.get(exchange.variant, exchange.variant),
            "metadata": json.dumps(exchange.metadata, separators=(",", ":"))
            if exchange.metadata
            else "{}",
            "revision": exchange.revision or self.revision_of(exchange.model_version),
            "modelversion": exchange.model_version,
            "variant": exchange.variant,
        }
        # CloudEvents attributes are strings; an unknown one is left out, not sent empty.
        return {k: v for k, v in attrs.items() if v}, attrs["recordedtime"]

    def events_for(self, exchange: Exchange) -> tuple[LoggedEvent, LoggedEvent]:
        """The request and response events of `exchange` (same ce-id)."""
        shared, _ = self._pair_attributes(exchange.request_id, exchange, time.time())

        def event(event_type: str, at: float, data: bytes, **extra: Any) -> LoggedEvent:
            return LoggedEvent(
                attributes={**shared, "type": event_type, "time": iso_time(at)},
                data=data,
                content_type=exchange.content_type,
                variant=exchange.variant,
                model_version=exchange.model_version,
                **extra,
            )

        return (
            event(REQUEST_TYPE, exchange.request_time, exchange.request_body),
            event(
                RESPONSE_TYPE,
                exchange.response_time,
                exchange.response_body,
                latency_ms=exchange.latency_ms,
                status_code=exchange.status_code,
            ),
        )

    # Background threads -----------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.batch_size and batch[-1] is not _STOP:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except queue.Empty:
                    pass
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            stop = any(x is _STOP for x in batch)
            exchanges = [x for x in batch if x is not _STOP]
            try:
                self._write(exchanges)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                return

    def _write(self, exchanges: list[Exchange]) -> None:
        if not exchanges:
            return
        events: list[LoggedEvent] = []
        local_only: set[int] = set()
        for exchange in exchanges:
            pair = self.events_for(exchange)
            if exchange.rejected is not None:
                local_only.update(id(event) for event in pair)
            events.extend(pair)
        try:
            self.sink.write(events)
            self.stats.add("logged", len(events))
        except Exception:
            self.stats.add("sink_errors", 1)
            self.stats.add("dropped", len(events))
            log.exception("request log: could not write %d events", len(events))
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

    def _send_loop(self) -> None:
        import httpx
        from cloudevents.conversion import to_binary

        with httpx.Client(timeout=self.send_timeout) as client:
            while True:
                event = self._send_queue.get()
                try:
                    if event is _STOP:
                        return
                    headers, body = to_binary(event.to_cloudevent())
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
        for q in (self._queue, self._send_queue):
            while q.unfinished_tasks:
                if deadline is not None and time.monotonic() > deadline:
                    return False
                time.sleep(0.005)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush, stop the threads and close the sink (if `close_sink`)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
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
