"""Rich tables of what ``EventAdmin`` reports, shared by ``groups`` and ``top``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.console import Group
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from redis_events.admin import GroupInfo, InstanceInfo, StreamInfo

__all__ = [
    "Frame",
    "age",
    "consumers_table",
    "groups_table",
    "instances_table",
    "render_frame",
    "streams_table",
]

# Counters of an instance shown by ``top``, in this order, under these titles.
INSTANCE_COUNTERS = (
    ("events_received", "recv"),
    ("events_handled", "handled"),
    ("handler_errors", "errors"),
    ("dead_lettered", "dead"),
    ("in_flight", "busy"),
)


@dataclass
class Frame:
    """One view of the system: what ``top`` shows at one moment."""

    streams: list[StreamInfo]
    groups: list[GroupInfo]
    instances: list[InstanceInfo]
    rates: dict[str, float | None] = field(default_factory=dict)
    url: str = ""
    taken_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def age(seconds: float | None) -> str:
    """Return a short human age: ``850ms``, ``12.3s``, ``4m05s``, ``2h10m``."""
    if seconds is None:
        return "-"

    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"

    if seconds < 60:
        return f"{seconds:.1f}s"

    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"

    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def since(iso: str, now: datetime) -> float | None:
    """Return the seconds from an ISO 8601 time to ``now``, if it parses."""
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return None

    return max(0.0, (now - then).total_seconds())


def groups_table(groups: list[GroupInfo]) -> Table:
    """Return one row per consumer group."""
    table = Table(title="Consumer groups", title_justify="left")
    for name in ("topic", "group"):
        table.add_column(name, overflow="fold")

    for name in ("lag", "pending", "oldest pending", "consumers"):
        table.add_column(name, justify="right")

    for g in groups:
        table.add_row(
            g.topic,
            g.group,
            "?" if g.lag is None else str(g.lag),
            str(g.pending),
            age(g.oldest_pending_idle),
            str(len(g.consumers)),
        )

    return table


def consumers_table(groups: list[GroupInfo], instances: list[InstanceInfo]) -> Table:
    """Return one row per consumer, with its instance's counters when it runs.

    An instance's hash counts events over all its topics, not per topic, so
    its total is shown once, on its first row, under a title that says so.
    """
    running = {(i.group, i.consumer): i for i in instances}
    table = Table(
        title="Consumers",
        title_justify="left",
        caption="total handled: the instance's count, all its topics",
        caption_justify="left",
    )
    for name in ("topic", "group", "consumer"):
        table.add_column(name, overflow="fold")

    for name in ("pending", "idle", "total handled", "running"):
        table.add_column(name, justify="right")

    shown: set[tuple[str, str]] = set()
    for g in groups:
        for c in g.consumers:
            instance = running.get((g.group, c.name))
            handled = instance.stats.get("events_handled") if instance else None
            if (g.group, c.name) in shown:
                total = ""
            else:
                shown.add((g.group, c.name))
                total = "-" if handled is None else str(handled)

            table.add_row(
                g.topic,
                g.group,
                c.name,
                str(c.pending),
                age(c.idle),
                total,
                "yes" if instance else "no",
            )

    return table


def streams_table(streams: list[StreamInfo], rates: dict[str, float | None]) -> Table:
    """Return one row per topic: events/s, length, dead letters."""
    table = Table(title="Topics", title_justify="left")
    table.add_column("topic", overflow="fold")
    for name in ("events/s", "length", "added", "dead letters"):
        table.add_column(name, justify="right")

    for s in streams:
        rate = rates.get(s.topic)
        table.add_row(
            s.topic,
            "-" if rate is None else f"{rate:.1f}",
            str(s.length),
            "-" if s.entries_added is None else str(s.entries_added),
            str(s.dead_letters),
        )

    return table


def instances_table(instances: list[InstanceInfo], now: datetime) -> Table:
    """Return one row per running subscriber (from the instance hashes)."""
    table = Table(title="Instances", title_justify="left")
    for name in ("group", "consumer", "transport"):
        table.add_column(name, no_wrap=True)

    table.add_column("topics", overflow="fold")

    for _, title in INSTANCE_COUNTERS:
        table.add_column(title, justify="right")

    table.add_column("seen ago", justify="right", no_wrap=True)
    for i in instances:
        counters = [str(i.stats.get(name, "-")) for name, _ in INSTANCE_COUNTERS]
        table.add_row(
            i.group,
            i.consumer,
            i.transport,
            ", ".join(i.topics),
            *counters,
            age(since(i.last_seen, now)),
        )

    return table


def render_frame(frame: Frame) -> Group:
    """Return everything ``top`` shows for one frame."""
    stamp = frame.taken_at.strftime("%H:%M:%S")
    return Group(
        f"[bold]redis-events top[/bold]  {escape(frame.url)}  {stamp} UTC",
        streams_table(frame.streams, frame.rates),
        groups_table(frame.groups),
        instances_table(frame.instances, frame.taken_at),
    )
