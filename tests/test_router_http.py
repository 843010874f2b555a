"""The router's own HTTP protocol (kubeloop/serving/router_http.py): over real loopback
sockets, the same raw request sent to a router under plain uvicorn and to one under
`RouterHTTPProtocol` gets the same bytes back (the date header aside), for the requests the
fast path answers and for those it leaves to uvicorn (refusals, chunked bodies, other
endpoints, pipelined requests); and the fast path did answer the inference requests."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator

import pytest
from test_keepalive_pool import serve
from test_router import fake_predictor

from kubeloop.serving.request_log.logger import CloudEventLogger
from kubeloop.serving.request_log.reader import exchanges_frame
from kubeloop.serving.request_log.sinks import SQLiteRequestLog
from kubeloop.serving.rollout import initial_state
from kubeloop.serving.router import CanaryRouter
from kubeloop.serving.router_http import RouterHTTPProtocol

CONFIG = {"access_log": False, "log_config": None, "lifespan": "on"}
V1 = b"/v1/models/ctr:predict"


def _request(body: bytes, *, path: bytes = V1, headers: bytes = b"", method=b"POST") -> bytes:
    return (
        method + b" " + path + b" HTTP/1.1\r\nhost: router\r\ncontent-type: application/json\r\n"
        + headers + b"content-length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


def _exchange(url: str, raw: bytes, answers: int = 1) -> list[bytes]:
    """Send `raw` on one connection; the `answers` responses it gets, date headers cut."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        data, out = b"", []
        while len(out) < answers:
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                head = data[:head_end]
                size = re.search(rb"content-length: (\d+)", head)
                if size is not None and len(data) >= head_end + 4 + int(size[1]):
                    end = head_end + 4 + int(size[1])
                    out.append(re.sub(rb"date: [^\r]*\r\n", b"", data[:end]))
                    data = data[end:]
                    continue
                if size is None and data.endswith(b"0\r\n\r\n"):  # a chunked answer
                    out.append(re.sub(rb"date: [^\r]*\r\n", b"", data))
                    data = b""
                    continue
            chunk = sock.recv(65536)
            if not chunk:
                out.append(b"<closed>" + data)
                break
            data += chunk
        return out


@contextlib.contextmanager
def routers(tmp_path, backends) -> Iterator[tuple[str, str, list[SQLiteRequestLog]]]:
    """(plain uvicorn URL, RouterHTTPProtocol URL, their request logs)."""
    sinks, loggers, urls = [], [], []
    with contextlib.ExitStack() as stack:
        for name, http in (("plain", "httptools"), ("fast", RouterHTTPProtocol)):
            sink = SQLiteRequestLog(tmp_path / f"{name}.sqlite")
            logger = CloudEventLogger(sink, inference_service="ctr", close_sink=False)
            router = CanaryRouter(
                initial_state("ctr", "v0001"), backends, request_log=logger, max_body_bytes=4096
            )
            urls.append(stack.enter_context(serve(router.app, http=http, **CONFIG)))
            sinks.append(sink)
            loggers.append(logger)
        yield urls[0], urls[1], sinks
        for logger in loggers:
            logger.close()


@pytest.fixture(scope="module")
def predictor() -> Iterator[str]:
    with serve(fake_predictor("v0001"), **CONFIG) as url:
        yield url


CASES = {
    "v1": _request(b'{"instances": [[1], [2]]}', headers=b"x-request-id: abc-1\r\n"),
    "v2": _request(b'{"inputs": []}', path=b"/v2/models/ctr/infer?x=1"),
    "predictor 400": _request(b'{"bad": true}', headers=b"ce-id: bad-1\r\n"),
    "bad id header": _request(b'{"instances": []}', headers=b"x-request-id: a b\r\n"),
    "over the limit": _request(b"x" * 5000),
    "keep-alive off": _request(b'{"instances": [[3]]}', headers=b"connection: close\r\n"),
    "chunked": (
        b"POST " + V1 + b" HTTP/1.1\r\nhost: r\r\ntransfer-encoding: chunked\r\n\r\n"
        b'5\r\n{"ins\r\nf\r\ntances": [[1]]}\r\n0\r\n\r\n'
    ),
    "health": b"GET /v2/health/ready HTTP/1.1\r\nhost: r\r\n\r\n",
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_protocol_answers_as_uvicorn(case, predictor, tmp_path, monkeypatch) -> None:
    fast_calls = []
    answer = RouterHTTPProtocol._answer

    async def counted(self, cycle):
        fast_calls.append(cycle.target)
        await answer(self, cycle)

    monkeypatch.setattr(RouterHTTPProtocol, "_answer", counted)
    with routers(tmp_path, {"v0001": predictor}) as (plain, fast, sinks):
        expected = _exchange(plain, CASES[case])
        got = _exchange(fast, CASES[case])
        assert got == expected
        assert expected[0].startswith(b"HTTP/1.1 ")
    takes = case in ("v1", "v2", "predictor 400", "keep-alive off")
    assert len(fast_calls) == takes, fast_calls
    if case == "keep-alive off":
        assert b"connection: close" in got[0]
    plain_log, fast_log = (exchanges_frame(sink) for sink in sinks)
    columns = ["variant", "version", "instances", "predictions", "status_code"]
    assert fast_log[columns].equals(plain_log[columns])
    if case == "v1":
        assert list(fast_log["request_id"]) == ["abc-1"]


def test_fast_protocol_pipelined_requests_and_upstream_failure(predictor, tmp_path) -> None:
    """Two requests in one write are answered in order (the second waits for the first);
    a predictor that is gone is a 502, as through uvicorn."""
    pipelined = CASES["v1"] + CASES["health"] + CASES["v2"]
    with routers(tmp_path, {"v0001": predictor}) as (plain, fast, _):
        expected = _exchange(plain, pipelined, answers=3)
        assert _exchange(fast, pipelined, answers=3) == expected
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with routers(tmp_path / "gone", {"v0001": gone}) as (plain, fast, _):
        expected = _exchange(plain, CASES["v1"])
        assert expected[0].startswith(b"HTTP/1.1 502 ")
        assert _exchange(fast, CASES["v1"]) == expected


def test_other_apps_get_plain_uvicorn(predictor) -> None:
    """With an app that is no router the protocol is uvicorn's."""
    with serve(fake_predictor("v0001"), http=RouterHTTPProtocol, **CONFIG) as url:
        time.sleep(0.01)
        (answer,) = _exchange(url, CASES["v1"])
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"predictions":[0.1,0.1]' in answer
