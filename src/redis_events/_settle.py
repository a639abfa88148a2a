"""Acknowledge and dead-letter stream entries, in batches, off the read path."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from redis.exceptions import NoPermissionError, ResponseError

from redis_events._connection import RETRYABLE_ERRORS, Backoff, translate_error
from redis_events._keys import dead_letter_key

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from redis_events.config import Settings
    from redis_events.dispatcher import Stats
    from redis_events.exceptions import RedisEventsError

__all__ = ["Settler"]

logger = logging.getLogger("redis_events._streams")

_DeadLetter = tuple[str, str, str, str, int, dict[bytes, bytes], dict[str, str]]

# KEYS: stream, dead-letter stream (same hash tag, so one cluster slot).
# ARGV: group, entry id, then the dead letter's field/value pairs.
_MOVE_TO_DEAD_LETTERS = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
  return 1
end
return 0
"""


class Settler:
    """Queue acknowledgements and dead letters; write them in batches.

    A dead letter is written with its acknowledgement in one Lua script, so
    an entry is never acknowledged without being kept, nor kept twice.
    """

    def __init__(
        self, client: Redis, settings: Settings, stats: Stats, consumer: str
    ) -> None:
        self._client = client
        self._settings = settings
        self._stats = stats
        self._consumer = consumer
        # Ids as bytes: redis-py sends bytes as they are, a str it checks
        # and encodes argument by argument.
        self._acks: dict[str, list[bytes]] = {}
        self._dead: list[_DeadLetter] = []
        self._wake = anyio.Event()
        # Whether _wake was set since run() last renewed it: set() once per
        # batch, not once per entry.
        self._woken = False
        self._move = client.register_script(_MOVE_TO_DEAD_LETTERS)
        self._stopping = False
        self._stopped = anyio.Event()
        self.failed = anyio.Event()
        self.fatal: RedisEventsError | None = None

    def ack(self, key: str, entry_id: str) -> None:
        """Queue an acknowledgement."""
        ids = self._acks.get(key)
        if ids is None:
            ids = self._acks[key] = []

        ids.append(entry_id.encode())
        if not self._woken:
            self._nudge()

    def dead_letter(
        self,
        key: str,
        topic: str,
        entry_id: str,
        reason: str,
        count: int,
        fields: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]] | None,
        *,
        event: Mapping[str, str] | None = None,
    ) -> None:
        """Queue a move to the dead-letter stream (with its acknowledgement).

        ``fields`` are the entry's fields as read (kept in the dead letter);
        ``event`` holds what is known of the event (``event_id``,
        ``event_type``) for the log line.
        """
        self._dead.append(
            (key, topic, entry_id, reason, count, dict(fields or {}), {**(event or {})})
        )
        self._nudge()

    @property
    def has_acks(self) -> bool:
        """Tell whether acknowledgements are queued."""
        return bool(self._acks)

    async def ack_with_read(
        self, client: Redis, add_read: Callable[[Pipeline], object]
    ) -> Any:
        """Write the queued acknowledgements and one read in one round trip.

        ``add_read`` adds the read (one command that must not block) to the
        pipeline after the XACKs; its reply is returned. This spares a
        reader that is about to read anyway a separate XACK round trip.

        Raises:
            redis.RedisError, OSError: The round trip failed or took longer
                than ``socket_timeout`` (``TimeoutError``); the
                acknowledgements are queued again, for run() to write.

        Note:
            Like every write of the settler, the round trip is never cut in
            half by a cancellation: once sent, its reply is awaited (for up
            to ``socket_timeout``), so that what Redis acknowledged is
            counted once and the entries it read are returned, not left
            pending without a handler.
        """
        # A stop that came before the round trip starts it not.
        await anyio.lowlevel.checkpoint_if_cancelled()
        acks, self._acks = self._acks, {}
        try:
            # The usual reply timeout: a reader's client allows for a
            # blocking read on top, which this read never is.
            with (
                anyio.CancelScope(shield=True),
                anyio.fail_after(self._settings.socket_timeout),
            ):
                replies = await self._ack_and_read(client, acks, add_read)
        except BaseException:
            self._queue_again(acks)
            raise

        acked = 0
        for (key, ids), reply in zip(acks.items(), replies, strict=False):
            if isinstance(reply, Exception):
                # Left to run(), which reports and retries what fails.
                self._queue_again({key: ids})
            else:
                acked += int(reply)

        self._stats.add("acked", acked)
        read = replies[-1]
        if isinstance(read, Exception):
            raise read

        return read

    async def _ack_and_read(
        self,
        client: Redis,
        acks: dict[str, list[bytes]],
        add_read: Callable[[Pipeline], object],
    ) -> list[Any]:
        group = self._settings.group
        async with client.pipeline(transaction=False) as pipe:
            for key, ids in acks.items():
                pipe.xack(key, group, *ids)

            add_read(pipe)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            return replies

    def _queue_again(self, acks: dict[str, list[bytes]]) -> None:
        for key, ids in acks.items():
            self._acks.setdefault(key, []).extend(ids)

        if acks:
            self._nudge()

    @property
    def pending(self) -> int:
        """Acknowledgements and dead letters not written yet."""
        return sum(len(ids) for ids in self._acks.values()) + len(self._dead)

    async def run(self) -> None:
        """Write what is queued, as it comes, until ``stop()``."""
        backoff = Backoff(base=0.1, cap=self._settings.reconnect_backoff_cap)
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake = anyio.Event()
                self._woken = False
                try:
                    # A write is never cut in half by a stop: shielded.
                    with anyio.CancelScope(shield=True):
                        await self.flush()
                except NoPermissionError as exc:
                    # Retrying cannot help: every entry would come back again
                    # and again. Reading stops and the error is raised.
                    streams = sorted({*self._acks, *(d[0] for d in self._dead)})
                    self.fatal = translate_error(
                        exc,
                        operation="settling entries",
                        settings=self._settings,
                        topic=", ".join(streams),
                    )
                    logger.error("%s", self.fatal, extra=self._log_fields())
                    self.failed.set()
                    return
                except (*RETRYABLE_ERRORS, ResponseError) as exc:
                    # Down, read-only after a failover, out of memory: keep
                    # everything queued and try again later.
                    logger.warning(
                        "Could not settle entries yet (%s: %s)",
                        type(exc).__name__,
                        exc,
                        extra=self._log_fields(),
                    )
                    self._nudge()
                    await anyio.sleep(backoff.next_delay())
                else:
                    backoff.reset()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Ask ``run()`` to finish its current write and return; wait for it."""
        self._stopping = True
        self._nudge()
        await self._stopped.wait()

    async def flush(self) -> None:
        """Write every queued acknowledgement and dead letter now.

        What cannot be written stays queued.
        """
        acks, self._acks = self._acks, {}
        dead, self._dead = self._dead, []
        try:
            if acks:
                await self._write_acks(acks)
                acks = {}

            while dead:
                await self._write_dead_letter(dead[0])
                dead.pop(0)
        finally:
            for key, ids in acks.items():
                self._acks.setdefault(key, []).extend(ids)

            self._dead[:0] = dead

    def _nudge(self) -> None:
        if not self._woken:
            self._woken = True
            self._wake.set()

    async def _write_acks(self, acks: dict[str, list[bytes]]) -> None:
        group = self._settings.group
        if len(acks) == 1:
            # One stream (the usual case): one XACK, without a pipeline's
            # own cost per batch.
            [(key, ids)] = acks.items()
            replies = [await self._client.xack(key, group, *ids)]
        else:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, ids in acks.items():
                    pipe.xack(key, group, *ids)

                replies = await pipe.execute()

        # What Redis says it acknowledged: an id acknowledged twice counts once.
        self._stats.add("acked", sum(int(n) for n in replies))

    async def _write_dead_letter(self, letter: _DeadLetter) -> None:
        key, topic, entry_id, reason, count, fields, event = letter
        record: dict[bytes | str, bytes | str | int] = {
            name if name == b"data" else b"original:" + name: value
            for name, value in fields.items()
        }
        record |= {
            "original_id": entry_id,
            "topic": topic,
            "reason": reason,
            "delivery_count": count,
            "group": self._settings.group,
            "consumer": self._consumer,
            "dead_at": datetime.now(UTC).isoformat(),
        }
        # One script: the dead letter is written only if this XACK removed
        # the entry from the pending list, so a retried write (after a reply
        # lost in a timeout) never keeps it twice.
        moved = await self._move(
            keys=[key, dead_letter_key(topic)],
            args=[self._settings.group, entry_id, *_flatten(record)],
        )
        if not moved:
            logger.debug(
                "Entry %s of %s was already settled",
                entry_id,
                topic,
                extra=self._log_fields(topic=topic, entry_id=entry_id),
            )
            return

        self._stats.add("dead_lettered")
        if self._stats.observer is not None:
            self._stats.observer.dead_lettered(topic)

        logger.warning(
            "Moved entry %s of %s to the dead letters: %s",
            entry_id,
            topic,
            reason,
            # The event's own fields first: what the settler knows wins.
            extra=event
            | self._log_fields(topic=topic, entry_id=entry_id, reason=reason),
        )

    def _log_fields(self, **fields: str) -> dict[str, str]:
        return {"group": self._settings.group, "consumer": self._consumer} | fields


def _flatten(record: dict[bytes | str, bytes | str | int]) -> list[bytes | str | int]:
    flat: list[bytes | str | int] = []
    for name, value in record.items():
        flat += [name, value]

    return flat
