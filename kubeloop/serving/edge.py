"""The edge of every kubeloop HTTP server: what is checked before any handler runs.

`EdgeMiddleware` is a pure ASGI middleware that every server we run (the KServe
predictor and transformer, the canary router, the drift detector) puts in front of its
app. For each HTTP request it

1. checks the request-id headers (`x-request-id`, `ce-id`): each becomes an id further on
   (the CloudEvent id of the request log, the key of sticky routing, the id of a drift
   window), so it must be 1..128 printable ASCII characters without spaces; anything
   else is a 400 naming the header;
2. enforces one body limit (`max_body_bytes`, `DEFAULT_MAX_BODY_BYTES` unless the server's
   `--max_body_bytes` says otherwise): a declared `Content-Length` over the limit, or a
   chunked body that grows past it, is a 413, and the app never sees the request, so
   nothing of it is parsed or stored.

A refused body is read and thrown away up to `drain_bytes` before the 413 is sent (what
nginx calls a lingering close): a client that writes its whole body before it reads the
answer, as `requests` does, then gets the 413 instead of a connection reset. A client that
sent `Expect: 100-continue` has not sent its body yet and gets the 413 at once.

`on_reject` (optional) is called with a `Rejection` for every refused request: a small
record with the reason and the declared size, never the body (the router logs it).

Servers take the bind address with `--host`, loopback by default (`DEFAULT_HOST`):
nothing listens on another interface unless asked to. The cluster images pass
`--host=0.0.0.0`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_DRAIN_BYTES = 64 * 1024 * 1024
MAX_ID_LENGTH = 128
ID_HEADERS = ("x-request-id", "ce-id")
_GOOD_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_ID_LENGTH)
# The headers the edge reads, found in one pass over the request's headers.
_ID_HEADER_NAMES = tuple(name.encode() for name in ID_HEADERS)
_CONTENT_LENGTH = b"content-length"
_READ = frozenset({*_ID_HEADER_NAMES, _CONTENT_LENGTH})

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Rejection:
    """One request refused at the edge: what was wrong, never the body."""

    status: int
    reason: str  # "body_too_large" | "bad_request_id"
    message: str
    method: str
    path: str
    content_length: int | None
    limit: int
    request_id: str | None = None  # the request's id header, when it is a valid one

    def record(self) -> dict[str, Any]:
        """The small JSON-able record a log keeps instead of the request body."""
        return {
            "rejected": self.reason,
            "status": self.status,
            "message": self.message,
            "method": self.method,
            "path": self.path,
            "content_length": self.content_length,
            "max_body_bytes": self.limit,
        }


def id_problem(value: bytes) -> str | None:
    """Why `value` (raw header bytes) is not a usable request id, or None if it is."""
    if _GOOD_ID.fullmatch(value):  # one C call for the ids every request brings
        return None
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        return f"expected 1..{MAX_ID_LENGTH} characters, got {len(value)}"
    bad = [b for b in value if not 0x21 <= b <= 0x7E]
    if bad:
        return (
            f"expected printable ASCII characters without spaces, got byte 0x{bad[0]:02x} "
            f"at position {value.index(bad[0])}"
        )
    return None


def _length(raw: bytes | None) -> int | None:
    """A Content-Length header's value as a number (None: absent or not a number)."""
    try:
        return int(raw) if raw is not None else None
    except ValueError:  # the HTTP parser refuses these; a test client may not
        return None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


class EdgeMiddleware:
    """Request-id check and body limit in front of an ASGI app (see the module docstring)."""

    def __init__(
        self,
        app: Callable,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        on_reject: Callable[[Rejection], None] | None = None,
        drain_bytes: int = DEFAULT_DRAIN_BYTES,
    ):
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_reject = on_reject
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await self.admit(scope, receive, send)
        if body is not None:
            await self.app(scope, _replay(body, receive), send)

    def screen(
        self, headers: Iterable[tuple[bytes, bytes]]
    ) -> tuple[tuple[int, str, str] | None, str | None, int | None]:
        """The edge's header checks of one request: (problem, request id, declared size),
        the problem being (status, reason, message) of its refusal, or None when the
        headers pass. `admit` refuses with it; a server's own hot path checks with it
        before it reads a body."""
        # One pass over the headers for the few the edge reads (the first of each name).
        found: dict[bytes, bytes] = {}
        for name, value in headers:
            if name in _READ and name not in found:
                found[name] = value
        request_id = None
        for name, raw in zip(ID_HEADERS, _ID_HEADER_NAMES, strict=True):
            value = found.get(raw)
            if value is None:
                continue
            if (problem := id_problem(value)) is not None:
                return (400, "bad_request_id", f"{name} header: {problem}"), None, None
            request_id = request_id or value.decode("ascii")
        declared = _length(found.get(_CONTENT_LENGTH))
        if declared is not None and declared > self.max_body_bytes:
            message = (
                f"body: {declared} bytes is over this server's limit of "
                f"{self.max_body_bytes} bytes (--max_body_bytes)"
            )
            return (413, "body_too_large", message), request_id, declared
        return None, request_id, declared

    async def admit(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The edge's checks of one HTTP request: its whole body, or None when it was
        refused (and answered here) or the client hung up. A server's hot path calls this
        and keeps the body, instead of reading it again through `__call__`'s replay."""
        problem, request_id, declared = self.screen(scope.get("headers", ()))
        if problem is not None:
            status, reason, message = problem
            await self._reject(scope, receive, send, status, reason, message, declared, request_id)
            return None
        body, outcome = await self._read_body(receive)
        if outcome == "gone":  # the client hung up mid-body: nobody to answer
            return None
        if outcome == "too_large":
            message = (
                f"body: over this server's limit of {self.max_body_bytes} bytes (--max_body_bytes)"
            )
            await self._reject(
                scope, receive, send, 413, "body_too_large", message, declared, request_id
            )
            return None
        return body

    async def _read_body(self, receive: Receive) -> tuple[bytes, str]:
        """(the whole body, "ok"), or (b"", "too_large") once it passes the limit, or
        (b"", "gone") if the client hung up. Reading it here also bounds a chunked body,
        whose size nobody declared."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"", "gone"
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", "too_large"
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), "ok"

    async def _drain(self, scope: Scope, receive: Receive) -> None:
        expect = _header(scope, b"expect")
        if expect is not None and expect.lower() == b"100-continue":
            return  # the client waits for our answer before it sends the body
        drained = 0
        while drained <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _reject(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        reason: str,
        message: str,
        declared: int | None,
        request_id: str | None = None,
    ) -> None:
        rejection = Rejection(
            status=status,
            reason=reason,
            message=message,
            method=scope.get("method", ""),
            path=scope.get("path", ""),
            content_length=declared,
            limit=self.max_body_bytes,
            request_id=request_id,
        )
        if self.on_reject is not None:
            self.on_reject(rejection)
        if status == 413:
            await self._drain(scope, receive)
        body = orjson.dumps({"error": message})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 413:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the real receive (for
    http.disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_edge_arguments(parser: argparse.ArgumentParser, *, dashes: bool = False) -> None:
    """Add `--host` and `--max_body_bytes` (also spelled `--max-body-bytes` when `dashes`)
    to a server's parser."""
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}; the cluster images pass 0.0.0.0)",
    )
    names = ["--max_body_bytes", "--max-body-bytes"] if dashes else ["--max_body_bytes"]
    parser.add_argument(
        *names,
        dest="max_body_bytes",
        type=positive_int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body in bytes; larger ones get HTTP 413 before anything is "
        f"parsed or stored (default {DEFAULT_MAX_BODY_BYTES})",
    )


def local_url(host: str, port: int) -> str:
    """The http URL a client on this machine uses to reach a server bound to `host`:`port`
    (a wildcard bind address is reached on 127.0.0.1)."""
    connect = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://{connect}:{port}"
