"""Import time of ``afs_callbacks`` and of each integration module, over a bare interpreter.

Each import runs in a fresh interpreter, several times; the median is reported minus the
median of a bare ``python -c pass``. Also checks that the core imports no ML framework.
Target: the core well under 100 ms, and no ML framework imported by it.

    python benchmarks/bench_import.py [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from _common import median, parse_args, print_table

FRAMEWORKS = ("torch", "transformers", "keras", "tensorflow", "jax", "pynvml", "lightning")
MODULES = (
    "afs_callbacks",
    "afs_callbacks.integrations.lightning",
    "afs_callbacks.integrations.transformers",
    "afs_callbacks.integrations.keras",
)


def _time(statement: str, runs: int) -> float:
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True, env=env)
        samples.append(time.perf_counter() - start)
    return median(samples)


def main() -> None:
    args = parse_args(__doc__ or "")
    runs = 3 if args.quick else 15
    bare = _time("pass", runs)
    rows = []
    for module in MODULES:
        cost = _time(f"import {module}", runs) - bare
        probe = (
            f"import sys, json, {module}; "
            f"print(json.dumps(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)))"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "KERAS_BACKEND": "torch"},
        ).stdout
        rows.append((module, cost * 1000, ", ".join(json.loads(out.strip().splitlines()[-1])) or "none"))
    if args.json:
        print(json.dumps([dict(zip(("module", "ms", "frameworks"), r)) for r in rows]))
        return
    print_table(
        f"Import time over a bare interpreter (median of {runs}; bare start {bare * 1000:.0f} ms)",
        ("module", "ms", "ML frameworks imported"),
        rows,
    )


if __name__ == "__main__":
    main()
