"""Shared helpers for the benchmark scripts: argument parsing, tables, a temp state dir.

Benchmarks print ratios and figures; they never assert a wall-clock time (that belongs
to no test). Each script has a ``--quick`` mode that CI runs to keep it working.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Sequence


def parse_args(description: str) -> argparse.Namespace:
    """``--quick`` (a few seconds, for CI) and ``--json`` (machine-readable output)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, to keep it working")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    return parser.parse_args()


def fresh_state_dir() -> str:
    """A new AFS_STATE_DIR so runs do not see each other's outbox."""
    path = tempfile.mkdtemp(prefix="afs-bench-")
    os.environ["AFS_STATE_DIR"] = path
    return path


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain-text table: the title, the header, the rows, aligned."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
