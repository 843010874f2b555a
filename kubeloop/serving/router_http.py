"""The router's HTTP protocol: uvicorn's httptools protocol with the inference requests
answered on the connection itself, without ASGI.

A hop's added CPU is mostly what its server does per request. For every request uvicorn
builds an ASGI scope, a `RequestResponseCycle` with an `asyncio.Event`, a task that runs
the app, the receive and send messages and their checks; for the router that machinery
cost more than the routing, the forwarding and the log together. `RouterHTTPProtocol`
keeps all of uvicorn (the server, its lifespan, shutdown, keep-alive timeouts, the
default headers, every non-inference endpoint and every unusual request) and takes over
only the hot path: a `POST` to an inference route (`CanaryRouter.is_inference`) over
HTTP/1.1 with a `Content-Length` within the body limit, valid request-id headers, no
`Expect` and no request still being answered on the connection. For such a request the
parser's callbacks gather the body, one task awaits `CanaryRouter.answer` (the same
routing, forwarding, logging and mirroring the ASGI path runs) and the answer is written
as uvicorn writes it: its status line, the server's default headers (date, server), the
router's headers, `connection: close` when the connection is not kept. Every other
request, refusals included, goes through uvicorn and the ASGI app as before, so what a
client sees is the same either way.

Use it as uvicorn's `http` protocol with the router as the app:
`uvicorn.Config(router.app, http=RouterHTTPProtocol, ...)`. With another app, or with an
access log or a concurrency limit configured, it is uvicorn's protocol unchanged.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
)

from kubeloop.serving.router import CanaryRouter

_SERVER_ERROR = (
    500,
    [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"21"),
        (b"connection", b"close"),
    ],
    b"Internal Server Error",
)


class _FastCycle:
    """One request on the fast path: what uvicorn's protocol reads of its current cycle
    (`response_complete`, `keep_alive`, `disconnected`, `message_event`), plus the
    request's headers, target and body chunks."""

    __slots__ = (
        "chunks",
        "disconnected",
        "headers",
        "keep_alive",
        "message_event",
        "response_complete",
        "target",
    )

    def __init__(self, headers: list[tuple[bytes, bytes]], target: bytes, keep_alive: bool):
        self.headers = headers
        self.target = target
        self.chunks: list[bytes] = []
        self.keep_alive = keep_alive
        self.disconnected = False
        self.response_complete = False
        self.message_event = self  # connection_lost calls `cycle.message_event.set()`

    def set(self) -> None:
        """`message_event.set()`: nothing waits on a fast request's body."""


class RouterHTTPProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering the router's inference requests itself
    (see the module docstring)."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        router = config.app
        lean = isinstance(router, CanaryRouter) and not self.access_log
        self.router: CanaryRouter | None = (
            router if lean and self.limit_concurrency is None else None
        )
        self._fast: _FastCycle | None = None  # the fast request whose body is arriving

    def on_headers_complete(self) -> None:
        cycle = self._fast_cycle()
        if cycle is None:
            super().on_headers_complete()
            return
        self.cycle = cycle  # type: ignore[assignment]
        self._fast = cycle

    def _fast_cycle(self) -> _FastCycle | None:
        """A cycle for the request whose headers just ended, when the fast path takes it."""
        router, parser = self.router, self.parser
        if (
            router is None
            or parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or self.expect_100_continue
            or parser.should_upgrade()
            or not (self.cycle is None or self.cycle.response_complete)
        ):
            return None
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        if not router.is_inference(self.root_path + path):
            return None
        problem, _, declared = router.edge.screen(self.headers)
        if problem is not None or declared is None:
            return None  # refusals and chunked bodies: the ASGI path, as before
        target = self.root_path.encode("ascii") + raw_path
        if url.query:
            target += b"?" + url.query
        return _FastCycle(self.headers, target, parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self._fast is not None:
            self._fast.chunks.append(body)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self._fast
        if cycle is None:
            super().on_message_complete()
            return
        self._fast = None
        task = self.loop.create_task(self._answer(cycle))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _answer(self, cycle: _FastCycle) -> None:
        chunks = cycle.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        assert self.router is not None
        try:
            status, headers, content = await self.router.answer(cycle.headers, cycle.target, body)
        except BaseException as exc:  # as uvicorn's run_asgi: logged, answered 500
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            status, headers, content = _SERVER_ERROR
        if cycle.disconnected:
            return
        head = self._head(cycle, status, headers)
        if head is None:  # uvicorn refuses such a header after the app ran: it closes
            self.logger.error("Exception in ASGI application\n", exc_info=RuntimeError(
                "Invalid HTTP header name or value."
            ))  # fmt: skip
            self.transport.close()
            return
        if head[1]:  # no content-length: chunked, as uvicorn sends it
            content = (
                b"%x\r\n%s\r\n0\r\n\r\n" % (len(content), content) if content else b"0\r\n\r\n"
            )
        self.transport.writelines((head[0], content))
        cycle.response_complete = True
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def _head(
        self, cycle: _FastCycle, status: int, headers: list[tuple[bytes, bytes]]
    ) -> tuple[bytes, bool] | None:
        """(status line and headers as uvicorn writes them, whether the body goes chunked);
        None for a header uvicorn would refuse. May clear `cycle.keep_alive`."""
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend((name, b": ", value, b"\r\n"))
        sized = close = False
        for name, value in headers:
            if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
                return None
            name = name.lower()
            if name == b"content-length":
                sized = True
            elif name == b"connection" and b"close" in [
                token.lower().strip() for token in value.split(b",")
            ]:
                cycle.keep_alive = False
                close = True
            content.extend((name, b": ", value, b"\r\n"))
        if not cycle.keep_alive and not close:
            content.append(b"connection: close\r\n")
        chunked = not sized and status not in (204, 304)
        if chunked:
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content), chunked


def router_server_config(app: Any, *, host: str, port: int) -> Any:
    """The `uvicorn.Config` the router runs under, in `kubeloop serve` and in the serving
    bench alike, so that what the bench measures is what a user runs: inference requests
    on `RouterHTTPProtocol`, and no access log (every request is in the request log)."""
    import uvicorn

    return uvicorn.Config(
        app,
        http=RouterHTTPProtocol,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        log_config=None,
        lifespan="on",
        timeout_keep_alive=30,
    )
