"""The request log's events, read by a client nobody here wrote: the `cloudevents` SDK.

KServe's logger (kserve v0.20.0 ``pkg/logger/worker.go:122-149``) sets on every event:
specversion, id, type, source, time, the extensions ``recordedtime``,
``inferenceservicename``, ``namespace``, ``component``, ``endpoint`` and ``metadata`` (JSON of
the forwarded request headers, ``{}`` when none), and the data content type; ``annotations``
only when the logger has some. The local logger must send the same, over HTTP in binary mode
(what the drift detector receives) and as read back from its sinks.

Ids: KServe's agent takes the incoming ``Ce-Id`` header, else a new UUID
(``handler.go:142-143,210-216``), and uses it for the request AND the response of that hop,
which is how a consumer pairs them; the type tells them apart. So within one log, an
(id, type) pair is never reused, the two halves of an exchange share their id, and
exchanges without a client id never share one.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import from_http

from kubeloop.cloudevents import REQUEST_TYPE, RESPONSE_TYPE
from kubeloop.serving.request_log.events import Exchange
from kubeloop.serving.request_log.logger import CloudEventLogger
from kubeloop.serving.request_log.sinks import JSONLRequestLog, SQLiteRequestLog

# Every attribute KServe v0.20.0's logger always sets (worker.go SetID/SetType/SetTime/
# SetExtension/SetSource/SetData).
KSERVE_ATTRIBUTES = {
    "specversion", "id", "type", "source", "time", "recordedtime", "inferenceservicename",
    "namespace", "component", "endpoint", "metadata", "datacontenttype",
}  # fmt: skip


class Receiver:
    """A loopback HTTP consumer that keeps each POST's headers and body."""

    def __init__(self):
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def exchanges() -> list[Exchange]:
    """A client-named request with forwarded headers, two without ids, a canary one, and a
    failed one (logged locally, never forwarded: KServe's agent forwards only 200s)."""
    body = json.dumps({"instances": [{"hour": 3, "device": "mobile"}]}).encode()
    answer = json.dumps({"predictions": [0.04], "model_version": "v0001"}).encode()
    common = {"request_body": body, "response_body": answer, "latency_ms": 3.0}
    return [
        Exchange(**common, status_code=200, variant="primary", model_version="v0001",
                 request_id="client-7", metadata={"X-Request-Id": ["client-7"]}),
        Exchange(**common, status_code=200, variant="primary", model_version="v0001"),
        Exchange(**common, status_code=200, variant="primary", model_version="v0001"),
        Exchange(**common, status_code=200, variant="canary", model_version="v0002"),
        Exchange(**common, status_code=500, variant="canary", model_version="v0002"),
    ]  # fmt: skip


@pytest.fixture(params=["sqlite", "jsonl"])
def logged(request, tmp_path):
    """(events received over HTTP, parsed by the SDK; events read back from the sink)."""
    sink = (
        SQLiteRequestLog(tmp_path / "requests.sqlite")
        if request.param == "sqlite"
        else JSONLRequestLog(tmp_path / "requests.jsonl")
    )
    receiver = Receiver()
    try:
        logger = CloudEventLogger(
            sink, inference_service="ctr", source="http://localhost:9/predictor",
            urls=[receiver.url], close_sink=False,
        )  # fmt: skip
        for exchange in exchanges():
            assert logger.log(exchange)
        assert logger.flush(timeout=30)
        logger.close()
        received = [from_http(headers, body) for headers, body in receiver.received]
        stored = [from_http(*to_binary(e.to_cloudevent())) for e in sink.iter_events()]
    finally:
        receiver.close()
        sink.close()
    return received, stored


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_every_kserve_logger_attribute_parses_with_the_sdk(logged):
    received, stored = logged
    assert len(received) == 9 and len(stored) == 10  # the failed response stays local
    for event in received + stored:
        attrs = event.get_attributes()
        assert KSERVE_ATTRIBUTES <= set(attrs), KSERVE_ATTRIBUTES - set(attrs)
        assert attrs["specversion"] == "1.0" and attrs["datacontenttype"] == "application/json"
        assert attrs["type"] in (REQUEST_TYPE, RESPONSE_TYPE)
        # time: when the request arrived / the response came back; recordedtime: when the
        # logger made the event, never before.
        assert _time(attrs["recordedtime"]) >= _time(attrs["time"])
        assert _time(attrs["time"]).utcoffset().total_seconds() == 0
        metadata = json.loads(attrs["metadata"])
        assert isinstance(metadata, dict) and all(isinstance(v, list) for v in metadata.values())
        assert (attrs["inferenceservicename"], attrs["namespace"], attrs["component"]) == (
            "ctr", "kubeloop", "predictor",
        )  # fmt: skip
        assert attrs["endpoint"] in ("default", "canary")
        assert isinstance(event.get_data(), dict)  # the SDK decoded the JSON payload
    named = [e for e in received if e["id"] == "client-7"]
    assert [json.loads(e["metadata"]) for e in named] == [{"X-Request-Id": ["client-7"]}] * 2
    assert {e["type"] for e in named} == {REQUEST_TYPE, RESPONSE_TYPE}


def test_no_id_is_reused_except_by_the_two_halves_of_one_exchange(logged):
    _, stored = logged
    assert not [k for k, n in Counter((e["id"], e["type"]) for e in stored).items() if n > 1]
    halves = Counter(e["id"] for e in stored)
    assert set(halves.values()) == {2}  # each id: one request and its response
    assert len(halves) == len(exchanges())  # the ones without a client id got fresh ids
    for event_id in halves:
        pair = [e for e in stored if e["id"] == event_id]
        assert {e["type"] for e in pair} == {REQUEST_TYPE, RESPONSE_TYPE}
        assert len({e["source"] for e in pair}) == 1
