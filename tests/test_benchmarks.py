"""The benchmark scripts keep working: each runs in ``--quick`` mode as a subprocess.

These tests check that every script exits 0 and prints its tables and target checks, that
``run_all.py`` rewrites only its own block of a README, and one property that is not a
time: the per-step hook reads no tensor value outside the every-N-steps NaN check. They
never assert a wall-clock figure: that is what the benchmarks are for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
FRAMEWORKS = ("lightning", "transformers", "keras")
HANG_GUARD_S = 600  # only so that a hung script fails the test instead of blocking CI


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/<script> args`` in a fresh interpreter; fail with its stderr."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "KERAS_BACKEND": "torch",
    }
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def last_json(stdout: str) -> Any:
    """The JSON object a ``--json`` run prints on its last line."""
    return json.loads(stdout.strip().splitlines()[-1])


def has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


needs_torch = pytest.mark.skipif(not has_torch(), reason="the training benchmarks need torch")


@pytest.mark.parametrize(
    ("script", "titles"),
    [
        ("bench_import.py", ["Import time in a fresh interpreter", "afs_callbacks import"]),
        ("bench_storm.py", ["Storm of 10,000 NaN events", "Caller cost", "messages per channel"]),
        ("bench_delivery.py", ["Latency notify()", "Sustained burst", "Receiver down, then back"]),
        ("bench_idle.py", ["during a run, between steps", "after the run, everything sent", "wake-ups / s"]),
        ("bench_textfile.py", ["manager.update_run(state)", "A state every millisecond", "RunNotifier loop"]),
        ("bench_storage_window.py", ["SIGKILL during a burst", "oldest unstored ms", "channel: a webhook"]),
        (
            "bench_many_runs.py",
            ["runs at once on one state dir", "Messages at the webhook", "SIGKILLed runs"],
        ),
        pytest.param(
            "bench_wall_clock.py",
            ["alternating rounds", "context switches per thread", "fit() × none, AFSNotify()"],
            marks=needs_torch,
        ),
        pytest.param(
            "bench_sweep_toll.py",
            ["Optuna, 3 Lightning trials", "optimize × none", "Optuna sweep, optimize × none"],
            marks=needs_torch,
        ),
        pytest.param(
            "bench_slow_channel.py",
            ["lightning: 2 epochs", "requests.post, slow", "whole fit() call"],
            marks=needs_torch,
        ),
    ],
)
def test_script_prints_its_tables_and_targets(script: str, titles: list[str]) -> None:
    out = run(script, "--quick").stdout
    for title in titles:
        assert title in out
    assert "Targets" in out


@needs_torch
def test_step_overhead_compares_every_variant_on_every_shape() -> None:
    result = last_json(run("bench_step_overhead.py", "--quick", "--json").stdout)
    assert result["benchmark"] == "step_overhead"
    titles = [table["title"] for table in result["tables"]]
    for framework in FRAMEWORKS:
        assert any(t.startswith((f"{framework} on cpu", f"{framework}: skipped")) for t in titles), titles
    variants = {"no callback", "empty callback, same hooks", "AFSNotify, monitors off", "AFSNotify, defaults"}
    variants |= {"requests.post per epoch", "knockknock decorator"}
    for framework, figures in result["figures"]["frameworks"].items():
        for shape, by_variant in figures["stats"].items():
            assert set(by_variant) == variants, (framework, shape)
            # Not a time: every run was timed, and the loop lies inside the fit() call.
            for stats in by_variant.values():
                assert 0 < stats["loop_s"] <= stats["fit_s"], (framework, shape, stats)
            # AFSNotify really delivered (start and end of the run at least).
            assert by_variant["AFSNotify, monitors off"]["messages"] >= 2, (framework, shape)
    checked = {t["what"] for t in result["targets"]}
    assert any("AFSNotify, defaults: whole fit()" in what for what in checked)


@needs_torch
def test_hook_reads_tensors_only_at_the_nan_checks() -> None:
    result = last_json(run("bench_hook.py", "--quick", "--json").stdout)
    assert result["benchmark"] == "hook"
    assert result["tables"] and result["tables"][-1]["rows"]
    rows = [row for rows in result["figures"]["results"].values() for row in rows]
    assert any(row["subject"].startswith("AFSNotify") for row in rows)
    for row in rows:
        # Not a time: a count of host reads of tensor values (device syncs on a GPU).
        assert row["reads"] <= row["allowed"], row


@needs_torch
def test_wall_clock_pairs_each_variant_with_the_no_callback_runs_either_side() -> None:
    """``--paired``: every run of a variant sits between two no-callback runs, and the JSON
    keeps each run's figures in the order run."""
    result = last_json(
        run(
            "bench_wall_clock.py", "--quick", "--paired", "--variants", "knockknock", "a loss list", "--json"
        ).stdout
    )
    sequence = result["figures"]["sequence"]
    names = [entry["variant"] for entry in sequence]
    assert names[0] == names[-1] == "none" and names.count("knockknock") == names.count("a loss list") == 2
    for index, name in enumerate(names):
        if name != "none":
            assert names[index - 1] == names[index + 1] == "none", names
    assert all(entry["loop"] <= entry["fit"] and entry["major_faults"] >= 0 for entry in sequence)
    header = result["tables"][0]["header"]
    assert "loop, quiet host" in header and "next run's loop × previous's" in header


@needs_torch
def test_wall_clock_in_situ_times_the_floor_beside_afsnotify() -> None:
    out = run("bench_wall_clock.py", "--quick", "--in-situ", "--variants", "AFSNotify()").stdout
    assert "a loss list" in out and "AFSNotify()" in out and "the hook adds" in out


def test_run_all_rewrites_only_its_sections_of_the_readme(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    kept = "<!-- bench:hook -->\nfigures of another run\n<!-- /bench:hook -->"
    # The prose before the block quotes the markers: only the markers on lines of their own count.
    before = "# Project\n\nFigures go between `<!-- benchmarks:start -->` and `<!-- benchmarks:end -->`.\n\n"
    readme.write_text(
        f"{before}<!-- benchmarks:start -->\n{kept}\n<!-- benchmarks:end -->\n\nAfter.\n",
        encoding="utf-8",
    )
    saved = tmp_path / "results.json"
    args = ["--quick", "--only", "storm", "--save", str(saved), "--update-readme", "--readme", str(readme)]
    out = run("run_all.py", *args).stdout
    assert "Storm of 10,000 NaN events" in out
    assert "Targets, all benchmarks" in out

    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"{before}<!-- benchmarks:start -->\n")
    assert text.endswith("<!-- benchmarks:end -->\n\nAfter.\n")
    assert kept in text
    assert "python benchmarks/bench_storm.py --quick" in text
    assert "| messages per channel |" in text

    # Rendering saved results again replaces the section instead of adding a second one.
    run("run_all.py", "--load", str(saved), "--update-readme", "--readme", str(readme))
    again = readme.read_text(encoding="utf-8")
    assert again.count("<!-- bench:storm -->") == 1
    assert kept in again
