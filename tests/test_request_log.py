"""The request log: KServe-logger CloudEvents (exact attributes, binary mode), the SQLite
and JSONL sinks (filters, concurrent writers), HTTP forwarding that never blocks, and the
joined request/response frame."""

from __future__ import annotations

import json
import multiprocessing
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import from_http

from kubeloop.cloudevents import REQUEST_TYPE, RESPONSE_TYPE
from kubeloop.serving.request_log.events import Exchange, LoggedEvent
from kubeloop.serving.request_log.logger import CloudEventLogger
from kubeloop.serving.request_log.reader import exchanges_frame
from kubeloop.serving.request_log.sinks import (
    JSONLRequestLog,
    RequestLogSink,
    SQLiteRequestLog,
    iter_events,
    open_sink,
)

EXPECTED_HEADERS = {
    "ce-specversion",
    "ce-id",
    "ce-type",
    "ce-source",
    "ce-time",
    "ce-recordedtime",
    "ce-inferenceservicename",
    "ce-namespace",
    "ce-component",
    "ce-endpoint",
    "ce-metadata",
    "ce-revision",
    "ce-modelversion",
    "ce-variant",
    "content-type",
}


def _exchange(i: int = 0, variant: str = "primary", status: int = 200, **kw) -> Exchange:
    if "request_time" in kw:
        kw["response_time"] = kw["request_time"] + 0.0015
    return Exchange(
        request_body=json.dumps({"instances": [[i, i + 1]]}).encode(),
        response_body=json.dumps({"predictions": [i / 10]}).encode()
        if status == 200
        else b'{"error": "bad input"}',
        status_code=status,
        variant=variant,
        model_version="v0002" if variant == "canary" else "v0001",
        latency_ms=1.5,
        request_id=kw.pop("request_id", f"req-{i}"),
        **kw,
    )


class MemorySink(RequestLogSink):
    def __init__(self) -> None:
        self.events: list[LoggedEvent] = []

    def write(self, events) -> None:
        self.events.extend(events)

    def iter_events(self, since=None, variant=None, type=None):
        return iter(self.events)


def test_events_have_kserve_logger_attributes_and_types() -> None:
    logger = CloudEventLogger(
        MemorySink(),
        inference_service="ctr",
        namespace="kubeloop",
        source="http://localhost:9/predictor",
    )
    req, resp = logger.events_for(_exchange(3, variant="canary", request_time=1_700_000_000.0))
    logger.close()
    for event in (req, resp):
        headers = event.headers()
        assert set(headers) == EXPECTED_HEADERS
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-id"] == "req-3"  # same id for request and response
        assert headers["ce-source"] == "http://localhost:9/predictor"
        assert headers["ce-inferenceservicename"] == "ctr"
        assert headers["ce-namespace"] == "kubeloop"
        assert headers["ce-component"] == "predictor"
        assert headers["ce-endpoint"] == "canary"
        # the fields the drift detector files events by, as a cluster event carries them
        assert headers["ce-revision"] == "ctr-predictor-v0002"
        assert headers["ce-modelversion"] == "v0002"
        assert headers["ce-variant"] == "canary"
        assert headers["content-type"] == "application/json"
    assert req.type == REQUEST_TYPE == "org.kubeflow.serving.inference.request"
    assert resp.type == RESPONSE_TYPE == "org.kubeflow.serving.inference.response"
    assert req.time == "2023-11-14T22:13:20.000000+00:00"
    assert req.json() == {"instances": [[3, 4]]} and resp.json() == {"predictions": [0.3]}
    assert (resp.variant, resp.model_version, resp.status_code) == ("canary", "v0002", 200)

    primary, _ = CloudEventLogger(MemorySink(), inference_service="ctr").events_for(_exchange())
    assert primary.attributes["endpoint"] == "default"

    # Binary mode through the cloudevents SDK: ce-* headers, the payload bytes unchanged.
    headers, body = to_binary(resp.to_cloudevent())
    assert {k.lower() for k in headers} == EXPECTED_HEADERS
    assert headers["content-type"] == "application/json"
    assert body == resp.data
    parsed = from_http(headers, body)
    assert parsed["type"] == RESPONSE_TYPE and parsed["endpoint"] == "canary"


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_sinks_filter_and_join(tmp_path: Path, kind: str) -> None:
    sink = open_sink(tmp_path / ("log.sqlite" if kind == "sqlite" else "log.jsonl"))
    assert isinstance(sink, SQLiteRequestLog if kind == "sqlite" else JSONLRequestLog)
    logger = CloudEventLogger(sink, inference_service="ctr", close_sink=False)
    t0 = 1_700_000_000.0
    for i in range(6):
        logger.log(_exchange(i, "canary" if i % 3 == 0 else "primary", request_time=t0 + i))
    logger.log(_exchange(9, status=400, request_time=t0 + 9))
    assert logger.flush()
    logger.close()

    events = list(sink.iter_events())
    assert len(events) == 14
    assert [e.type for e in events[:2]] == [REQUEST_TYPE, RESPONSE_TYPE]
    assert len(list(sink.iter_events(variant="canary"))) == 4
    assert len(list(sink.iter_events(type="request"))) == 7
    assert len(list(sink.iter_events(type=RESPONSE_TYPE, variant="primary"))) == 5
    since = datetime.fromtimestamp(t0 + 4, UTC)
    assert {e.id for e in sink.iter_events(since=since)} == {"req-4", "req-5", "req-9"}
    assert {e.id for e in sink.iter_events(since=since.isoformat())} == {"req-4", "req-5", "req-9"}
    naive = since.replace(tzinfo=None) + timedelta(seconds=1)
    assert {e.id for e in iter_events(sink, since=naive)} == {"req-5", "req-9"}
    assert events[1].data == b'{"predictions": [0.0]}' or events[1].json() == {"predictions": [0.0]}

    frame = exchanges_frame(sink)
    assert list(frame.columns) == [
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
    assert len(frame) == 7
    row = frame.set_index("request_id").loc["req-3"]
    assert (row["variant"], row["version"], row["instances"]) == ("canary", "v0002", [[3, 4]])
    assert row["revision"] == "ctr-predictor-v0002"
    assert {e.revision for e in sink.iter_events(variant="primary")} == {"ctr-predictor-v0001"}
    assert row["predictions"] == [0.3] and row["latency_ms"] == 1.5
    assert frame.set_index("request_id").loc["req-9", "status_code"] == 400
    assert str(frame["time"].dt.tz) == "UTC"
    assert len(exchanges_frame(sink, variant="canary")) == 2
    sink.close()


def test_frame_pairs_reused_request_ids_in_order(tmp_path: Path) -> None:
    sink = SQLiteRequestLog(tmp_path / "log.sqlite")
    logger = CloudEventLogger(sink, inference_service="ctr", close_sink=False)
    for i in range(3):  # one client id, three requests (sticky routing by user id)
        logger.log(_exchange(i, request_id="user-7"))
    logger.close()
    frame = exchanges_frame(sink)
    assert list(frame["request_id"]) == ["user-7"] * 3
    assert [p[0] for p in frame["predictions"]] == [0.0, 0.1, 0.2]
    assert [x[0][0] for x in frame["instances"]] == [0, 1, 2]
    sink.close()


def test_jsonl_keeps_non_json_payloads(tmp_path: Path) -> None:
    sink = JSONLRequestLog(tmp_path / "log.jsonl")
    event = LoggedEvent(
        attributes={
            "specversion": "1.0",
            "id": "x",
            "type": RESPONSE_TYPE,
            "source": "s",
            "time": "2024-01-01T00:00:00.000000+00:00",
        },
        data=b"upstream timed out",
    )
    binary = LoggedEvent(attributes={**event.attributes, "id": "y"}, data=b"\xff\x00")
    sink.write([event, binary])
    back = list(sink.iter_events())
    assert [e.data for e in back] == [b"upstream timed out", b"\xff\x00"]


def _write_many(path: str, worker: int, n: int) -> None:
    sink = SQLiteRequestLog(path)
    logger = CloudEventLogger(sink, inference_service="ctr", batch_size=7)
    for i in range(n):
        logger.log(_exchange(i, request_id=f"w{worker}-{i}"))
    logger.close()


def test_sqlite_sink_survives_concurrent_writers(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sqlite")
    SQLiteRequestLog(path).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(path, w, 150)) for w in range(3)]
    threads = [threading.Thread(target=_write_many, args=(path, 10 + w, 150)) for w in range(3)]
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    sink = SQLiteRequestLog(path)
    assert sink.count() == 6 * 150 * 2
    frame = exchanges_frame(sink)
    assert len(frame) == 900 and frame["request_id"].is_unique
    assert frame["predictions"].notna().all()
    assert sink._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    sink.close()


def test_jsonl_sink_survives_concurrent_writers(tmp_path: Path) -> None:
    sink = JSONLRequestLog(tmp_path / "log.jsonl")

    def work(w: int) -> None:
        logger = CloudEventLogger(sink, inference_service="ctr", batch_size=5, close_sink=False)
        for i in range(100):
            logger.log(_exchange(i, request_id=f"w{w}-{i}"))
        logger.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(list(sink.iter_events())) == 800
    assert len(exchanges_frame(sink)) == 400


class _Receiver:
    """A local HTTP server that records the CloudEvents POSTed to it."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_events_are_posted_in_binary_mode_and_failures_are_counted() -> None:
    receiver = _Receiver()
    dead = "http://127.0.0.1:9/"  # nothing listens on the discard port
    logger = CloudEventLogger(
        MemorySink(), inference_service="ctr", urls=[receiver.url, dead], send_timeout=1.0
    )
    logger.log(_exchange(1, variant="canary", request_time=1_700_000_000.0))
    logger.log(_exchange(2, status=400))  # request sent, error response not (as KServe)
    assert logger.flush(20)
    logger.close()
    receiver.close()

    assert len(receiver.received) == 3
    types = [h["ce-type"] for h, _ in receiver.received]
    assert types.count(REQUEST_TYPE) == 2 and types.count(RESPONSE_TYPE) == 1
    headers, body = next((h, b) for h, b in receiver.received if h["ce-type"] == RESPONSE_TYPE)
    assert {k for k in headers if k.startswith("ce-")} | {"content-type"} == EXPECTED_HEADERS
    assert headers["ce-id"] == "req-1" and headers["ce-endpoint"] == "canary"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"predictions": [0.1]}
    stats = logger.stats.as_dict()
    assert stats["sent"] == 3 and stats["send_failures"] == 3 and stats["logged"] == 4
    # What was POSTed is the cloudevents SDK's binary mode of the logged event, exactly.
    _, response = logger.events_for(_exchange(1, variant="canary", request_time=1_700_000_000.0))
    sdk_headers, sdk_body = to_binary(response.to_cloudevent())
    sdk = {k.lower(): v for k, v in sdk_headers.items()}
    assert {k: v for k, v in headers.items() if k in sdk and k != "ce-recordedtime"} == {
        k: v for k, v in sdk.items() if k != "ce-recordedtime"
    }
    assert set(sdk) <= set(headers) and body == sdk_body


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    release = threading.Event()

    class SlowSink(MemorySink):
        def write(self, events) -> None:
            release.wait(10)
            super().write(events)

    sink = SlowSink()
    logger = CloudEventLogger(sink, inference_service="ctr", queue_size=2, batch_size=1)
    accepted = [logger.log(_exchange(i)) for i in range(10)]
    assert not all(accepted)
    dropped = logger.stats.as_dict()["dropped"]
    assert dropped == 2 * accepted.count(False)
    release.set()
    logger.close()
    assert len(sink.events) == 2 * accepted.count(True)
    assert logger.log(_exchange(99)) is False  # closed


def test_a_failing_sink_is_counted_not_raised() -> None:
    class Broken(MemorySink):
        def write(self, events) -> None:
            raise OSError("disk full")

    logger = CloudEventLogger(Broken(), inference_service="ctr")
    logger.log(_exchange())
    assert logger.flush()
    logger.close()
    assert logger.stats.as_dict()["sink_errors"] == 1
    assert logger.stats.as_dict()["dropped"] == 2


def test_local_events_are_filed_like_cluster_events() -> None:
    """What the local logger sends parses to the same fields a KServe v0.20 event gives
    (inference service, component, revision, model version, variant): no `unknown` version."""
    from kubeloop.drift.events import parse_event

    logger = CloudEventLogger(MemorySink(), inference_service="ctr")
    exchange = _exchange(1, variant="canary")
    exchange.request_body = json.dumps({"instances": [{"hour": 1}]}).encode()
    req, resp = logger.events_for(exchange)
    logger.close()
    for event in (req, resp):
        headers, body = to_binary(event.to_cloudevent())
        parsed = parse_event(headers, body)
        assert (parsed.inference_service, parsed.component) == ("ctr", "predictor")
        assert (parsed.revision, parsed.model_version) == ("ctr-predictor-v0002", "v0002")
        assert parsed.variant == "canary"


def test_a_log_written_before_the_revision_column_still_opens(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, ce_id TEXT NOT NULL,"
        " ce_type TEXT NOT NULL, ce_source TEXT NOT NULL, ce_specversion TEXT NOT NULL,"
        " ce_time TEXT NOT NULL, ce_inferenceservicename TEXT, ce_namespace TEXT,"
        " ce_component TEXT, ce_endpoint TEXT, content_type TEXT NOT NULL, data BLOB NOT NULL,"
        " variant TEXT, model_version TEXT, latency_ms REAL, status_code INTEGER);"
        "INSERT INTO events (ce_id, ce_type, ce_source, ce_specversion, ce_time, content_type,"
        " data, variant) VALUES ('old', 'org.kubeflow.serving.inference.request', 's', '1.0',"
        " '2023-01-01T00:00:00.000000+00:00', 'application/json', X'7B7D', 'primary');"
    )
    conn.commit()
    conn.close()
    sink = SQLiteRequestLog(path)
    logger = CloudEventLogger(sink, inference_service="ctr", close_sink=False)
    logger.log(_exchange(2))
    assert logger.flush()
    logger.close()
    revisions = [e.revision for e in sink.iter_events()]
    assert revisions == [None, "ctr-predictor-v0001", "ctr-predictor-v0001"]
    sink.close()


def test_the_routers_fast_path_stores_what_an_exchange_would(tmp_path: Path) -> None:
    """`log_served` (the router's request path: bodies and a few fields) stores the same
    rows as `log` of the equivalent Exchange; a request without an id gets a fresh UUID
    (version 7, from its request time), the same for its two halves."""
    import uuid

    def rows(path: Path, use_fields: bool) -> list[tuple]:
        sink = SQLiteRequestLog(path)
        logger = CloudEventLogger(sink, inference_service="ctr", close_sink=False)
        t0 = 1_700_000_000.25
        for i in range(3):
            exchange = _exchange(i, "canary" if i == 1 else "primary", request_time=t0 + i)
            exchange.response_time = exchange.request_time + exchange.latency_ms / 1000.0
            if use_fields:
                logger.log_served(
                    exchange.request_body, exchange.response_body, exchange.status_code,
                    exchange.variant, exchange.model_version, exchange.latency_ms,
                    exchange.request_id, exchange.request_time, exchange.content_type,
                )  # fmt: skip
            else:
                logger.log(exchange)
        assert logger.flush()
        logger.close()
        conn = sink._conn()
        out = conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
        sink.close()
        recorded = 11  # ce_recordedtime: when the writer made the event
        return [row[:recorded] + row[recorded + 1 :] for row in out]

    assert rows(tmp_path / "a.sqlite", True) == rows(tmp_path / "b.sqlite", False)

    sink = MemorySink()
    logger = CloudEventLogger(sink, inference_service="ctr")
    for _ in range(2):
        logger.log_served(b"{}", b"{}", 200, "primary", "v0001", 1.0, None, 1.0, "application/json")
    assert logger.flush()
    logger.close()
    ids = [event.id for event in sink.events]
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
    # Version 7, the request's time in its first 48 bits (1.0 s: 1000 ms).
    assert all(uuid.UUID(i).version == 7 and int(i[:8] + i[9:13], 16) == 1000 for i in ids)
    assert sink.events[1].time == "1970-01-01T00:00:01.001000+00:00"


def test_sqlite_rows_made_without_events_equal_the_events_rows(tmp_path: Path) -> None:
    """A logger with nothing to POST writes the SQLite log's rows straight from the fields
    (`_rows`): the same rows as the events `SQLiteRequestLog.write` stores, for served
    exchanges, refused ones, and Exchanges with a revision and metadata."""

    class Wrapped(RequestLogSink):  # an SQLite log the logger does not know as one
        def __init__(self, path: Path) -> None:
            self.inner = SQLiteRequestLog(path)

        def write(self, events) -> None:
            self.inner.write(events)

        def iter_events(self, since=None, variant=None, type=None):
            return self.inner.iter_events(since, variant, type)

    def rows(sink: RequestLogSink, inner: SQLiteRequestLog) -> list[tuple]:
        logger = CloudEventLogger(sink, inference_service="ctr", close_sink=False)
        t0 = 1_700_000_000.25
        logger.log_served(
            b'{"instances": [1]}', b"{}", 200, "primary", "v0001", 2.0, "a", t0, "application/json"
        )
        logger.log_served(
            b"{}",
            b'{"error": "no"}',
            400,
            "canary",
            "v0002",
            1.0,
            "b",
            t0,
            "text/plain",
            "the canary predictor answered 400",
        )
        logger.log_served(b"{}", b"{}", 200, "primary", None, 1.0, "c", t0, "application/json")
        logger.log(_exchange(3, request_time=t0, revision="rev-9", metadata={"x": ["1"]}))
        logger.log(_exchange(4, variant="shadow", request_time=t0))
        assert logger.flush()
        logger.close()
        out = inner._conn().execute("SELECT * FROM events ORDER BY seq").fetchall()
        inner.close()
        recorded = 11  # ce_recordedtime: when the writer made the event
        return [row[:recorded] + row[recorded + 1 :] for row in out]

    direct = SQLiteRequestLog(tmp_path / "rows.sqlite")
    wrapped = Wrapped(tmp_path / "events.sqlite")
    made = rows(direct, direct)
    assert len(made) == 10 and made == rows(wrapped, wrapped.inner)


def test_flush_does_not_wait_out_the_batch_window() -> None:
    """A long batch window gathers writes, but flush() and close() cut it short."""
    sink = MemorySink()
    logger = CloudEventLogger(sink, inference_service="ctr", batch_wait=60.0)
    for round_ in range(3):
        logger.log(_exchange(round_))
        assert logger.flush(timeout=30)
        assert len(sink.events) == 2 * (round_ + 1)
    logger.log(_exchange(9))
    logger.close(timeout=30)
    assert len(sink.events) == 8


def test_event_times_are_formatted_as_datetime_formats_them() -> None:
    """The log's fast time formatting gives datetime's isoformat to the character, rounding
    included (readers compare and sort these strings)."""
    import random

    from kubeloop.serving.request_log.events import iso_time

    rng = random.Random(7)
    stamps = [rng.uniform(0, 4e9) for _ in range(20_000)]
    stamps += [1_700_000_000 + k / 1e6 + d for k in range(500) for d in (0, 5e-7, -5e-7)]
    stamps += [0.0, 0.9999995, 1_700_000_000.9999995, 1_700_000_000.9999996]
    for ts in stamps:
        assert iso_time(ts) == datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


def test_request_ids_are_indexed_for_request_events_only(tmp_path: Path) -> None:
    """The id index holds request events (what a label's join looks up), and replaces the
    full `events_id` index of an older log; the feedback lookup's query uses it."""
    import sqlite3

    from kubeloop.cloudevents import REQUEST_TYPE

    path = tmp_path / "old.sqlite"
    SQLiteRequestLog(path).close()
    conn = sqlite3.connect(path)
    conn.executescript("DROP INDEX events_request_id; CREATE INDEX events_id ON events (ce_id);")
    conn.close()
    sink = SQLiteRequestLog(path)  # an older log: its full index goes
    logger = CloudEventLogger(sink, inference_service="ctr", close_sink=False)
    logger.log(_exchange(1))
    assert logger.flush()
    logger.close()
    conn = sink._conn()
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert indexes == {"events_time", "events_request_id"}
    in_index = conn.execute(
        f"SELECT count(*) FROM events INDEXED BY events_request_id WHERE ce_type = '{REQUEST_TYPE}'"
        " AND ce_id IS NOT NULL"
    ).fetchone()[0]
    assert in_index == 1 and sink.count() == 2
    plan = conn.execute(
        f"EXPLAIN QUERY PLAN SELECT data FROM events WHERE ce_id = ? AND ce_type = '{REQUEST_TYPE}'"
        " AND (variant IS NULL OR variant != ?) ORDER BY seq LIMIT 1",
        ("x", "shadow"),
    ).fetchall()
    assert "events_request_id" in str(plan)
    sink.close()


def test_new_sqlite_logs_get_large_pages_and_old_ones_keep_theirs(tmp_path: Path) -> None:
    """A new log is made with 32 KiB pages, a log made with SQLite's default 4 KiB ones
    keeps them; both checkpoint every 16 MiB of write-ahead log, from every thread."""
    import sqlite3

    from kubeloop.serving.request_log.sinks import CHECKPOINT_BYTES, PAGE_SIZE

    old = tmp_path / "old.sqlite"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE other (a)")
    conn.commit()
    conn.close()
    for path, page_size in ((tmp_path / "new.sqlite", PAGE_SIZE), (old, 4096)):
        sink = SQLiteRequestLog(path)
        logger = CloudEventLogger(sink, inference_service="ctr", close_sink=False)
        logger.log(_exchange(1))
        assert logger.flush()
        logger.close()
        seen: list[tuple] = []

        def checkpoint(sink=sink, seen=seen) -> None:  # the writer thread's setting
            seen.append(sink._conn().execute("PRAGMA wal_autocheckpoint").fetchone())

        thread = threading.Thread(target=checkpoint)
        thread.start()
        thread.join()
        conn = sink._conn()
        assert conn.execute("PRAGMA page_size").fetchone()[0] == page_size
        assert seen == [(CHECKPOINT_BYTES // page_size,)]
        assert next(e.json() for e in sink.iter_events()) == {"instances": [[1, 2]]}
        sink.close()
