"""Start, restart, freeze and stop real ``redis-server`` processes for tests.

Each server listens on a free loopback port and is stopped by pid; the
machine's shared Redis on 6379 is never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["RedisServer", "free_port"]

_START_TIMEOUT = 10.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process owned by a test."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        args: tuple[str, ...] = ("--save", "", "--appendonly", "no"),
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            msg = "redis-server is not installed; .ci/run and scripts/test install it"
            raise RuntimeError(msg)

        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The pid of the running server process."""
        assert self.process is not None, "server not started"
        return self.process.pid

    def client(self, **options: object) -> redis.Redis:
        """Return a plain synchronous client for looking at server state."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=5,
            decode_responses=True,
            **options,  # type: ignore[arg-type]
        )

    def start(self) -> Self:
        """Start the server and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.log_path),
            *self.args,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and reap it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return

        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def shutdown_nosave(self) -> None:
        """Ask the server to shut down without saving, and reap it."""
        process, self.process = self.process, None
        if process is None:
            return

        # No retries: the server going away is the point, not an error.
        client = self.client(retry=Retry(NoBackoff(), 0))
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass
        finally:
            client.close()

        process.wait(timeout=10)

    def restart(self) -> None:
        """Start the server again on the same port with the same arguments."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP the server: sockets stay open, nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen server."""
        os.kill(self.pid, signal.SIGCONT)

    def log_text(self) -> str:
        """Return what the server wrote to its log file."""
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        client = self.client()
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    msg = f"redis-server exited at start: {self.log_text()[-2000:]}"
                    raise RuntimeError(msg)

                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass

                if time.monotonic() > deadline:
                    msg = f"redis-server on port {self.port} did not answer PING"
                    raise RuntimeError(msg)

                time.sleep(0.05)
        finally:
            client.close()
