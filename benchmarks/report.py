"""Summaries over rounds, the text table, and the JSON document."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import redis
from harness import new_event, raw_encode

if TYPE_CHECKING:
    from collections.abc import Callable

    from harness import Case, Results, Sample, Sizes


@dataclass
class Summary:
    """One side of one case over all rounds: medians, worst memory, all losses."""

    rate: float
    p50_ms: float | None
    p99_ms: float | None
    lost: int | None
    cpu_us: float
    peak_rss_mb: float
    rss_growth_mb: float
    rates: list[float]
    p99s_ms: list[float]
    rss_growths_mb: list[float]

    @classmethod
    def of(cls, samples: list[Sample]) -> Summary:
        """Summarize the rounds of one side."""
        p50 = [v for s in samples if (v := s.percentile_ms(0.50)) is not None]
        p99 = [v for s in samples if (v := s.percentile_ms(0.99)) is not None]
        losses = [s.lost for s in samples if s.lost is not None]
        growths = [s.rss_growth_mb or 0.0 for s in samples]
        return cls(
            rate=statistics.median(s.rate for s in samples),
            p50_ms=statistics.median(p50) if p50 else None,
            p99_ms=statistics.median(p99) if p99 else None,
            lost=sum(losses) if losses else None,
            cpu_us=statistics.median(s.cpu_us for s in samples),
            peak_rss_mb=max(s.peak_rss_mb for s in samples),
            rss_growth_mb=max(growths),
            rates=[round(s.rate, 1) for s in samples],
            p99s_ms=[round(v, 3) for v in p99],
            rss_growths_mb=[round(v, 1) for v in growths],
        )


# Each case's summaries by side ("ours", "raw", and "faststream" if measured).
Summaries = dict[str, dict[str, Summary]]


def summarize(results: Results) -> Summaries:
    """Summarize every side of every case."""
    return {
        name: {side: Summary.of(samples) for side, samples in sides.items()}
        for name, sides in results.items()
    }


def ratio(ours: float | None, other: float | None) -> float | None:
    """Return ``ours / other`` when both are known."""
    if ours is None or other is None or other == 0:
        return None

    return ours / other


def fixed(value: float | None, spec: str) -> str:
    """Format a number, or "-" when it is unknown."""
    return "-" if value is None else f"{value:{spec}}"


def across(
    summaries: list[Summary | None],
    pick: Callable[[Summary], float | int | None],
    spec: str,
) -> str:
    """Format one figure of every side as ``a / b [/ c]``.

    A side without the figure (or not measured) shows "-"; the cell is a
    single "-" when no side has it.
    """
    values = [pick(summary) if summary else None for summary in summaries]
    if all(value is None for value in values):
        return "-"

    return " / ".join(fixed(value, spec) for value in values)


def header(sides: list[str]) -> list[str]:
    """Return the header row for these sides."""
    names = " / ".join("fs" if side == "faststream" else side for side in sides)
    rates = ["ours ev/s", "raw ev/s", "ours/raw"]
    if "faststream" in sides:
        rates += ["faststream ev/s", "ours/faststream"]

    return [
        "case",
        *rates,
        f"p50 ms {names}",
        f"p99 ms {names}",
        "p99 ours/raw",
        f"lost {names}",
        f"CPU us/event {names}",
        f"peak RSS MB {names}",
        f"RSS growth MB {names}",
    ]


def measured_sides(summaries: Summaries) -> list[str]:
    """Return the sides any case measured, in column order."""
    sides = ["ours", "raw"]
    if any("faststream" in case for case in summaries.values()):
        sides.append("faststream")

    return sides


def table_rows(summaries: Summaries) -> list[list[str]]:
    """Return the table, header first.

    Where FastStream was measured for some cases, a case it was not
    measured for shows "-" in its FastStream cells.
    """
    sides = measured_sides(summaries)
    rows = [header(sides)]
    for name, case in summaries.items():
        ours, raw = case["ours"], case["raw"]
        row = [
            name,
            f"{ours.rate:,.0f}",
            f"{raw.rate:,.0f}",
            fixed(ratio(ours.rate, raw.rate), ".2f"),
        ]
        if "faststream" in sides:
            other = case.get("faststream")
            row += [
                fixed(other.rate if other else None, ",.0f"),
                fixed(ratio(ours.rate, other.rate) if other else None, ".2f"),
            ]

        present = [case.get(side) for side in sides]
        row += [
            across(present, lambda s: s.p50_ms, ".3f"),
            across(present, lambda s: s.p99_ms, ".3f"),
            fixed(ratio(ours.p99_ms, raw.p99_ms), ".2f"),
            across(present, lambda s: s.lost, "d"),
            across(present, lambda s: s.cpu_us, ".1f"),
            across(present, lambda s: s.peak_rss_mb, ".1f"),
            across(present, lambda s: s.rss_growth_mb, ".1f"),
        ]
        rows.append(row)

    return rows


def render(rows: list[list[str]]) -> str:
    """Lay the rows out as an aligned text table."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))

    return "\n".join(lines)


GENERAL_NOTES = (
    "both sides: RESP2 (protocol=2), hiredis, the library's KeySubmitted; raw "
    "publishers serialize it with model_dump_json, raw consumers validate "
    "with KeySubmitted.model_validate_json",
    "rates, latencies and CPU are medians over rounds; lost is the sum; "
    "memory figures are the worst round",
    "CPU us/event: main-thread CPU time of the measuring process per event "
    "(the feeder process is not counted)",
    "peak RSS: the process's peak during one side (the kernel's mark is reset "
    "before each side); RSS growth: that peak minus the RSS before the side, "
    "except in the slow-handler cases",
)


def faststream_version(cases: list[Case]) -> str | None:
    """Return FastStream's version if any case measures it, else None."""
    if not any(case.faststream for case in cases):
        return None

    return version("faststream")


def describe(
    url: str, sizes: Sizes, rounds: int, cases: list[Case], *, own: bool
) -> dict[str, Any]:
    """Return what the reader needs to reproduce the run."""
    client = redis.Redis.from_url(url)
    server = client.info("server")
    client.close()
    notes = list(GENERAL_NOTES)
    for case in cases:
        notes += [note for note in case.notes if note not in notes]

    timed = "; ".join(f"{c.name}: {c.latency_of}" for c in cases if c.latency_of)
    if timed:
        notes.append(f"latency is measured {timed}")

    return {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "redis_server": server.get("redis_version"),
        "redis_py": version("redis"),
        "hiredis": version("hiredis"),
        "pydantic": version("pydantic"),
        "redis_events": version("redis-events"),
        "faststream": faststream_version(cases),
        "server": "own, --save '' --appendonly no" if own else "given by --redis-url",
        "rounds": rounds,
        "sizes": asdict(sizes),
        "event_bytes": len(raw_encode(new_event())),
        "notes": notes,
    }


def print_report(summaries: Summaries, meta: dict[str, Any]) -> None:
    """Print the table and the notes that say how it was measured."""
    print(render(table_rows(summaries)))
    for note in meta["notes"]:
        print(f"- {note}")

    print(
        f"- {meta['machine']}, Python {meta['python']}, "
        f"Redis {meta['redis_server']}, redis-py {meta['redis_py']}, "
        f"hiredis {meta['hiredis']}, pydantic {meta['pydantic']}, "
        f"{meta['event_bytes']}-byte events, {meta['rounds']} round(s)"
    )
    if meta["faststream"]:
        print(f"- FastStream {meta['faststream']} (the bench extra)")

    sizes = ", ".join(f"{name} {value:,}" for name, value in meta["sizes"].items())
    print(f"- sizes: {sizes} (slow_seconds: the slow-handler run time)")


def document(summaries: Summaries, meta: dict[str, Any]) -> dict[str, Any]:
    """Return the results as a JSON-ready document."""
    cases = {}
    for name, case in summaries.items():
        ours, raw = case["ours"], case["raw"]
        entry: dict[str, Any] = {
            side: asdict(summary) for side, summary in case.items()
        }
        entry["rate_ratio"] = ratio(ours.rate, raw.rate)
        entry["p99_ratio"] = ratio(ours.p99_ms, raw.p99_ms)
        if other := case.get("faststream"):
            entry["faststream_rate_ratio"] = ratio(ours.rate, other.rate)
            entry["faststream_p99_ratio"] = ratio(ours.p99_ms, other.p99_ms)

        cases[name] = entry

    return {"meta": meta, "cases": cases}
