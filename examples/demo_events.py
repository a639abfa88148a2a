"""Publish the original demo events to a running processor and show results.

Start the processor first, in another terminal::

    .venv/bin/python -m redis_events.processor --redis-url redis://localhost:6379/0

then run::

    .venv/bin/python examples/demo_events.py --redis-url redis://localhost:6379/0

It publishes key events, profile events and a custom-topic event, then prints
the results the processor sends to ``processing_results``.
"""

from __future__ import annotations

import argparse

import anyio

from redis_events import (
    PROCESSING_RESULTS_TOPIC,
    EventPublisher,
    EventSubscriber,
    KeyProcessed,
    ProfileProcessed,
)

EXPECTED_RESULTS = 5


async def main(redis_url: str, wait: float) -> int:
    """Publish the demo events and print results until all came or ``wait``."""
    results = EventSubscriber(redis_url)
    received: list[object] = []
    done = anyio.Event()

    @results.on(PROCESSING_RESULTS_TOPIC)
    async def show(topic: str, event: object) -> None:
        if isinstance(event, KeyProcessed):
            print(
                f"key result: token={event.result.token_name!r} "
                f"valid={event.result.valid} length={event.result.length}"
            )
        elif isinstance(event, ProfileProcessed):
            print(
                f"profile result: id={event.result.profile_id} "
                f"action={event.result.action}"
            )

        received.append(event)
        if len(received) >= EXPECTED_RESULTS:
            done.set()

    async with results, EventPublisher(redis_url) as publisher:
        await publisher.publish_key_submitted(
            key_value="my_secret_key_12345", token_name="Production Token"
        )
        await publisher.publish_key_submitted(key_value="abc123", token_name="Token1")
        await publisher.publish_profile_created(
            profile_id=1,
            profile_data={
                "dll_path": "/path/to/file.dll",
                "token_name": "My Profile",
                "active": True,
            },
        )
        await publisher.publish_profile_updated(1, {"active": False})
        await publisher.publish_profile_deleted(1)
        receivers = await publisher.publish(
            "my_custom_topic", {"event_type": "custom_event", "data": {"foo": "bar"}}
        )
        print(f"custom event published to {receivers} subscriber(s)")
        with anyio.move_on_after(wait):
            await done.wait()

    if len(received) < EXPECTED_RESULTS:
        print(
            f"got {len(received)} of {EXPECTED_RESULTS} results: is the "
            "processor running against the same Redis?"
        )
        return 1

    print(f"all {EXPECTED_RESULTS} results received")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://localhost:6379/0")
    parser.add_argument("--wait", type=float, default=5.0, help="seconds to wait")
    arguments = parser.parse_args()
    raise SystemExit(anyio.run(main, arguments.redis_url, arguments.wait))
