"""The hand-packed PUBLISH batch: the same bytes redis-py would send."""

from __future__ import annotations

import math

from redis.asyncio.connection import Connection

from redis_events._packed import _WRITE_BYTES, _part_end, pack_publishes


def test_packed_publishes_are_the_bytes_redis_py_would_send() -> None:
    payloads = [b'{"a": 1}', b"", "é\r\n".encode(), bytes(range(256))]
    expected = b"".join(
        b"".join(Connection().pack_command("PUBLISH", "news:é", data))
        for data in payloads
    )
    assert pack_publishes("news:é", payloads) == expected


def test_an_empty_batch_packs_to_nothing() -> None:
    assert pack_publishes("news", []) == b""


def test_a_part_of_a_batch_counts_each_commands_channel_too() -> None:
    # Tiny payloads to a long channel: the part is bounded by what is
    # written, not by the payloads alone.
    overhead = 1000
    end = _part_end([b"x"] * 100_000, 0, overhead)
    assert end == math.ceil(_WRITE_BYTES / (1 + overhead))
    assert _part_end([b"x" * (2 * _WRITE_BYTES), b"y"], 0, overhead) == 1
