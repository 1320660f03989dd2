"""Where a lane's time went, by test file: `python time_by_file.py LANE.xml [TOP]`.

Reads the JUnit XML that pytest wrote for the lane (`--junitxml`; each test's time there is
its setup, call and teardown together) and prints the files that took the most, with their
test count and their share of the lane: what `--durations` cannot show, a file of many short
tests that adds up."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import defaultdict


def time_by_file(path: str) -> dict[str, tuple[int, float]]:
    """{test file: (tests, seconds)} of one JUnit report."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for case in ET.parse(path).iter("testcase"):
        parts = case.get("classname", "").split(".")
        name = next((p for p in parts if p.startswith("test_")), parts[-1] or "?")
        totals[name][0] += 1
        totals[name][1] += float(case.get("time") or 0.0)
    return {name: (int(n), s) for name, (n, s) in totals.items()}


def table(totals: dict[str, tuple[int, float]], top: int) -> list[str]:
    everything = sum(s for _, s in totals.values()) or 1.0
    rows = sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]
    lines = [f"{'seconds':>8} {'share':>6} {'tests':>5}  file"]
    lines += [f"{s:8.0f} {s / everything:6.1%} {n:5d}  {name}.py" for name, (n, s) in rows]
    return lines


if __name__ == "__main__":
    report, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15
    print("\n".join(table(time_by_file(report), top)))
