"""Send a batch of PUBLISH commands packed by hand, on one connection.

A redis-py pipeline encodes every argument of every command and runs a reply
callback per command; a batch of PUBLISH to one channel needs neither. The
batch is written as RESP buffers with ``send_packed_command`` (one per
megabyte or so) and the replies are read back with ``read_response``, both
public methods of a pooled redis-py connection.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection

__all__ = ["pack_publishes", "publish_packed"]

# Progress is checked after writing about this many bytes of commands, and
# after reading this many replies.
_WRITE_BYTES = 1 << 20
_REPLY_RUN = 256


def pack_publishes(channel: str, payloads: list[bytes]) -> bytes:
    """Return the RESP encoding of ``PUBLISH channel payload`` for each payload."""
    name = channel.encode()
    head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n" % (len(name), name)
    parts: list[bytes] = []
    for data in payloads:
        parts += (head, b"$%d\r\n" % len(data), data, b"\r\n")

    return b"".join(parts)


async def publish_packed(
    client: Redis, channel: str, payloads: list[bytes], *, stall_timeout: float
) -> list[int]:
    """Publish ``payloads`` to ``channel``; return the receiver counts.

    ``stall_timeout`` bounds each wait for progress, as ``socket_timeout`` bounds
    each read of a redis-py pipeline: the write of every part of the batch
    (``_WRITE_BYTES`` at a time), and every ``_REPLY_RUN`` replies. A batch
    may take longer than ``stall_timeout`` in all; a server that stops
    answering fails it within about ``stall_timeout``.

    Raises:
        TimeoutError: Redis made no progress within ``stall_timeout``.
        redis.RedisError, OSError: As a redis-py command would. The
            connection is then closed, since replies may be left unread.
    """
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]  # untyped upstream
    try:
        with anyio.CancelScope() as progress:
            replies = await _exchange(
                connection, channel, payloads, stall_timeout, progress
            )

        if progress.cancelled_caught:
            msg = f"Redis made no progress on a PUBLISH batch within {stall_timeout} s"
            raise TimeoutError(msg)
    except BaseException:
        # Shielded: after a timeout or a cancellation, a connection with
        # replies left unread must not go back open.
        with anyio.CancelScope(shield=True):
            await connection.disconnect(nowait=True)

        raise
    finally:
        await pool.release(connection)

    return [int(count) for count in replies]


async def _exchange(
    connection: AbstractConnection,
    channel: str,
    payloads: list[bytes],
    stall_timeout: float,
    progress: anyio.CancelScope,
) -> list[int]:
    # The deadline moves on after each part written and each run of replies
    # read, not after each reply: reading the clock would cost more than
    # reading a reply.
    # What a command adds to its payload: the channel and the RESP framing.
    overhead = len(channel.encode()) + 32
    start = 0
    while start < len(payloads):
        end = _part_end(payloads, start, overhead)
        progress.deadline = anyio.current_time() + stall_timeout
        await connection.send_packed_command(
            pack_publishes(channel, payloads[start:end]), check_health=False
        )
        start = end

    replies: list[int] = []
    read = connection.read_response
    for done in range(len(payloads)):
        if not done % _REPLY_RUN:
            progress.deadline = anyio.current_time() + stall_timeout

        replies.append(await read(timeout=math.inf))

    return replies


def _part_end(payloads: list[bytes], start: int, overhead: int) -> int:
    """Return where the part of the batch that starts at ``start`` ends."""
    size = 0
    end = start
    while end < len(payloads) and (end == start or size < _WRITE_BYTES):
        size += len(payloads[end]) + overhead
        end += 1

    return end
