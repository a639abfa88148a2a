"""The chaos run's fault injector: CLIENT KILLs, consumer kills, restarts."""

from __future__ import annotations

import random
from contextlib import aclosing
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import anyio
from chaos_model import (
    _MONITOR_LINE,
    BOOK_CLIENT,
    CLAIM_CUTS,
    RESTARTS,
    Names,
    Plan,
    Tally,
    count_handled,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError

from redis_events._keys import stream_key

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from anyio.abc import SocketStream, TaskGroup
    from chaos_processes import Consumer, Server


class Injector:
    """Inject faults at seeded random intervals until the work is nearly done."""

    tasks: TaskGroup

    def __init__(
        self,
        plan: Plan,
        names: Names,
        server: Server | None,
        consumers: list[Consumer],
        tally: Tally,
        url: str,
    ) -> None:
        self.plan, self.names, self.server = plan, names, server
        self.consumers, self.tally = consumers, tally
        self.rng = random.Random(plan.seed)
        self.url = url
        self.cutting = False
        self.client = Redis.from_url(url, client_name=BOOK_CLIENT)
        restarts = plan.restarts if server is not None else 0
        # Redis restarts at spread-out, jittered points of the handled count.
        self.restart_at = sorted(
            plan.events * (k + self.rng.uniform(0.2, 0.8)) / restarts
            for k in range(restarts)
        )

    async def run(self) -> None:
        """Inject until the publisher is done and 90% is handled, then the rest.

        A killed consumer is started again in the background, so other
        faults (and the other consumer's kill) may happen while it is down.
        """
        deadline = anyio.current_time() + self.plan.time_limit
        try:
            async with anyio.create_task_group() as self.tasks:
                while anyio.current_time() < deadline:
                    if await self._nearly_done():
                        break

                    await anyio.sleep(self.rng.uniform(*self.plan.gap))
                    await self._inject()

                # Faults the run asked for and did not get to yet.
                while self.restart_at:
                    self.restart_at.pop(0)
                    await self._restart()

                while self.tally.kills < self.plan.min_kills:
                    await self._kill_consumer()
                    await anyio.sleep(0.1)
        finally:
            await self.client.aclose()

    async def _inject(self) -> None:
        handled = await count_handled(self.client, self.names) or 0
        if self.restart_at and handled >= self.restart_at[0]:
            self.restart_at.pop(0)
            await self._restart()
        elif self.rng.random() < 0.3 or self._kill_due(handled):
            await self._kill_consumer()
        else:
            await self._client_kill()

    def _kill_due(self, handled: int) -> bool:
        # The kills asked for, spread over the run rather than all at its end.
        kills, wanted = self.tally.kills, self.plan.min_kills
        return kills < wanted and handled >= self.plan.events * (kills + 1) / (
            wanted + 2
        )

    async def _nearly_done(self) -> bool:
        handled = await count_handled(self.client, self.names) or 0
        published = len(self.tally.published)
        return self.tally.publisher_done and handled >= 0.9 * published

    async def _restart(self) -> None:
        assert self.server is not None
        how = RESTARTS[self.tally.restarts % len(RESTARTS)]
        await self.server.restart(how, self.rng.uniform(0.2, 1.5))
        self.tally.restarts += 1
        self.tally.restarted_by.append(how)

    async def _kill_consumer(self) -> None:
        running = [c for c in self.consumers if c.running]
        if not running:
            return

        consumer = self.rng.choice(running)
        await consumer.kill()
        self.tally.kills += 1
        # Sometimes back before claim_min_idle, sometimes after the other
        # consumer may have claimed what this one held.
        self.tasks.start_soon(consumer.start, self.rng.uniform(0.1, 3.0))
        if not self.cutting:
            self.cutting = True
            self.tasks.start_soon(self._cut_claims)

    async def _cut_claims(self) -> None:
        """Cut the connection of the XAUTOCLAIMs that take over the kill's work.

        From 1.4 to 3.6 s after a kill, when the entries the killed consumer
        held become claimable (claim_min_idle 2 s after their last refresh),
        each XAUTOCLAIM on this run's stream is seen in MONITOR and its
        connection is killed at once: between the claim and the claimer's
        next command. Raw sockets, so that the cut usually wins that race.
        """
        cuts = 0
        try:
            await anyio.sleep(1.4)
            with anyio.move_on_after(2.2):
                async with await _raw(self.url) as watch, await _raw(self.url) as kill:
                    await watch.send(b"MONITOR\r\n")
                    async with aclosing(_claimers(watch, self.names)) as claimers:
                        async for addr in claimers:
                            await kill.send(_command(b"CLIENT", b"KILL", b"ADDR", addr))
                            await kill.receive()
                            cuts += 1
                            if cuts == CLAIM_CUTS:
                                break
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        finally:
            self.cutting = False
            self.tally.claim_cuts += cuts
            self.tally.client_kills += cuts

    async def _client_kill(self) -> None:
        try:
            clients: list[dict[str, Any]] = await self.client.client_list()
            victims = [
                c["id"]
                for c in clients
                if str(c.get("name", "")).startswith(self.names.client_name)
            ]
            for client_id in victims:
                await self.client.client_kill_filter(_id=client_id)
        except (RedisError, OSError):
            return

        self.tally.client_kills += 1
        self.tally.connections_killed += len(victims)


async def _raw(url: str) -> SocketStream:
    """Open a plain TCP connection to Redis, authenticated as the URL says."""
    parts = urlsplit(url)
    stream = await anyio.connect_tcp(parts.hostname or "127.0.0.1", parts.port or 6379)
    if parts.password:
        user = [unquote(parts.username).encode()] if parts.username else []
        await stream.send(_command(b"AUTH", *user, unquote(parts.password).encode()))
        await stream.receive()

    return stream


def _command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    parts += [b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args]
    return b"".join(parts)


async def _claimers(watch: SocketStream, names: Names) -> AsyncGenerator[bytes, None]:
    """Yield the client address of each XAUTOCLAIM on this run's stream."""
    # Only this run's claims: the server may be shared (--redis-url).
    key = stream_key(names.topic).encode()
    buffer = b""
    while True:
        buffer += await watch.receive()
        *lines, buffer = buffer.split(b"\r\n")
        for line in lines:
            seen = _MONITOR_LINE.match(line)
            if seen and seen["command"].upper() == b"XAUTOCLAIM" and key in line:
                yield seen["addr"]
