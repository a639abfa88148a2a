"""The benchmark entry point runs and loses nothing; its timings are not checked.

Figures from this machine are too noisy to assert on (see the README's
Performance section); what a test can hold is that ``benchmarks/run.py
--quick`` works as documented and that neither side lost an event.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

CASES = {
    "publish, awaited",
    "publish_many x100",
    "pub/sub e2e, validated",
    "pub/sub latency 2,000/s",
    "streams e2e, validated, acked",
    "streams backlog drain",
    "streams latency 2,000/s",
    "pub/sub slow handler memory",
    "streams slow handler memory",
}


@pytest.mark.slow
def test_quick_run_writes_every_case_with_both_sides_and_nothing_lost(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        check=False,
    )

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    cases = json.loads(out.read_text())["cases"]
    assert set(cases) == CASES
    for name, case in cases.items():
        for side in ("ours", "raw"):
            assert case[side]["rate"] > 0, (name, side)
            # None where a case does not count losses (publishing, slow handlers).
            assert case[side]["lost"] in (None, 0), (name, side, case[side]["lost"])

        assert case["rate_ratio"] > 0, name

    # The table printed for people carries the same cases and the ratio column.
    assert "ours/raw" in result.stdout
    for name in CASES:
        assert name in result.stdout
