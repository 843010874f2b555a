"""kubeloop.serving.edge in-process: the request-id check (a regex fast path that must
agree with the byte-by-byte rule), the first header of a name wins, and the declared body
size is read from the same single pass over the headers."""

from __future__ import annotations

import asyncio
import random

from kubeloop.serving.edge import MAX_ID_LENGTH, EdgeMiddleware, id_problem


def _slow_problem(value: bytes) -> bool:
    return not (1 <= len(value) <= MAX_ID_LENGTH and all(0x21 <= b <= 0x7E for b in value))


def test_id_problem_agrees_with_the_byte_rule():
    rng = random.Random(3)
    values = [b"", b"a", b"a" * MAX_ID_LENGTH, b"a" * (MAX_ID_LENGTH + 1), b"a b", b"\x7f", b"~!"]
    for _ in range(5000):
        n = rng.choice((1, 2, 36, MAX_ID_LENGTH, MAX_ID_LENGTH + 1))
        # Mostly printable, sometimes a byte from either side of the range.
        values.append(
            bytes(rng.choice((0x20, 0x21, 0x41, 0x7E, 0x7F, 0x0A, 0xE9)) for _ in range(n))
        )
    for value in values:
        assert (id_problem(value) is not None) == _slow_problem(value), value


def test_id_problem_names_the_first_bad_byte():
    assert id_problem(b"ab c") == (
        "expected printable ASCII characters without spaces, got byte 0x20 at position 2"
    )
    assert id_problem(b"") == f"expected 1..{MAX_ID_LENGTH} characters, got 0"


def _call(headers: list[tuple[bytes, bytes]], body: bytes = b"{}", limit: int = 100):
    seen: dict = {}
    sent: list[dict] = []
    rejections = []

    async def app(scope, receive, send):
        seen["body"] = (await receive())["body"]

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    edge = EdgeMiddleware(app, max_body_bytes=limit, on_reject=rejections.append)
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": headers}
    asyncio.run(edge(scope, receive, send))
    status = sent[0]["status"] if sent else None
    return seen.get("body"), status, rejections


def test_the_first_id_header_of_a_name_is_the_one_checked():
    body, status, _ = _call([(b"x-request-id", b"good"), (b"x-request-id", b"bad id")])
    assert (body, status) == (b"{}", None)
    body, status, rejections = _call([(b"x-request-id", b"bad id"), (b"x-request-id", b"good")])
    assert (body, status) == (None, 400)
    assert rejections[0].reason == "bad_request_id"
    assert rejections[0].message.startswith("x-request-id header:")


def test_declared_size_and_ids_from_one_pass():
    _, status, rejections = _call(
        [(b"ce-id", b"c-1"), (b"content-length", b"500"), (b"x-request-id", b"r-1")]
    )
    assert status == 413
    # x-request-id names the rejected request, as before (ce-id is the fallback).
    assert (rejections[0].request_id, rejections[0].content_length) == ("r-1", 500)
    _, status, rejections = _call([(b"ce-id", b"bad\x01")])
    assert status == 400 and rejections[0].message.startswith("ce-id header:")
    body, status, _ = _call([(b"content-length", b"nonsense")], body=b"[1]")
    assert (body, status) == (b"[1]", None)
