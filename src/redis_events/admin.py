"""Inspect and repair a running event system: groups, dead letters, instances.

``EventAdmin`` answers an operator's questions about the streams transport
without printing anything (the ``redis-events`` command line prints)::

    async with EventAdmin("redis://localhost:6379/0") as admin:
        for group in await admin.groups(["orders"]):
            print(group.group, group.lag, group.pending)

        letters = await admin.dead_letters("orders")
        await admin.requeue("orders", [letters[0].id])

Topics left out are discovered with ``SCAN`` over the key scheme
(``redis-events:{*}``). SCAN walks the whole keyspace of the database in
steps of about 1000 keys: cheap for Redis per step, but one round trip per
step, so on a database with millions of unrelated keys give the topics.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from redis_events._connection import REDIS_ERRORS, create_client, translate_error
from redis_events._dead_letters import (
    REQUEUE_SCRIPT,
    DeadLetter,
    RequeueResult,
    parse_dead_letter,
)
from redis_events._endpoint import Endpoint
from redis_events._instances import InstanceInfo, parse_instance
from redis_events._keys import (
    INSTANCE_KEY_PATTERN,
    TOPIC_KEY_PATTERN,
    dead_letter_key,
    stream_key,
    topic_of_key,
)
from redis_events.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
    from types import TracebackType

    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = [
    "ConsumerInfo",
    "DeadLetter",
    "EventAdmin",
    "GroupInfo",
    "InstanceInfo",
    "RequeueResult",
    "StreamInfo",
]

_SCAN_COUNT = 1000
_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")
_BATCH = 500


@dataclass(frozen=True)
class ConsumerInfo:
    """One consumer of a group: its pending entries and idle seconds."""

    name: str
    pending: int
    idle: float


@dataclass(frozen=True)
class GroupInfo:
    """One consumer group on one topic's stream.

    Attributes:
        lag: Entries not yet delivered to the group (``XINFO GROUPS``'s
            ``lag``), or ``None`` when Redis cannot tell (entries deleted
            inside the unread range).
        pending: Entries delivered but not acknowledged.
        oldest_pending_id: The oldest pending entry, if any.
        oldest_pending_idle: Seconds since that entry was last delivered.
    """

    topic: str
    group: str
    lag: int | None
    pending: int
    oldest_pending_id: str | None
    oldest_pending_idle: float | None
    last_delivered_id: str
    consumers: tuple[ConsumerInfo, ...]


@dataclass(frozen=True)
class StreamInfo:
    """One topic's stream: its length, entries ever added and dead letters."""

    topic: str
    length: int
    entries_added: int | None
    dead_letters: int


class EventAdmin(Endpoint):
    """Operations on the streams transport: inspect groups, repair dead letters.

    Use it as ``async with EventAdmin(url) as admin:`` or call ``aclose()``.

    Note:
        ``requeue`` moves each entry with one Lua script: it is added back to
        the source stream and removed from the dead letters together, or not
        at all. When the caller dies or the connection drops mid-way, the
        entries moved so far are back on the stream, the rest are still dead
        letters, and running the requeue again moves only those.
    """

    def _init_state(self) -> None:
        self._client_or_none: Redis | None = None

    @property
    def _client(self) -> Redis:
        if self._client_or_none is None:
            self._client_or_none = create_client(self.settings, role="admin")

        return self._client_or_none

    async def __aenter__(self) -> Self:
        """Connect and check that Redis answers.

        Raises:
            RedisUnavailableError: Redis cannot be reached.
            PermissionDeniedError: The credentials were refused.
        """
        with self._translated("PING"):
            await self._client.ping()

        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection."""
        client, self._client_or_none = self._client_or_none, None
        if client is not None:
            await client.aclose()

    async def topics(self) -> list[str]:
        """Return the topics with a stream or dead letters, sorted (SCAN)."""
        found: set[str] = set()
        with self._translated("SCAN"):
            async for key in self._client.scan_iter(
                match=TOPIC_KEY_PATTERN, count=_SCAN_COUNT, _type="stream"
            ):
                topic = topic_of_key(_text(key))
                if topic is not None:
                    found.add(topic)

        return sorted(found)

    async def groups(self, topics: Sequence[str] | None = None) -> list[GroupInfo]:
        """Return the consumer groups of ``topics`` (default: every topic).

        Raises:
            ConfigurationError: A topic given has no stream.
            RedisUnavailableError: Redis cannot be reached.
        """
        groups: list[GroupInfo] = []
        for topic in await self._chosen(topics):
            with self._translated("XINFO GROUPS", topic):
                if not await self._client.exists(stream_key(topic)):
                    continue

                for raw in await self._client.xinfo_groups(stream_key(topic)):
                    groups.append(await self._group(topic, raw))

        return groups

    async def streams(self, topics: Sequence[str] | None = None) -> list[StreamInfo]:
        """Return length, entries ever added and dead letters per topic.

        Raises:
            ConfigurationError: A topic given has no stream.
            RedisUnavailableError: Redis cannot be reached.
        """
        infos: list[StreamInfo] = []
        for topic in await self._chosen(topics):
            with self._translated("XINFO STREAM", topic):
                length, added = 0, None
                if await self._client.exists(stream_key(topic)):
                    info = await self._client.xinfo_stream(stream_key(topic))
                    length = int(info["length"])
                    raw_added = info.get("entries-added")
                    added = None if raw_added is None else int(raw_added)

                dead = await self._client.xlen(dead_letter_key(topic))

            infos.append(StreamInfo(topic, length, added, int(dead)))

        return infos

    async def instances(self) -> list[InstanceInfo]:
        """Return every running subscriber that writes its stats (SCAN)."""
        found: list[InstanceInfo] = []
        with self._translated("SCAN"):
            keys = [
                _text(key)
                async for key in self._client.scan_iter(
                    match=INSTANCE_KEY_PATTERN, count=_SCAN_COUNT, _type="hash"
                )
            ]
            for key in sorted(keys):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.hgetall(key)
                    pipe.ttl(key)
                    raw, ttl = await pipe.execute()

                if raw:
                    found.append(parse_instance(key, raw, int(ttl)))

        return found

    async def dead_letters(
        self, topic: str, *, count: int = 100, after: str | None = None
    ) -> list[DeadLetter]:
        """Return up to ``count`` dead letters of ``topic``, oldest first.

        ``after`` is a dead-letter id: list the ones after it (paging).

        Raises:
            ConfigurationError: The topic has neither a stream nor dead letters.
            RedisUnavailableError: Redis cannot be reached.
        """
        if after is not None:
            _check_ids([after])

        await self._require(topic)
        start = "-" if after is None else f"({after}"
        entries = await self._range(topic, start, "+", count)
        return [parse_dead_letter(topic, i, f) for i, f in entries]

    async def dead_letter(self, topic: str, entry_id: str) -> DeadLetter | None:
        """Return one dead letter by its id, or ``None`` when there is none.

        Raises:
            ConfigurationError: The topic is unknown or the id malformed.
            RedisUnavailableError: Redis cannot be reached.
        """
        _check_ids([entry_id])
        await self._require(topic)
        entries = await self._range(topic, entry_id, entry_id, 1)
        return parse_dead_letter(topic, entry_id, entries[0][1]) if entries else None

    async def requeue(
        self, topic: str, ids: Iterable[str] | None = None
    ) -> RequeueResult:
        """Move dead letters back to ``topic``'s stream as new entries.

        ``ids`` are dead-letter ids; ``None`` requeues every dead letter. A
        requeued event is delivered again to every group, from a delivery
        count of one.

        Note:
            Each entry moves atomically (see the class note); ids not found
            are reported in ``missing``, never an error, so a requeue that was
            cut short can simply be run again.

        Raises:
            ConfigurationError: The topic is unknown or an id malformed.
            RedisUnavailableError: Redis cannot be reached.
        """
        chosen = None if ids is None else _check_ids(ids)
        await self._require(topic)
        result = RequeueResult(requeued={}, missing=[], empty=[])
        script = self._client.register_script(REQUEUE_SCRIPT)
        if chosen is None:
            async for entry_id in self._all_ids(topic):
                await self._requeue_one(script, topic, entry_id, result)
        else:
            for entry_id in chosen:
                await self._requeue_one(script, topic, entry_id, result)

        return result

    async def purge(self, topic: str, ids: Iterable[str] | None = None) -> int:
        """Delete dead letters of ``topic`` (``ids``, or all); return how many.

        Raises:
            ConfigurationError: The topic is unknown or an id malformed.
            RedisUnavailableError: Redis cannot be reached.
        """
        chosen = None if ids is None else _check_ids(ids)
        await self._require(topic)
        key = dead_letter_key(topic)
        with self._translated("purge", topic):
            if chosen is not None:
                return int(await self._client.xdel(key, *chosen)) if chosen else 0

            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xlen(key)
                pipe.delete(key)
                length, _ = await pipe.execute()

        return int(length)

    async def _requeue_one(
        self, script: AsyncScript, topic: str, entry_id: str, result: RequeueResult
    ) -> None:
        keys = [dead_letter_key(topic), stream_key(topic)]
        args: list[str | int] = [entry_id, self.settings.stream_maxlen]
        with self._translated("requeue", topic):
            reply: list[Any] = await script(keys=keys, args=args)

        if int(reply[0]) == 1:
            result.requeued[entry_id] = _text(reply[1])
        elif int(reply[0]) == 0:
            result.missing.append(entry_id)
        else:
            result.empty.append(entry_id)

    async def _all_ids(self, topic: str) -> AsyncIterator[str]:
        start = "-"
        while True:
            entries = await self._range(topic, start, "+", _BATCH)
            for entry_id, _ in entries:
                yield entry_id

            if len(entries) < _BATCH:
                return

            start = "(" + entries[-1][0]

    async def _range(
        self, topic: str, start: str, end: str, count: int
    ) -> list[tuple[str, dict[bytes, bytes]]]:
        with self._translated("XRANGE", topic):
            entries: list[Any] = (
                await self._client.xrange(dead_letter_key(topic), start, end, count)
                or []
            )

        return [(_text(entry_id), fields or {}) for entry_id, fields in entries]

    async def _group(self, topic: str, raw: dict[str, Any]) -> GroupInfo:
        key, name = stream_key(topic), _text(raw["name"])
        consumers = [
            ConsumerInfo(_text(c["name"]), int(c["pending"]), int(c["idle"]) / 1000)
            for c in await self._client.xinfo_consumers(key, name)
        ]
        oldest_id, oldest_idle = None, None
        if int(raw["pending"]):
            summary = await self._client.xpending(key, name)
            if summary.get("min") is not None:
                oldest_id = _text(summary["min"])
                first = await self._client.xpending_range(
                    key, name, min=oldest_id, max=oldest_id, count=1
                )
                if first:
                    oldest_idle = int(first[0]["time_since_delivered"]) / 1000

        lag = raw.get("lag")
        return GroupInfo(
            topic=topic,
            group=name,
            lag=None if lag is None else int(lag),
            pending=int(raw["pending"]),
            oldest_pending_id=oldest_id,
            oldest_pending_idle=oldest_idle,
            last_delivered_id=_text(raw["last-delivered-id"]),
            consumers=tuple(sorted(consumers, key=lambda c: c.name)),
        )

    async def _chosen(self, topics: Sequence[str] | None) -> list[str]:
        if not topics:
            return await self.topics()

        for topic in topics:
            await self._require(topic, optional=True)

        return list(topics)

    async def _require(self, topic: str, *, optional: bool = False) -> None:
        """Raise unless ``topic`` has a stream or dead letters.

        ``optional``: the caller may leave the topic out, and the error says so.
        """
        keys = (stream_key(topic), dead_letter_key(topic))
        with self._translated("EXISTS", topic):
            known = await self._client.exists(*keys)

        if not known:
            msg = (
                f"unknown topic {topic!r}: neither {keys[0]} nor {keys[1]} exists "
                f"at {self.settings.masked_url}; check the name (and the database "
                "in the URL)"
            )
            if optional:
                msg += ", or leave the topic out to list every topic"
            raise ConfigurationError(msg)

    @contextmanager
    def _translated(self, operation: str, topic: str | None = None) -> Iterator[None]:
        try:
            yield
        except REDIS_ERRORS as exc:
            raise translate_error(
                exc, operation=operation, settings=self.settings, topic=topic
            ) from exc


def _check_ids(ids: Iterable[str]) -> list[str]:
    chosen = list(ids)
    for entry_id in chosen:
        if not _ENTRY_ID.fullmatch(entry_id):
            msg = (
                f"{entry_id!r} is not a stream entry id (<milliseconds>-<sequence>, "
                "e.g. 1700000000000-0); copy it from 'dead-letters list'"
            )
            raise ConfigurationError(msg)

    return chosen


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
