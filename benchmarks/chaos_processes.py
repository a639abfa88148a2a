"""The chaos run's processes: a restartable redis-server and the consumers.

A consumer is this directory's chaos.py run with ``--worker``: ``consume()``
below, configured through its environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from typing import IO, TYPE_CHECKING

import anyio
from chaos_model import (
    BOOK_CLIENT,
    CONSUMER_SETTINGS,
    RECORD_PATIENCE,
    SCRIPT,
    STOP_TIMEOUT,
    Names,
    Plan,
    answers,
    fails,
    poll,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError

from redis_events import EventSubscriber, current_delivery
from redis_events.exceptions import RedisUnavailableError

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import Process


class Server:
    """A redis-server with AOF on every write, restartable on its port."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed (see scripts/ensure-redis-server)")

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]

        self.command = [
            binary,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--dir", str(directory), "--logfile", str(directory / "redis.log")),
            *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
        ]
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start the server and wait until it answers PING (AOF loaded)."""
        self.process = await anyio.open_process(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = Redis.from_url(self.url, client_name=BOOK_CLIENT)
        try:
            with anyio.fail_after(30):
                await poll(lambda: answers(client), 0.05)
        finally:
            await client.aclose()

    async def restart(self, how: str, downtime: float) -> None:
        """Stop (SIGTERM, SHUTDOWN or SIGKILL), stay down ``downtime`` s, start."""
        assert self.process is not None
        if how == "SHUTDOWN":
            client = Redis.from_url(self.url, client_name=BOOK_CLIENT)
            try:
                await client.shutdown()
            finally:
                await client.aclose()
        elif how == "SIGKILL":
            # A crash: only what appendfsync always already wrote survives.
            self.process.kill()
        else:
            self.process.terminate()

        with anyio.fail_after(30):
            await self.process.wait()

        await anyio.sleep(downtime)
        await self.start()

    async def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return

        process.terminate()
        with anyio.move_on_after(10):
            await process.wait()
            return

        process.kill()
        await process.wait()


class Consumer:
    """One consumer process, started again under the same name after a kill."""

    def __init__(self, name: str, directory: Path, env: dict[str, str]) -> None:
        self.name = name
        self.directory = directory
        self.env = env | {"REDIS_EVENTS_CONSUMER": name}
        self.process: Process | None = None
        self.runs = 0

    @property
    def stdout_path(self) -> Path:
        return self.directory / f"{self.name}-{self.runs}.out"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, delay: float = 0.0) -> None:
        """Start the process (again) after ``delay`` seconds."""
        await anyio.sleep(delay)
        self.runs += 1
        stdout, stderr = self._files()
        try:
            self.process = await anyio.open_process(
                [sys.executable, str(SCRIPT), "--worker"],
                stdout=stdout,
                stderr=stderr,
                env=self.env,
            )
        finally:
            stdout.close()
            stderr.close()

    async def kill(self) -> None:
        """SIGKILL the process, as a crash would, and reap it."""
        if self.process is not None and self.running:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> dict[str, int]:
        """SIGTERM; return the stats it printed ({} when it had to be killed)."""
        if self.process is None or self.process.returncode is not None:
            return {}

        self.process.terminate()
        with anyio.move_on_after(STOP_TIMEOUT):
            await self.process.wait()

        if self.process.returncode is None:
            await self.kill()
            return {}

        lines = (await anyio.Path(self.stdout_path).read_text()).splitlines()
        stats: dict[str, int] = json.loads(lines[-1]) if lines else {}
        return stats

    def _files(self) -> tuple[IO[bytes], IO[bytes]]:
        log = self.directory / f"{self.name}-{self.runs}.log"
        return self.stdout_path.open("wb"), log.open("wb")


def consumer_environment(plan: Plan, names: Names, url: str) -> dict[str, str]:
    """The environment of a consumer process, without inherited Redis settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "REDIS_URL" and not name.startswith("REDIS_EVENTS_")
    }
    return (
        env
        | CONSUMER_SETTINGS
        | {
            "PYTHONUNBUFFERED": "1",
            "REDIS_EVENTS_REDIS_URL": url,
            "REDIS_EVENTS_CLIENT_NAME": names.client_name,
            "CHAOS_TOPIC": names.topic,
            "CHAOS_HANDLED": names.handled,
            "CHAOS_FAIL_EVERY": str(plan.fail_every),
        }
    )


async def consume() -> dict[str, int]:
    """Be one consumer: record each handled event until SIGTERM."""
    topic, handled = os.environ["CHAOS_TOPIC"], os.environ["CHAOS_HANDLED"]
    every = int(os.environ["CHAOS_FAIL_EVERY"])
    subscriber = EventSubscriber()
    book = Redis.from_url(subscriber.settings.redis_url, client_name=BOOK_CLIENT)

    async def record(topic: str, event: object) -> None:
        delivery = current_delivery()
        if delivery.delivery_count == 1 and fails(delivery.event_id or "", every):
            msg = "injected failure of a first delivery"
            raise RuntimeError(msg)

        deadline = anyio.current_time() + RECORD_PATIENCE
        while True:
            try:
                async with book.pipeline(transaction=False) as pipe:
                    pipe.hincrby(handled, delivery.event_id or "?", 1)
                    pipe.hincrby(f"{handled}:deliveries", delivery.delivery_count)
                    await pipe.execute()

                return
            except (RedisError, OSError):
                # Redis is restarting: retry here, so that the handler fails
                # (and the entry is retried) only for a long outage.
                if anyio.current_time() > deadline:
                    raise

                await anyio.sleep(0.1)

    subscriber.on(topic)(record)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tasks:
            stopping = anyio.Event()

            async def stop_on_signal() -> None:
                async for _ in signals:
                    stopping.set()
                    await subscriber.stop()

            tasks.start_soon(stop_on_signal)
            await _run_until_stopped(subscriber, stopping)
            tasks.cancel_scope.cancel()

    await book.aclose()
    return subscriber.get_stats()


async def _run_until_stopped(
    subscriber: EventSubscriber, stopping: anyio.Event
) -> None:
    # run() raises when Redis is unreachable at start (a restart under way).
    while not stopping.is_set():
        try:
            await subscriber.run()
            return
        except RedisUnavailableError:
            await anyio.sleep(0.2)
