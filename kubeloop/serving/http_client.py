"""The HTTP clients kubeloop's hops hold for their lifetime.

* `pooled_async_client`: an `httpx.AsyncClient` whose keep-alive pool size equals its
  size, so a steady load reuses connections instead of opening one per request (the
  shadow mirror; the router when tests mount in-process apps).
* `KeepAlivePool`: the router's forwarding client. One HTTP/1.1 keep-alive connection
  pool to one origin, on asyncio streams, responses parsed by httptools (the parser
  uvicorn serves with). httpx costs about 1-1.5 ms of CPU per request on this kind of
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


class _Response:
    """What the httptools parser collects from one response."""

    __slots__ = ("chunks", "complete", "headers", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.complete = False

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        # An idle keep-alive connection the server closed shows EOF (or a closing
        # transport) before it is reused.
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class KeepAlivePool:
    """HTTP/1.1 keep-alive connections to `base_url` ("http://host:port"), at most
    `max_connections` at once; `request()` is one exchange. Call `aclose()` at the end."""

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
        message = b"".join(
            (method, b" ", target, b" HTTP/1.1\r\nhost: ", self.host_header, header_lines,
             b"\r\ncontent-length: %d\r\n\r\n" % len(body), body)
        )  # fmt: skip
        async with self._slots:
            try:
                # asyncio.timeout, not wait_for: no task per exchange (wait_for wraps the
                # coroutine in one, a few tens of microseconds of a hop's budget).
                async with asyncio.timeout(self.timeout):
                    return await self._exchange(message)
            except TimeoutError:
                raise UpstreamHTTPError(f"no answer within {self.timeout:g}s") from None

    async def _exchange(self, message: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.usable():
                conn.close()
                continue
            result = await self._send(conn, message, reused=True)
            if result is not None:
                return result
            # The server closed the idle connection as we reused it: nothing of the
            # request was answered, so it is sent once more on a new connection.
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise UpstreamHTTPError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        result = await self._send(_Connection(reader, writer), message, reused=False)
        assert result is not None
        return result

    async def _send(
        self, conn: _Connection, message: bytes, *, reused: bool
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        import httptools

        response = _Response()
        parser = httptools.HttpResponseParser(response)
        received = 0
        try:
            conn.writer.write(message)
            await conn.writer.drain()
            while not response.complete:
                data = await conn.reader.read(65536)
                if not data:
                    if reused and received == 0:
                        conn.close()
                        return None
                    raise UpstreamHTTPError("the connection closed before the answer ended")
                received += len(data)
                parser.feed_data(data)
        except (ConnectionError, OSError) as exc:
            conn.close()
            if reused and received == 0:
                return None
            raise UpstreamHTTPError(f"{type(exc).__name__}: {exc}") from None
        except httptools.HttpParserError as exc:
            conn.close()
            raise UpstreamHTTPError(f"not an HTTP/1.1 answer: {exc}") from None
        except BaseException:
            conn.close()  # cancelled or timed out mid-answer: the connection is spent
            raise
        response.status = parser.get_status_code()
        # HTTP/1.1 keeps the connection unless the server says close. (httptools'
        # should_keep_alive() is already False once the message is complete.)
        keep = parser.get_http_version() == "1.1" and not any(
            name == b"connection" and b"close" in value.lower() for name, value in response.headers
        )
        if keep and not self._closed:
            self._idle.append(conn)
        else:
            conn.close()
        return response.status, response.headers, b"".join(response.chunks)

    async def aclose(self) -> None:
        """Close every idle connection (busy ones close when their exchange ends)."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
