"""Run every benchmark, print all their tables and a summary of the targets.

Each script runs in a fresh interpreter (import times and memory figures need one) with
``--json``; this script prints what they measured. ``--update-readme`` rewrites, in the
benchmarks/README.md's "Latest figures" (between ``<!-- benchmarks:start -->`` and
``<!-- benchmarks:end -->``), the section of each benchmark that ran, with the figures, the
machine and the command; the sections of benchmarks that did not run stay as they were.

    python benchmarks/run_all.py                      # everything, full sizes (~15 min)
    python benchmarks/run_all.py --quick              # a quick check that all still run
    python benchmarks/run_all.py --update-readme      # measure and write the README
    python benchmarks/run_all.py --only hook,step_overhead --device cuda --save gpu.json \
        --script-args "step_overhead:--rounds 4 --frameworks lightning,transformers"
    python benchmarks/run_all.py --load gpu.json --update-readme   # figures from elsewhere

Exit status: 1 when a benchmark failed to run; a missed target is a finding, not a failure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stdout
from importlib import metadata
from io import StringIO
from pathlib import Path
from typing import Any

from _common import Target, print_table, target_rows

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
#: Name, script, what it measures (the README's section title), whether it has --device.
BENCHMARKS = (
    ("step_overhead", "bench_step_overhead.py", "Loop and fit() overhead by run shape, beside peers", True),
    ("hook", "bench_hook.py", "The per-step hook itself", True),
    ("slow_channel", "bench_slow_channel.py", "A channel that answers after 2 s", False),
    ("storm", "bench_storm.py", "An event storm", False),
    ("delivery", "bench_delivery.py", "Delivery through the outbox", False),
    ("import", "bench_import.py", "Import time", False),
    ("idle", "bench_idle.py", "Background threads with nothing to do", False),
    ("textfile", "bench_textfile.py", "The Prometheus textfile writer", False),
    ("storage_window", "bench_storage_window.py", "A SIGKILL during a burst: the storage window", False),
    ("wall_clock", "bench_wall_clock.py", "The whole fit() on the wall clock, beside the peers", False),
    ("many_runs", "bench_many_runs.py", "Many runs at once on one node, some SIGKILLed", False),
    ("sweep_toll", "bench_sweep_toll.py", "A 30-trial Optuna sweep of short Lightning trials", False),
)
_PACKAGES = ("torch", "lightning", "transformers", "keras")


def parse_args() -> argparse.Namespace:
    """The options above."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that all run")
    parser.add_argument("--only", help="comma-separated names: " + ", ".join(b[0] for b in BENCHMARKS))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="for step_overhead and hook")
    parser.add_argument(
        "--script-args",
        action="append",
        default=[],
        metavar="NAME:ARGS",
        help="extra arguments for one benchmark, e.g. 'slow_channel:--framework keras' (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    parser.add_argument("--save", type=Path, help="write the results as JSON here")
    parser.add_argument("--load", type=Path, help="use results saved with --save instead of running")
    parser.add_argument("--update-readme", action="store_true", help="write the figures into the README")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md", help=argparse.SUPPRESS)
    return parser.parse_args()


def machine(gpu: bool = False) -> str:
    """One line about where the figures come from (with the GPU's name when ``gpu``)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for package in _PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    if gpu and shutil.which("nvidia-smi"):
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip()
        cpu = f"{names.splitlines()[0] if names else 'unknown GPU'}, {cpu}"
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {platform.system()}, Python {platform.python_version()}, "
        + ", ".join(versions)
    )


def run_one(name: str, script: str, args: argparse.Namespace, device_option: bool) -> dict[str, Any]:
    """Run one benchmark script with --json; its parsed result, or an error record."""
    command = [sys.executable, str(HERE / script), "--json"]
    if args.quick:
        command.append("--quick")
    if device_option and args.device != "cpu":
        command += ["--device", args.device]
    for extra in args.script_args:
        target, _, options = extra.partition(":")
        if target == name:
            command += shlex.split(options)
    shown = "python benchmarks/" + shlex.join([script, *command[3:]])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.setdefault("KERAS_BACKEND", "torch")
    print(f"\n=== {name}: {shown}", flush=True)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "name": name,
        "key": name if not device_option or args.device == "cpu" else f"{name}-{args.device}",
        "command": shown,
        "machine": machine(gpu=device_option and args.device == "cuda"),
        "date": datetime.date.today().isoformat(),
        "quick": args.quick,
    }
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**record, "error": f"timed out after {args.timeout:g} s"}
    record["seconds"] = round(time.perf_counter() - started, 1)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        return {**record, "error": f"exit status {done.returncode}\n{tail}"}
    return {**record, **json.loads(lines[-1])}


def show(result: dict[str, Any]) -> None:
    """Print one benchmark's tables (or its error)."""
    if "error" in result:
        print(f"FAILED: {result['error']}")
        return
    for table in result["tables"]:
        print_table(table["title"], table["header"], table["rows"])
    print(f"  ({result['seconds']} s)")


def targets_of(result: dict[str, Any]) -> list[Target]:
    """The target checks a benchmark reported."""
    return [Target(**t) for t in result.get("targets", [])]


def section(result: dict[str, Any]) -> str:
    """The README section of one benchmark: command, machine, targets, tables."""
    title = next(t for n, _, t, _ in BENCHMARKS if n == result["name"])
    device = result["key"].partition("-")[2]
    lines = [
        f"<!-- bench:{result['key']} -->",
        f"#### {title}{f' ({device})' if device else ''}",
        "",
        f"`{result['command']}` — {result['date']}, {result['machine']}"
        + (" — **quick mode: sizes too small to read figures from**" if result["quick"] else ""),
        "",
    ]
    if "error" in result:
        lines += ["Did not run:", "", "```text", result["error"], "```"]
    else:
        targets = targets_of(result)
        if targets:
            lines += ["| what | target | measured | met |", "| --- | --- | --- | --- |"]
            lines += [f"| {' | '.join(_md(cell) for cell in row)} |" for row in target_rows(targets)]
            lines.append("")
        lines += ["<details><summary>All figures</summary>", "", "```text"]
        for table in result["tables"]:
            lines += _table_text(table).splitlines()
        while len(lines) > 1 and not lines[-1]:
            lines.pop()
        lines += ["```", "", "</details>"]
    lines.append(f"<!-- /bench:{result['key']} -->")
    return "\n".join(lines)


def update_readme(path: Path, results: list[dict[str, Any]]) -> None:
    """Replace, between the markers, the sections of the benchmarks in ``results``."""
    text = path.read_text(encoding="utf-8")
    # The markers on lines of their own: the prose that explains them quotes them too.
    found = re.search(rf"^{re.escape(START)}$(.*?)^{re.escape(END)}$", text, re.S | re.M)
    if found is None:
        raise SystemExit(f"{path}: the markers {START} and {END} are missing")
    head, block, tail = text[: found.start()], found.group(1), text[found.end() :]
    pattern = re.compile(r"<!-- bench:(\S+) -->.*?<!-- /bench:\1 -->", re.S)
    sections = {match.group(1): match.group(0) for match in pattern.finditer(block)}
    for result in results:
        sections[result["key"]] = section(result)
    order = [name for name, *_ in BENCHMARKS]
    keys = sorted(
        sections, key=lambda k: (order.index(k.split("-")[0]) if k.split("-")[0] in order else 99, k)
    )
    intro = (
        "Written by `python benchmarks/run_all.py --update-readme`; each section names the command"
        " and the machine that produced it. Compare ratios, not absolute times: these machines are"
        " shared and noisy. Where a target is missed, the sections above say by how much and why."
    )
    body = "\n\n".join([intro, *(sections[k] for k in keys)])
    path.write_text(f"{head}{START}\n{body}\n{END}{tail}", encoding="utf-8")
    print(f"\nUpdated {path} ({', '.join(r['key'] for r in results)}).")


def main() -> None:
    args = parse_args()
    if args.load:
        results = json.loads(args.load.read_text(encoding="utf-8"))
    else:
        chosen = set(args.only.split(",")) if args.only else {b[0] for b in BENCHMARKS}
        unknown = (chosen | {extra.partition(":")[0] for extra in args.script_args}) - {
            b[0] for b in BENCHMARKS
        }
        if unknown:
            raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        results = []
        for name, script, _, device_option in BENCHMARKS:
            if name in chosen:
                result = run_one(name, script, args, device_option)
                show(result)
                results.append(result)
    if args.load:
        for result in results:
            print(f"\n=== {result['key']}: {result['command']}")
            show(result)
    summary = [(result["key"], *row) for result in results for row in target_rows(targets_of(result))]
    print_table("Targets, all benchmarks", ("benchmark", "what", "target", "measured", "met"), summary)
    if args.save:
        args.save.write_text(json.dumps(results, indent=1), encoding="utf-8")
    if args.update_readme:
        update_readme(args.readme, results)
    failed = [result["key"] for result in results if "error" in result]
    if failed:
        print(f"\nFailed to run: {', '.join(failed)}")
        raise SystemExit(1)


def _table_text(table: dict[str, Any]) -> str:
    buffer = StringIO()
    with redirect_stdout(buffer):
        print_table(table["title"], table["header"], table["rows"])
    return buffer.getvalue().lstrip("\n") + "\n"


def _md(cell: str) -> str:
    return cell.replace("|", "\\|")


if __name__ == "__main__":
    main()
