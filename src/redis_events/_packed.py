"""Send a batch of PUBLISH commands packed in one buffer, on one connection.

A redis-py pipeline encodes every argument of every command and runs a reply
callback per command; a batch of PUBLISH to one channel needs neither. The
batch is written as one RESP buffer with ``send_packed_command`` and the
replies are read back with ``read_response``, both public methods of a
pooled redis-py connection.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["pack_publishes", "publish_packed"]


def pack_publishes(channel: str, payloads: list[bytes]) -> bytes:
    """Return the RESP encoding of ``PUBLISH channel payload`` for each payload."""
    name = channel.encode()
    head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n" % (len(name), name)
    parts: list[bytes] = []
    for data in payloads:
        parts += (head, b"$%d\r\n" % len(data), data, b"\r\n")

    return b"".join(parts)


async def publish_packed(
    client: Redis, channel: str, payloads: list[bytes]
) -> list[int]:
    """Publish ``payloads`` to ``channel`` in one write; return the receiver counts.

    The replies are read without a timeout of their own: the caller bounds
    the whole batch (``anyio.fail_after``), which costs less than a timeout
    per reply.

    Raises:
        redis.RedisError, OSError: As a redis-py command would; the
            connection is then closed, since replies may be left unread.
    """
    packed = pack_publishes(channel, payloads)
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]  # untyped upstream
    try:
        await connection.send_packed_command(packed)
        replies = [await connection.read_response(timeout=math.inf) for _ in payloads]
    except BaseException:
        # Shielded: after a timeout the caller's scope is cancelled, and a
        # connection with replies left unread must not go back open.
        with anyio.CancelScope(shield=True):
            await connection.disconnect(nowait=True)

        raise
    finally:
        await pool.release(connection)

    return [int(count) for count in replies]
