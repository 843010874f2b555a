"""The async HTTP client kubeloop's hops hold for their lifetime: one connection pool whose
keep-alive size equals its size, so a steady load reuses connections instead of opening a
new one per request (the router to its predictors, the shadow mirror to its own)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
