"""``python -m redis_events.cli``: the ``redis-events`` command line."""

from redis_events.cli import main

main(prog_name="redis-events")
