"""The shadow stage: a second model scores a copy of every request, off the caller's path.

KServe has no traffic mirroring (kserve/kserve#2240), so kubeloop mirrors itself: locally the
canary router (`kubeloop.serving.router.CanaryRouter`), in the cluster the transformer
(`models/transformer.py`, to a shadow predictor URL). Both hand each copy to a
`ShadowMirror`:

    mirror = ShadowMirror(HTTPSender(), request_log=logger)
    ...
    mirror.submit(ShadowRequest(...))   # on the request path: a put_nowait, nothing else

What the caller gets is decided before the copy exists: `submit` only puts the copy on a
bounded `asyncio.Queue` (`put_nowait`; a full queue drops the copy and counts it) and never
awaits, so a shadow model that is slow, hung or down cannot delay or change the caller's
answer. Worker tasks on the same event loop take copies off the queue, POST them to the
shadow model and log its answer through a `CloudEventLogger` (the request log of
`kubeloop.serving.request_log`) with the caller's request id, variant ``shadow`` and the
shadow model's own version, so the rollout's paired comparison finds both scores of every
impression under one id. The served answer keeps its own variant (``primary``/``canary``).

Counters (`ShadowStats`, and Prometheus counters `kubeloop_shadow_requests_total{result}` on
the registry given) say how many copies were mirrored (answered), failed (the shadow model
errored or was unreachable) and dropped (queue full, or the mirror closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kubeloop.serving.http_client import KeepAlivePool, pooled_async_client
from kubeloop.serving.request_log.events import Exchange
from kubeloop.serving.request_log.sinks import RequestLogSink

if TYPE_CHECKING:
    import httpx

    from kubeloop.serving.request_log.logger import CloudEventLogger

log = logging.getLogger(__name__)

SHADOW_VARIANT = "shadow"
DEFAULT_QUEUE_SIZE = 1024
DEFAULT_WORKERS = 4
# How much of a shadow model's error answer the log keeps (messages are short).
MAX_LOGGED_ERROR_BYTES = 4096
RESULTS = ("mirrored", "failed", "dropped")


@dataclass(frozen=True)
class ShadowRequest:
    """One copy to score: the body exactly as the served model got it, where to send it
    (`url`, the shadow model's full inference URL), the caller's `request_id`, the shadow
    model's `version` and the `served_variant` that answered the caller."""

    request_id: str
    version: str | None
    url: str
    body: bytes
    headers: Sequence[tuple[str, str]] = ()
    content_type: str = "application/json"
    served_variant: str = "primary"
    request_time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ShadowAnswer:
    """What the shadow model answered: status, body and (when it names one) its version."""

    status_code: int
    body: bytes
    model_version: str | None = None


Sender = Callable[[ShadowRequest], Awaitable[ShadowAnswer]]


class ShadowStats:
    """Thread-safe counters of a mirror: `submitted`, `mirrored` (answered with 2xx),
    `failed` (an error answer or no answer) and `dropped` (never sent: queue full or closed).
    With a Prometheus `registry`, the same counts are `kubeloop_shadow_requests_total{result}`
    there (plus `kubeloop_shadow_queue_depth`)."""

    def __init__(self, registry: Any = None, *, queue_depth: Callable[[], int] | None = None):
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(("submitted", *RESULTS), 0)
        self._counter = None
        if registry is not None:
            from prometheus_client import Counter, Gauge

            self._counter = Counter(
                "shadow_requests_total",
                "copies of requests scored by the shadow model, by result",
                ["result"],
                namespace="kubeloop",
                registry=registry,
            )
            for result in RESULTS:
                self._counter.labels(result=result)
            if queue_depth is not None:
                gauge = Gauge(
                    "shadow_queue_depth",
                    "copies waiting for the shadow model",
                    namespace="kubeloop",
                    registry=registry,
                )
                gauge.set_function(queue_depth)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n
        if self._counter is not None and name in RESULTS:
            self._counter.labels(result=name).inc(n)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def version_of_answer(headers: Any, body: bytes) -> str | None:
    """The version a kubeloop predictor answered with: its `x-model-version` header, else
    the V1 body's `model_version` (the predictor adds it), else the V2 `model_version`."""
    version = headers.get("x-model-version") if headers is not None else None
    if version:
        return str(version)
    if b'"model_version"' not in body:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    found = value.get("model_version") if isinstance(value, dict) else None
    return str(found) if isinstance(found, str | int) and not isinstance(found, bool) else None


class HTTPSender:
    """A `Sender` that POSTs each copy over its own keep-alive pool, never the served path's:
    copies waiting for a connection must not take one a caller needs.

    Real URLs go through kubeloop's KeepAlivePool, the client the router and transformer
    use for the served path, so a shadow answer's latency costs the same client work as a
    served one's: the rollout policy compares the two p99s, and with httpx for copies alone
    (about 1.5 ms of CPU more per exchange, measured by bench/serving_bench.py) the shadow's
    p99 read 1.5-2x production's with the same model. `mounts` (in-process apps in tests)
    or an injected `client` use httpx. Pools are made in the worker's loop on first use;
    `aclose()` closes them."""

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        max_connections: int = DEFAULT_WORKERS,
        mounts: Any = None,
        client: httpx.AsyncClient | None = None,
    ):
        self.timeout = timeout
        self.max_connections = max_connections
        self.mounts = mounts
        self._client = client
        self._pools: dict[str, KeepAlivePool] = {}

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = pooled_async_client(
                timeout=self.timeout, max_connections=self.max_connections, mounts=self.mounts
            )
        return self._client

    def _pool(self, base_url: str) -> KeepAlivePool:
        pool = self._pools.get(base_url)
        if pool is None:
            pool = KeepAlivePool(
                base_url, max_connections=self.max_connections, timeout=self.timeout
            )
            self._pools[base_url] = pool
        return pool

    async def __call__(self, request: ShadowRequest) -> ShadowAnswer:
        headers = [*request.headers, ("content-type", request.content_type)]
        headers.append(("x-request-id", request.request_id))
        parts = urlsplit(request.url)
        if self.mounts is None and self._client is None and parts.scheme == "http":
            target = parts.path or "/"
            if parts.query:
                target += f"?{parts.query}"
            status, answer_headers, body = await self._pool(
                f"{parts.scheme}://{parts.netloc}"
            ).request("POST", target, headers, body=request.body)
            found = {
                name.decode("latin-1"): value.decode("latin-1") for name, value in answer_headers
            }
            return ShadowAnswer(status, body, version_of_answer(found, body))
        response = await self.client().post(request.url, content=request.body, headers=headers)
        return ShadowAnswer(
            response.status_code,
            response.content,
            version_of_answer(response.headers, response.content),
        )

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


class ShadowMirror:
    """Scores copies of requests with a shadow model, off the request path (module docstring).

    `send` scores one copy (`HTTPSender`, or any coroutine function in tests). Answers are
    logged through `request_log` as variant ``shadow``. `queue_size` bounds the copies waiting;
    `workers` is how many are in flight at once. The queue and workers belong to the event
    loop of the first `submit`; `aclose()` stops them.
    """

    def __init__(
        self,
        send: Sender,
        *,
        request_log: CloudEventLogger | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        workers: int = DEFAULT_WORKERS,
        registry: Any = None,
    ):
        if queue_size < 1 or workers < 1:
            raise ValueError("a shadow mirror needs queue_size >= 1 and workers >= 1")
        self.send = send
        self.request_log = request_log
        self.queue_size = queue_size
        self.workers = workers
        self._queue: asyncio.Queue[ShadowRequest] | None = None
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self.stats = ShadowStats(registry, queue_depth=self.depth)

    def depth(self) -> int:
        """Copies waiting now."""
        return self._queue.qsize() if self._queue is not None else 0

    def _start(self) -> asyncio.Queue[ShadowRequest]:
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.queue_size)
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._work(), name=f"kubeloop-shadow-{i}")
                for i in range(self.workers)
            ]
        return self._queue

    def submit(self, request: ShadowRequest) -> bool:
        """Queue one copy; never waits. False (and counted as dropped) when the queue is full
        or the mirror is closed. Call it from the event loop that serves the requests."""
        self.stats.add("submitted")
        if self._closed:
            self.stats.add("dropped")
            return False
        try:
            self._start().put_nowait(request)
        except asyncio.QueueFull:
            self.stats.add("dropped")
            return False
        return True

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            request = await self._queue.get()
            try:
                await self._score(request)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad copy must not stop the worker
                log.exception("shadow: scoring request %s failed", request.request_id)
            finally:
                self._queue.task_done()

    async def _score(self, request: ShadowRequest) -> None:
        started_wall = time.time()
        started = time.perf_counter()
        try:
            answer = await self.send(request)
        except Exception as exc:  # noqa: BLE001 - unreachable, timeout: counted, logged
            answer = ShadowAnswer(
                502,
                json.dumps({"error": f"shadow {request.version} failed: {exc!r}"}).encode(),
            )
        latency_ms = (time.perf_counter() - started) * 1000.0
        ok = 200 <= answer.status_code < 300
        self.stats.add("mirrored" if ok else "failed")
        if self.request_log is None:
            return
        body = answer.body if ok else answer.body[:MAX_LOGGED_ERROR_BYTES]
        self.request_log.log(
            Exchange(
                request_body=request.body,
                response_body=body,
                status_code=answer.status_code,
                variant=SHADOW_VARIANT,
                model_version=answer.model_version or request.version,
                latency_ms=latency_ms,
                request_id=request.request_id,
                request_time=started_wall,
                response_time=started_wall + latency_ms / 1000.0,
                content_type=request.content_type,
            )
        )

    async def join(self) -> None:
        """Wait until every queued copy has been scored (tests, and the end of a replay)."""
        if self._queue is not None:
            await self._queue.join()

    async def aclose(self) -> None:
        """Stop taking copies and cancel the workers (copies still queued are dropped)."""
        self._closed = True
        if self._queue is not None:
            left = self._queue.qsize()
            if left:
                self.stats.add("dropped", left)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, RuntimeError):
                pass  # RuntimeError: the task's loop is already closed
        self._tasks = []
        self._queue = None
        close = getattr(self.send, "aclose", None)
        if close is not None:
            await close()

    def status(self) -> dict[str, int]:
        """The counters plus the queue's depth and size (the stack's status shows them)."""
        return {**self.stats.as_dict(), "queued": self.depth(), "queue_size": self.queue_size}


@dataclass(eq=False)
class ShadowTargets:
    """Shadow predictors by base URL, each serving one model version; `pick(served)` names
    one that serves another version than the one that answered the caller.

    In the cluster these are the InferenceService predictor's Knative route tags, which
    KServe adds with `serving.kserve.io/enable-tag-routing: "true"`: `latest-<isvc>-predictor`
    (the newest revision) and `prev-<isvc>-predictor` (the pinned, rolled-out one while
    canaryTrafficPercent < 100). Which version each serves is read from its v2 model metadata
    (`GET /v2/models/<name>`: `versions`) by `refresh()`, never on the request path: `pick`
    answers from that cache and schedules a refresh when it is older than `refresh_seconds`
    (the split moves, and a tag may point at another revision after a promote).
    """

    urls: Sequence[str]
    """Base URLs; a bare host:port gets http://, a trailing slash is dropped."""
    model_name: str
    _: KW_ONLY
    protocol: str = "v1"
    refresh_seconds: float = 30.0
    timeout: float = 2.0
    mounts: Any = None
    clock: Callable[[], float] = time.monotonic
    versions: dict[str, str | None] = field(default_factory=dict, init=False)
    _read_at: float | None = field(default=None, init=False, repr=False)
    _refreshing: asyncio.Task | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.urls = [u.rstrip("/") if "://" in u else f"http://{u.rstrip('/')}" for u in self.urls]

    def infer_url(self, base: str) -> str:
        """The inference URL of a predictor base URL, in the predictor hop's protocol."""
        if self.protocol == "v2":
            return f"{base}/v2/models/{self.model_name}/infer"
        return f"{base}/v1/models/{self.model_name}:predict"

    async def refresh(self) -> dict[str, str | None]:
        """Read each target's served version now (None where it does not answer)."""
        import httpx

        found: dict[str, str | None] = {}
        async with httpx.AsyncClient(timeout=self.timeout, mounts=self.mounts) as client:
            for url in self.urls:
                try:
                    response = await client.get(f"{url}/v2/models/{self.model_name}")
                    versions = response.json().get("versions") if response.is_success else None
                except (httpx.HTTPError, ValueError, AttributeError):
                    versions = None
                ok = isinstance(versions, list) and versions and isinstance(versions[0], str)
                found[url] = versions[0] if ok else None
        self.versions = found
        self._read_at = self.clock()
        return found

    def _due(self) -> bool:
        return self._read_at is None or self.clock() - self._read_at >= self.refresh_seconds

    def pick(self, served_version: str | None) -> tuple[str, str] | None:
        """(inference URL, version) of a target serving another version than
        `served_version`, from the cache; None when none is known (then no copy is made).
        Call from the event loop: a stale cache schedules `refresh()` as a task."""
        if self._due() and (self._refreshing is None or self._refreshing.done()):
            with contextlib.suppress(RuntimeError):  # no running loop: refresh() is explicit
                self._refreshing = asyncio.get_running_loop().create_task(self.refresh())
        if served_version is None:
            return None
        for url, version in self.versions.items():
            if version is not None and version != served_version:
                return self.infer_url(url), version
        return None


class PostOnlySink(RequestLogSink):
    """A sink that keeps nothing: for a `CloudEventLogger` whose only job is to POST events
    (the transformer in the cluster posts the shadow's answers to the request-log service)."""

    def write(self, events) -> None:
        return None

    def iter_events(self, since=None, variant=None, type=None):
        return iter(())


def transformer_mirror(
    model_name: str,
    shadow_hosts: Sequence[str],
    request_log_url: str,
    *,
    namespace: str = "kubeloop",
    source: str | None = None,
    protocol: str = "v1",
    queue_size: int = DEFAULT_QUEUE_SIZE,
    registry: Any = None,
) -> tuple[ShadowMirror, ShadowTargets]:
    """The transformer's mirror in the cluster: copies go to whichever of `shadow_hosts`
    serves the other version, and the shadow's answers are POSTed as KServe-logger
    CloudEvents (variant shadow, the shadow's model version) to `request_log_url` (the
    request log's `POST /requestlog` beside the drift detector)."""
    from kubeloop.serving.request_log.logger import CloudEventLogger

    logger = CloudEventLogger(
        PostOnlySink(),
        inference_service=model_name,
        namespace=namespace,
        source=source or f"http://{model_name}-transformer/shadow",
        urls=[request_log_url],
        close_sink=False,
    )
    mirror = ShadowMirror(
        HTTPSender(), request_log=logger, queue_size=queue_size, registry=registry
    )
    return mirror, ShadowTargets(shadow_hosts, model_name, protocol=protocol)
