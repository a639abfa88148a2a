"""Counting what a failover costs: events acknowledged, handled, lost, repeated.

A test publishes numbered events and records every number a handler saw.
Events whose publish returned are *acknowledged*. A fence (a write and
``WAIT 1`` on the master's own connection) proves everything written before
it reached the replica, so fenced events must never be lost; events
acknowledged without a fence may be lost to asynchronous replication when
the master dies, and are counted, not hidden.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.cluster_servers import _command

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.redis_server import RedisServer

__all__ = ["Ledger", "fence"]

logger = logging.getLogger("tests.failover")


def fence(master: RedisServer, key: str) -> int:
    """Write ``key`` on ``master`` and wait for a replica to have it.

    Returns:
        How many replicas acknowledged (``WAIT``); 1 means every earlier
        write of that master reached the replica too.
    """
    client = master.client(single_connection_client=True)
    try:
        _command(client, "SET", key, "fence")
        acknowledged: int = _command(client, "WAIT", "1", "5000")
        return acknowledged
    finally:
        client.close()


@dataclass
class Ledger:
    """Numbers published (by phase) and numbers handled, for one topic."""

    acknowledged: dict[str, set[int]] = field(default_factory=dict)
    handled: Counter[int] = field(default_factory=Counter)

    def ack(self, phase: str, number: int) -> None:
        """Record that the publish of ``number`` returned."""
        self.acknowledged.setdefault(phase, set()).add(number)

    def handle(self, event: dict[str, Any]) -> None:
        """Record a handler call for an event."""
        self.handled[int(event["n"])] += 1

    def all_acknowledged(self) -> set[int]:
        """Every acknowledged number, all phases."""
        return set().union(*self.acknowledged.values())

    def missing(self, phase: str | None = None) -> set[int]:
        """Acknowledged numbers never handled (of one phase, or of all)."""
        numbers = self.all_acknowledged() if phase is None else self.acknowledged[phase]
        return numbers - set(self.handled)

    def report(
        self,
        name: str,
        record_property: Callable[[str, object], None] | None = None,
        **extra: int,
    ) -> dict[str, int]:
        """Log the counts (and attach them to the test report)."""
        counts = {
            "acknowledged": len(self.all_acknowledged()),
            "handled": len(set(self.handled) & self.all_acknowledged()),
            "lost": len(self.missing()),
            "duplicates": sum(n - 1 for n in self.handled.values() if n > 1),
            **{
                f"acknowledged_{phase}": len(numbers)
                for phase, numbers in self.acknowledged.items()
            },
            **extra,
        }
        logger.info("%s: %s", name, counts)
        if record_property is not None:
            for key, value in counts.items():
                record_property(key, value)

        return counts
