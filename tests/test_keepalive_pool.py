"""`KeepAlivePool` (kubeloop/serving/http_client.py), the router's forwarding client, over
real loopback sockets: keep-alive reuse, Content-Length and chunked answers, a server that
closes idle or every connection, refused connections and timeouts; and the router through
it answering as through httpx (status, body, the predictor's headers)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from test_router import fake_predictor

from kubeloop.serving.http_client import KeepAlivePool, UpstreamHTTPError
from kubeloop.serving.rollout import initial_state
from kubeloop.serving.router import CanaryRouter


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(app, **config) -> Iterator[str]:
    """`app` under uvicorn in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


connections: list[int] = []


async def _read_body(receive) -> bytes:
    """The whole request body of an ASGI exchange."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def echo(scope, receive, send) -> None:
    """Echoes the body; `/chunked` answers in three chunks, `/close` with connection:
    close, `/slow` after 2 s; counts connections by client port."""
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    connections.append(scope["client"][1])
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(2)
    headers = [(b"content-type", b"application/octet-stream"), (b"x-seen", path.encode())]
    if path == "/close":
        headers.append((b"connection", b"close"))
    if path == "/chunked":
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        for part in (body[:3], body[3:6], body[6:]):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def test_pool_reuses_connections_and_reads_both_framings():
    connections.clear()
    with serve(echo, lifespan="off") as url:

        async def run():
            pool = KeepAlivePool(url, max_connections=2, timeout=10)
            out = []
            for i in range(5):
                body = f"hello-{i}-world".encode()
                out.append(await pool.request("POST", "/plain", [("x-a", "1")], body))
                out.append(await pool.request("POST", "/chunked", [], body))
            await pool.aclose()
            return out

        answers = asyncio.run(run())
    for i, (plain, chunked) in enumerate(zip(answers[::2], answers[1::2], strict=True)):
        assert plain[0] == 200 and plain[2] == f"hello-{i}-world".encode()
        assert (b"x-seen", b"/plain") in plain[1]
        assert chunked[0] == 201 and chunked[2] == f"hello-{i}-world".encode()
    assert len(connections) == 10 and len(set(connections)) == 1  # one kept-alive connection


def test_pool_opens_a_new_connection_after_the_server_closes():
    connections.clear()
    with serve(echo, lifespan="off", timeout_keep_alive=1) as url:

        async def run():
            pool = KeepAlivePool(url, timeout=10)
            first = await pool.request("POST", "/close", [], b"a")
            second = await pool.request("POST", "/plain", [], b"b")
            await asyncio.sleep(1.6)  # past the server's keep-alive: it closes the idle one
            third = await pool.request("POST", "/plain", [], b"c")
            await pool.aclose()
            return first, second, third

        first, second, third = asyncio.run(run())
    assert [a[2] for a in (first, second, third)] == [b"a", b"b", b"c"]
    assert len(set(connections)) == 3


def test_pool_errors_are_upstream_errors():
    port = _free_port()  # nothing listens there

    async def refused():
        await KeepAlivePool(f"http://127.0.0.1:{port}").request("POST", "/", [], b"")

    with pytest.raises(UpstreamHTTPError, match="cannot connect"):
        asyncio.run(refused())
    with serve(echo, lifespan="off") as url:

        async def slow():
            pool = KeepAlivePool(url, timeout=0.3)
            try:
                await pool.request("POST", "/slow", [], b"x")
            finally:
                await pool.aclose()

        with pytest.raises(UpstreamHTTPError, match="no answer within"):
            asyncio.run(slow())
    with pytest.raises(ValueError):
        KeepAlivePool("https://example.test")


def test_router_over_the_pool_answers_as_over_httpx(monkeypatch):
    """The same requests through a router on real sockets (the pool) and through one
    with in-process mounts (httpx): same statuses, bodies and predictor headers."""
    state = initial_state("ctr", "v0001")
    exchanges = []
    original = KeepAlivePool.request_encoded

    async def counted(self, *args):
        exchanges.append(args[1])
        return await original(self, *args)

    monkeypatch.setattr(KeepAlivePool, "request_encoded", counted)
    bodies = [{"instances": [[1], [2]]}, {"bad": True}, {"instances": []}]
    with serve(fake_predictor("v0001"), lifespan="off") as url:
        pooled = CanaryRouter(state, {"v0001": url})
        mounted = CanaryRouter(
            state,
            {"v0001": "http://primary.test"},
            mounts={"http://primary.test": httpx.ASGITransport(app=fake_predictor("v0001"))},
        )

        async def run(router):
            transport = httpx.ASGITransport(app=router.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
                out = []
                for body in bodies:
                    r = await client.post("/v1/models/ctr:predict", json=body)
                    out.append((r.status_code, r.json(), r.headers.get("x-served-by"),
                                r.headers.get("x-kubeloop-variant")))  # fmt: skip
                await router.aclose()
                return out

        got, want = asyncio.run(run(pooled)), asyncio.run(run(mounted))
    assert got == want
    assert exchanges == [b"/v1/models/ctr:predict"] * 3  # the pooled router used the pool
    assert [g[0] for g in got] == [200, 400, 200]


async def _headers_echo(scope, receive, send) -> None:
    """Answers with the request line and headers it got as JSON, and two set-cookie
    headers."""
    import json

    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    seen = {
        "target": scope["raw_path"].decode() + "?" + scope["query_string"].decode(),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
    }
    body = json.dumps(seen).encode()
    headers = [(b"content-type", b"application/json"), (b"set-cookie", b"a=1"),
               (b"set-cookie", b"b=2"), (b"content-length", str(len(body)).encode())]  # fmt: skip
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


CALLER_HEADERS = [
    (b"content-type", b"application/json"),
    (b"x-request-id", b"r-1"),
    (b"x-tenant", b"caf\xe9"),  # latin-1 bytes go on as they came
    (b"connection", b"keep-alive"),
]


def test_the_router_forwards_headers_and_answers_as_they_came():
    """Through the pool, the predictor gets the caller's headers as sent (less the hop's,
    with accept-encoding identity) and the query string; the caller gets the predictor's
    headers, repeated ones included, and the router's marks."""
    with serve(_headers_echo, lifespan="off") as url:
        router = CanaryRouter(initial_state("ctr", "v0001"), {"v0001": url})

        async def run() -> httpx.Response:
            transport = httpx.ASGITransport(app=router.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
                answer = await client.post(
                    "/v1/models/ctr:predict?trace=1",
                    content=b'{"instances": [[1]]}',
                    headers=CALLER_HEADERS,
                )
            await router.aclose()
            return answer

        answer = asyncio.run(run())
    assert answer.status_code == 200
    seen = answer.json()
    assert seen["target"] == "/v1/models/ctr:predict?trace=1"
    got = dict(seen["headers"])
    assert got["x-request-id"] == "r-1" and got["x-tenant"] == "caf\xe9"
    assert got["content-type"] == "application/json" and got["accept-encoding"] == "identity"
    assert "connection" not in got and got["content-length"] == "20"
    assert answer.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert answer.headers["x-kubeloop-variant"] == "primary"
    assert answer.headers["x-kubeloop-version"] == "v0001"
    assert answer.headers["content-length"] == str(len(answer.content))


async def _versioned(scope, receive, send) -> None:
    """A predictor stand-in: echoes the body and names its version in x-model-version."""
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    seen = dict(scope["headers"])
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-model-version", b"v0002"),
        (b"x-seen-id", seen.get(b"x-request-id", b"")),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def test_shadow_copies_go_over_the_served_paths_client():
    # The rollout policy compares the shadow's p99 with production's: both must pay the
    # same client, so a real URL goes through KeepAlivePool, not httpx.
    from kubeloop.serving.shadow import HTTPSender, ShadowRequest

    async def send_two(url: str) -> list:
        sender = HTTPSender()
        try:
            answers = []
            for n in range(2):
                request = ShadowRequest(
                    body=b'{"instances": [%d]}' % n,
                    url=f"{url}/v1/models/ctr:predict",
                    request_id=f"r{n}",
                    version="v0002",
                    content_type="application/json",
                    headers=(),
                )
                answers.append(await sender(request))
            assert list(sender._pools) == [url] and sender._client is None
            return answers
        finally:
            await sender.aclose()

    with serve(_versioned) as url:
        answers = asyncio.run(send_two(url))
    assert [(a.status_code, a.body, a.model_version) for a in answers] == [
        (200, b'{"instances": [0]}', "v0002"),
        (200, b'{"instances": [1]}', "v0002"),
    ]


async def _raw_server(answer: bytes, *, close: bool):
    """A loopback server that reads one request and writes `answer` (then closes if
    `close`); returns (server, base URL)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        if close:
            writer.close()
        else:
            await asyncio.sleep(5)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize(
    ("answer", "close", "match"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", False, "not an HTTP/1.1 answer"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", True, "closed before the answer"),
    ],
)
def test_pool_fails_bad_or_cut_answers(answer, close, match):
    async def run():
        server, url = await _raw_server(answer, close=close)
        pool = KeepAlivePool(url, timeout=5)
        try:
            await pool.request("POST", "/", [], b"x")
        finally:
            await pool.aclose()
            server.close()

    with pytest.raises(UpstreamHTTPError, match=match):
        asyncio.run(run())


def test_a_cancelled_exchange_does_not_leave_its_connection_idle():
    connections.clear()
    with serve(echo, lifespan="off") as url:

        async def run():
            pool = KeepAlivePool(url, timeout=10)
            task = asyncio.ensure_future(pool.request("POST", "/slow", [], b"x"))
            await asyncio.sleep(0.3)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            idle_after_cancel = len(pool._idle)
            answer = await pool.request("POST", "/plain", [], b"y")
            await pool.aclose()
            return idle_after_cancel, answer

        idle, answer = asyncio.run(run())
    assert idle == 0 and answer[2] == b"y"
    assert len(set(connections)) == 2  # the answer came on a new connection


def test_under_uvicorn_the_router_answers_one_date_and_one_server_header():
    """uvicorn writes date and server itself: the predictor's (also a uvicorn) are not
    passed on (they came twice)."""
    with serve(echo, lifespan="off") as upstream:
        router = CanaryRouter(initial_state("ctr", "v0001"), {"v0001": upstream})
        with serve(router.app, lifespan="off") as url:
            answer = httpx.post(url + "/v1/models/ctr:predict", content=b"[1]")
        asyncio.run(router.aclose())
    assert answer.status_code == 200 and answer.content == b"[1]"
    assert len(answer.headers.get_list("date")) == 1
    assert answer.headers.get_list("server") == ["uvicorn"]
    assert answer.headers["x-seen"] == "/v1/models/ctr:predict"
