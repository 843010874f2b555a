"""Replay generated impressions through the served model, then join the true clicks later
(delayed feedback) to evaluate each variant online.

The replayer plays the ad server: each request scores a batch of consecutive impressions
(the candidate slots of a page view), tagged with an `x-request-id`. Which
variant served a request is read back from the request log (the router records it, as
KServe's logger records ce-endpoint), and labels arrive only after all requests were sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from kubeloop.features.request_time import REQUEST_TIME_HEADER
from kubeloop.usecase import EVENT_ID, EVENT_TIMESTAMP, UseCase, resolve_use_case


class ReplayConfig(BaseModel):
    """How much traffic to send and how hard."""

    model_config = ConfigDict(extra="forbid")

    requests: int = Field(4000, ge=1, description="HTTP requests to send")
    batch_size: int = Field(8, ge=1, le=1024, description="impressions scored per request")
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout_s: float = Field(30.0, gt=0)
    sample_seed: int = 11


def impressions_from_days(
    tables: Iterable[tuple[date, pa.Table]], days: set[date] | None = None
) -> Iterator[pd.DataFrame]:
    """Generated events (a synthetic source's `iter_day_tables`) as frames, optionally
    only for `days`."""
    for day, table in tables:
        if days is None or day in days:
            yield table.to_pandas()


def sample_impressions(frames: Iterable[pd.DataFrame], n: int, seed: int) -> pd.DataFrame:
    """Up to `n` impressions drawn evenly over the given frames, in time order."""
    frame = pd.concat(list(frames), ignore_index=True)
    if len(frame) > n:
        frame = frame.sample(n=n, random_state=seed)
    return frame.sort_values([EVENT_TIMESTAMP, EVENT_ID]).reset_index(drop=True)


def request_body(
    rows: list[dict[str, Any]], *, use_case: UseCase | str | None = None
) -> dict[str, Any]:
    """The client request for a batch of impressions: the use case's request fields (entity
    ids and context) only; features are looked up by the transformer."""
    fields = resolve_use_case(use_case).request_fields
    return {"instances": [{field: _plain(row[field]) for field in fields} for row in rows]}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


async def _send_all(
    url: str,
    impressions: pd.DataFrame,
    config: ReplayConfig,
    id_prefix: str,
    use_case: UseCase,
    state_feed=None,
) -> list[dict[str, Any]]:
    import httpx

    rows = impressions[[*use_case.request_fields, EVENT_ID]].to_dict("records")
    # Past traffic: the transformer computes request-time features at the batch's time (its
    # first impression's), not the replay's clock.
    stamps = pd.to_datetime(impressions[EVENT_TIMESTAMP], utc=True)
    times = stamps.map(lambda t: t.isoformat())
    batches = [rows[i : i + config.batch_size] for i in range(0, len(rows), config.batch_size)]
    results: list[list[dict[str, Any]]] = [[] for _ in batches]
    limits = httpx.Limits(
        max_connections=config.concurrency, max_keepalive_connections=config.concurrency
    )
    async with httpx.AsyncClient(timeout=config.timeout_s, limits=limits) as client:

        async def send(i: int) -> None:
            batch = batches[i]
            request_id = f"{id_prefix}{_plain(batch[0]['event_id'])}"
            started_at = datetime.now(UTC)
            started = time.perf_counter()
            try:
                response = await client.post(
                    url,
                    json=request_body(batch, use_case=use_case),
                    headers={
                        "x-request-id": request_id,
                        REQUEST_TIME_HEADER: times.iat[i * config.batch_size],
                    },
                )
                status = response.status_code
                predictions = response.json().get("predictions") if status == 200 else None
            except Exception:  # noqa: BLE001 - a failed request is data for the error rate
                status, predictions = 599, None
            latency = (time.perf_counter() - started) * 1000
            done = datetime.now(UTC)
            results[i] = [
                {
                    "request_id": request_id,
                    "event_id": str(_plain(row["event_id"])),
                    "position": k,
                    "status_code": status,
                    "client_latency_ms": latency,
                    "started_at": started_at,
                    "sent_at": done,
                    "prediction": float(predictions[k]) if predictions else None,
                }
                for k, row in enumerate(batch)
            ]

        if state_feed is None:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(len(batches)):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    await send(queue.get_nowait())

            await asyncio.gather(*(worker() for _ in range(config.concurrency)))
        else:
            requests = [(stamps.iat[i * config.batch_size], b) for i, b in enumerate(batches)]
            await _send_fed(send, requests, config.concurrency, state_feed)
    return [row for batch in results for row in batch]


async def _send_fed(send, requests: list, concurrency: int, state_feed) -> None:
    """Send request i = `send(i)` once its entities hold their state as of its time
    (`requests[i]`: (time, rows)), with `concurrency` in flight: a request waits until every
    earlier request reading one of its entities was answered, then its state is written (a
    background thread coalesces the writes of the requests ready at once), then it is sent.
    Requests on distinct entities overlap freely; none is answered with a later one's
    state."""
    from concurrent.futures import ThreadPoolExecutor

    from kubeloop.features.state_feed import dependencies

    loop = asyncio.get_running_loop()
    after = dependencies([state_feed.keys_of(rows) for _, rows in requests])
    answered = [asyncio.Event() for _ in requests]
    slots = asyncio.Semaphore(concurrency)
    ahead = asyncio.Semaphore(4 * concurrency)  # requests started and not yet answered
    to_write: asyncio.Queue[tuple[int, asyncio.Future]] = asyncio.Queue()

    async def writer(pool) -> None:
        while True:
            items = [await to_write.get()]
            while not to_write.empty():
                items.append(to_write.get_nowait())
            try:
                await loop.run_in_executor(pool, state_feed.write, [requests[i] for i, _ in items])
            except Exception as exc:  # noqa: BLE001 - each waiting request raises it
                for _, written in items:
                    written.set_exception(exc)
            else:
                for _, written in items:
                    written.set_result(None)

    async def one(i: int) -> None:
        try:
            for j in after[i]:
                await answered[j].wait()
            written = loop.create_future()
            to_write.put_nowait((i, written))
            await written
            async with slots:
                await send(i)
        finally:
            answered[i].set()
            ahead.release()

    with ThreadPoolExecutor(1, thread_name_prefix="state-feed") as pool:
        writing = asyncio.create_task(writer(pool))
        tasks = []
        try:
            for i in range(len(requests)):
                await ahead.acquire()
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
        finally:
            writing.cancel()
            for task in tasks:
                task.cancel()


def replay(
    url: str,
    impressions: pd.DataFrame,
    config: ReplayConfig,
    id_prefix: str = "r",
    *,
    use_case: UseCase | str | None = None,
    state_feed=None,
) -> pd.DataFrame:
    """Send every impression to `url` (the public predict endpoint) in batches; returns one
    row per impression: request_id, event_id, position, status_code, client_latency_ms,
    started_at, sent_at (when it was sent and answered), prediction.

    With a `kubeloop.features.state_feed.StateFeed` each request's entities are fed their
    streamed state as of the request's time before it is sent (`_send_fed`).

    A request's id is `id_prefix` + its first impression's event id: deterministic, so a
    seeded run reproduces, and unique within one replay. Stages that replay overlapping
    days into one request log pass their own prefix, so no id is reused across stages."""
    spec = resolve_use_case(use_case)
    return pd.DataFrame(
        asyncio.run(_send_all(url, impressions, config, id_prefix, spec, state_feed))
    )


def join_feedback(
    sent: pd.DataFrame,
    exchanges: pd.DataFrame,
    impressions: pd.DataFrame,
    *,
    use_case: UseCase | str | None = None,
) -> pd.DataFrame:
    """Served requests with their variant (from the request log) and, later, their label.

    Returns the frame `kubeloop.serving.ab.compare_variants` reads: variant, version,
    prediction, label, latency_ms (client side, end to end), error, and `oracle` when the
    use case has an oracle column."""
    events = resolve_use_case(use_case).events
    served = exchanges.drop_duplicates("request_id", keep="last")[
        ["request_id", "variant", "version"]
    ]
    columns = [EVENT_ID, events.label, *([events.oracle] if events.oracle else [])]
    labels = impressions.assign(**{EVENT_ID: impressions[EVENT_ID].astype(str)})[columns]
    frame = sent.merge(served, on="request_id", how="left").merge(labels, on=EVENT_ID, how="left")
    frame["error"] = frame["status_code"] != 200
    frame["variant"] = frame["variant"].fillna("unrouted")
    renames = {events.label: "label", "client_latency_ms": "latency_ms"}
    if events.oracle:
        renames[events.oracle] = "oracle"
    return frame.rename(columns=renames)


def replay_through_time(
    url: str,
    impressions: pd.DataFrame,
    config: ReplayConfig,
    feature_repo,
    on_day=None,
    id_prefix: str = "r",
    *,
    use_case: UseCase | str | None = None,
    on_hour=None,
) -> pd.DataFrame:
    """Replay hour by hour with the online store as it was: the store starts as of the first
    replayed hour, and before each hour's traffic the feature rows that became available
    up to that hour are written to it (`OnlineFeed`), the freshness the training set's
    point-in-time join has. No request sees features computed from its own or later
    impressions. The store is left fully materialized afterwards. `on_day(day, sent)` is
    called after each replayed day; `on_hour(sent, end)` after each hour's traffic (`end`:
    the hour's end), and a true return stops the replay there (an experiment decided).

    A use case whose request-time state is streamed (`streams_state`: freshness 0) has its
    state tables fed per request instead (`StateFeed`: each request's entities get their
    newest state strictly before the request's time, what the training set's as-of join
    reads), so a one-row request is served exactly its training values; a batch's rows all
    read the state and clock of the batch's time."""
    from kubeloop.features.materialize import OnlineFeed, materialize, reset_online_store
    from kubeloop.features.state_feed import StateFeed, streams_state
    from kubeloop.features.store import open_store

    spec = resolve_use_case(use_case)
    store = open_store(feature_repo)
    ts = pd.to_datetime(impressions[EVENT_TIMESTAMP], utc=True)
    hours = ts.dt.floor("h")
    first = hours.min().to_pydatetime()
    reset_online_store(store)
    parts = []
    try:
        materialize(store, end=first, progress=False, use_case=spec)
        feed = OnlineFeed(store, first - timedelta(seconds=1), use_case=spec)
        state_feed = None
        if streams_state(spec):
            # what the store holds now: the state rows before `first`
            state_feed = StateFeed(store, use_case=spec, held_as_of=first)
            # The hourly feed would write a state row at or after a request's own instant.
            for view in state_feed.tables:
                feed.tables.pop(view, None)
        stop = False
        for day in sorted(ts.dt.floor("D").unique()):
            day_parts = []
            for hour in sorted(hours[ts.dt.floor("D") == day].unique()):
                feed.advance(hour.to_pydatetime())
                sent = replay(
                    url,
                    impressions[hours == hour],
                    config,
                    id_prefix,
                    use_case=spec,
                    state_feed=state_feed,
                )
                day_parts.append(sent)
                if on_hour is not None and on_hour(sent, hour + pd.Timedelta(hours=1)):
                    stop = True
                    break
            sent = pd.concat(day_parts, ignore_index=True)
            parts.append(sent)
            if on_day is not None:
                on_day(day, sent)
            if stop:
                break
    finally:
        materialize(store, progress=False, use_case=spec)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def offered_load(sent: pd.DataFrame, config: ReplayConfig) -> dict[str, Any]:
    """The load a replay offered, from its `sent` rows: a closed-loop client of
    `config.concurrency` workers, each sending its next request when the last one is
    answered, `config.batch_size` rows a request. `requests_per_s` and `rows_per_s` are
    over the time traffic was in flight (the union of every request's send-to-answer
    interval, so the pauses between replayed hours, feeds and policy checks are left out);
    `mean_in_flight` is the concurrency the server actually saw over that time."""
    if sent.empty or "started_at" not in sent:
        return {"requests": 0, "concurrency": config.concurrency, "rows_per_request": None}
    per_request = sent.drop_duplicates("request_id")
    start = pd.to_datetime(per_request["started_at"], utc=True).astype("int64").to_numpy()
    end = pd.to_datetime(per_request["sent_at"], utc=True).astype("int64").to_numpy()
    order = np.argsort(start, kind="stable")
    busy_ns, reach = 0, None
    for s, e in zip(start[order], end[order]):
        if reach is None or s > reach:
            busy_ns += e - s
            reach = e
        elif e > reach:
            busy_ns += e - reach
            reach = e
    busy = busy_ns / 1e9
    n = len(per_request)
    return {
        "client": "closed loop",
        "concurrency": config.concurrency,
        "rows_per_request": round(len(sent) / n, 3),
        "batch_size": config.batch_size,
        "requests": n,
        "busy_seconds": round(busy, 3),
        "requests_per_s": round(n / busy, 2) if busy > 0 else None,
        "rows_per_s": round(len(sent) / busy, 2) if busy > 0 else None,
        "mean_in_flight": (
            round(float(per_request["client_latency_ms"].sum()) / 1000 / busy, 2)
            if busy > 0
            else None
        ),
    }
