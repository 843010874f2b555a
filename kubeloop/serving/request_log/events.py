"""The events of the request log: `LoggedEvent` (one CloudEvent plus kubeloop's columns)
and `Exchange` (one request and its response as the router saw them)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubeloop.cloudevents import (
    JSON_CONTENT_TYPE,
    KIND_TYPES,
    binary_headers,
)
from kubeloop.serving.request_log.ids import uuid7

# The "YYYY-MM-DDTHH:MM:SS" of the last few whole seconds: the writer formats two times per
# logged exchange, and datetime.fromtimestamp(ts, UTC).isoformat() costs several µs each.
_SECONDS: dict[int, str] = {}


def iso_time(ts: float) -> str:
    """`ts` (epoch seconds) as `datetime.fromtimestamp(ts, UTC).isoformat(timespec=
    "microseconds")` gives it, to the character: fixed width (microseconds, +00:00), so
    ISO strings sort as the times they name."""
    # The microseconds as datetime rounds them (half to even, on the fraction).
    fraction, whole = math.modf(ts)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1.0, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1.0, micros + 1_000_000
    second = int(whole)
    prefix = _SECONDS.get(second)
    if prefix is None:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        if len(_SECONDS) >= 64:
            _SECONDS.clear()
        _SECONDS[second] = prefix
    return f"{prefix}.{micros:06d}+00:00"


def since_iso(since: datetime | str | float | None) -> str | None:
    if since is None:
        return None
    if isinstance(since, int | float):
        return iso_time(float(since))
    if isinstance(since, str):
        since = datetime.fromisoformat(since)
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return since.astimezone(UTC).isoformat(timespec="microseconds")


def full_type(type_: str | None) -> str | None:
    return None if type_ is None else KIND_TYPES.get(type_, type_)


@dataclass(frozen=True)
class LoggedEvent:
    """One CloudEvent of the log plus the columns kubeloop adds.

    `attributes` holds the context attributes (`CE_ATTRIBUTES`, without the `ce-` prefix),
    `data` the payload bytes exactly as they crossed the router. `variant` is "primary" or
    "canary", `model_version` the registry version that answered (both also sent as the
    ce-variant / ce-modelversion extensions, with ce-revision), `latency_ms` the
    predictor's round trip seen by the router (responses only) and `status_code` the HTTP
    status of the response (responses only).
    """

    attributes: dict[str, str]
    data: bytes
    variant: str | None = None
    model_version: str | None = None
    latency_ms: float | None = None
    status_code: int | None = None
    content_type: str = JSON_CONTENT_TYPE

    @classmethod
    def made(
        cls,
        attributes: dict[str, str],
        data: bytes,
        variant: str | None,
        model_version: str | None,
        latency_ms: float | None,
        status_code: int | None,
        content_type: str,
    ) -> LoggedEvent:
        """The same event as the constructor makes, without the frozen dataclass's
        `object.__setattr__` per field (the log's writer makes two per exchange)."""
        event = object.__new__(cls)
        object.__setattr__(
            event,
            "__dict__",
            {
                "attributes": attributes,
                "data": data,
                "variant": variant,
                "model_version": model_version,
                "latency_ms": latency_ms,
                "status_code": status_code,
                "content_type": content_type,
            },
        )
        return event

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def type(self) -> str:
        return self.attributes["type"]

    @property
    def time(self) -> str:
        return self.attributes["time"]

    @property
    def revision(self) -> str | None:
        """The revision that served the exchange (ce-revision), None in older logs."""
        return self.attributes.get("revision")

    def json(self) -> Any:
        """The payload parsed as JSON; ValueError if it is not JSON."""
        return json.loads(self.data)

    def headers(self) -> dict[str, str]:
        """The HTTP headers of this event in binary mode (ce-* plus content-type)."""
        return binary_headers(self.attributes, self.content_type)

    def to_cloudevent(self):
        """A `cloudevents.http.CloudEvent` with the same attributes and data."""
        from cloudevents.http import CloudEvent

        return CloudEvent({**self.attributes, "datacontenttype": self.content_type}, self.data)


@dataclass
class Exchange:
    """One request and its response as the router saw them."""

    request_body: bytes
    response_body: bytes
    status_code: int
    variant: str
    model_version: str | None
    latency_ms: float
    request_id: str = field(default_factory=uuid7)
    request_time: float = field(default_factory=time.time)
    response_time: float = field(default_factory=time.time)
    content_type: str = JSON_CONTENT_TYPE
    revision: str | None = None  # None: the logger names it from the model version
    # Why the request was refused (at the router's edge, or a 4xx of the predictor): its
    # request_body is then a small record with the reason, never the body, and its events
    # stay in the local log (the drift detector has no use for a request never scored).
    rejected: str | None = None
    # Request headers forwarded as ce-metadata, as KServe's logger does for the headers named
    # in its metadataHeaders: {name: [values]}.
    metadata: dict[str, list[str]] = field(default_factory=dict)
