"""Import time of ``afs_callbacks`` and of each integration module, over a bare interpreter.

Each import runs in a fresh interpreter, several times; the median is reported. Inside
that interpreter the framework an integration needs is imported first, then the
integration, so the table separates the framework's own import from the adapter's, and
lists the ML frameworks the adapter pulls in beyond its own. The bare interpreter's start
is shown for scale (it is not part of any figure).
Target: the core well under 100 ms, and no ML framework imported by it.

    python benchmarks/bench_import.py [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from _common import Report, median, parse_args

FRAMEWORKS = ("torch", "transformers", "keras", "tensorflow", "jax", "pynvml", "lightning", "matplotlib")
#: Module, and the statement that imports the framework it builds on (None for the core).
MODULES = (
    ("afs_callbacks", None),
    ("afs_callbacks.integrations.lightning", "from lightning.pytorch.callbacks import Callback"),
    ("afs_callbacks.integrations.transformers", "from transformers import TrainerCallback"),
    ("afs_callbacks.integrations.keras", "import keras"),
)
CORE_TARGET_MS = 100.0

_PROBE = """
import json, sys, time
def loaded():
    return {{m for m in {frameworks!r} if m in sys.modules}}
start = time.perf_counter()
try:
    {base}
except ImportError as error:
    print(json.dumps({{"missing": error.name}}))
    sys.exit()
middle = time.perf_counter()
before = loaded()
import {module}
end = time.perf_counter()
print(json.dumps({{"framework_s": middle - start, "adapter_s": end - middle,
                  "frameworks": sorted(loaded()), "added": sorted(loaded() - before)}}))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")}


def _bare(runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=_env())
        samples.append(time.perf_counter() - start)
    return median(samples)


def measure(module: str, base: str | None, runs: int) -> dict[str, Any]:
    """Median framework and adapter import seconds over ``runs`` fresh interpreters."""
    code = _PROBE.format(frameworks=FRAMEWORKS, base=base or "pass", module=module)
    samples = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=_env()
        ).stdout
        sample = json.loads(out.strip().splitlines()[-1])
        if "missing" in sample:
            return {"missing": sample["missing"]}
        samples.append(sample)
    return {
        "framework_ms": median([s["framework_s"] for s in samples]) * 1000,
        "adapter_ms": median([s["adapter_s"] for s in samples]) * 1000,
        "frameworks": samples[-1]["frameworks"],
        "added": samples[-1]["added"],
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    report = Report("import", args)
    runs = 1 if args.quick else 9
    bare = _bare(runs)
    results = {module: measure(module, base, runs) for module, base in MODULES}
    rows: list[tuple[object, ...]] = []
    for module, base in MODULES:
        r = results[module]
        if "missing" in r:
            rows.append((module, "-", "-", f"not installed ({r['missing']})", "-"))
            continue
        rows.append(
            (
                module,
                r["adapter_ms"],
                r["framework_ms"] if base else "-",
                ", ".join(r["frameworks"]) or "none",
                ", ".join(r["added"]) or "none",
            )
        )
    report.table(
        f"Import time in a fresh interpreter, median of {runs} (bare start: {bare * 1000:.0f} ms)",
        ("module", "ms (itself)", "ms (its framework)", "ML frameworks loaded", "added by afs_callbacks"),
        rows,
    )
    core = results["afs_callbacks"]
    report.target(
        "afs_callbacks import",
        f"well under {CORE_TARGET_MS:g} ms",
        f"{core['adapter_ms']:.1f} ms",
        float(core["adapter_ms"]) < CORE_TARGET_MS,
    )
    report.target(
        "ML frameworks imported by afs_callbacks",
        "none",
        ", ".join(core["frameworks"]) or "none",
        not core["frameworks"],
    )
    for module, _ in MODULES[1:]:
        if "missing" in results[module]:
            continue
        added = results[module]["added"]
        report.target(
            f"{module.rsplit('.', 1)[1]} adapter: frameworks beyond its own",
            "none",
            ", ".join(added) or "none",
            not added,
        )
    report.finish(bare_ms=bare * 1000, runs=runs, modules=results)


if __name__ == "__main__":
    main()
