"""Print events for a person (rich) or for a pipe (one JSON object a line).

Every event is printed through ``plain``, so secrets are redacted; an entry
that cannot be decoded is printed with its reason, never with its bytes.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.json import JSON
from rich.text import Text

from redis_events.cli._common import closed_output, plain

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from redis_events.codec import DecodedEvent

__all__ = ["EventPrinter"]


class EventPrinter:
    """Write events to stdout, pretty or as JSON lines, flushing each one."""

    def __init__(self, *, json_lines: bool) -> None:
        self.json_lines = json_lines
        self.printed = 0
        # Markup and highlighting off: topic names and event fields are data,
        # and a "[" in them must not be read as a style.
        self._console = _Console(highlight=False, markup=False, soft_wrap=True)

    def event(
        self,
        topic: str,
        event: DecodedEvent,
        *,
        entry_id: str | None = None,
        pattern: str | None = None,
        note: str | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """Print one decoded event, secrets redacted.

        ``note`` is shown to a person; ``fields`` go into the JSON object.
        """
        data = plain(event)
        if self.json_lines:
            record = _where(topic, entry_id, pattern) | dict(fields or {})
            self._line(record | {"event": data})
            return

        header = Text()
        header.append(_when(data), style="dim")
        header.append(f"  {_shown(topic)}", style="bold cyan")
        header.append(f"  {_shown(data.get('event_type', '-'))}", style="bold")
        if entry_id is not None:
            header.append(f"  entry {_shown(entry_id)}", style="dim")

        if pattern is not None:
            header.append(f"  (pattern {_shown(pattern)})", style="dim")

        if note is not None:
            header.append(f"  {note}", style="green")

        with _writing():
            self._console.print(header)
            self._console.print(JSON.from_data(data, indent=2, default=str))
            self._done()

    def undecodable(
        self,
        topic: str,
        reason: str,
        *,
        entry_id: str | None = None,
        pattern: str | None = None,
    ) -> None:
        """Print an entry that is not a valid event, with the reason only."""
        if self.json_lines:
            self._line(_where(topic, entry_id, pattern) | {"error": reason})
            return

        line = Text()
        line.append(_when({}), style="dim")
        line.append(f"  {_shown(topic)}", style="bold cyan")
        if entry_id is not None:
            line.append(f"  entry {_shown(entry_id)}", style="dim")

        line.append(f"  undecodable: {_shown(reason)}", style="bold red")
        with _writing():
            self._console.print(line)
            self._done()

    def _line(self, record: dict[str, Any]) -> None:
        with _writing():
            click.echo(json.dumps(record, default=str, ensure_ascii=False))
            self._done()

    def _done(self) -> None:
        self.printed += 1
        # A pipe is block-buffered: flush so that each event leaves at once.
        self._console.file.flush()


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich exits with code 1 here; a closed pipe is a normal end for us
        # (see OutputClosedError), and it must end the command's own way.
        self.quiet = True
        raise closed_output()


@contextmanager
def _writing() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise closed_output() from None


def _shown(value: object) -> str:
    """Return ``value`` as text with control characters escaped (\\x1b).

    Channel names (matched by a pattern) and event fields come from whoever
    publishes: raw, an escape sequence would reach the operator's terminal.
    """
    text = str(value)
    if text.isprintable():
        return text

    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _where(topic: str, entry_id: str | None, pattern: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {"topic": topic}
    if entry_id is not None:
        record["entry_id"] = entry_id

    if pattern is not None:
        record["pattern"] = pattern

    return record


def _when(data: dict[str, Any]) -> str:
    """Return the event's own time to the second, else the time now (UTC)."""
    stamp = data.get("timestamp")
    if isinstance(stamp, str):
        try:
            moment = datetime.fromisoformat(stamp)
        except ValueError:
            pass
        else:
            return moment.strftime("%Y-%m-%d %H:%M:%S")

    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
