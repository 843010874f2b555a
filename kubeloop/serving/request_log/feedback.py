"""Delayed labels and the cluster's request log, next to the service that receives KServe's
logger events (`kubeloop.drift.service` mounts these routes; locally the canary router does).

    POST /feedback             one label as a CloudEvent: binary mode (ce-* headers, JSON
                               body), structured mode (application/cloudevents+json) or a
                               batch (application/cloudevents-batch+json, all or nothing)
    POST /requestlog           an inference request/response CloudEvent to keep in the log
                               only (the transformer posts its shadow answers here)
    GET  /requestlog/records   the log's answers and the joined labels, for the rollout
                               controller (`?since=<ISO time>`)

A label event has `ce-type: org.kubeloop.feedback.label` and the data
`{"request_id": "<id>", "label": 0 | 1}` (`click` is accepted for `label`; a batched
request's impression is `<id>/<position>`, or `"position": n`). Each label is checked
before anything is stored: the CloudEvent attributes (`ce-id`, `ce-source`,
`ce-specversion` 1.0, the type), a JSON object body, a request id the request log has seen
(one the served model answered, not only a shadow), a position inside that request's batch
and a label of exactly 0 or 1. Anything else is a 4xx naming the field, and nothing of the
event (or of its batch) is stored. A label for an impression that already has one replaces
it (a retried delivery is idempotent).

Labels live in the table `labels` of a SQLite file (`LabelStore`), by default the request
log's own file, keyed as `kubeloop.serving.paired` keys impressions: the request id, or
`<request id>/<position>` in a batched request.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kubeloop.cloudevents import (
    EVENT_KINDS,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    SPEC_VERSIONS,
    STRUCTURED_CONTENT_TYPE,
    header_attributes,
)
from kubeloop.serving.request_log.events import LoggedEvent, iso_time, since_iso
from kubeloop.serving.request_log.sinks import RequestLogSink, SQLiteRequestLog
from kubeloop.serving.request_log.sqlite_threads import ThreadConnections

LABEL_TYPE = "org.kubeloop.feedback.label"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
MAX_BATCH = 10_000
SHADOW_VARIANT = "shadow"
_MAX_ID = 128


class FeedbackError(ValueError):
    """A label event that cannot be stored: `status` (400, 404, 413, 415, 422), a short
    `reason` for counters and a message naming the field."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Label:
    """One validated label: the impression key, its request id and position, 0 or 1, and
    the CloudEvent that carried it."""

    key: str
    request_id: str
    position: int | None
    label: int
    event_id: str
    source: str


# --- where labels are kept ----------------------------------------------------------------

_LABELS_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    key TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    position INTEGER,
    label INTEGER NOT NULL CHECK (label IN (0, 1)),
    event_id TEXT NOT NULL,
    source TEXT NOT NULL,
    received_at REAL NOT NULL
);
"""


class LabelStore:
    """Labels in a SQLite table (WAL mode; one connection per thread)."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0):
        self._db = ThreadConnections(path, timeout=timeout)
        self.path, self.timeout = self._db.path, timeout
        self._conn().executescript(_LABELS_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        return self._db.get()

    def put(self, labels: Sequence[Label]) -> int:
        """Store `labels` in one transaction (an impression's newer label replaces its older
        one); returns how many were written."""
        if not labels:
            return 0
        now = time.time()
        rows = [
            (x.key, x.request_id, x.position, x.label, x.event_id, x.source, now) for x in labels
        ]
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return len(rows)

    def labels(self) -> dict[str, int]:
        """Every label, impression key -> 0/1."""
        return {k: int(v) for k, v in self._conn().execute("SELECT key, label FROM labels")}

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM labels").fetchone()[0])

    def prune(self, before: float) -> int:
        """Delete labels received before `before` (epoch seconds); returns how many."""
        return int(
            self._conn().execute("DELETE FROM labels WHERE received_at < ?", (before,)).rowcount
        )

    def close(self) -> None:
        self._db.close()


# --- which requests exist -----------------------------------------------------------------


def _batch_size(data: bytes) -> int | None:
    """How many instances a logged request body holds (v1 instances, v2 inputs' shape)."""
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("instances"), list):
        return len(body["instances"])
    inputs = body.get("inputs")
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        shape = inputs[0].get("shape")
        if isinstance(shape, list) and shape and isinstance(shape[0], int):
            return shape[0]
        data0 = inputs[0].get("data")
        return len(data0) if isinstance(data0, list) else None
    return None


class RequestIndex:
    """Answers "did the served model get request `id`, and how big was its batch?" from the
    request log: an indexed lookup in a SQLite log, a scan of any other sink."""

    def __init__(self, sink: RequestLogSink | str | Path):
        self.sink = sink
        self._sqlite: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        path = (
            sink.path
            if isinstance(sink, SQLiteRequestLog)
            else (Path(sink) if isinstance(sink, str | Path) else None)
        )
        if path is not None and path.suffix not in (".jsonl", ".ndjson"):
            self._sqlite_path: Path | None = path
        else:
            self._sqlite_path = None

    def batch_size(self, request_id: str) -> int | None:
        """The batch size of the served request `request_id` (1 when it cannot be read), or
        None when the log has no served request of that id."""
        if self._sqlite_path is not None:
            with self._lock:
                if self._sqlite is None:
                    self._sqlite = sqlite3.connect(
                        f"file:{self._sqlite_path}?mode=ro", uri=True, check_same_thread=False
                    )
                # The type as a literal: SQLite uses the log's partial index of request ids
                # (sinks._SCHEMA) only for a query that names its condition.
                row = self._sqlite.execute(
                    f"SELECT data FROM events WHERE ce_id = ? AND ce_type = '{REQUEST_TYPE}'"
                    " AND (variant IS NULL OR variant != ?) ORDER BY seq LIMIT 1",
                    (request_id, SHADOW_VARIANT),
                ).fetchone()
            if row is None:
                return None
            return _batch_size(bytes(row[0])) or 1
        from kubeloop.serving.request_log.sinks import iter_events

        for event in iter_events(self.sink, type="request"):  # type: ignore[arg-type]
            if event.id == request_id and event.variant != SHADOW_VARIANT:
                return _batch_size(event.data) or 1
        return None

    def close(self) -> None:
        with self._lock:
            if self._sqlite is not None:
                self._sqlite.close()
                self._sqlite = None


# --- parsing label events -----------------------------------------------------------------


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FeedbackError(400, "malformed_body", f"{what} is not JSON") from None


def _check_attributes(attrs: Mapping[str, Any], where: str) -> None:
    prefix = "ce-" if where == "header" else ""
    for name in ("id", "source", "specversion", "type"):
        value = attrs.get(name)
        if not isinstance(value, str) or not value:
            raise FeedbackError(
                400, "missing_attribute", f"{prefix}{name}: missing (a label is a CloudEvent)"
            )
    if attrs["specversion"] not in SPEC_VERSIONS:
        raise FeedbackError(
            400, "bad_specversion", f"{prefix}specversion {attrs['specversion']!r} is not 1.0"
        )
    if attrs["type"] != LABEL_TYPE:
        raise FeedbackError(
            400, "wrong_type", f"{prefix}type {attrs['type']!r}: a label has type {LABEL_TYPE}"
        )


def _check_id(value: Any, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise FeedbackError(422, "bad_request_id", f"{field}: expected a string request id")
    text = str(value)
    if not 1 <= len(text) <= _MAX_ID or any(not 0x21 <= ord(c) <= 0x7E for c in text):
        raise FeedbackError(
            422,
            "bad_request_id",
            f"{field}: expected 1..{_MAX_ID} printable ASCII characters without spaces",
        )
    return text


def _label_value(data: Mapping[str, Any]) -> int:
    names = [n for n in ("label", "click") if n in data]
    if len(names) != 1:
        raise FeedbackError(
            422, "bad_label", 'data.label: expected exactly one of "label", "click"'
        )
    value = data[names[0]]
    # 0/1 only: True/False, 0.0/1.0 and "1" are refused, so a mistyped feed cannot pass.
    if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
        raise FeedbackError(422, "bad_label", f"data.{names[0]}: expected 0 or 1, got {value!r}")
    return value


def _position(data: Mapping[str, Any]) -> int | None:
    if "position" not in data or data["position"] is None:
        return None
    value = data["position"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FeedbackError(
            422, "bad_position", f"data.position: expected an integer >= 0, got {value!r}"
        )
    return value


def parse_label(attrs: Mapping[str, Any], data: Any, index: RequestIndex, where: str) -> Label:
    """One validated `Label` from a label event's attributes and data (see module docstring);
    FeedbackError naming the field otherwise."""
    _check_attributes(attrs, where)
    if not isinstance(data, dict):
        raise FeedbackError(400, "malformed_body", "data: expected a JSON object")
    unknown = sorted(set(data) - {"request_id", "label", "click", "position"})
    if unknown:
        raise FeedbackError(422, "unknown_field", f"data.{unknown[0]}: unknown field")
    if "request_id" not in data:
        raise FeedbackError(422, "bad_request_id", "data.request_id: missing")
    request_id = _check_id(data["request_id"], "data.request_id")
    label = _label_value(data)
    position = _position(data)
    size = index.batch_size(request_id)
    if size is None and position is None and "/" in request_id:
        # `<request id>/<position>`, as the paired frame keys a batched request's impressions.
        head, _, tail = request_id.rpartition("/")
        if tail.isdigit() and head:
            size = index.batch_size(head)
            if size is not None:
                request_id, position = head, int(tail)
    if size is None:
        raise FeedbackError(
            404, "unknown_request_id", f"data.request_id {request_id!r}: no such request in the log"
        )
    if position is not None and position >= size:
        raise FeedbackError(
            422,
            "bad_position",
            f"data.position {position}: request {request_id!r} has {size} instance(s)",
        )
    if size > 1 and position is None:
        raise FeedbackError(
            422,
            "bad_position",
            f"data.position: request {request_id!r} has {size} instances; say which one",
        )
    key = request_id if size == 1 else f"{request_id}/{position}"
    return Label(
        key, request_id, position if size > 1 else None, label, attrs["id"], attrs["source"]
    )


def parse_feedback(headers: Mapping[str, str], body: bytes, index: RequestIndex) -> list[Label]:
    """Every label of one POST /feedback (binary, structured or batch mode), all validated;
    FeedbackError at the first bad one (then none is stored)."""
    h = {str(k).lower(): str(v) for k, v in headers.items()}
    media = _media(h.get("content-type"))
    if media == BATCH_CONTENT_TYPE:
        items = _json(body, "the CloudEvents batch")
        if not isinstance(items, list) or not items:
            raise FeedbackError(
                400, "malformed_body", "a batch is a non-empty JSON array of events"
            )
        if len(items) > MAX_BATCH:
            raise FeedbackError(413, "batch_too_large", f"a batch holds at most {MAX_BATCH} labels")
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise FeedbackError(400, "malformed_body", f"event {i}: expected a JSON object")
            try:
                out.append(parse_label(item, item.get("data"), index, "attribute"))
            except FeedbackError as exc:
                raise FeedbackError(exc.status, exc.reason, f"event {i}: {exc}") from None
        return out
    if media == STRUCTURED_CONTENT_TYPE:
        envelope = _json(body, "the structured CloudEvent")
        if not isinstance(envelope, dict):
            raise FeedbackError(400, "malformed_body", "a structured CloudEvent is a JSON object")
        return [parse_label(envelope, envelope.get("data"), index, "attribute")]
    if media not in ("application/json", ""):
        raise FeedbackError(
            415, "content_type", f"content-type {media!r}: a label's data is application/json"
        )
    attrs = header_attributes(h)
    return [parse_label(attrs, _json(body, "the label"), index, "header")]


# --- logging CloudEvents that arrive over HTTP ---------------------------------------------


def logged_event(
    headers: Mapping[str, str],
    body: bytes,
    *,
    variant: str | None = None,
    model_version: str | None = None,
) -> LoggedEvent:
    """The `LoggedEvent` of an inference CloudEvent that arrived in binary mode (KServe's
    logger, or kubeloop's shadow logger). `variant`/`model_version` override ce-variant /
    ce-modelversion (the drift service knows the revision's role). A response's status is
    200: KServe's logger forwards only successful responses (`logger/handler.go`)."""
    h = {str(k).lower(): str(v) for k, v in headers.items()}
    content_type = _media(h.get("content-type")) or "application/json"
    if content_type == STRUCTURED_CONTENT_TYPE:
        envelope = _json(body, "the structured CloudEvent")
        if not isinstance(envelope, dict):
            raise FeedbackError(400, "malformed_body", "a structured CloudEvent is a JSON object")
        attrs = {
            str(k).lower(): str(v)
            for k, v in envelope.items()
            if k not in ("data", "data_base64", "datacontenttype") and v is not None
        }
        content_type = _media(envelope.get("datacontenttype")) or "application/json"
        body = json.dumps(envelope.get("data")).encode()
    else:
        attrs = header_attributes(h)
    for name in ("id", "type", "source", "specversion"):
        if not attrs.get(name):
            raise FeedbackError(400, "missing_attribute", f"ce-{name}: missing")
    if attrs["type"] not in EVENT_KINDS:
        raise FeedbackError(
            400, "wrong_type", f"ce-type {attrs['type']!r}: not an inference request or response"
        )
    # One time format in the log (the sinks filter `since` by comparing the strings): KServe
    # writes RFC 3339 with nanoseconds and Z, the local logger fixed-width microseconds.
    at = _time_of(attrs.get("time"))
    attrs["time"] = iso_time(at if at is not None else time.time())
    variant = variant or attrs.get("variant") or None
    version = model_version or attrs.get("modelversion") or None
    if variant:
        attrs["variant"] = variant
    if version:
        attrs["modelversion"] = version
    is_response = attrs["type"] == RESPONSE_TYPE
    return LoggedEvent(
        attributes=attrs,
        data=body,
        variant=variant,
        model_version=version,
        status_code=200 if is_response else None,
        content_type=content_type,
    )


def _time_of(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def answer_records(
    sink: RequestLogSink, since: datetime | str | float | None = None
) -> list[dict[str, Any]]:
    """One compact row per logged answer (no request bodies): request_id, variant, version,
    predictions, status_code, latency_ms, time. A request never answered is a row with
    status_code None (an error to the health check). Latency comes from the log's column,
    else from the two events' ce-time (KServe's logger sets both)."""
    rows: list[dict[str, Any]] = []
    pending: dict[tuple[str, str | None], list[int]] = {}
    for event in sink.iter_events(since=since):
        key = (event.id, event.variant)
        if event.type == REQUEST_TYPE:
            pending.setdefault(key, []).append(len(rows))
            rows.append(
                {
                    "request_id": event.id,
                    "variant": event.variant,
                    "version": event.model_version,
                    "predictions": None,
                    "status_code": None,
                    "latency_ms": None,
                    "time": event.time,
                }
            )
        elif event.type == RESPONSE_TYPE and pending.get(key):
            row = rows[pending[key].pop(0)]
            try:
                body = event.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                row["predictions"] = body.get("predictions", body.get("outputs"))
                if row["version"] is None and isinstance(body.get("model_version"), str):
                    row["version"] = body["model_version"]
            row["version"] = row["version"] or event.model_version
            row["status_code"] = event.status_code
            latency = event.latency_ms
            if latency is None:
                start, end = _time_of(row["time"]), _time_of(event.time)
                latency = (end - start) * 1000.0 if start is not None and end is not None else None
            row["latency_ms"] = latency
    return rows


# --- the HTTP routes ----------------------------------------------------------------------


class FeedbackService:
    """The label endpoint and the request log's HTTP side over one `sink`.

    `labels` defaults to a `LabelStore` in the sink's own SQLite file. `on_labels(pairs)` is
    called with `[(key, label), ...]` after each stored POST (the drift service passes its
    monitor's `add_labels`, so labels reach the monitor through this one endpoint too).
    `counters` counts outcomes by reason (`status()`).

    `retention_seconds` bounds the log on its volume: at most every `prune_every_seconds`,
    a write first deletes events (and labels) older than that from a SQLite log. A rollout
    reads only its own window, so the default (two days) is longer than any experiment's
    traffic budget at the demo's rates. None keeps everything.
    """

    def __init__(
        self,
        sink: RequestLogSink,
        labels: LabelStore | None = None,
        *,
        on_labels: Callable[[list[tuple[str, int]]], Any] | None = None,
        retention_seconds: float | None = 2 * 24 * 3600.0,
        prune_every_seconds: float = 600.0,
        clock: Callable[[], float] = time.time,
    ):
        self.sink = sink
        self.retention_seconds = retention_seconds
        self.prune_every_seconds = prune_every_seconds
        self.clock = clock
        self._pruned_at = clock()
        if labels is None:
            path = getattr(sink, "path", None)
            if path is None:
                raise ValueError("a FeedbackService over a non-file sink needs a LabelStore")
            labels = LabelStore(
                Path(path)
                if Path(path).suffix not in (".jsonl", ".ndjson")
                else Path(path).with_suffix(".labels.sqlite")
            )
        self.labels = labels
        self.index = RequestIndex(sink)
        self.on_labels = on_labels
        self.counters: dict[str, int] = {}
        self._lock = threading.Lock()

    def _count(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.counters[reason] = self.counters.get(reason, 0) + n

    def receive_labels(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict]:
        """Validate and store one POST /feedback: (status, JSON answer)."""
        try:
            labels = parse_feedback(headers, body, self.index)
        except FeedbackError as exc:
            self._count(exc.reason)
            return exc.status, {"error": str(exc), "reason": exc.reason}
        stored = self.labels.put(labels)
        self._count("stored", stored)
        if self.on_labels is not None:
            self.on_labels([(x.key, x.label) for x in labels])
        return 200, {"stored": stored, "keys": [x.key for x in labels][:100]}

    def prune(self, now: float | None = None) -> int:
        """Delete events and labels older than the retention from a SQLite log; returns
        how many events went (0 for other sinks, or without a retention)."""
        path = getattr(self.sink, "path", None)
        if (
            self.retention_seconds is None
            or path is None
            or not isinstance(self.sink, SQLiteRequestLog)
        ):
            return 0
        now = self.clock() if now is None else now
        cutoff = now - self.retention_seconds
        conn = sqlite3.connect(path, timeout=30.0)
        try:
            with conn:
                gone = conn.execute(
                    "DELETE FROM events WHERE ce_time < ?", (iso_time(cutoff),)
                ).rowcount
        finally:
            conn.close()
        self.labels.prune(cutoff)
        self._count("pruned", gone)
        return gone

    def _maybe_prune(self) -> None:
        now = self.clock()
        if now - self._pruned_at >= self.prune_every_seconds:
            self._pruned_at = now
            self.prune(now)

    def receive_event(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict]:
        """Keep one inference CloudEvent in the log (POST /requestlog)."""
        self._maybe_prune()
        try:
            event = logged_event(headers, body)
        except FeedbackError as exc:
            self._count(exc.reason)
            return exc.status, {"error": str(exc), "reason": exc.reason}
        self.sink.write([event])
        self._count("logged")
        return 200, {"logged": 1, "id": event.id, "variant": event.variant}

    def record(self, events: Iterable[LoggedEvent]) -> None:
        """Keep events another route already parsed."""
        events = list(events)
        self.sink.write(events)
        self._count("logged", len(events))

    def tap(
        self,
        headers: Mapping[str, str],
        body: bytes,
        *,
        variant: str | None = None,
        model_version: str | None = None,
    ) -> bool:
        """Keep a KServe logger event the drift service has accepted, with the variant and
        version it resolved. Never raises: the drift path must not fail because of the log
        (a failure is counted as `tap_failed`)."""
        try:
            self._maybe_prune()
            event = logged_event(headers, body, variant=variant, model_version=model_version)
            self.sink.write([event])
        except Exception:  # noqa: BLE001 - counted; the caller's answer does not depend on it
            self._count("tap_failed")
            return False
        self._count("logged")
        return True

    def records(self, since: str | None = None) -> dict[str, Any]:
        """GET /requestlog/records: every answer since `since` and the labels of those
        requests (a batched request's impressions `<id>/<position>` included)."""
        records = answer_records(self.sink, since=since)
        ids = {r["request_id"] for r in records}
        labels = {
            k: v for k, v in self.labels.labels().items() if k in ids or k.rpartition("/")[0] in ids
        }
        return {"since": since_iso(since) if since else None, "records": records, "labels": labels}

    def status(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self.counters)
        return {"labels": self.labels.count(), "counters": counters}

    def routes(self, prefix: str = "") -> list:
        """Starlette routes of the three endpoints, under `prefix`."""
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def post_feedback(request: Request) -> JSONResponse:
            body = await request.body()
            status, answer = await run_in_threadpool(
                self.receive_labels, dict(request.headers), body
            )
            return JSONResponse(answer, status_code=status)

        async def post_event(request: Request) -> JSONResponse:
            body = await request.body()
            status, answer = await run_in_threadpool(
                self.receive_event, dict(request.headers), body
            )
            return JSONResponse(answer, status_code=status)

        async def get_records(request: Request) -> JSONResponse:
            since = request.query_params.get("since")
            try:
                if since:
                    since_iso(since)
            except ValueError:
                return JSONResponse(
                    {"error": f"since: not an ISO time: {since!r}"}, status_code=400
                )
            return JSONResponse(await run_in_threadpool(self.records, since))

        return [
            Route(f"{prefix}/feedback", post_feedback, methods=["POST"]),
            Route(f"{prefix}/requestlog", post_event, methods=["POST"]),
            Route(f"{prefix}/requestlog/records", get_records, methods=["GET"]),
        ]

    def mount(self, app: Any, prefix: str = "") -> None:
        """Add the routes to a Starlette or FastAPI `app` (before any catch-all route)."""
        app.router.routes[0:0] = self.routes(prefix)

    def close(self) -> None:
        self.index.close()
        self.labels.close()


def label_event(
    request_id: str,
    label: int,
    *,
    source: str,
    event_id: str | None = None,
    position: int | None = None,
) -> dict[str, Any]:
    """A structured label CloudEvent (what `POST /feedback` takes in batch mode)."""
    import uuid

    data: dict[str, Any] = {"request_id": request_id, "label": label}
    if position is not None:
        data["position"] = position
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "type": LABEL_TYPE,
        "source": source,
        "datacontenttype": "application/json",
        "data": data,
    }


def post_label_events(
    url: str,
    labels: Iterable[tuple[str, int]],
    *,
    source: str,
    chunk: int = 5000,
    client: Any = None,
) -> int:
    """POST `(impression key, 0/1)` labels to a feedback endpoint (`url`: the local stack's
    `feedback_url`, or the drift detector's `/feedback`) as CloudEvent batches of `chunk`;
    raises `FeedbackError` with the endpoint's own message on a refused batch (which is
    stored all or nothing). Returns how many were stored."""
    import httpx

    items = [label_event(key, int(value), source=source) for key, value in labels]
    size = max(1, min(chunk, MAX_BATCH))
    own = client is None
    http = client or httpx.Client(timeout=60)
    stored = 0
    try:
        for i in range(0, len(items), size):
            response = http.post(
                url,
                content=json.dumps(items[i : i + size]),
                headers={"content-type": BATCH_CONTENT_TYPE},
            )
            if response.status_code != 200:
                try:
                    answer = response.json()
                except ValueError:
                    answer = {"error": response.text, "reason": "http"}
                raise FeedbackError(
                    response.status_code,
                    str(answer.get("reason", "http")),
                    f"{url}: {answer.get('error', response.text)}",
                )
            stored += int(response.json().get("stored", 0))
    finally:
        if own:
            http.close()
    return stored
