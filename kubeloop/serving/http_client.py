"""The HTTP clients kubeloop's hops hold for their lifetime.

* `pooled_async_client`: an `httpx.AsyncClient` whose keep-alive pool size equals its
  size, so a steady load reuses connections instead of opening one per request (the
  shadow mirror; the router when tests mount in-process apps).
* `KeepAlivePool`: the router's forwarding client. One HTTP/1.1 keep-alive connection
  pool to one origin, each connection an asyncio protocol whose bytes go straight to
  an httptools parser (the parser uvicorn serves with), kept for the connection's life. httpx costs about 1-1.5 ms of CPU per request on this kind of
  machine (its request/response models, httpcore's state machine, anyio), which alone
  was several times the router's budget; this pool does the same exchange in a tenth of
  that. It speaks only what the router needs: a request with a body of known length,
  a response with Content-Length or chunked body, keep-alive unless the server says
  `connection: close`.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import httpx


def pooled_async_client(
    *, timeout: float, max_connections: int, mounts: Any = None
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` with `max_connections` pooled and kept alive; `mounts` routes
    URLs to in-process transports (tests) or proxies."""
    import httpx

    return httpx.AsyncClient(
        timeout=timeout,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        mounts=mounts,
    )


class UpstreamHTTPError(Exception):
    """The exchange with the origin failed: connection refused or reset, a timeout, or an
    answer that is not HTTP/1.1."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: an asyncio protocol that feeds what arrives straight to
    an httptools response parser (no stream reader, no buffer copy, no drain), and wakes
    the exchange waiting on it when the answer is complete or the connection is lost."""

    def __init__(self) -> None:
        import httptools

        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)  # one per connection: keep-alive
        self.waiter: asyncio.Future | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.received = 0
        self.lost = False
        self.close_after = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        import httptools

        if self.waiter is None:  # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamHTTPError(f"not an HTTP/1.1 answer: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(_Lost(exc))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        if name == b"connection" and b"close" in value.lower():
            self.close_after = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # the exchange
    def usable(self) -> bool:
        # An idle keep-alive connection the server closed has seen its connection_lost.
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def begin(self, loop: asyncio.AbstractEventLoop, message: tuple[bytes, ...]) -> asyncio.Future:
        """Send one request (its parts, in one writev); the future is done when its answer
        is complete."""
        self.headers, self.chunks = [], []
        self.received, self.close_after = 0, False
        self.waiter = waiter = loop.create_future()
        assert self.transport is not None
        self.transport.writelines(message)
        return waiter

    def _fail(self, exc: BaseException) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def expire(self, timeout: float) -> None:
        """The answer took longer than `timeout`: fail the exchange, drop the connection."""
        self._fail(UpstreamHTTPError(f"no answer within {timeout:g}s"))
        self.close()

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class _Lost(Exception):
    """The connection closed during an exchange (the cause, if any, is `args[0]`)."""


class KeepAlivePool:
    """HTTP/1.1 keep-alive connections to `base_url` ("http://host:port"), at most
    `max_connections` at once; `request()` is one exchange. Call `aclose()` at the end.
    An exchange with no complete answer within `timeout` seconds (connecting included)
    fails with UpstreamHTTPError."""

    def __init__(self, base_url: str, *, max_connections: int = 64, timeout: float = 30.0):
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"KeepAlivePool needs an http://host[:port] URL, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.host_header = parts.netloc.encode("latin-1")
        self.timeout = timeout
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers with lower-case names, body) of one exchange; raises
        UpstreamHTTPError."""
        lines = b"".join(f"\r\n{name}: {value}".encode("latin-1") for name, value in headers)
        return await self.request_encoded(
            method.encode("latin-1"), target.encode("latin-1"), lines, body
        )

    async def request_encoded(
        self, method: bytes, target: bytes, header_lines: bytes, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """`request` with its parts already bytes: `header_lines` is one b"\\r\\nname: value"
        per header (a proxy forwards the raw headers it got, never decoding them)."""
        # The head and the body as two parts of one write: a large body is not copied.
        head = b"".join(
            (method, b" ", target, b" HTTP/1.1\r\nhost: ", self.host_header, header_lines,
             b"\r\ncontent-length: %d\r\n\r\n" % len(body))
        )  # fmt: skip
        message = (head, body)
        async with self._slots:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            while self._idle:
                conn = self._idle.pop()
                if not conn.usable():
                    conn.close()
                    continue
                result = await self._send(loop, conn, message, deadline, reused=True)
                if result is not None:
                    return result
                # The server closed the idle connection as we reused it: nothing of the
                # request was answered, so it is sent once more on a new connection.
            conn = await self._connect(loop, deadline)
            result = await self._send(loop, conn, message, deadline, reused=False)
            assert result is not None
            return result

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(_Connection, self.host, self.port)
        except TimeoutError:
            raise UpstreamHTTPError(f"no answer within {self.timeout:g}s") from None
        except OSError as exc:
            raise UpstreamHTTPError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return conn

    async def _send(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: _Connection,
        message: tuple[bytes, ...],
        deadline: float,
        *,
        reused: bool,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """(status, headers, body) of one exchange on `conn`, or None when a reused
        connection turned out closed before any of the answer came."""
        waiter = conn.begin(loop, message)
        # One timer per exchange (asyncio.timeout costs a task lookup and a context
        # manager on top: a few microseconds of a hop's budget).
        timer = loop.call_at(deadline, conn.expire, self.timeout)
        try:
            await waiter
        except _Lost as exc:
            if reused and conn.received == 0:
                return None
            cause = exc.args[0] if exc.args else None
            detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
            raise UpstreamHTTPError(
                f"the connection closed before the answer ended{detail}"
            ) from None
        except BaseException:
            conn.close()  # cancelled mid-answer, or failed: the connection is spent
            raise
        finally:
            timer.cancel()
            conn.waiter = None
        # HTTP/1.1 keeps the connection unless the server says close. (httptools'
        # should_keep_alive() is already False once the message is complete.)
        if not conn.close_after and not self._closed and conn.parser.get_http_version() == "1.1":
            self._idle.append(conn)
        else:
            conn.close()
        return conn.parser.get_status_code(), conn.headers, b"".join(conn.chunks)

    async def aclose(self) -> None:
        """Close every idle connection (busy ones close when their exchange ends)."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
