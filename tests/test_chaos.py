"""The chaos run, short, and the cut it found: no published event is lost.

``benchmarks/chaos.py --quick`` runs as a subprocess with its own
redis-server (AOF, ``appendfsync always``): two stream consumers in one
group, 10,000 events, connections cut at random and right after claims,
consumers SIGKILLed and restarted, Redis restarted. The test reads the one
line it prints. Which faults meet which step of a consumer is left to
chance there; the second test makes the one cut that lost events in the
chaos run happen every time, through a proxy that drops the connection on
the first XPENDING a consumer sends (the delivery-count lookup that follows
a claim).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from redis_events import EventSubscriber
from redis_events._keys import stream_key
from tests.helpers import wait_until

if TYPE_CHECKING:
    from anyio.abc import SocketStream, TaskStatus

    from tests.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.fault]

CHAOS = Path(__file__).resolve().parents[1] / "benchmarks" / "chaos.py"
LINE = re.compile(
    r"published=(?P<published>\d+) handled=(?P<handled>\d+) lost=(?P<lost>\d+) "
    r"duplicates=(?P<duplicates>\d+) faults=(?P<faults>\d+) "
    r"\(kills=(?P<kills>\d+) client_kills=(?P<client_kills>\d+) "
    r"restarts=(?P<restarts>\d+)\) wall=(?P<wall>[\d.]+)s"
)
EVENTS = 10_000
KILLS = 6
TOPIC = "claimed"
GROUP = "workers"


def run_chaos(*args: str) -> tuple[dict[str, int], str]:
    """Run the chaos script; return the counts of its line and its stderr."""
    result = subprocess.run(
        [sys.executable, str(CHAOS), *args],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    match = LINE.search(result.stdout)
    assert match is not None, f"no result line:\n{result.stdout}\n{result.stderr}"
    counts = {k: int(float(v)) for k, v in match.groupdict().items()}
    return counts, f"{match.group(0)}\n{result.stderr}"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_no_published_event_is_lost_under_kills_cuts_and_a_restart() -> None:
    counts, report = run_chaos(
        "--quick", "--events", str(EVENTS), "--kills", str(KILLS), "--seed", "3"
    )

    assert counts["lost"] == 0, report
    assert counts["published"] == EVENTS, report
    assert counts["handled"] == EVENTS, report
    assert counts["restarts"] >= 1, report
    assert counts["kills"] >= KILLS, report
    assert counts["client_kills"] >= 1, report
    assert counts["faults"] == (
        counts["kills"] + counts["client_kills"] + counts["restarts"]
    )


class CuttingProxy:
    """A TCP proxy to Redis that drops the first connection sending ``word``."""

    def __init__(self, upstream_port: int, word: bytes) -> None:
        self.upstream_port = upstream_port
        self.word = word
        self.cuts = 0

    async def serve(self, *, task_status: TaskStatus[int]) -> None:
        """Accept connections until cancelled; report the port once listening."""
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            port: int = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started(port)
            await listener.serve(self._relay)

    async def _relay(self, client: SocketStream) -> None:
        upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
        async with client, upstream, anyio.create_task_group() as pipes:
            pipes.start_soon(self._pipe, upstream, client, False, pipes.cancel_scope)
            await self._pipe(client, upstream, True, pipes.cancel_scope)

    async def _pipe(
        self,
        source: SocketStream,
        sink: SocketStream,
        watch: bool,
        scope: anyio.CancelScope,
    ) -> None:
        try:
            async for chunk in source:
                if watch and self.cuts == 0 and self.word in chunk:
                    self.cuts += 1
                    break

                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

        # Either side gone, or the cut: both connections close.
        scope.cancel()


async def test_entries_claimed_just_before_a_connection_cut_are_still_handled(
    own_redis_server: RedisServer,
) -> None:
    r = own_redis_server.client()
    key = stream_key(TOPIC)
    r.xgroup_create(key, GROUP, id="0", mkstream=True)
    for n in range(5):
        r.xadd(key, {"data": json.dumps({"event_id": f"e{n}"})})

    # Read by a consumer that then died: pending, and claimable after 1 s.
    r.xreadgroup(GROUP, "dead", {key: ">"})
    proxy = CuttingProxy(own_redis_server.port, b"XPENDING")
    handled: list[str] = []

    async def handle(topic: str, event: dict[str, str]) -> None:
        handled.append(event["event_id"])

    # Waits end quietly; the assertions come after the task group, so that
    # a failure is not wrapped in an exception group.
    async with anyio.create_task_group() as tasks:
        port = await tasks.start(proxy.serve)
        subscriber = EventSubscriber(
            f"redis://127.0.0.1:{port}/0",
            transport="stream",
            group=GROUP,
            consumer="alive",
            claim_min_idle=1,
            claim_interval=0.2,
            block_seconds=0.5,
            reconnect_backoff_cap=0.5,
        )
        subscriber.on(TOPIC)(handle)
        async with subscriber:
            with anyio.move_on_after(15):
                await wait_until(lambda: not r.xpending(key, GROUP)["pending"], 60)

        tasks.cancel_scope.cancel()

    pending = r.xpending_range(key, GROUP, "-", "+", 10)
    r.close()
    assert proxy.cuts == 1
    assert sorted(handled) == [f"e{n}" for n in range(5)], pending
    assert pending == []
