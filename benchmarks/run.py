"""Measure redis-events side by side with the same job on raw redis-py.

Run from the project root::

    python benchmarks/run.py               # 3 rounds, full sizes
    python benchmarks/run.py --quick       # 1 round, small sizes, under 1 min
    python benchmarks/run.py --json out.json --redis-url redis://127.0.0.1:6380/0

Without ``--redis-url`` a ``redis-server`` is started on a free loopback port
(no persistence) and stopped by pid at the end. Each case runs redis-events
("ours") and a hand-written redis-py equivalent ("raw") in the same run,
alternating ours, raw, ours, raw, ...; with FastStream installed (the
``bench`` extra) the cases it can do also run a FastStream side after raw.
The table shows medians over rounds. The exit status is 1 when any event
was lost.

The cases live in ``cases_*.py``; ``harness.py`` runs them, ``feeders.py``
sends their events from a separate process, ``report.py`` prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import cases_memory
import cases_publish
import cases_pubsub
import cases_streams
from harness import FULL, QUICK, own_server, run_cases
from report import describe, document, print_report, summarize

if TYPE_CHECKING:
    from harness import Case


def all_cases() -> tuple[Case, ...]:
    """Return every case, with its FastStream side where FastStream is installed."""
    cases = (
        *cases_publish.CASES,
        *cases_pubsub.CASES,
        *cases_streams.CASES,
        *cases_memory.CASES,
    )
    if find_spec("faststream") is None:
        return cases

    # Imported only here: without the bench extra there is no faststream.
    import cases_faststream

    return tuple(cases_faststream.attach(case) for case in cases)


CASES = all_cases()


def parse_arguments() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="use this server instead of our own")
    parser.add_argument("--rounds", type=int, help="rounds per case (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 round, small sizes")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--case",
        action="append",
        choices=[case.key for case in CASES],
        help="run only this case (repeatable)",
    )
    return parser.parse_args()


def main() -> int:
    """Run the benchmarks and print the table."""
    arguments = parse_arguments()
    sizes = QUICK if arguments.quick else FULL
    rounds = arguments.rounds or (1 if arguments.quick else 3)
    own = not arguments.redis_url
    cases = []
    for case in CASES:
        if arguments.case and case.key not in arguments.case:
            continue

        if case.server_config and not own:
            print(
                f"skipped {case.name}: it changes the server's configuration",
                file=sys.stderr,
            )
        else:
            cases.append(case)

    with ExitStack() as stack:
        url = arguments.redis_url or stack.enter_context(own_server())
        meta = describe(url, sizes, rounds, cases, own=own)
        results = anyio.run(run_cases, url, sizes, rounds, cases)

    summaries = summarize(results)
    print_report(summaries, meta)
    if arguments.json:
        text = json.dumps(document(summaries, meta), indent=2)
        arguments.json.write_text(text + "\n")

    lost = sum(s.lost or 0 for sides in summaries.values() for s in sides.values())
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
