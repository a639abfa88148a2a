"""A small HTTP/1.1 server for ``/metrics`` and ``/healthz``, on anyio.

It answers one GET (or HEAD) per connection and closes it; that is all a
Prometheus scrape or a health probe needs, and nothing outlives the block.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Self, cast

import anyio
from anyio.abc import SocketAttribute
from anyio.streams.buffered import BufferedByteReceiveStream
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import ByteStream, SocketListener, SocketStream, TaskGroup
    from anyio.streams.stapled import MultiListener

    from redis_events.metrics import Metrics

__all__ = ["MetricsServer"]

logger = logging.getLogger("redis_events.metrics")

_MAX_REQUEST = 8192
# A client gets this long to send its request line and headers.
_REQUEST_TIMEOUT = 5.0
# ... and this long to read the answer, once the kernel's buffers are full.
_ANSWER_TIMEOUT = 30.0
# The pause after a failed accept, until connections close and free a file.
_ACCEPT_RETRY = 0.5
_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class MetricsServer:
    """Serve ``metrics`` over HTTP while the ``async with`` block runs."""

    def __init__(self, metrics: Metrics, *, host: str, port: int) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._listener: MultiListener[SocketStream] | None = None
        self._task_group: TaskGroup | None = None
        self.port = 0

    async def __aenter__(self) -> Self:
        listener = await anyio.create_tcp_listener(
            local_host=self._host, local_port=self._port
        )
        self._listener = listener
        self.port = listener.extra(SocketAttribute.local_port)
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        for each in listener.listeners:
            # create_tcp_listener makes one socket listener per address.
            task_group.start_soon(
                self._accept, cast("SocketListener", each), task_group
            )

        self._task_group = task_group
        logger.info("Serving /metrics and /healthz on %s:%d", self._host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group, listener = self._task_group, self._listener
        self._task_group = self._listener = None
        try:
            if task_group is not None:
                task_group.cancel_scope.cancel()
                await task_group.__aexit__(None, None, None)
        finally:
            if listener is not None:
                with anyio.CancelScope(shield=True):
                    await listener.aclose()

    async def _accept(self, listener: SocketListener, task_group: TaskGroup) -> None:
        # Not listener.serve(): its accept error (EMFILE when clients hold
        # every file descriptor) would end this task group, and with it the
        # block the server runs around: the subscriber itself.
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                logger.warning(
                    "Could not accept a metrics connection (%s); retrying",
                    exc.strerror or type(exc).__name__,
                )
                await anyio.sleep(_ACCEPT_RETRY)
                continue

            task_group.start_soon(self._answer, stream)

    async def _answer(self, stream: ByteStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(_REQUEST_TIMEOUT):
                    head = await BufferedByteReceiveStream(stream).receive_until(
                        b"\r\n\r\n", _MAX_REQUEST
                    )
            except (
                TimeoutError,
                anyio.IncompleteRead,
                anyio.DelimiterNotFound,
                anyio.BrokenResourceError,
                anyio.EndOfStream,
            ):
                return

            method, path = _request_line(head)
            try:
                status, content_type, body = await self._respond(method, path)
            except Exception:
                logger.exception("Could not answer %s %s", method, path)
                status, content_type, body = 500, "text/plain", b"internal error\n"

            header = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            try:
                with anyio.fail_after(_ANSWER_TIMEOUT):
                    await stream.send(header if method == "HEAD" else header + body)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                logger.debug("A metrics client left before its answer")
            except TimeoutError:
                # A client that stops reading would otherwise hold this
                # connection (and a file descriptor) for good.
                logger.warning(
                    "A metrics client did not read its answer within %s s; "
                    "closed the connection",
                    _ANSWER_TIMEOUT,
                )

    async def _respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        if path not in {"/metrics", "/healthz"}:
            return 404, "text/plain; charset=utf-8", b"try /metrics or /healthz\n"

        if method not in {"GET", "HEAD"}:
            return 405, "text/plain; charset=utf-8", b"only GET and HEAD\n"

        if path == "/metrics":
            await self._metrics.refresh()
            return 200, CONTENT_TYPE_LATEST, self._metrics.render()

        healthy, report = await self._metrics.health()
        body = json.dumps(report).encode() + b"\n"
        return (200 if healthy else 503), "application/json", body


def _request_line(head: bytes) -> tuple[str, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3:
        return "", ""

    return parts[0], parts[1].split("?", 1)[0]
