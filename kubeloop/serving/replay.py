"""Replay generated impressions through the served model, then join the true clicks later
(delayed feedback) to evaluate each variant online.

The replayer plays the client: it sends each impression as a 1-row request with its
event id as `x-request-id`, the way a production ad server would tag a request. Which
variant served a request is read back from the request log (the router records it, as
KServe's logger records ce-endpoint), and labels arrive only after all requests were sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from kubeloop import schema

REQUEST_FIELDS = ["user_id", "ad_id", "hour", "weekday", "device", "slot_position"]


class ReplayConfig(BaseModel):
    """How much traffic to send and how hard."""

    model_config = ConfigDict(extra="forbid")

    requests: int = Field(4000, ge=1, description="impressions to send (one request each)")
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout_s: float = Field(30.0, gt=0)
    sample_seed: int = 11


def impressions_from_days(tables: Iterable[tuple[date, pa.Table]], days: set[date] | None = None) -> Iterator[pd.DataFrame]:
    """Generated events (kubeloop.data.generator.iter_day_tables) as frames, optionally
    only for `days`."""
    for day, table in tables:
        if days is None or day in days:
            yield table.to_pandas()


def sample_impressions(frames: Iterable[pd.DataFrame], n: int, seed: int) -> pd.DataFrame:
    """Up to `n` impressions drawn evenly over the given frames, in time order."""
    frame = pd.concat(list(frames), ignore_index=True)
    if len(frame) > n:
        frame = frame.sample(n=n, random_state=seed)
    return frame.sort_values(["event_timestamp", "event_id"]).reset_index(drop=True)


def request_body(row: dict[str, Any]) -> dict[str, Any]:
    """The client request for one impression: ids and context only (features are looked up)."""
    return {"instances": [{field: _plain(row[field]) for field in REQUEST_FIELDS}]}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


async def _send_all(url: str, impressions: pd.DataFrame, config: ReplayConfig) -> list[dict[str, Any]]:
    import httpx

    rows = impressions[[*REQUEST_FIELDS, "event_id"]].to_dict("records")
    results: list[dict[str, Any]] = [None] * len(rows)  # type: ignore[list-item]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(rows)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    async with httpx.AsyncClient(timeout=config.timeout_s, limits=limits) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                row = rows[i]
                request_id = str(_plain(row["event_id"]))
                started = time.perf_counter()
                try:
                    response = await client.post(url, json=request_body(row), headers={"x-request-id": request_id})
                    status = response.status_code
                    body = response.json() if status == 200 else None
                except Exception:  # noqa: BLE001 - a failed request is data for the error rate
                    status, body = 599, None
                latency = (time.perf_counter() - started) * 1000
                prediction = None
                if body and body.get("predictions"):
                    prediction = float(body["predictions"][0])
                results[i] = {"request_id": request_id, "status_code": status,
                              "client_latency_ms": latency, "prediction": prediction}

        await asyncio.gather(*(worker() for _ in range(config.concurrency)))
    return results


def replay(url: str, impressions: pd.DataFrame, config: ReplayConfig) -> pd.DataFrame:
    """Send every impression to `url` (the public predict endpoint); returns one row per
    request: request_id, status_code, client_latency_ms, prediction."""
    return pd.DataFrame(asyncio.run(_send_all(url, impressions, config)))


def join_feedback(sent: pd.DataFrame, exchanges: pd.DataFrame, impressions: pd.DataFrame) -> pd.DataFrame:
    """Served requests with their variant (from the request log) and, later, their label.

    Returns the frame `kubeloop.serving.ab.compare_variants` reads: variant, version,
    prediction, label, latency_ms (client side, end to end), error."""
    served = exchanges.drop_duplicates("request_id", keep="last")[["request_id", "variant", "version"]]
    labels = impressions.assign(request_id=impressions["event_id"].astype(str))[
        ["request_id", schema.LABEL, schema.ORACLE]
    ]
    frame = sent.merge(served, on="request_id", how="left").merge(labels, on="request_id", how="left")
    frame["error"] = frame["status_code"] != 200
    frame["variant"] = frame["variant"].fillna("unrouted")
    return frame.rename(columns={schema.LABEL: "label", "client_latency_ms": "latency_ms"})
