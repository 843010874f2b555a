"""kubeloop.serving.request_log.ids: version-7 UUIDs as the standard library reads them,
their time in the first 48 bits (and the sub-millisecond fraction in the next 12), so ids
made in time order sort in time order; distinct for equal times."""

from __future__ import annotations

import uuid

from kubeloop.serving.request_log.ids import uuid7, uuid7_strings


def test_a_version_7_uuid_of_the_given_time():
    text = uuid7(1_764_623_000.1234)
    parsed = uuid.UUID(text)
    assert str(parsed) == text
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == 1_764_623_000_123  # Unix milliseconds
    assert (parsed.int >> 64) & 0xFFF == int(0.4 * 4096)  # the next 0.4 ms, in 1/4096ths


def test_time_ordered_and_distinct():
    times = [1_700_000_000.0 + k * 0.0005 for k in range(2000)]
    ids = uuid7_strings(times)
    assert ids == sorted(ids)
    assert len(set(uuid7_strings([1.0] * 1000))) == 1000
    assert uuid7_strings([]) == []
