"""The canary router: the local stand-in for the traffic split KServe makes between an
InferenceService's primary (last rolled-out) revision and its canary revision.

It serves the predictor's endpoints, so the transformer's `--predictor_host` can point at
it:

    POST /v1/models/{name}:predict       split by the canary percent, logged
    POST /v2/models/{name}/infer         split by the canary percent, logged
    GET  /v2/health/ready, /v1/models/{name}, /v2/models/{name}[/ready], ...
                                         forwarded to the primary predictor
    GET  /v2/health/live, /              the router itself
    GET  /kubeloop/rollout               the rollout state, backends and counters
    GET  /metrics                        Prometheus text: kubeloop_shadow_* and
                                         kubeloop_request_log_events_total counters
    POST /kubeloop/feedback              a delayed label as a CloudEvent, and
    GET  /kubeloop/requestlog/records    the answers and labels, with a `feedback` service
                                         (`kubeloop.serving.request_log.feedback`)
    POST /kubeloop/rollout               change the rollout: {"action": "set_percent",
                                         "percent": 20} (also set_canary with "version",
                                         promote, rollback, set_sticky with "sticky")

For each inference request it reads the current `RolloutState` (re-reading rollout.json
when it changes, so `kubeloop canary set 20` takes effect without a restart), picks a
variant (`choose_variant`), forwards the body and headers unchanged (the raw ASGI bytes,
less the hop's headers) over a keep-alive pool (`KeepAlivePool`; httpx for mounted or
https backends) to that variant's predictor, and returns the predictor's answer
unchanged (status code, body, headers; less the hop's, and date and server, which the
router's own server writes) with the header `x-kubeloop-variant:
primary|canary` (and `x-kubeloop-version`). The bodies and a few fields of each exchange
are handed to a `CloudEventLogger`, whose writer thread makes and writes the events in
batches, off the request path. `CanaryRouter.answer` is that whole handling; served under
uvicorn with `kubeloop.serving.router_http.RouterHTTPProtocol` (as LocalStack serves it),
inference requests reach it straight from the HTTP parser, without uvicorn's ASGI cycle.

With a `shadow` mirror (`kubeloop.serving.shadow.ShadowMirror`), every request served while
the rollout has a canary is also scored by the other variant's model (the shadow stage at
0%, and the non-serving model during the canary steps), after the caller's answer is in
hand and off its path; the copy's answer is logged with the same request id, variant
"shadow" and its own version.

A request's id is its `Ce-Id` header (as KServe's logger agent takes it), else its
`x-request-id` header (which KServe's transformer forwards to the predictor), else the
body's `request_id` (v1) or `id` (v2); without one a UUID is made. It is the logged
events' ce-id, and what sticky routing hashes.

Variants map to versions through the state and versions to predictor URLs through
`backends`, so a promotion only changes which version is called "primary": the process
that served the canary keeps serving. A canary whose version has no predictor yet gets no
traffic (KServe does not route to a revision that is not ready) and `on_missing_backend`
is called once for it (LocalStack starts one).

Nothing unbounded is stored: `kubeloop.serving.edge.EdgeMiddleware` refuses a body over
`max_body_bytes` (413) or a malformed request-id header (400) before routing, and a
request the router refused, or the predictor answered with a 4xx, is logged as a small
record with the reason (`Exchange.rejected`), never with its body.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kubeloop.serving.edge import (
    DEFAULT_MAX_BODY_BYTES,
    EdgeMiddleware,
    Receive,
    Rejection,
    Scope,
    Send,
)
from kubeloop.serving.http_client import KeepAlivePool, UpstreamHTTPError, pooled_async_client
from kubeloop.serving.request_log.events import Exchange
from kubeloop.serving.request_log.ids import uuid7
from kubeloop.serving.request_log.logger import CloudEventLogger
from kubeloop.serving.rollout import (
    LocalRollout,
    RolloutError,
    RolloutState,
    load_state,
    promote,
    rollback,
    set_canary,
    set_percent,
    set_sticky,
    state_summary,
)
from kubeloop.serving.shadow import ShadowMirror, ShadowRequest

if TYPE_CHECKING:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from kubeloop.serving.request_log.feedback import FeedbackService

log = logging.getLogger(__name__)

REJECTED_VARIANT = "rejected"  # the variant of requests refused before routing
# How much of a predictor's 4xx answer the log keeps (error messages are short).
MAX_LOGGED_ERROR_BYTES = 4096
# Clients that may POST /kubeloop/rollout ("testclient": Starlette's in-process client).
LOOPBACK_CLIENTS = frozenset({"127.0.0.1", "::1", "testclient"})
VARIANT_HEADER = "x-kubeloop-variant"
VERSION_HEADER = "x-kubeloop-version"

# Headers that describe one hop, not the message: never forwarded either way.
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",  # replaced by identity: the body is logged as sent
        "content-encoding",
    }
)

_HOP_HEADER_NAMES = frozenset(name.encode("latin-1") for name in _HOP_HEADERS)
# Upstream headers the router's answer does not pass on: the hop's, its own marks, and
# date and server, which the server the router runs in writes (uvicorn: passed on, both
# came twice).
_NOT_PASSED_ON = _HOP_HEADER_NAMES | {
    VARIANT_HEADER.encode(),
    VERSION_HEADER.encode(),
    b"date",
    b"server",
}
_IDENTITY = (b"accept-encoding", b"identity")

# The inference routes of `_build_app`, as one pattern (Starlette's {name} is [^/]+).
_INFER_PATH = re.compile(r"^/v(?:1/models/[^/]+:predict|2/models/[^/]+(?:/versions/[^/]+)?/infer)$")

# Sticky buckets: a request id hashes to one of 10,000 buckets; the canary gets the first
# percent * 100 of them, so raising the percent only moves ids from primary to canary.
_BUCKETS = 10_000


def sticky_bucket(key: str) -> int:
    """The bucket (0..9999) of a request id; the same in every process and run."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS


def choose_variant(state: RolloutState, rng: random.Random, key: str | None = None) -> str:
    """ "primary" or "canary" for one request under `state`.

    No canary or 0% -> primary; 100% -> canary. Sticky states with a `key` (request id)
    hash it (`sticky_bucket`); otherwise a draw from `rng` decides.
    """
    percent = state.canary_percent
    if state.canary_version is None or percent <= 0:
        return "primary"
    if percent >= 100:
        return "canary"
    if state.sticky and key is not None:
        return "canary" if sticky_bucket(key) < percent * (_BUCKETS // 100) else "primary"
    return "canary" if rng.random() * 100.0 < percent else "primary"


def _body_request_id(body: bytes) -> str | None:
    """The request id a body names (v1 `request_id`, v2 `id`), if any. Only bodies that
    contain one of those keys are parsed, so requests without one cost a substring scan."""
    if b'"request_id"' not in body and b'"id"' not in body:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if isinstance(value, dict):
        rid = value.get("request_id", value.get("id"))
        if isinstance(rid, str | int) and not isinstance(rid, bool):
            return str(rid)
    return None


async def _read_body(receive: Receive) -> bytes:
    """The whole request body (the edge has read and bounded it already)."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


class _ASGIEndpoint:
    """A raw ASGI handler as a Starlette endpoint (Starlette wraps functions and methods
    as request -> response handlers, and calls anything else as an ASGI app)."""

    def __init__(self, handler: Callable[[Scope, Receive, Send], Any]):
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


def _rejection_record(reason: str, body: bytes) -> bytes:
    """What the log keeps of a refused request instead of its body."""
    return json.dumps({"rejected": reason, "content_length": len(body)}).encode()


def json_answer(
    status: int, content: Any, extra: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) of the answer Starlette's `JSONResponse(content, status)`
    sends, with `extra` headers after its own."""
    body = json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")
    headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
    return status, headers + list(extra), body


# --- where the state comes from -----------------------------------------------------------


class RolloutSource(Protocol):
    def current(self) -> RolloutState: ...


class StaticRollout:
    """A state held in memory (tests, or a router without a workdir)."""

    def __init__(self, state: RolloutState):
        self._state = state

    def current(self) -> RolloutState:
        return self._state

    def set(self, state: RolloutState) -> None:
        self._state = state


class FileRollout:
    """The state in a rollout.json, re-read when the file changes (checked at most every
    `interval` seconds, by a stat of the file: the writer replaces it atomically). A file
    that cannot be read keeps the last good state."""

    def __init__(self, path: str | Path, *, interval: float = 0.2):
        self.path = Path(path)
        self.interval = interval
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._signature: tuple[int, int, int] | None = None
        state = load_state(self.path)
        if state is None:
            raise RolloutError(f"no rollout state at {self.path}")
        self._state = state
        self._signature = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> RolloutState:
        with self._lock:
            self._checked = time.monotonic()
            signature = self._stat()
            if signature is not None and signature != self._signature:
                try:
                    state = load_state(self.path)
                except RolloutError as exc:
                    log.warning("router: keeping the last rollout state: %s", exc)
                else:
                    if state is not None:
                        self._state = state
                        self._signature = signature
            return self._state

    def current(self) -> RolloutState:
        if time.monotonic() - self._checked >= self.interval:
            return self.reload()
        return self._state


# --- the router ---------------------------------------------------------------------------


class CanaryRouter:
    """Splits inference traffic between the primary and canary predictors.

    `rollout` is a `RolloutState` (kept in memory), the path of a rollout.json (followed as
    it changes) or any object with `current() -> RolloutState`. `backends` maps each model
    version to its predictor's base URL (e.g. "http://127.0.0.1:8101"). `seed` seeds the
    random split (None: seeded from the OS). `request_log` logs every exchange.
    `local_rollout`, when given, is what `POST /kubeloop/rollout` changes (the state file
    and the registry); without it that endpoint changes the in-memory state. `mounts` is
    passed to `httpx.AsyncClient` (tests route backends to in-process ASGI apps with it).
    `max_body_bytes` is the body limit at the router's edge (see the module docstring).
    `shadow` mirrors each request to the non-serving variant (`mirror_target`);
    `metrics_registry` (a prometheus_client registry) is what `GET /metrics` serves;
    `feedback` mounts the label endpoint under /kubeloop.
    """

    def __init__(
        self,
        rollout: RolloutState | str | Path | RolloutSource,
        backends: Mapping[str, str],
        *,
        request_log: CloudEventLogger | None = None,
        seed: int | None = 0,
        timeout: float = 30.0,
        max_connections: int = 64,
        local_rollout: LocalRollout | None = None,
        on_missing_backend: Callable[[str], None] | None = None,
        mounts: Mapping[str, httpx.AsyncBaseTransport] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        shadow: ShadowMirror | None = None,
        metrics_registry: Any = None,
        feedback: FeedbackService | None = None,
    ):
        if isinstance(rollout, RolloutState):
            rollout = StaticRollout(rollout)
        elif isinstance(rollout, str | Path):
            rollout = FileRollout(rollout)
        self.rollout: RolloutSource = rollout
        self.backends: dict[str, str] = {v: u.rstrip("/") for v, u in backends.items()}
        self.request_log = request_log
        self.rng = random.Random(seed)
        self.timeout = timeout
        self.max_connections = max_connections
        self.local_rollout = local_rollout
        self.on_missing_backend = on_missing_backend
        self.mounts = dict(mounts) if mounts else None
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._missing_reported: set[str] = set()
        self._client: httpx.AsyncClient | None = None
        self._pools: dict[str, KeepAlivePool | None] = {}
        # The x-kubeloop-variant / -version headers of each (variant, version), made once.
        self._marks: dict[tuple[str, str | None], list[tuple[bytes, bytes]]] = {}
        self.shadow = shadow
        if request_log is not None:
            # The log's drops and errors on /metrics, counted at scrape time.
            from prometheus_client import CollectorRegistry

            from kubeloop.serving.request_log.logger import LoggerMetrics

            metrics_registry = metrics_registry or CollectorRegistry()
            metrics_registry.register(LoggerMetrics(request_log))
        self.metrics_registry = metrics_registry
        self.feedback = feedback
        # `_infer` is raw ASGI; Starlette calls an endpoint that is no function an app.
        self._infer_endpoint = _ASGIEndpoint(self._infer)
        self._starlette = self._build_app()
        self._edge = EdgeMiddleware(
            self._starlette, max_body_bytes=max_body_bytes, on_reject=self._log_rejection
        )
        # The ASGI app is the router itself: uvicorn takes a bound method for ASGI2.
        self.app = self

    @property
    def edge(self) -> EdgeMiddleware:
        """The edge every request passes (its checks: `EdgeMiddleware.screen`, `admit`)."""
        return self._edge

    @staticmethod
    def is_inference(path: str) -> bool:
        """Whether `path` is one of the inference routes (split, forwarded and logged)."""
        return _INFER_PATH.match(path) is not None

    # Backends ---------------------------------------------------------------------------

    def set_backend(self, version: str, url: str) -> None:
        """Route `version` to the predictor at `url` (from now on)."""
        self.backends = {**self.backends, version: url.rstrip("/")}
        self._missing_reported.discard(version)

    def remove_backend(self, version: str) -> None:
        self.backends = {v: u for v, u in self.backends.items() if v != version}

    def _client_for_loop(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = pooled_async_client(
                timeout=self.timeout, max_connections=self.max_connections, mounts=self.mounts
            )
        return self._client

    def _pool(self, base: str) -> KeepAlivePool | None:
        """The keep-alive pool to `base`, None for a base it does not speak (https, a path
        prefix): httpx carries those."""
        if base not in self._pools:
            from urllib.parse import urlsplit

            parts = urlsplit(base)
            lean = parts.scheme == "http" and parts.path in ("", "/") and self.mounts is None
            self._pools[base] = (
                KeepAlivePool(base, max_connections=self.max_connections, timeout=self.timeout)
                if lean
                else None
            )
        return self._pools[base]

    async def _forward(
        self, base: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """(status, body, headers to pass on) of the predictor's answer to a POST of
        `body` with `headers` (raw, as they came) to `base` + `target`. Raises
        httpx.HTTPError or UpstreamHTTPError."""
        pool = self._pool(base)
        if pool is None:
            upstream = await self._client_for_loop().request(
                "POST", base + target.decode("latin-1"), content=body, headers=headers
            )
            raw = [(name.lower(), value) for name, value in upstream.headers.raw]
            status, content = upstream.status_code, upstream.content
        else:
            lines = b"".join([b"\r\n%s: %s" % header for header in headers])
            status, raw, content = await pool.request_encoded(b"POST", target, lines, body)
        return status, content, [(n, v) for n, v in raw if n not in _NOT_PASSED_ON]

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            if pool is not None:
                await pool.aclose()
        if self.shadow is not None:
            await self.shadow.aclose()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _report_missing(self, version: str) -> None:
        if version in self._missing_reported:
            return
        self._missing_reported.add(version)
        log.warning("router: no predictor for canary %s yet; it gets no traffic", version)
        if self.on_missing_backend is not None:
            try:
                self.on_missing_backend(version)
            except Exception:
                log.exception("router: on_missing_backend(%s) failed", version)

    def route(self, state: RolloutState, key: str | None) -> tuple[str, str | None, str | None]:
        """(variant, version, base URL) for one request; the URL is None when even the
        primary has no predictor."""
        variant = choose_variant(state, self.rng, key)
        version = state.version_of(variant)
        url = self.backends.get(version) if version is not None else None
        if url is None and variant == "canary":
            assert version is not None
            self._report_missing(version)
            variant, version = "primary", state.primary_version
            url = self.backends.get(version)
        return variant, version, url

    def mirror_target(self, state: RolloutState, served: str) -> tuple[str, str] | None:
        """(version, base URL) of the model that scores `served`'s request in shadow: the
        other variant's, while the state has a canary and that version has a predictor."""
        if state.canary_version is None:
            return None
        version = state.version_of("primary" if served == "canary" else "canary")
        url = self.backends.get(version) if version is not None else None
        return (version, url) if version is not None and url is not None else None

    def _mirror(
        self,
        state: RolloutState,
        served: str,
        target: bytes,
        content_type: str,
        body: bytes,
        request_id: str,
    ) -> None:
        """Hand a copy to the shadow mirror (a put_nowait: the caller's answer is already
        decided and nothing here waits)."""
        shadow = self.shadow and self.mirror_target(state, served)
        if not shadow:
            return
        version, base = shadow
        assert self.shadow is not None
        self.shadow.submit(
            ShadowRequest(
                request_id=request_id,
                version=version,
                url=base + target.decode("latin-1"),
                body=body,
                content_type=content_type,
                served_variant=served,
            )
        )

    # Handlers ---------------------------------------------------------------------------

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One inference request, in raw ASGI: the body and headers go on as the bytes they
        came as, and the answer comes back as the predictor's bytes (no request, header
        or response objects on the hot path)."""
        await self._serve(scope, await _read_body(receive), receive, send)

    async def _serve(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """`_infer` of a request whose body the edge has read and bounded."""
        target = scope.get("raw_path") or scope["path"].encode("latin-1")
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        status, headers, content = await self.answer(scope["headers"], target, body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def answer(
        self, headers: list[tuple[bytes, bytes]], target: bytes, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) of the router's answer to one inference request that
        passed the edge: `headers` are the request's (lower-case names, raw bytes), `target`
        its raw path and query, `body` the whole body. The ASGI path (`_serve`) and the
        router's own HTTP protocol (`kubeloop.serving.router_http`) both answer with it."""
        state = self.rollout.current()
        forward = [header for header in headers if header[0] not in _HOP_HEADER_NAMES]
        # The first value of each name (a dict of the reversed list keeps the first).
        named = dict(reversed(forward))
        forward.append(_IDENTITY)
        # The id that sticky routing hashes and the log uses as ce-id: the Ce-Id header
        # (as KServe's agent), else x-request-id (which KServe's transformer forwards),
        # else the body's request_id / id. The edge let only printable ASCII ids through.
        raw_id = named.get(b"ce-id") or named.get(b"x-request-id")
        request_id = raw_id.decode("latin-1") if raw_id else _body_request_id(body)
        kind = named.get(b"content-type")
        content_type = kind.decode("latin-1") if kind else "application/json"
        variant, version, base = self.route(state, request_id)
        marks = self._marks.get((variant, version))
        if marks is None:
            marks = self._marks[variant, version] = [
                (VARIANT_HEADER.encode(), variant.encode()),
                (VERSION_HEADER.encode(), (version or "").encode("latin-1")),
            ]
        if base is None:
            self.errors[variant] += 1
            message = f"no predictor is running for {variant} version {version}"
            return json_answer(503, {"error": message}, marks)
        started_wall = time.time()
        started = time.perf_counter()
        try:
            status, content, out = await self._forward(base, target, forward, body)
        except Exception as exc:
            import httpx

            if not isinstance(exc, httpx.HTTPError | UpstreamHTTPError):
                raise
            status = 502
            content = json.dumps(
                {"error": f"{variant} predictor {version} at {base} failed: {exc!r}"}
            ).encode()
            out = [(b"content-type", b"application/json")]
        latency_ms = (time.perf_counter() - started) * 1000.0
        self.counts[variant] += 1
        if status >= 400:
            self.errors[variant] += 1
        rejected = f"the {variant} predictor answered {status}" if 400 <= status < 500 else None
        if self.shadow is not None and rejected is None:
            # The shadow's answer is logged under the same id: make it here when the
            # request brought none (otherwise the log's writer thread makes it).
            request_id = request_id or uuid7(started_wall)
        if self.request_log is not None:
            # Only the bodies and a few fields cross to the log's writer thread, which
            # makes the events (ids, times, attributes) off the request path.
            if rejected is None:
                self.request_log.log_served(
                    body, content, status, variant, version, latency_ms, request_id,
                    started_wall, content_type,
                )  # fmt: skip
            else:
                self.request_log.log_served(
                    _rejection_record(rejected, body), content[:MAX_LOGGED_ERROR_BYTES],
                    status, variant, version, latency_ms, request_id, started_wall,
                    content_type, rejected,
                )  # fmt: skip
        if rejected is None and self.shadow is not None:
            assert request_id is not None
            self._mirror(state, variant, target, content_type, body, request_id)
        out.extend(marks)
        if status >= 200 and status not in (204, 304):  # as Starlette's Response counts
            out.append((b"content-length", b"%d" % len(content)))
        return status, out, content

    def _log_rejection(self, rejection: Rejection) -> None:
        """Edge callback: count a refused request and log its small record."""
        self.errors[REJECTED_VARIANT] += 1
        if self.request_log is None:
            return
        now = time.time()
        self.request_log.log(
            Exchange(
                request_body=json.dumps(rejection.record()).encode(),
                response_body=json.dumps({"error": rejection.message}).encode(),
                status_code=rejection.status,
                variant=REJECTED_VARIANT,
                model_version=None,
                latency_ms=0.0,
                request_id=rejection.request_id or uuid7(now),
                request_time=now,
                response_time=now,
                rejected=rejection.reason,
            )
        )

    async def _forward_primary(self, request: Request) -> Response:
        import httpx
        from starlette.responses import JSONResponse, Response

        state = self.rollout.current()
        base = self.backends.get(state.primary_version)
        if base is None:
            return JSONResponse(
                {"error": f"no predictor is running for {state.primary_version}"},
                status_code=503,
            )
        url = base + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        try:
            upstream = await self._client_for_loop().request(
                request.method,
                url,
                headers=[(k, v) for k, v in request.headers.items() if k not in _HOP_HEADERS],
                content=await request.body(),
            )
        except httpx.HTTPError as exc:
            return JSONResponse({"error": f"primary predictor at {base}: {exc!r}"}, 502)
        out = {k: v for k, v in upstream.headers.items() if k not in _HOP_HEADERS}
        return Response(upstream.content, upstream.status_code, headers=out)

    async def _live(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        if request.url.path == "/":
            return JSONResponse({"status": "alive"})
        return JSONResponse({"live": True})

    def status(self) -> dict[str, Any]:
        """The rollout, the backends and the per-variant counters."""
        out: dict[str, Any] = {
            "rollout": state_summary(self.rollout.current()),
            "backends": dict(self.backends),
            "requests": dict(self.counts),
            "errors": dict(self.errors),
        }
        if self.request_log is not None:
            out["request_log"] = self.request_log.stats.as_dict()
        if self.shadow is not None:
            out["shadow"] = self.shadow.status()
        if self.feedback is not None:
            out["feedback"] = self.feedback.status()
        return out

    async def _metrics(self, request: Request) -> Response:
        from starlette.responses import Response

        if self.metrics_registry is None:
            return Response(b"", media_type="text/plain; version=0.0.4")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    async def _get_rollout(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        return JSONResponse(self.status())

    def change(self, action: str, **params: Any) -> RolloutState:
        """Apply one rollout change (set_percent, set_canary, promote, rollback,
        set_sticky) through `local_rollout` or to the in-memory state."""
        reason = params.get("reason")
        if self.local_rollout is not None:
            lr = self.local_rollout
            ops: dict[str, Callable[[], RolloutState]] = {
                "set_percent": lambda: lr.set_percent(int(params["percent"]), reason=reason),
                "set_canary": lambda: lr.set_canary(
                    str(params["version"]), int(params["percent"]), reason=reason
                ),
                "promote": lambda: lr.promote(reason=reason),
                "rollback": lambda: lr.rollback(reason=reason),
                "set_sticky": lambda: lr.set_sticky(bool(params["sticky"]), reason=reason),
            }
        else:
            cur = self.rollout.current()
            ops = {
                "set_percent": lambda: set_percent(cur, int(params["percent"]), reason=reason),
                "set_canary": lambda: set_canary(
                    cur, str(params["version"]), int(params["percent"]), reason=reason
                ),
                "promote": lambda: promote(cur, reason=reason),
                "rollback": lambda: rollback(cur, reason=reason),
                "set_sticky": lambda: set_sticky(cur, bool(params["sticky"]), reason=reason),
            }
        if action not in ops:
            raise RolloutError(f"unknown rollout action {action!r}: one of {', '.join(ops)}")
        try:
            new = ops[action]()
        except KeyError as exc:
            raise RolloutError(f"rollout action {action!r} needs {exc.args[0]!r}") from None
        if isinstance(self.rollout, StaticRollout):
            self.rollout.set(new)
        elif isinstance(self.rollout, FileRollout):
            self.rollout.reload()
        return new

    async def _post_rollout(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        from kubeloop.errors import KubeloopError

        client = request.client.host if request.client is not None else None
        if client not in LOOPBACK_CLIENTS:
            # With --no-transformer the router is the public endpoint: only this machine
            # may change what is served.
            return JSONResponse(
                {"error": f"rollout changes are accepted from this machine only, not {client}"},
                status_code=403,
            )
        try:
            params = json.loads(await request.body() or b"{}")
            if not isinstance(params, dict):
                raise TypeError("expected a JSON object")
            action = params.pop("action", "set_percent")
            await run_in_threadpool(self.change, action, **params)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": f"bad rollout change: {exc}"}, status_code=400)
        except KubeloopError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse(self.status())

    def _build_app(self) -> Starlette:
        from starlette.applications import Starlette
        from starlette.routing import Route

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette):
            try:
                yield
            finally:
                await self.aclose()

        routes = [
            Route("/v1/models/{name}:predict", self._infer_endpoint, methods=["POST"]),
            Route("/v2/models/{name}/infer", self._infer_endpoint, methods=["POST"]),
            Route(
                "/v2/models/{name}/versions/{version}/infer",
                self._infer_endpoint,
                methods=["POST"],
            ),
            Route("/kubeloop/rollout", self._get_rollout, methods=["GET"]),
            Route("/kubeloop/rollout", self._post_rollout, methods=["POST"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            *(self.feedback.routes("/kubeloop") if self.feedback is not None else []),
            Route("/", self._live, methods=["GET"]),
            Route("/v2/health/live", self._live, methods=["GET"]),
            Route("/{path:path}", self._forward_primary, methods=["GET"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The router's ASGI app (`app` is the router): every request passes the edge's
        checks. The inference routes then go straight to `_serve` with the body the edge
        read (the hot path: Starlette's route matching and exception middlewares cost about a tenth
        of a millisecond per request here); everything else, lifespan included, to the
        Starlette app. An exception in `_serve` reaches uvicorn, which answers 500 as
        Starlette's middleware would."""
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and self.is_inference(scope["path"])
        ):
            body = await self._edge.admit(scope, receive, send)
            if body is not None:
                await self._serve(scope, body, receive, send)
            return
        await self._edge(scope, receive, send)
