"""Shared helpers for the benchmark scripts: arguments, tables, targets, a temp state dir.

Benchmarks print ratios and figures; they never assert a wall-clock time (that belongs
to no test). Each script has a ``--quick`` mode that CI runs to keep it working, and a
``--json`` mode (one JSON object on the last line of stdout: its tables, its target
checks, its raw figures) that ``run_all.py`` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """``--quick`` (a few seconds, for CI) and ``--json`` (machine-readable output), plus
    whatever ``extra`` adds to the parser."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to keep it working")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


@dataclass(frozen=True)
class Target:
    """One figure checked against the issue's target; ``met`` is None when the figure
    cannot decide (within the noise of the measurement, or not measurable here)."""

    what: str
    goal: str
    measured: str
    met: bool | None
    note: str = ""


class Report:
    """A benchmark's output: tables printed as they come (or kept for ``--json``), target
    checks, and raw figures. Call :meth:`finish` once at the end."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name = name
        self.as_json = bool(args.json)
        self.quick = bool(args.quick)
        self.tables: list[dict[str, Any]] = []
        self.targets: list[Target] = []

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Add (and, unless ``--json``, print) a table."""
        self.tables.append({"title": title, "header": list(header), "rows": [list(r) for r in rows]})
        if not self.as_json:
            print_table(title, header, rows)

    def target(self, what: str, goal: str, measured: str, met: bool | None, note: str = "") -> None:
        """Record a figure checked against its target."""
        self.targets.append(Target(what, goal, measured, met, note))

    def finish(self, **figures: Any) -> None:
        """Print the target checks, or everything as one JSON line with ``--json``."""
        if self.as_json:
            payload = {
                "benchmark": self.name,
                "quick": self.quick,
                "tables": self.tables,
                "targets": [asdict(t) for t in self.targets],
                "figures": figures,
            }
            print(json.dumps(payload, default=str))
            return
        if self.targets:
            print_table("Targets", ("what", "target", "measured", "met"), target_rows(self.targets))


def target_rows(targets: Sequence[Target]) -> list[tuple[str, str, str, str]]:
    """Targets as table rows; "met" reads yes, NO, or "?" when the figure cannot decide
    (within the measurement's noise, or not measurable here)."""
    verdict = {True: "yes", False: "NO", None: "?"}
    return [
        (t.what, t.goal, t.measured, verdict[t.met] + (f" ({t.note})" if t.note else "")) for t in targets
    ]


def fresh_state_dir() -> str:
    """A new AFS_STATE_DIR so runs do not see each other's outbox."""
    path = tempfile.mkdtemp(prefix="afs-bench-")
    os.environ["AFS_STATE_DIR"] = path
    return path


def load_average() -> str:
    """The machine's load now, for a table's title: a figure taken under load says more
    about the neighbours than about what is measured."""
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


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
