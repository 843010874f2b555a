"""The one duration grammar: what `--since` and every other duration option accept.

A duration is one or more `<number><unit>` terms, largest unit first, with units
w (weeks), d, h, m and s: `30s`, `15m`, `1.5h`, `2h30m`, `1d`, `1w`. The same text means
the same span in `kubeloop alerts --since` and `kubectl kubeloop alerts --since`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from kubeloop.errors import KubeloopError

UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
EXAMPLES = "30s, 15m, 1h, 2h30m, 1d or 1w"
_TERMS = re.compile(
    r"^\s*" + "".join(rf"(?:(\d+(?:\.\d+)?){unit})?" for unit in UNIT_SECONDS) + r"\s*$"
)


class DurationError(KubeloopError, ValueError):
    """A duration or time that does not follow the grammar; the message shows examples."""


def parse_duration(text: str) -> timedelta:
    """`2h30m` -> timedelta(hours=2, minutes=30); raises DurationError unless the text is a
    positive duration in the grammar above."""
    match = _TERMS.match(text) if isinstance(text, str) else None
    if not match or not any(match.groups()):
        raise DurationError(f"invalid duration {text!r}: use e.g. {EXAMPLES}")
    seconds = sum(float(g) * UNIT_SECONDS[u] for g, u in zip(match.groups(), UNIT_SECONDS) if g)
    if seconds <= 0:
        raise DurationError(f"invalid duration {text!r}: must be more than 0")
    return timedelta(seconds=seconds)


def parse_since(
    value: str | datetime | timedelta | None, *, now: datetime | None = None
) -> datetime | None:
    """A `--since` value as a UTC time: a duration back from `now`, an ISO time, a datetime
    or a timedelta; None stays None (no lower bound)."""
    if value is None:
        return None
    now = _utc(now or datetime.now(UTC))
    if isinstance(value, timedelta):
        return now - value
    if isinstance(value, datetime):
        return _utc(value)
    text = str(value).strip()
    try:
        return now - parse_duration(text)
    except DurationError:
        pass
    try:
        return _utc(datetime.fromisoformat(text))
    except ValueError:
        raise DurationError(
            f"cannot read --since {value!r}: use a duration ({EXAMPLES}) or an ISO time"
        ) from None


def _utc(value: datetime) -> datetime:
    # A naive time is taken as UTC, as every timestamp kubeloop writes is.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
