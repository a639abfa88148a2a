"""``tail``: follow events live, without changing anything in Redis.

On pub/sub it is one more subscriber (with the library's self-healing
reader); on streams it reads with plain XREAD from the entries that arrive
after it started, so no consumer group sees it.

On a Redis Cluster, pub/sub topics are shard channels (SSUBSCRIBE, as the
publisher sends them with SPUBLISH) and patterns are refused; streams are
read with one XREAD loop per hash slot, since one XREAD cannot name keys of
two slots.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Any, cast

import anyio
import click

from redis_events._cluster_pubsub import PATTERNS_REFUSED, ShardedPubSubReader
from redis_events._cluster_streams import SlotReader, slot_groups
from redis_events._connection import (
    REDIS_ERRORS,
    Backoff,
    create_client,
    is_retryable,
)
from redis_events._connection import translate_error as _translate
from redis_events._envelope import split_json
from redis_events._keys import DATA_FIELD, stream_key
from redis_events._pubsub import PubSubReader
from redis_events._stream_entries import stream_entries
from redis_events._topology import is_cluster
from redis_events.cli._common import (
    EXIT_USAGE,
    OutputClosedError,
    build_settings,
    events,
    fail,
    redis_url_option,
    run,
    say,
    transport_option,
)
from redis_events.cli._output import EventPrinter
from redis_events.codec import EventRegistry, validate_topic
from redis_events.dispatcher import Stats
from redis_events.exceptions import ConfigurationError, EventDecodeError

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskStatus
    from redis.asyncio.cluster import RedisCluster

    from redis_events._pubsub_shared import Frame
    from redis_events.config import Settings

__all__ = ["tail"]

_PATTERN_CHARACTERS = frozenset("*?[")


@click.command()
@click.argument("topics", nargs=-1, required=True, metavar="TOPIC|PATTERN...")
@redis_url_option
@transport_option("where to follow: pub/sub channels or the topics' streams")
@click.option(
    "--json",
    "json_lines",
    is_flag=True,
    help="One JSON object per event and line, for piping (jq and friends).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    metavar="N",
    help="Stop after N events (undecodable entries count too).",
)
def tail(
    topics: tuple[str, ...],
    redis_url: str | None,
    transport: str | None,
    json_lines: bool,
    count: int | None,
) -> None:
    """Follow events on TOPICs live, secrets redacted.

    On pub/sub, a name with *, ? or [ is a glob pattern (profile_*), except
    on a Redis Cluster, where topics are shard channels and Redis has no
    sharded pattern subscription. On streams only topic names work; tail
    then reads new entries with XREAD, outside every consumer group, so it
    changes nothing.

    An entry that is not a valid event is shown with the reason, never with
    its content. A line on stderr tells when tail is following; Ctrl-C or
    SIGTERM stops it (exit 0).

    \b
    Examples:
      redis-events tail key_submission 'profile_*'
      redis-events tail --transport stream --json processing_results | jq .
    """
    settings = build_settings(redis_url, transport=transport)
    patterns = [t for t in topics if _PATTERN_CHARACTERS.intersection(t)]
    channels = [t for t in topics if t not in patterns]
    try:
        for topic in topics:
            validate_topic(topic)

        if settings.transport == "stream":
            if patterns:
                msg = (
                    f"{patterns[0]!r} is a pattern, and patterns work on pub/sub "
                    "only: name the stream topics, or use --transport pubsub"
                )
                raise ConfigurationError(msg)

            for topic in channels:
                stream_key(topic)
        elif patterns and settings.deployment.kind == "cluster":
            raise ConfigurationError(f"{patterns[0]!r}: {PATTERNS_REFUSED}")
    except ConfigurationError as exc:
        fail(str(exc), EXIT_USAGE)

    tailer = _Tailer(settings, EventPrinter(json_lines=json_lines), count)
    try:
        run(tailer.follow, channels, patterns)
    except KeyboardInterrupt:
        # Ctrl-C before the signal handler was installed: still a clean stop.
        pass

    closed = " (the output was closed)" if tailer.output_closed else ""
    say(f"Stopped after {events(tailer.printer.printed)}{closed}.")


class _Tailer:
    """Reads one transport and prints what arrives until told to stop."""

    def __init__(
        self, settings: Settings, printer: EventPrinter, count: int | None
    ) -> None:
        self.settings = settings
        self.printer = printer
        self.registry = EventRegistry(max_event_bytes=settings.max_event_bytes)
        self._count = count
        self.output_closed = False
        self._scope: anyio.CancelScope | None = None

    async def follow(self, channels: list[str], patterns: list[str]) -> None:
        """Print events until --count is reached, SIGINT or SIGTERM."""
        self._scope = anyio.CancelScope()
        error: Exception | None = None
        async with anyio.create_task_group() as task_group:
            await task_group.start(self._stop_on_signal)
            try:
                with self._scope:
                    if self.settings.transport == "stream":
                        await self._follow_streams(channels)
                    else:
                        await self._follow_pubsub(channels, patterns)
            except Exception as exc:
                # Raised after the task group, so that it is not wrapped in
                # an exception group.
                error = exc
            finally:
                task_group.cancel_scope.cancel()

        if error is not None:
            raise error

    async def _stop_on_signal(self, *, task_status: TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for _ in signals:
                self._stop()
                return

    @property
    def _stopping(self) -> bool:
        return self._scope is not None and self._scope.cancel_called

    def _stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    def _following(self, what: str) -> None:
        say(f"Following {what} at {self.settings.masked_url} (Ctrl-C to stop)")

    def _show(
        self,
        topic: str,
        data: bytes | None,
        *,
        entry_id: str | None = None,
        pattern: str | None = None,
    ) -> None:
        if self._stopping:
            # --count was reached; frames read in the same batch are dropped.
            return

        try:
            if data is None:
                raise EventDecodeError("the entry has no 'data' field", topic=topic)

            event = self.registry.decode(topic, data)
        except EventDecodeError as exc:
            shown = self._print(
                self.printer.undecodable, topic, exc.reason, entry_id, pattern
            )
        else:
            shown = self._print(self.printer.event, topic, event, entry_id, pattern)

        enough = self._count is not None and self.printer.printed >= self._count
        if enough or not shown:
            self._stop()

    def _print(
        self,
        write: Callable[..., None],
        topic: str,
        what: Any,
        entry_id: str | None,
        pattern: str | None,
    ) -> bool:
        """Print one entry; tell whether stdout is still open."""
        try:
            write(topic, what, entry_id=entry_id, pattern=pattern)
        except OutputClosedError:
            # Not raised: the pub/sub reader would wrap it in an exception
            # group. The reader of the output has all it wanted.
            self.output_closed = True
            return False

        return True

    async def _follow_pubsub(self, channels: list[str], patterns: list[str]) -> None:
        client = create_client(self.settings, role="tail")
        # On a cluster the publisher sends with SPUBLISH: only a shard
        # subscription (SSUBSCRIBE) on the slot's master receives it.
        reader_class = ShardedPubSubReader if is_cluster(client) else PubSubReader
        reader = reader_class(client, self.settings, Stats())
        # TODO(tail-duplicates): an event that matches a channel and a
        # pattern given together is shown once per match, as Redis sends it.
        await reader.subscribe(channels, patterns)
        try:
            await reader.connect()
            self._following(", ".join([*channels, *patterns]) + " (pub/sub)")

            async def on_frame(frame: Frame) -> None:
                pattern = (
                    frame.pattern.decode(errors="replace") if frame.pattern else None
                )
                # The trace context member of a traced publish is not part
                # of the event; the subscriber drops it the same way.
                data, _ = split_json(frame.data)
                self._show(
                    frame.channel.decode(errors="replace"), data, pattern=pattern
                )

            await reader.run(on_frame)
        finally:
            with anyio.CancelScope(shield=True):
                await reader.aclose()
                await client.aclose()

    async def _follow_streams(self, topics: list[str]) -> None:
        settings = self.settings
        # The read waits up to block_seconds on top of the usual reply time.
        waiting = settings.model_copy(
            update={"socket_timeout": settings.socket_timeout + settings.block_seconds}
        )
        client = create_client(waiting, role="tail")
        try:
            positions = await self._stream_ends(client, topics)
            self._following(", ".join(positions) + " (streams)")
            if not is_cluster(client):
                await self._read_streams(client, positions, topics)
                return

            # One XREAD names keys of one slot only: a read loop per slot,
            # each sent to that slot's master.
            reader = SlotReader(cast("RedisCluster", client))
            try:
                async with anyio.create_task_group() as task_group:
                    for group in slot_groups(topics):
                        keys = {stream_key(topic) for topic in group}
                        part = {k: v for k, v in positions.items() if k in keys}
                        task_group.start_soon(self._read_streams, reader, part, group)
            except ExceptionGroup as errors:
                # The first loop's error cancelled the others: raise it as
                # itself, so that it ends the command with its message.
                raise errors.exceptions[0] from None
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    async def _stream_ends(self, client: Any, topics: list[str]) -> dict[str, str]:
        """Return the last entry id of each topic's stream (0-0 when empty)."""
        positions: dict[str, str] = {}
        for topic in topics:
            key = stream_key(topic)
            try:
                last = await client.xrevrange(key, count=1)
            except REDIS_ERRORS as exc:
                raise _translate(
                    exc, operation="XREVRANGE", settings=self.settings, topic=topic
                ) from exc

            positions[key] = _text(last[0][0]) if last else "0-0"

        return positions

    async def _read_streams(
        self, client: Any, positions: dict[str, str], topics: list[str]
    ) -> None:
        topic_of = {stream_key(topic): topic for topic in topics}
        backoff = Backoff(
            base=self.settings.reconnect_backoff_base,
            cap=self.settings.reconnect_backoff_cap,
        )
        block = int(self.settings.block_seconds * 1000)
        while True:
            try:
                reply = await client.xread(
                    positions, count=self.settings.read_count, block=block
                )
            except REDIS_ERRORS as exc:
                error = _translate(exc, operation="XREAD", settings=self.settings)
                if not is_retryable(exc):
                    raise error from exc

                say(f"{error}; retrying", level=logging.WARNING)
                await anyio.sleep(backoff.next_delay())
                continue

            backoff.reset()
            for key, entries in stream_entries(reply):
                for entry_id, fields in entries:
                    positions[key] = _text(entry_id)
                    data = fields.get(DATA_FIELD) if fields else None
                    self._show(topic_of[key], data, entry_id=_text(entry_id))
                    if self._stopping:
                        return


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
