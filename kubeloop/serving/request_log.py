"""The request/response log, in the format of KServe's inference logger.

In the cluster the KServe agent beside each predictor sends every request and response as
a CloudEvent in HTTP binary mode (kserve v0.20.0 `pkg/logger/worker.go:122-149`,
`handler.go:115-208`):

    ce-specversion          1.0
    ce-id                   the same for a request and its response (the incoming Ce-Id
                            header, else a new UUID)
    ce-type                 org.kubeflow.serving.inference.request | .response
    ce-source               the pod name (`agent_injector.go:258-259`), which carries the
                            Knative revision: ctr-predictor-00002-deployment-<hash>-<id>
    ce-time                 when the request arrived / the response was received (RFC 3339)
    ce-recordedtime         when the logger made the event (time.Now() at send time)
    ce-inferenceservicename the InferenceService (the model name here)
    ce-namespace            its namespace
    ce-component            predictor
    ce-endpoint             the pod label `endpoint` (`agent_injector.go:238`), which no v0.20
                            controller sets: empty
    ce-metadata             JSON of the request headers named in the logger's metadataHeaders
                            (`{}` when none; `map[string][]string` as Go marshals it)
    content-type            application/json; the body is the request or response payload
                            (kubeloop's predictor names its model version in the response body)

The local logger sends the same attributes, with ce-source its URI and ce-endpoint
"default"/"canary" (as KServe did before v1beta1), plus three extensions that say outright
what the drift detector otherwise derives (`kubeloop.drift.events.parse_event`):

    ce-revision             the revision that served: `<isvc>-<component>-<version>` locally
                            (one predictor process per version), the Knative revision name in
                            a cluster (read there off ce-source)
    ce-modelversion         the registry version that answered
    ce-variant              "primary" or "canary", the router's own routing decision

Locally the router does the agent's job. `CloudEventLogger` turns one exchange (request
body, response body, variant, version, latency, status) into that pair of events and
hands it to a background thread, so the request path only enqueues: the thread writes the
events to a `RequestLogSink` (SQLite by default, or a JSONL file) with the variant, model
version, latency and status code as extra columns, and optionally POSTs them to HTTP
consumers (the drift detector) with `cloudevents.conversion.to_binary`. Like the KServe
agent it forwards only responses with status 200; the local sink keeps every response,
so errors can be counted per variant. A full queue or a failed POST drops the event and
counts it (`CloudEventLogger.stats`), it never slows a request down.

Readers: `RequestLogSink.iter_events(since=, variant=, type=)` and `exchanges_frame` (one
row per request, joined with its response).
"""

from __future__ import annotations

import abc
import base64
import contextlib
import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
SPEC_VERSION = "1.0"
JSON_CONTENT_TYPE = "application/json"

# ce-endpoint per router variant, as KServe before v1beta1 set it (empty in KServe v0.20).
ENDPOINTS = {"primary": "default", "canary": "canary"}

# The CloudEvents context attributes of an event, in header order (ce-<name>).
CE_ATTRIBUTES = (
    "specversion",
    "id",
    "type",
    "source",
    "time",
    "recordedtime",
    "inferenceservicename",
    "namespace",
    "component",
    "endpoint",
    "metadata",
    "revision",
    "modelversion",
    "variant",
)

_TYPE_ALIASES = {"request": REQUEST_TYPE, "response": RESPONSE_TYPE}


def _iso(ts: float) -> str:
    # Fixed width (microseconds, +00:00), so ISO strings sort as the times they name.
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


def _since_text(since: datetime | str | float | None) -> str | None:
    if since is None:
        return None
    if isinstance(since, int | float):
        return _iso(float(since))
    if isinstance(since, str):
        since = datetime.fromisoformat(since)
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return since.astimezone(UTC).isoformat(timespec="microseconds")


def _type_name(type_: str | None) -> str | None:
    return None if type_ is None else _TYPE_ALIASES.get(type_, type_)


@dataclass(frozen=True)
class LoggedEvent:
    """One CloudEvent of the log plus the columns kubeloop adds.

    `attributes` holds the context attributes (`CE_ATTRIBUTES`, without the `ce-` prefix),
    `data` the payload bytes exactly as they crossed the router. `variant` is "primary" or
    "canary", `model_version` the registry version that answered (both also sent as the
    ce-variant / ce-modelversion extensions, with ce-revision), `latency_ms` the
    predictor's round trip seen by the router (responses only) and `status_code` the HTTP
    status of the response (responses only).
    """

    attributes: dict[str, str]
    data: bytes
    variant: str | None = None
    model_version: str | None = None
    latency_ms: float | None = None
    status_code: int | None = None
    content_type: str = JSON_CONTENT_TYPE

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def type(self) -> str:
        return self.attributes["type"]

    @property
    def time(self) -> str:
        return self.attributes["time"]

    @property
    def revision(self) -> str | None:
        """The revision that served the exchange (ce-revision), None in older logs."""
        return self.attributes.get("revision")

    def json(self) -> Any:
        """The payload parsed as JSON; ValueError if it is not JSON."""
        return json.loads(self.data)

    def headers(self) -> dict[str, str]:
        """The HTTP headers of this event in binary mode (ce-* plus content-type)."""
        out = {f"ce-{k}": v for k, v in self.attributes.items()}
        out["content-type"] = self.content_type
        return out

    def to_cloudevent(self):
        """A `cloudevents.http.CloudEvent` with the same attributes and data."""
        from cloudevents.http import CloudEvent

        return CloudEvent({**self.attributes, "datacontenttype": self.content_type}, self.data)


@dataclass
class Exchange:
    """One request and its response as the router saw them."""

    request_body: bytes
    response_body: bytes
    status_code: int
    variant: str
    model_version: str | None
    latency_ms: float
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    request_time: float = field(default_factory=time.time)
    response_time: float = field(default_factory=time.time)
    content_type: str = JSON_CONTENT_TYPE
    revision: str | None = None  # None: the logger names it from the model version
    # Why the request was refused (at the router's edge, or a 4xx of the predictor): its
    # request_body is then a small record with the reason, never the body, and its events
    # stay in the local log (the drift detector has no use for a request never scored).
    rejected: str | None = None
    # Request headers forwarded as ce-metadata, as KServe's logger does for the headers named
    # in its metadataHeaders: {name: [values]}.
    metadata: dict[str, list[str]] = field(default_factory=dict)


# --- sinks --------------------------------------------------------------------------------


class RequestLogSink(abc.ABC):
    """Where logged events are kept. `write` must be safe to call from several threads,
    and from several processes writing to the same place."""

    @abc.abstractmethod
    def write(self, events: Sequence[LoggedEvent]) -> None:
        """Append `events` (in one transaction where the sink has them)."""

    @abc.abstractmethod
    def iter_events(
        self,
        since: datetime | str | float | None = None,
        variant: str | None = None,
        type: str | None = None,
    ) -> Iterator[LoggedEvent]:
        """Events in the order written, optionally only those at or after `since` (a
        datetime, ISO string or epoch seconds; naive means UTC), of one `variant`
        ("primary"/"canary") and of one `type` (the full ce-type, or "request"/"response")."""

    def close(self) -> None:
        """Release files and connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ce_id TEXT NOT NULL,
    ce_type TEXT NOT NULL,
    ce_source TEXT NOT NULL,
    ce_specversion TEXT NOT NULL,
    ce_time TEXT NOT NULL,
    ce_inferenceservicename TEXT,
    ce_namespace TEXT,
    ce_component TEXT,
    ce_endpoint TEXT,
    ce_revision TEXT,
    ce_recordedtime TEXT,
    ce_metadata TEXT,
    content_type TEXT NOT NULL,
    data BLOB NOT NULL,
    variant TEXT,
    model_version TEXT,
    latency_ms REAL,
    status_code INTEGER
);
CREATE INDEX IF NOT EXISTS events_time ON events (ce_time);
CREATE INDEX IF NOT EXISTS events_id ON events (ce_id);
"""

_COLUMNS = (
    "ce_id, ce_type, ce_source, ce_specversion, ce_time, ce_inferenceservicename,"
    " ce_namespace, ce_component, ce_endpoint, content_type, data, variant, model_version,"
    " latency_ms, status_code, ce_revision, ce_recordedtime, ce_metadata"
)
_N_COLUMNS = _COLUMNS.count(",") + 1
# Columns added after the first release, created on logs that predate them.
_ADDED_COLUMNS = {"ce_revision": "TEXT", "ce_recordedtime": "TEXT", "ce_metadata": "TEXT"}


class SQLiteRequestLog(RequestLogSink):
    """Events in a SQLite database (table `events`), in WAL mode so readers never block
    the writer. Each thread gets its own connection; writers in other processes wait for
    the lock (busy timeout) instead of failing."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        with contextlib.suppress(sqlite3.OperationalError):
            conn.execute("PRAGMA journal_mode=WAL")
        for attempt in range(50):
            try:
                conn.executescript(_SCHEMA)
                self._add_columns(conn)
                break
            except sqlite3.OperationalError:  # another process creating it at this moment
                if attempt == 49:
                    raise
                time.sleep(0.05)

    @staticmethod
    def _add_columns(conn: sqlite3.Connection) -> None:
        """Add the columns a log written by an older kubeloop lacks."""
        have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
        for column, sql_type in _ADDED_COLUMNS.items():
            if column not in have:
                conn.execute(f"ALTER TABLE events ADD COLUMN {column} {sql_type}")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def write(self, events: Sequence[LoggedEvent]) -> None:
        if not events:
            return
        rows = [
            (
                e.attributes["id"],
                e.attributes["type"],
                e.attributes["source"],
                e.attributes["specversion"],
                e.attributes["time"],
                e.attributes.get("inferenceservicename"),
                e.attributes.get("namespace"),
                e.attributes.get("component"),
                e.attributes.get("endpoint"),
                e.content_type,
                e.data,
                e.variant,
                e.model_version,
                e.latency_ms,
                e.status_code,
                e.attributes.get("revision"),
                e.attributes.get("recordedtime"),
                e.attributes.get("metadata"),
            )
            for e in events
        ]
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                f"INSERT INTO events ({_COLUMNS}) VALUES ({', '.join('?' * _N_COLUMNS)})", rows
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def iter_events(self, since=None, variant=None, type=None) -> Iterator[LoggedEvent]:
        where, args = [], []
        if (since_text := _since_text(since)) is not None:
            where.append("ce_time >= ?")
            args.append(since_text)
        if variant is not None:
            where.append("variant = ?")
            args.append(variant)
        if (type_name := _type_name(type)) is not None:
            where.append("ce_type = ?")
            args.append(type_name)
        sql = f"SELECT {_COLUMNS} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        for row in self._conn().execute(sql, args):
            attrs = {
                "specversion": row[3],
                "id": row[0],
                "type": row[1],
                "source": row[2],
                "time": row[4],
                "inferenceservicename": row[5],
                "namespace": row[6],
                "component": row[7],
                "endpoint": row[8],
                "revision": row[15],
                "recordedtime": row[16],
                "metadata": row[17],
                "modelversion": row[12],
                "variant": row[11],
            }
            yield LoggedEvent(
                attributes={k: v for k, v in attrs.items() if v is not None},
                data=bytes(row[10]),
                variant=row[11],
                model_version=row[12],
                latency_ms=row[13],
                status_code=row[14],
                content_type=row[9],
            )

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        self._local = threading.local()


class JSONLRequestLog(RequestLogSink):
    """Events appended to a JSON Lines file, one object per event:
    `{"attributes": {...}, "data": <payload as JSON, or a string>, "data_encoding": ...,
    "variant": ..., "model_version": ..., "latency_ms": ..., "status_code": ...,
    "content_type": ...}`. Each batch is written with one append under an exclusive
    `flock`, so lines from concurrent writers never interleave."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    @staticmethod
    def _line(e: LoggedEvent) -> str:
        record: dict[str, Any] = {"attributes": e.attributes}
        try:
            record["data"] = json.loads(e.data)
            record["data_encoding"] = "json"
        except ValueError:
            try:
                record["data"] = e.data.decode("utf-8")
                record["data_encoding"] = "text"
            except UnicodeDecodeError:
                record["data"] = base64.b64encode(e.data).decode("ascii")
                record["data_encoding"] = "base64"
        record.update(
            variant=e.variant,
            model_version=e.model_version,
            latency_ms=e.latency_ms,
            status_code=e.status_code,
            content_type=e.content_type,
        )
        return json.dumps(record, separators=(",", ":")) + "\n"

    def write(self, events: Sequence[LoggedEvent]) -> None:
        if not events:
            return
        payload = "".join(self._line(e) for e in events).encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                os.close(fd)  # closing releases the flock

    @staticmethod
    def _event(record: dict[str, Any]) -> LoggedEvent:
        encoding = record.get("data_encoding", "json")
        raw = record.get("data")
        if encoding == "json":
            data = json.dumps(raw, separators=(",", ":")).encode("utf-8")
        elif encoding == "base64":
            data = base64.b64decode(raw)
        else:
            data = str(raw).encode("utf-8")
        return LoggedEvent(
            attributes=record["attributes"],
            data=data,
            variant=record.get("variant"),
            model_version=record.get("model_version"),
            latency_ms=record.get("latency_ms"),
            status_code=record.get("status_code"),
            content_type=record.get("content_type", JSON_CONTENT_TYPE),
        )

    def iter_events(self, since=None, variant=None, type=None) -> Iterator[LoggedEvent]:
        since_text = _since_text(since)
        type_name = _type_name(type)
        try:
            handle = open(self.path, encoding="utf-8")  # noqa: SIM115
        except FileNotFoundError:
            return
        with handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # a line still being written
                record = json.loads(line)
                attrs = record["attributes"]
                if since_text is not None and attrs["time"] < since_text:
                    continue
                if variant is not None and record.get("variant") != variant:
                    continue
                if type_name is not None and attrs["type"] != type_name:
                    continue
                yield self._event(record)


def open_sink(path: str | Path) -> RequestLogSink:
    """A sink for `path`: JSON Lines for `.jsonl`/`.ndjson`, else SQLite."""
    path = Path(path)
    if path.suffix in (".jsonl", ".ndjson"):
        return JSONLRequestLog(path)
    return SQLiteRequestLog(path)


def iter_events(
    sink: RequestLogSink | str | Path,
    since: datetime | str | float | None = None,
    variant: str | None = None,
    type: str | None = None,
) -> Iterator[LoggedEvent]:
    """`sink.iter_events(...)`, also accepting the path of a log."""
    if isinstance(sink, RequestLogSink):
        yield from sink.iter_events(since=since, variant=variant, type=type)
        return
    with open_sink(sink) as opened:
        yield from opened.iter_events(since=since, variant=variant, type=type)


# --- the logger ---------------------------------------------------------------------------

_STOP = object()


@dataclass
class LoggerStats:
    """Counters of a CloudEventLogger (events, not exchanges)."""

    logged: int = 0
    dropped: int = 0
    sink_errors: int = 0
    sent: int = 0
    send_failures: int = 0
    send_dropped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {
                k: getattr(self, k)
                for k in (
                    "logged",
                    "dropped",
                    "sink_errors",
                    "sent",
                    "send_failures",
                    "send_dropped",
                )
            }


class CloudEventLogger:
    """Logs exchanges as KServe-logger CloudEvents, off the request path.

    `log(exchange)` only puts the exchange on a bounded queue; a daemon thread makes the
    two events, writes them to `sink` in batches and queues them for `urls` (each URL gets
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

    def _attributes(
        self, event_type: str, ce_id: str, at: float, exchange: Exchange
    ) -> dict[str, str]:
        attrs = {
            "specversion": SPEC_VERSION,
            "id": ce_id,
            "type": event_type,
            "source": self.source,
            "time": _iso(at),
            "recordedtime": _iso(time.time()),
            "inferenceservicename": self.inference_service,
            "namespace": self.namespace,
            "component": self.component,
            "endpoint": ENDPOINTS.get(exchange.variant, exchange.variant),
            "metadata": json.dumps(exchange.metadata, separators=(",", ":")),
            "revision": exchange.revision or self.revision_of(exchange.model_version),
            "modelversion": exchange.model_version,
            "variant": exchange.variant,
        }
        # CloudEvents attributes are strings; an unknown one is left out, not sent empty.
        return {k: v for k, v in attrs.items() if v}

    def events_for(self, exchange: Exchange) -> tuple[LoggedEvent, LoggedEvent]:
        """The request and response events of `exchange` (same ce-id)."""
        common = {"variant": exchange.variant, "model_version": exchange.model_version}
        request = LoggedEvent(
            attributes=self._attributes(
                REQUEST_TYPE, exchange.request_id, exchange.request_time, exchange
            ),
            data=exchange.request_body,
            content_type=exchange.content_type,
            **common,
        )
        response = LoggedEvent(
            attributes=self._attributes(
                RESPONSE_TYPE, exchange.request_id, exchange.response_time, exchange
            ),
            data=exchange.response_body,
            latency_ms=exchange.latency_ms,
            status_code=exchange.status_code,
            content_type=exchange.content_type,
            **common,
        )
        return request, response

    # Background threads -----------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
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


def _payload(event: LoggedEvent | None, keys: tuple[str, ...]) -> Any:
    if event is None:
        return None
    try:
        body = event.json()
    except ValueError:
        return None
    if isinstance(body, dict):
        for key in keys:
            if key in body:
                return body[key]
    return None


def exchanges_frame(
    sink: RequestLogSink | str | Path,
    since: datetime | str | float | None = None,
    variant: str | None = None,
) -> pd.DataFrame:
    """One row per logged request, joined with its response (same ce-id).

    Columns: request_id, variant, version, revision, instances (v1 `instances` or v2 `inputs`),
    predictions (v1 `predictions` or v2 `outputs`; None when the response is missing or
    not JSON), status_code, latency_ms, time (the request's ce-time, UTC).
    """
    import pandas as pd

    # Events come in write order, and a request's response is written after it: pair each
    # response with the earliest unanswered request of its ce-id, so ids that clients
    # reuse (sticky routing by user, say) still pair correctly.
    rows: list[dict[str, Any]] = []
    unanswered: dict[str, deque[int]] = {}
    for event in iter_events(sink, since=since, variant=variant):
        if event.type == REQUEST_TYPE:
            unanswered.setdefault(event.id, deque()).append(len(rows))
            rows.append(
                {
                    "request_id": event.id,
                    "variant": event.variant,
                    "version": event.model_version,
                    "revision": event.revision,
                    "instances": _payload(event, ("instances", "inputs")),
                    "predictions": None,
                    "status_code": None,
                    "latency_ms": None,
                    "time": event.time,
                }
            )
        elif event.type == RESPONSE_TYPE and unanswered.get(event.id):
            row = rows[unanswered[event.id].popleft()]
            row["predictions"] = _payload(event, ("predictions", "outputs"))
            row["status_code"] = event.status_code
            row["latency_ms"] = event.latency_ms
    columns = [
        "request_id",
        "variant",
        "version",
        "revision",
        "instances",
        "predictions",
        "status_code",
        "latency_ms",
        "time",
    ]
    frame = pd.DataFrame(rows, columns=columns)
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    frame["status_code"] = frame["status_code"].astype("Int64")
    frame["latency_ms"] = frame["latency_ms"].astype("float64")
    return frame
