"""Reading the request log back: `exchanges_frame`, one row per request joined with its
response."""

from __future__ import annotations

from collections import deque
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


from kubeloop.cloudevents import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
)
from kubeloop.serving.request_log.events import LoggedEvent
from kubeloop.serving.request_log.sinks import RequestLogSink, iter_events


def _payload(event: LoggedEvent | None, keys: tuple[str, ...]) -> Any:
    if event is None:
        return None
    try:
        body = event.json()
    except ValueError:
        return None
    if isinstance(body, dict):
        for key in keys:
            if key in body:
                return body[key]
    return None


def exchanges_frame(
    sink: RequestLogSink | str | Path,
    since: datetime | str | float | None = None,
    variant: str | None = None,
) -> pd.DataFrame:
    """One row per logged request, joined with its response (same ce-id).

    Columns: request_id, variant, version, revision, instances (v1 `instances` or v2 `inputs`),
    predictions (v1 `predictions` or v2 `outputs`; None when the response is missing or
    not JSON), status_code, latency_ms, time (the request's ce-time, UTC).
    """
    import pandas as pd

    # Events come in write order, and a request's response is written after it: pair each
    # response with the earliest unanswered request of its ce-id and variant, so ids that
    # clients reuse (sticky routing by user, say) still pair correctly, and so does a shadow
    # answer logged under the served request's id (variant "shadow").
    rows: list[dict[str, Any]] = []
    unanswered: dict[tuple[str, str | None], deque[int]] = {}
    for event in iter_events(sink, since=since, variant=variant):
        key = (event.id, event.variant)
        if event.type == REQUEST_TYPE:
            unanswered.setdefault(key, deque()).append(len(rows))
            rows.append(
                {
                    "request_id": event.id,
                    "variant": event.variant,
                    "version": event.model_version,
                    "revision": event.revision,
                    "instances": _payload(event, ("instances", "inputs")),
                    "predictions": None,
                    "status_code": None,
                    "latency_ms": None,
                    "time": event.time,
                }
            )
        elif event.type == RESPONSE_TYPE and unanswered.get(key):
            row = rows[unanswered[key].popleft()]
            row["predictions"] = _payload(event, ("predictions", "outputs"))
            row["status_code"] = event.status_code
            row["latency_ms"] = event.latency_ms
    columns = [
        "request_id",
        "variant",
        "version",
        "revision",
        "instances",
        "predictions",
        "status_code",
        "latency_ms",
        "time",
    ]
    frame = pd.DataFrame(rows, columns=columns)
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    frame["status_code"] = frame["status_code"].astype("Int64")
    frame["latency_ms"] = frame["latency_ms"].astype("float64")
    return frame
