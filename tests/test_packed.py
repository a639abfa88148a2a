"""The hand-packed PUBLISH batch: the same bytes redis-py would send."""

from __future__ import annotations

from redis.asyncio.connection import Connection

from redis_events._packed import pack_publishes


def test_packed_publishes_are_the_bytes_redis_py_would_send() -> None:
    payloads = [b'{"a": 1}', b"", "é\r\n".encode(), bytes(range(256))]
    expected = b"".join(
        b"".join(Connection().pack_command("PUBLISH", "news:é", data))
        for data in payloads
    )
    assert pack_publishes("news:é", payloads) == expected


def test_an_empty_batch_packs_to_nothing() -> None:
    assert pack_publishes("news", []) == b""
