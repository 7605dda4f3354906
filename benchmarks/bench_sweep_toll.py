"""A sweep of short trials in one process, on the wall clock (issue #27's toll per run).

An Optuna study of short Lightning trials (each a tiny fit of 2 epochs × 20 steps), run
with no callback and with ``AFSNotify()`` in every trial (its defaults, a fast loopback
webhook), the two alternating for several rounds. Each (variant, round) runs in a fresh
process, as a user's sweep script would: the library's one-time costs (imports, the
store, its threads, the death watcher, the sweep's summary at exit) are paid once, as
they are by a user, and per-trial costs 30 times. Two figures per variant, medians of the
ratio to the same round's no-callback run: the ``optimize`` call, and the whole process
(start to exit, which includes delivering what is left at exit).

    python benchmarks/bench_sweep_toll.py             # 30 trials, 4 rounds
    python benchmarks/bench_sweep_toll.py --quick     # 3 trials, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Report, load_average, median, parse_args

VARIANTS = ("none", "AFSNotify()")
HERE = Path(__file__).resolve().parent


def child(variant: str, trials: int) -> None:
    """One sweep in this process; prints the ``optimize`` seconds as JSON."""
    from _loops import fit, quiet

    quiet()
    import optuna
    import torch

    from afs_callbacks.testing import LoopbackReceiver

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with LoopbackReceiver() as receiver:
        os.environ["WEBHOOK_URL"] = receiver.url("/hook")

        def objective(trial: optuna.Trial) -> float:
            trial.suggest_float("lr", 1e-3, 1e-1, log=True)
            callbacks = []
            if variant == "AFSNotify()":
                from afs_callbacks.integrations.lightning import AFSNotify

                callbacks.append(AFSNotify(model_name="trial"))
            return fit("lightning", callbacks, steps_per_epoch=20, epochs=2).wall_s

        started = time.perf_counter()
        optuna.create_study(study_name="toll").optimize(objective, n_trials=trials)
        seconds = time.perf_counter() - started
        print(json.dumps({"optimize": seconds}), flush=True)
        if variant == "AFSNotify()":
            from afs_callbacks import NotificationManager

            NotificationManager.shared().close()  # the summary, before the receiver goes


def _run(variant: str, trials: int) -> tuple[float, float]:
    """(optimize seconds, process seconds) of one sweep in a fresh process."""
    env = {
        **os.environ,
        "AFS_STATE_DIR": tempfile.mkdtemp(prefix="afs-bench-"),
        "DESKTOP_NOTIFICATIONS_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--trials", str(trials)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    process = time.perf_counter() - started
    optimize = json.loads(done.stdout.strip().splitlines()[-1])["optimize"]
    return float(optimize), process


def main() -> None:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rounds", type=int, default=4, help="rounds of both variants (default 4)")
        parser.add_argument("--trials", type=int, default=30, help="trials per sweep (default 30)")
        parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)

    args = parse_args(__doc__.splitlines()[0], extra)
    if args.child:
        child(args.child, args.trials)
        return
    rounds, trials = (1, 3) if args.quick else (args.rounds, args.trials)
    report = Report("sweep_toll", args)
    load_before = load_average()
    optimize: dict[str, list[float]] = {v: [] for v in VARIANTS}
    process: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for index in range(rounds):
        for variant in VARIANTS if index % 2 == 0 else VARIANTS[::-1]:
            inside, whole = _run(variant, trials)
            optimize[variant].append(inside)
            process[variant].append(whole)
    load_after = load_average()

    def ratio(series: dict[str, list[float]]) -> float:
        return median([a / b for a, b in zip(series["AFSNotify()"], series["none"], strict=True)])

    report.table(
        f"Optuna, {trials} Lightning trials of 2 epochs × 20 steps, one process per sweep, median of"
        f" {rounds} alternating rounds (load average {load_before} before, {load_after} after)",
        ("variant", "optimize (median)", "process (median)", "optimize × none", "process × none"),
        [
            (
                variant,
                f"{median(optimize[variant]):.2f} s",
                f"{median(process[variant]):.2f} s",
                "1.000" if variant == "none" else f"{ratio(optimize):.3f}",
                "1.000" if variant == "none" else f"{ratio(process):.3f}",
            )
            for variant in VARIANTS
        ],
    )
    measured = ratio(optimize)
    what = f"a {trials}-trial Optuna sweep, optimize × none"
    report.target(what, "≤ 1.2", f"{measured:.3f}", measured <= 1.2)
    report.finish(load_before=load_before, load_after=load_after, optimize=optimize, process=process)


if __name__ == "__main__":
    main()
