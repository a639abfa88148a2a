"""``redis-events``: the operators' command line.

Every command takes ``--redis-url`` (or ``REDIS_URL`` / ``REDIS_EVENTS_REDIS_URL``
from the environment) and the library's other settings from the environment.
Commands are defined in the modules of this package and registered on
``main`` below.
"""

from __future__ import annotations

import click

__all__ = ["main"]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="redis-events")
def main() -> None:
    """Publish, follow, inspect and operate events on Redis.

    Connection settings come from --redis-url on each command or from the
    environment (REDIS_URL, REDIS_EVENTS_*), as for the library itself.
    """


# Imported here, after ``main``, so that each command module stays independent
# of the others; registering is the only thing this package does with them.
from redis_events.cli._inspect import dead_letters, groups, top  # noqa: E402  # after main

main.add_command(groups)
main.add_command(dead_letters)
main.add_command(top)
