"""kubeloop.duration: the one grammar every `--since` and duration option reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kubeloop.duration import DurationError, parse_duration, parse_since

NOW = datetime(2026, 2, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("1.5h", timedelta(minutes=90)),
        ("2h30m", timedelta(hours=2, minutes=30)),
        ("1d", timedelta(days=1)),
        ("1w2d", timedelta(days=9)),
        (" 10m ", timedelta(minutes=10)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected
    assert parse_since(text, now=NOW) == NOW - expected


@pytest.mark.parametrize("text", ["", "1x", "m", "30m2h", "0s", "yesterday", "-5m"])
def test_bad_durations_show_examples(text):
    with pytest.raises(DurationError, match="invalid duration"):
        parse_duration(text)


def test_since_takes_times_too():
    assert parse_since("2026-01-20T10:00:00") == datetime(2026, 1, 20, 10, tzinfo=UTC)
    assert parse_since(timedelta(hours=1), now=NOW) == NOW - timedelta(hours=1)
    assert parse_since(None) is None
    with pytest.raises(DurationError, match="--since 'yesterday'"):
        parse_since("yesterday")
