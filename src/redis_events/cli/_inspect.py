"""``groups``, ``dead-letters`` and ``top``: look into a running system.

Every command opens one ``EventAdmin`` and prints what it reports; nothing
here talks to Redis directly. Library errors end the command with exit code
1 and the library's message (which says what to do); secrets in dead letters
are redacted by ``DeadLetter.redacted_data``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from redis_events.admin import EventAdmin
from redis_events.cli._common import (
    EXIT_NOT_DONE,
    EXIT_USAGE,
    fail,
    redis_url_option,
    say,
)
from redis_events.cli._common import run as run_command
from redis_events.cli._views import (
    Frame,
    consumers_table,
    groups_table,
    render_frame,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskStatus

    from redis_events.admin import DeadLetter, StreamInfo

__all__ = ["dead_letters", "groups", "top"]

T = TypeVar("T")


def run(redis_url: str | None, work: Callable[[EventAdmin], Awaitable[T]]) -> T:
    """Run ``work`` with a connected admin; library errors end the command.

    As for every command: exit 2 for a bad topic, id or setting, 1 when Redis
    is unreachable or refuses.
    """

    async def main() -> T:
        async with EventAdmin(redis_url) as admin:
            return await work(admin)

    return run_command(main)


def print_json(value: object) -> None:
    """Write ``value`` as indented JSON on stdout."""
    click.echo(json.dumps(value, indent=2, default=str))


@click.command()
@click.argument("topics", nargs=-1, metavar="[TOPIC]...")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@redis_url_option
def groups(topics: tuple[str, ...], as_json: bool, redis_url: str | None) -> None:
    """Show consumer groups: lag, pending entries, consumers and idle times.

    Lag counts entries not yet delivered to the group (Redis 7.0+); pending
    counts entries delivered but not acknowledged. "oldest pending" is the
    idle time of the oldest of them: since it was last delivered or
    refreshed. A running consumer refreshes the entries its handlers hold
    every few seconds, so a large figure means an entry nobody works on.
    Without TOPIC every topic is shown (found with SCAN over the whole
    database).
    """

    async def gather(admin: EventAdmin) -> tuple[list[Any], list[Any]]:
        return await admin.groups(list(topics)), await admin.instances()

    found, instances = run(redis_url, gather)
    if as_json:
        print_json([asdict(g) for g in found])
        return

    console = Console()
    if not found:
        console.print("No consumer groups.")
        return

    console.print(groups_table(found))
    console.print(consumers_table(found, instances))


@click.group("dead-letters")
def dead_letters() -> None:
    """Inspect, requeue or purge a topic's dead letters (streams transport).

    An event lands in redis-events:{TOPIC}:dead when it is not valid or its
    handler kept failing. Each entry keeps the event, the reason, its
    delivery count and its original id.
    """


@dead_letters.command("list")
@click.argument("topic")
@click.option(
    "--count",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="At most this many.",
)
@click.option("--after", metavar="ID", help="Start after this dead-letter id.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (data redacted).")
@redis_url_option
def list_dead_letters(
    topic: str, count: int, after: str | None, as_json: bool, redis_url: str | None
) -> None:
    """List TOPIC's dead letters, oldest first."""

    async def fetch(admin: EventAdmin) -> tuple[list[DeadLetter], StreamInfo]:
        letters = await admin.dead_letters(topic, count=count, after=after)
        [info] = await admin.streams([topic])
        return letters, info

    letters, info = run(redis_url, fetch)
    if as_json:
        print_json([_letter_json(d) for d in letters])
        return

    console = Console()
    table = Table(
        title=f"Dead letters of {topic} ({len(letters)} of {info.dead_letters})",
        title_justify="left",
    )
    for name in ("id", "original id", "count", "dead at (UTC)"):
        table.add_column(name, no_wrap=True)

    table.add_column("reason", overflow="fold")
    for d in letters:
        dead_at = d.dead_at[:19].replace("T", " ")
        table.add_row(d.id, d.original_id, str(d.delivery_count), dead_at, d.reason)

    console.print(table)


@dead_letters.command("show")
@click.argument("topic")
@click.argument("entry_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (data redacted).")
@redis_url_option
def show_dead_letter(
    topic: str, entry_id: str, as_json: bool, redis_url: str | None
) -> None:
    """Show one dead letter of TOPIC with its reason and event (secrets redacted)."""
    letter = run(redis_url, lambda admin: admin.dead_letter(topic, entry_id))
    if letter is None:
        fail(
            f"no dead letter {entry_id} on topic {topic!r}; list them with "
            f"'redis-events dead-letters list {topic}'",
            EXIT_NOT_DONE,
        )

    body = _letter_json(letter)
    if as_json:
        print_json(body)
        return

    console = Console()
    table = Table(show_header=False, box=None)
    for name, value in body.items():
        if name != "data":
            table.add_row(f"[bold]{name}[/bold]", str(value))

    console.print(table)
    console.print_json(json.dumps(body["data"]))


@dead_letters.command("requeue")
@click.argument("topic")
@click.option("--id", "ids", multiple=True, metavar="ID", help="A dead-letter id.")
@click.option("--all", "every", is_flag=True, help="Requeue every dead letter.")
@redis_url_option
def requeue(
    topic: str, ids: tuple[str, ...], every: bool, redis_url: str | None
) -> None:
    """Put dead letters back on TOPIC's stream, to be handled again.

    Each entry is added to the stream as a new entry and removed from the
    dead letters in one step (a Lua script): it is never requeued twice nor
    lost, and a requeue that was cut short can be run again.
    """
    chosen = _choose(ids, every)
    result = run(redis_url, lambda admin: admin.requeue(topic, chosen))
    for old, new in result.requeued.items():
        click.echo(f"requeued {old} as {new}")

    click.echo(f"Requeued {len(result.requeued)} dead letters of {topic}.")
    for entry_id in result.empty:
        say(f"kept {entry_id}: it holds no event to put back", level=logging.WARNING)

    if result.missing:
        missing = ", ".join(result.missing)
        fail(f"not found (already requeued or purged?): {missing}", EXIT_NOT_DONE)


@dead_letters.command("purge")
@click.argument("topic")
@click.option("--id", "ids", multiple=True, metavar="ID", help="A dead-letter id.")
@click.option("--all", "every", is_flag=True, help="Delete every dead letter.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@redis_url_option
def purge(
    topic: str, ids: tuple[str, ...], every: bool, yes: bool, redis_url: str | None
) -> None:
    """Delete dead letters of TOPIC for good (asks first unless --yes).

    Answering no (or no answer: standard input closed) deletes nothing,
    prints "Nothing purged." and exits 1.
    """
    chosen = _choose(ids, every)
    if not yes:
        what = f"{len(ids)} dead letters" if ids else "every dead letter"
        question = f"Delete {what} of {topic}? This cannot be undone"
        try:
            confirmed = click.confirm(question)
        except click.Abort:
            # Ctrl-C or end of input at the prompt.
            confirmed = False

        if not confirmed:
            say("Nothing purged.")
            sys.exit(EXIT_NOT_DONE)

    deleted = run(redis_url, lambda admin: admin.purge(topic, chosen))
    click.echo(f"Deleted {deleted} dead letters of {topic}.")


@click.command()
@click.argument("topics", nargs=-1, metavar="[TOPIC]...")
@click.option(
    "--interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between refreshes (and over which events/s is measured).",
)
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@redis_url_option
def top(
    topics: tuple[str, ...], interval: float, once: bool, redis_url: str | None
) -> None:
    """Watch topics, consumer groups and running instances, refreshed in place.

    Shows events/s per topic (from the stream's entries-added count), lag,
    pending entries and the oldest pending entry's age per group, dead-letter
    counts, and every running subscriber that writes its stats. --once
    measures over one interval, prints that frame and exits. Ctrl-C quits.
    """
    console = Console()

    async def watch(admin: EventAdmin) -> None:
        previous = await _frame(admin, topics, None, interval)
        if once:
            await anyio.sleep(interval)
            console.print(render_frame(await _frame(admin, topics, previous, interval)))
            return

        with Live(render_frame(previous), console=console, auto_refresh=False) as live:
            while True:
                await anyio.sleep(interval)
                previous = await _frame(admin, topics, previous, interval)
                live.update(render_frame(previous), refresh=True)

    async def until_signal() -> None:
        # The signal receiver is in place before the admin connects, so a
        # Ctrl-C or SIGTERM at any moment after that ends the loop cleanly.
        error: Exception | None = None
        async with anyio.create_task_group() as task_group:
            await task_group.start(_cancel_on_signal, task_group.cancel_scope)
            try:
                async with EventAdmin(redis_url) as admin:
                    await watch(admin)
            except Exception as exc:
                # Raised after the task group, so that it is not wrapped in
                # an exception group.
                error = exc
            finally:
                task_group.cancel_scope.cancel()

        if error is not None:
            raise error

    if once:
        run(redis_url, watch)
        return

    try:
        run_command(until_signal)
    except KeyboardInterrupt:
        # Ctrl-C before the signal receiver was installed: still a clean stop.
        sys.exit(0)


async def _cancel_on_signal(
    scope: anyio.CancelScope, *, task_status: TaskStatus[None]
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            scope.cancel()
            return


async def _frame(
    admin: EventAdmin,
    topics: tuple[str, ...],
    previous: Frame | None,
    interval: float,
) -> Frame:
    chosen = list(topics) or await admin.topics()
    frame = Frame(
        streams=await admin.streams(chosen),
        groups=await admin.groups(chosen),
        instances=await admin.instances(),
        url=admin.settings.masked_url,
    )
    if previous is not None:
        elapsed = (frame.taken_at - previous.taken_at).total_seconds() or interval
        before = {s.topic: s.entries_added for s in previous.streams}
        for s in frame.streams:
            old = before.get(s.topic)
            if old is not None and s.entries_added is not None:
                frame.rates[s.topic] = max(0, s.entries_added - old) / elapsed

    return frame


def _choose(ids: tuple[str, ...], every: bool) -> list[str] | None:
    if bool(ids) == every:
        fail("give either --id ID (one or more) or --all", EXIT_USAGE)

    return None if every else list(ids)


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    body = asdict(letter)
    body["data"] = letter.redacted_data()
    return body
