"""``redis-events``: the operators' command line.

Every command takes ``--redis-url`` (or ``REDIS_URL`` / ``REDIS_EVENTS_REDIS_URL``
from the environment) and the library's other settings from the environment.
Commands are defined in the modules of this package and registered on
``main`` below.
"""

from __future__ import annotations

import click

from redis_events.cli._logs import LogOptions, logging_options

__all__ = ["main"]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(package_name="redis-events")
@logging_options
@click.pass_context
def main(context: click.Context, log_level: str, log_format: str) -> None:
    """Publish, follow, inspect and operate events on Redis.

    Connection settings come from --redis-url on each command or from the
    environment (REDIS_URL, REDIS_EVENTS_*), as for the library itself.
    The logging options below go before the command:

    \b
      redis-events --log-format json tail key_submission
    """
    context.obj = LogOptions(
        level=log_level, format="json" if log_format == "json" else "text"
    )


# Imported after ``main`` exists: the command modules only define commands,
# and registering them is all this package does with them.
from redis_events.cli._asyncapi import asyncapi  # noqa: E402
from redis_events.cli._events import processor, publish, replay  # noqa: E402
from redis_events.cli._inspect import dead_letters, groups, top  # noqa: E402
from redis_events.cli._tail import tail  # noqa: E402

main.add_command(asyncapi)
main.add_command(processor)
main.add_command(publish)
main.add_command(replay)
main.add_command(tail)
main.add_command(groups)
main.add_command(dead_letters)
main.add_command(top)
