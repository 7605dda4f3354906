"""What AFSNotify costs a training run, by run shape, beside the peers users would pick.

The same tiny model (``Linear(32, 64) → ReLU → Linear(64, 1)``, batch 32, CPU) trains N
steps in all, cut into several shapes: 1 × N, 10 × N/10 and 100 × N/100 epochs, with and
without a validation pass after every epoch (a tenth of the epoch's batches). Each shape
runs with, side by side in one process:

* no callback, and an empty callback overriding the same hooks as AFSNotify (the
  framework's own dispatch cost: the fair yardstick),
* ``AFSNotify`` with monitors, chart and stall watchdog off, and with its defaults (all on),
  both delivering to a webhook channel on a loopback receiver,
* the peers: a callback that calls ``requests.post`` at start, at every epoch end and at the
  end (what community callbacks do), and knockknock's ``slack_sender`` decorator around the
  fit call (a post before, one after; re-implemented when knockknock is not installed:
  ``pip install -e .[bench]``).

Two kinds of figures, in two tables per framework:

* Wall clock (the first table). Two figures per run: the loop, from the framework's
  train-start hook to its train-end hook (a first callback marks them), and the whole fit
  call. The variants alternate in one process, in a rotating order, for several rounds;
  each figure is the median over rounds of the ratio to the same round's no-callback run
  (and to the empty callback's). "extra per epoch" is the median paired loop difference
  over the number of epochs; "fit − loop" is the time fit() spends outside the loop
  (set-up, and after the train-end hook). These ratios compare two runs made seconds
  apart, so they carry the machine's drift: on a shared 2-vCPU VM the speed wanders by
  ±20-30 % within seconds and even the empty callback reads 0.85-1.22×. Their verdicts are
  "?" when the figure is within that noise of the limit (the larger of the empty
  callback's distance from 1.00× and half the spread of the AFSNotify ratios over the
  rounds), and there is no verdict from fewer than 3 rounds.
* In-loop accounting (the second table, ``_accounting.py`` has the details and formulas).
  In every round and shape, each AFSNotify variant makes one more, instrumented run (not in
  the wall-clock ratios) that records from inside itself the seconds the training thread
  spent in AFSNotify's hooks (per-step hooks, epoch-boundary and validation hooks,
  start/end hooks) and the CPU seconds AFSNotify's background threads and its death
  watcher used during the loop. "accounted loop ×" = loop / (loop − hooks − background
  CPU): each background CPU second is counted as a full second of delay (conservative on
  2 cores). "accounted fit ×" adds the time fit() spends outside the loop because of
  AFSNotify (its hooks there, or the median paired wall-clock growth of fit − loop over
  the no-callback runs, whichever is larger). The numerator and denominator come from the
  same seconds of the same run, so the machine's drift cancels: these are the figures to
  judge the targets by; the wall-clock ones say whether anything escaped the accounting.

Targets (issue #16), on the project's 2-core machine, for Lightning, the HF Trainer and
Keras, worst shape: loop ≤ 1.02× and whole fit() ≤ 1.03× (accounted, and wall clock with
its noise), training-thread work ≤ 1 ms per epoch boundary (hooks at epoch ends,
validation included, over the number of epochs) and ≤ 2 µs per step in the hook.

    python benchmarks/bench_step_overhead.py            # ~21 min on a 2-CPU machine, 3 frameworks
    python benchmarks/bench_step_overhead.py --quick    # seconds: does it still run?
    python benchmarks/bench_step_overhead.py --frameworks lightning --rounds 5 --steps 2000
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

import _accounting
from _accounting import Ledger, split_hooks, wrapper_cost_us
from _common import Report, median, parse_args, percentile
from _loops import (
    FRAMEWORKS,
    HookClock,
    LoopTimer,
    Wrap,
    afs_callback,
    afs_class,
    available,
    fit,
    knockknock_wrap,
    quiet,
    same_hooks_callback,
    sync_callback,
)

from afs_callbacks import Settings
from afs_callbacks.channels.webhook import WebhookNotifier
from afs_callbacks.manager import NotificationManager
from afs_callbacks.testing import LoopbackReceiver

NONE = "no callback"
EMPTY = "empty callback, same hooks"
AFS_OFF = "AFSNotify, monitors off"
AFS_ON = "AFSNotify, defaults"
POST = "requests.post per epoch"
KNOCK = "knockknock decorator"
VARIANTS = (NONE, EMPTY, AFS_OFF, AFS_ON, POST, KNOCK)
AFS = (AFS_OFF, AFS_ON)
LOOP_LIMIT, FIT_LIMIT = 1.02, 1.03


@dataclass(frozen=True)
class Shape:
    """How the N steps are cut: ``epochs`` × ``steps`` per epoch, validation or not."""

    epochs: int
    steps: int
    validate: bool

    @property
    def label(self) -> str:
        return f"{self.epochs} × {self.steps}" + (" + val" if self.validate else "")


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated")
    parser.add_argument("--steps", type=int, help="N, the steps of a run in all (default 2000)")
    parser.add_argument("--rounds", type=int, help="runs of each variant per shape (default 3)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own default)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))


def shapes(framework: str, n: int, quick: bool) -> list[Shape]:
    """Lightning gets every shape; HF and Keras a smaller set (their runs are slower)."""
    if quick:  # one shape that has it all: several epochs, validation
        return [Shape(10, max(1, n // 10), True)]
    cuts = (1, 10, 100) if framework == "lightning" else (1, 10)
    plain = [Shape(e, n // e, False) for e in cuts]
    return plain + [Shape(e, n // e, True) for e in cuts if e > 1]


class Bench:
    """Builds each variant's callbacks and times its runs, for one framework."""

    def __init__(self, framework: str, receiver: LoopbackReceiver, device: str) -> None:
        self.framework = framework
        self.receiver = receiver
        self.device = device
        self.url = receiver.url("/hook")
        self.knock, self.knock_source = knockknock_wrap(self.url)
        self.settings = Settings(state_dir=_state_dir())  # one history, as a user's runs share

    def run(self, shape: Shape, name: str) -> tuple[float, float, int]:
        """One training of ``shape`` with variant ``name``: (loop s, fit s, messages)."""
        before = len(self.receiver.requests)
        callbacks: list[Any] = []
        wrap: Wrap | None = None
        manager = None
        if name == EMPTY:
            callbacks = [same_hooks_callback(self.framework, afs_class(self.framework))]
        elif name in AFS:
            manager = NotificationManager({"webhook": WebhookNotifier(self.url)}, settings=self.settings)
            callbacks = [self._afs(manager, defaults=name == AFS_ON)]
        elif name == POST:
            callbacks = [sync_callback(self.framework, self.url)]
        elif name == KNOCK:
            wrap = self.knock
        run = fit(
            self.framework,
            callbacks,
            steps_per_epoch=shape.steps,
            epochs=shape.epochs,
            device=self.device,
            validate=shape.validate,
            timed=True,
            wrap=wrap,
        )
        if manager is not None:
            manager.close()  # untimed: lets the messages out, so they can be counted
        return run.hooks_loop_s, run.wall_s, len(self.receiver.requests) - before

    def instrumented(self, shape: Shape, name: str) -> dict[str, Any]:
        """One more run of AFSNotify variant ``name``, instrumented and kept out of the wall
        ratios: seconds in its hooks (by kind), its background CPU in the loop, loop and fit
        seconds (raw; ``_accounting.accounted`` turns them into figures)."""
        ledger = Ledger(str(self.settings.state_dir))
        marks: dict[str, float] = {}

        def wrap(call: Any) -> Any:
            def marked() -> Any:
                marks["fit_start"] = time.perf_counter()
                try:
                    return call()
                finally:
                    marks["fit_end"] = time.perf_counter()

            return marked

        with ledger.watching():  # before the manager: its threads report when they end
            manager = NotificationManager({"webhook": WebhookNotifier(self.url)}, settings=self.settings)
            callback = self._afs(manager, defaults=name == AFS_ON)
            clock = HookClock(callback, self.framework, record=True)
            timer = LoopTimer.make(self.framework, ledger.loop_started, ledger.loop_ended)
            run = fit(
                self.framework,
                [callback],
                steps_per_epoch=shape.steps,
                epochs=shape.epochs,
                device=self.device,
                validate=shape.validate,
                timer=timer,
                wrap=wrap,
            )
            manager.close()
        marks.update(loop_start=timer.started, loop_end=timer.ended)
        clock.totals()
        return {
            "loop_s": run.hooks_loop_s,
            "fit_s": run.wall_s,
            "hooks": split_hooks(clock.log or [], marks, shape.epochs * shape.steps),
            "background": ledger.background(),
            "calls": dict(clock.calls),
        }

    def _afs(self, manager: NotificationManager, *, defaults: bool = False) -> Any:
        if defaults:
            return afs_callback(self.framework, manager)
        return afs_callback(self.framework, manager, monitors=False, chart=False, stall_timeout=None)


def _state_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="afs-bench-shapes-")


def measure(
    bench: Bench, plan: list[Shape], rounds: int, warm_up: bool = True
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every variant on every shape, ``rounds`` times in a rotating order, then one
    instrumented run of each AFSNotify variant (``instrumented``); raw figures."""
    for name in VARIANTS if warm_up else ():  # one-time costs (imports, first chart) out
        bench.run(Shape(2, 10, True), name)
    raw: dict[str, dict[str, dict[str, Any]]] = {
        s.label: {v: {"loop": [], "fit": [], "messages": 0} for v in VARIANTS} for s in plan
    }
    for cells in raw.values():
        for name in AFS:
            cells[name]["instrumented"] = []
    for round_ in range(rounds):
        for index, shape in enumerate(plan):
            shift = (round_ + index) % len(VARIANTS)
            for name in VARIANTS[shift:] + VARIANTS[:shift]:
                loop_s, fit_s, messages = bench.run(shape, name)
                cell = raw[shape.label][name]
                cell["loop"].append(loop_s)
                cell["fit"].append(fit_s)
                cell["messages"] = messages
            for name in AFS:
                raw[shape.label][name]["instrumented"].append(bench.instrumented(shape, name))
    return raw


def summarise(raw: dict[str, dict[str, Any]], epochs: int) -> dict[str, dict[str, float]]:
    """Per variant: median times, median paired ratios to no callback and to the empty
    callback, the ratios' quartiles, and the extra loop time per epoch."""
    out = {}
    for name, cell in raw.items():
        stats: dict[str, float] = {"messages": cell["messages"]}
        for what in ("loop", "fit"):
            values = cell[what]
            stats[f"{what}_s"] = median(values)
            for ref, key in ((NONE, "none"), (EMPTY, "empty")):
                ratios = [v / r for v, r in zip(values, raw[ref][what], strict=True)]
                stats[f"{what}_x_{key}"] = median(ratios)
                stats[f"{what}_q1_{key}"] = percentile(ratios, 0.25)
                stats[f"{what}_q3_{key}"] = percentile(ratios, 0.75)
        outside = [f - loop for f, loop in zip(cell["fit"], cell["loop"], strict=True)]
        stats["outside_s"] = median(outside)
        base = [f - loop for f, loop in zip(raw[NONE]["fit"], raw[NONE]["loop"], strict=True)]
        stats["outside_extra_s"] = median([o - b for o, b in zip(outside, base, strict=True)])
        diffs = [v - r for v, r in zip(cell["loop"], raw[NONE]["loop"], strict=True)]
        stats["extra_ms_per_epoch"] = median(diffs) / epochs * 1000
        out[name] = stats
    return out


def main() -> None:
    args = parse_args(__doc__ or "", _options)
    quiet()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = Report("step_overhead", args)
    n = args.steps or (30 if args.quick else 2000)
    rounds = args.rounds or (1 if args.quick else 3)
    figures: dict[str, Any] = {}
    failed = []
    wrapper_us = wrapper_cost_us()
    for framework in [f.strip() for f in args.frameworks.split(",") if f.strip()]:
        missing = available(framework)
        if missing is not None:
            report.table(f"{framework}: skipped", ("reason",), [(missing,)])
            continue
        plan = shapes(framework, n, args.quick)
        started = time.perf_counter()
        with LoopbackReceiver() as receiver:
            bench = Bench(framework, receiver, args.device)
            try:
                raw = measure(bench, plan, rounds, warm_up=not args.quick)
            except Exception as error:  # one framework's breakage must not hide the others
                report.table(f"{framework}: failed", ("error",), [(f"{type(error).__name__}: {error}",)])
                failed.append(framework)
                continue
        stats = {s.label: summarise(raw[s.label], s.epochs) for s in plan}
        accounting = {
            s.label: _accounting.by_variant(raw[s.label], stats[s.label], AFS, s.epochs, s.steps)
            for s in plan
        }
        print(f"{framework}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        figures[framework] = {
            "stats": stats,
            "accounting": accounting,
            "raw": raw,
            "hook_wrapper_us": wrapper_us,
            "knockknock": bench.knock_source,
        }
        _table(report, framework, stats, args, n, rounds, time.perf_counter() - started, bench.knock_source)
        _accounting.table(report, framework, accounting, wrapper_us)
        _targets(report, framework, stats, rounds)
        _accounting.targets(report, framework, accounting, AFS)
    report.finish(steps=n, rounds=rounds, device=args.device, frameworks=figures)
    if failed:
        raise SystemExit(f"failed to run: {', '.join(failed)}")


def _table(
    report: Report,
    framework: str,
    stats: dict[str, dict[str, dict[str, float]]],
    args: argparse.Namespace,
    n: int,
    rounds: int,
    seconds: float,
    knock: str,
) -> None:
    import torch

    rows = []
    for label, by_variant in stats.items():
        for name in VARIANTS:
            s = by_variant[name]
            paired = name != NONE
            rows.append(
                (
                    label,
                    name,
                    f"{s['loop_s']:.2f}",
                    f"{s['loop_x_none']:.3f}×" if paired else "-",
                    f"{s['loop_x_empty']:.3f}×" if name not in (NONE, EMPTY) else "-",
                    f"{s['fit_s']:.2f}",
                    f"{s['fit_x_none']:.3f}×" if paired else "-",
                    f"{s['fit_x_empty']:.3f}×" if name not in (NONE, EMPTY) else "-",
                    f"{s['outside_s']:.2f}",
                    f"{s['extra_ms_per_epoch']:.1f}" if paired else "-",
                    int(s["messages"]),
                )
            )
    report.table(
        f"{framework} on {args.device}: {n:,} steps per run, {rounds} round(s), torch threads"
        f" {torch.get_num_threads()}; wall clock, medians of paired ratios ({knock}; {seconds:.0f} s)",
        (
            "shape",
            "variant",
            "loop s",
            "loop × none",
            "loop × empty",
            "fit s",
            "fit × none",
            "fit × empty",
            "fit − loop s",
            "extra ms/epoch",
            "messages",
        ),
        rows,
    )


def _targets(
    report: Report, framework: str, stats: dict[str, dict[str, dict[str, float]]], rounds: int
) -> None:
    """Wall clock: one check per AFSNotify variant and figure, its worst shape against the
    limit (no verdict from fewer than 3 rounds: their spread says nothing about the noise)."""
    for name in AFS:
        for what, limit in (("loop", LOOP_LIMIT), ("fit", FIT_LIMIT)):
            label, worst = max(stats.items(), key=lambda item: item[1][name][f"{what}_x_none"])
            s, empty = worst[name], worst[EMPTY]
            ratio = s[f"{what}_x_none"]
            noise = max(abs(empty[f"{what}_x_none"] - 1.0), (s[f"{what}_q3_none"] - s[f"{what}_q1_none"]) / 2)
            report.target(
                f"{framework}, {name}: {'loop' if what == 'loop' else 'whole fit()'}, wall clock"
                + (f" (noise ±{noise:.2f})" if rounds >= 3 else "")
                + ", worst shape",
                f"≤ {limit:.2f}×",
                f"{ratio:.3f}× at {label} (× empty {s[f'{what}_x_empty']:.3f})",
                _judge(ratio, limit, noise) if rounds >= 3 else None,
                "" if rounds >= 3 else "fewer than 3 rounds: no verdict",
            )


def _judge(value: float, limit: float, noise: float) -> bool | None:
    """Met, missed, or None when the value is within ``noise`` of the limit either way."""
    if value <= limit:
        return True
    return False if value - limit > noise else None


if __name__ == "__main__":
    main()
