"""``redis-events``: the operators' command line.

Every command takes ``--redis-url`` (or ``REDIS_URL`` / ``REDIS_EVENTS_REDIS_URL``
from the environment) and the library's other settings from the environment.
Commands are defined in the modules of this package and registered on
``main`` below.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click
from click.exceptions import NoArgsIsHelpError

from redis_events.cli._common import EXIT_NOT_DONE, fail
from redis_events.cli._logs import LogOptions, logging_options

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


class _Main(click.Group):
    """The command group, whose usage errors look like every other error.

    click prints its own errors as a usage block ending in ``Error: ...``;
    here they are one ``redis-events COMMAND: error: ...`` line (a JSON
    record with ``--log-format json``) with a pointer to ``--help``.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)

        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except NoArgsIsHelpError as exc:
            # A group named without a command: its help, as click shows it.
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx is not None else "redis-events"
            message = exc.format_message().rstrip(".")
            fail(f"{message}; see '{path} --help'", exc.exit_code, context=exc.ctx)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            fail("interrupted", EXIT_NOT_DONE)

        # Without standalone mode click returns --help's and --version's
        # exit code instead of exiting.
        sys.exit(result if isinstance(result, int) else 0)


@click.group(
    cls=_Main,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
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
