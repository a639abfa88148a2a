"""``python -m redis_events.demo``: the processor and a publisher in one process.

Runs on an in-process Redis (``memory://``) unless ``--redis-url`` is given,
publishes the original design's demo events, and prints every result and
custom event it sees. Exits 0 when every expected result arrived, 1 if not.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

import anyio

from redis_events import _constants as c
from redis_events.events import KeyProcessed, ProfileProcessed
from redis_events.exceptions import RedisEventsError
from redis_events.processor import EventProcessor
from redis_events.publisher import EventPublisher
from redis_events.subscriber import EventSubscriber

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

CUSTOM_TOPIC = "notifications"
_KEYS = (
    ("my_secret_key_12345", "Production Token"),
    ("abc123", "Token1"),
    ("short", "Too Short Token"),
)
_EXPECTED = len(_KEYS) + 3 + 1
_WAIT_SECONDS = 10.0


def describe(topic: str, event: object) -> str:
    """Return one printable line for an event, without any secret."""
    if isinstance(event, KeyProcessed):
        r = event.result
        detail = f" ({r.reason})" if r.reason else ""
        return (
            f"key_processed  token={r.token_name!r} valid={r.valid} "
            f"length={r.length}{detail}"
        )

    if isinstance(event, ProfileProcessed):
        return (
            f"profile_processed  profile_id={event.result.profile_id} "
            f"action={event.result.action}"
        )

    return f"{topic}: {event}"


async def run_demo(redis_url: str) -> int:
    """Run the demo against ``redis_url``; return the exit code."""
    processor = EventProcessor(redis_url)
    watcher = EventSubscriber(redis_url)
    seen: list[str] = []
    all_seen = anyio.Event()

    @watcher.on(c.PROCESSING_RESULTS_TOPIC, CUSTOM_TOPIC)
    async def show(topic: str, event: object) -> None:
        line = describe(topic, event)
        seen.append(line)
        print(f"  <- {line}")
        if len(seen) >= _EXPECTED:
            all_seen.set()

    await processor.connect()
    async with anyio.create_task_group() as task_group:
        await task_group.start(processor.run)
        async with watcher, EventPublisher(redis_url) as publisher:
            for key_value, token_name in _KEYS:
                print(f"  -> key_submitted  token={token_name!r}")
                await publisher.publish_key_submitted(key_value, token_name)

            print("  -> profile_created / profile_updated / profile_deleted  id=1")
            await publisher.publish_profile_created(
                1, {"dll_path": "/path/to/file.dll", "token_name": "My Profile"}
            )
            await publisher.publish_profile_updated(1, {"active": False})
            await publisher.publish_profile_deleted(1)
            print(f"  -> custom_event on {CUSTOM_TOPIC!r}")
            await publisher.publish(
                CUSTOM_TOPIC, {"event_type": "custom_event", "data": {"foo": "bar"}}
            )
            with anyio.move_on_after(_WAIT_SECONDS):
                await all_seen.wait()

        await processor.stop()

    stats = processor.get_stats()
    print(
        f"processor: keys_processed={stats['keys_processed']} "
        f"profiles_processed={stats['profiles_processed']} "
        f"events_published={stats['events_published']} "
        f"invalid_events={stats['invalid_events']}"
    )
    if len(seen) < _EXPECTED:
        print(f"only {len(seen)} of {_EXPECTED} expected events arrived")
        return 1

    print(f"demo finished: all {_EXPECTED} expected events seen")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the demo."""
    parser = argparse.ArgumentParser(
        prog="python -m redis_events.demo",
        description="Run the processor and publish the demo events in one process.",
    )
    parser.add_argument(
        "--redis-url",
        default="memory://demo",
        help="Redis to use (default: memory://demo, an in-process server)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    print(f"redis-events demo on {args.redis_url}")
    try:
        return anyio.run(run_demo, args.redis_url)
    except RedisEventsError as exc:
        print(f"demo failed: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
