"""What a user's stopwatch says: the whole ``fit()`` and its loop, beside the peers (issue #27).

One tiny Lightning run in the issue's shape (10 epochs × 200 steps of about a millisecond,
one torch thread, a fast loopback webhook), in five variants that alternate in one process,
in a rotating order, for several rounds:

* no callback (the yardstick);
* knockknock's ``slack_sender`` around the fit call (a synchronous post before, one after;
  re-implemented when knockknock is not installed: ``pip install -e .[bench]``);
* Apprise called in a callback at every epoch end (``json://`` to the same receiver);
* ``AFSNotify()`` with its defaults (monitors, chart, stall watchdog on);
* ``AFSNotify(monitors=False, chart=False)``.

Each figure is the median over rounds of the ratio to the same round's no-callback run:
``fit`` is the wall clock of the whole call, ``loop`` from the train-start hook to the
train-end hook, ``outside`` the seconds ``fit`` spends outside the loop (set-up and after
the end). There is no in-loop accounting here: the stopwatch is the judge.

For the attribution, every run also counts every thread's voluntary and involuntary
context switches during the loop (``/proc/self/task``): a background thread
that wakes while the training thread runs asks for the GIL at each wake.

With ``--waits``, every run also counts the wake-ups themselves by where they happen: each
return from ``threading.Event.wait``, ``threading.Condition.wait`` and ``time.sleep``
during the loop, by thread and by the line that waited (the waits stay wrapped for the
whole process, a microsecond or two each: leave it off for timings). A voluntary switch
that no such wake explains is a wait for the GIL, or for I/O.

The load average is printed before and after: on a shared 2-vCPU VM a figure taken under
load says more about the neighbours than about the callback.

    python benchmarks/bench_wall_clock.py             # 6 rounds
    python benchmarks/bench_wall_clock.py --quick     # 2 rounds of 2 × 50 steps
    python benchmarks/bench_wall_clock.py --waits     # and where each thread woke up
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from types import FrameType
from typing import Any

from _common import Report, fresh_state_dir, load_average, median, parse_args
from _loops import fit, quiet
from _peers import LoopTimer, callback_base, knockknock_wrap

from afs_callbacks.testing import LoopbackReceiver

VARIANTS = ("none", "knockknock", "apprise per epoch", "AFSNotify()", "AFSNotify(lean)")
AFS_VARIANTS = ("AFSNotify()", "AFSNotify(lean)")


def _switches() -> dict[str, tuple[int, int]]:
    """Thread name -> (voluntary, involuntary) context switches so far, for this process."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    counts: dict[str, tuple[int, int]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            status = Path(f"/proc/self/task/{tid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        name = names.get(int(tid), fields.get("Name", "?").strip())
        voluntary = int(fields["voluntary_ctxt_switches"])
        involuntary = int(fields["nonvoluntary_ctxt_switches"])
        old = counts.get(name, (0, 0))
        counts[name] = (old[0] + voluntary, old[1] + involuntary)
    return counts


class _WaitSites:
    """Counts, while :attr:`on`, every return from a wait or a sleep, by thread and by the
    line outside ``threading`` that waited.

    :meth:`install` wraps ``threading.Event.wait``, ``threading.Condition.wait`` and
    ``time.sleep`` for the rest of the process (the library calls ``time.sleep`` through
    the module, so the wrapper sees it).
    """

    def __init__(self) -> None:
        self.on = False
        self.counts: Counter[tuple[str, str]] = Counter()

    def install(self) -> None:
        """Wrap the waits."""
        event_wait, condition_wait, sleep = threading.Event.wait, threading.Condition.wait, time.sleep

        def counted_event_wait(event: threading.Event, timeout: float | None = None) -> bool:
            woke = event_wait(event, timeout)
            self._count("set" if woke else "timed out")
            return woke

        def counted_condition_wait(condition: threading.Condition, timeout: float | None = None) -> bool:
            woke = condition_wait(condition, timeout)
            if not sys._getframe(1).f_code.co_filename.endswith("threading.py"):
                self._count("notified" if woke else "timed out")  # an Event's: counted as the Event's
            return woke

        def counted_sleep(seconds: float) -> None:
            sleep(seconds)
            self._count("slept")

        threading.Event.wait = counted_event_wait  # type: ignore[method-assign,assignment]
        threading.Condition.wait = counted_condition_wait  # type: ignore[method-assign,assignment]
        time.sleep = counted_sleep  # type: ignore[assignment]

    def _count(self, how: str) -> None:
        if not self.on:
            return
        frame: FrameType | None = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename.endswith("threading.py"):
            frame = frame.f_back
        where = "?"
        if frame is not None:
            path = frame.f_code.co_filename
            short = path[path.index("afs_callbacks") :] if "afs_callbacks" in path else os.path.basename(path)
            where = f"{short}:{frame.f_lineno} ({frame.f_code.co_name}): {how}"
        self.counts[(threading.current_thread().name, where)] += 1


_SITES = _WaitSites()


class _Wakes:
    """Context switches per thread between the train-start and train-end hooks, and the
    wake-ups by site (when ``--waits`` installed the counter)."""

    def __init__(self) -> None:
        self.start: dict[str, tuple[int, int]] = {}
        self.delta: dict[str, tuple[int, int]] = {}
        self.sites: Counter[tuple[str, str]] = Counter()

    def begin(self) -> None:
        self.start = _switches()
        _SITES.counts = Counter()
        _SITES.on = True

    def end(self) -> None:
        _SITES.on = False
        self.sites = _SITES.counts
        now = _switches()
        self.delta = {
            name: (v - self.start.get(name, (0, 0))[0], n - self.start.get(name, (0, 0))[1])
            for name, (v, n) in now.items()
        }


def _apprise_callback(url: str) -> Any:
    """A callback that calls Apprise at every epoch end (what a user writes by hand)."""
    import apprise

    notifier = apprise.Apprise()
    notifier.add(url)
    base = callback_base("lightning")

    def on_train_epoch_end(self: Any, trainer: Any, module: Any) -> None:
        notifier.notify(title="epoch", body=f"epoch {trainer.current_epoch} done")

    return type("AppriseEveryEpoch", (base,), {"on_train_epoch_end": on_train_epoch_end})()


def _one(
    variant: str, receiver: LoopbackReceiver, steps: int, epochs: int, wakes: _Wakes
) -> tuple[float, float]:
    """(fit seconds, loop seconds) of one run of ``variant``."""
    url = receiver.url("/hook")
    callbacks: list[Any] = []
    wrap = None
    if variant == "knockknock":
        wrap, _ = knockknock_wrap(url)
    elif variant == "apprise per epoch":
        callbacks.append(_apprise_callback("json://" + url.removeprefix("http://")))
    elif variant in AFS_VARIANTS:
        from afs_callbacks.integrations.lightning import AFSNotify

        options = {"monitors": False, "chart": False} if variant == "AFSNotify(lean)" else {}
        fresh_state_dir()
        os.environ["WEBHOOK_URL"] = url
        callbacks.append(AFSNotify(model_name="bench", **options))
    # Counted at the marks, outside the timed loop (a /proc read costs ~100 µs), in every
    # variant: the no-callback run's counts are what the framework and the receiver cost.
    timer = LoopTimer.make("lightning", before_start=wakes.begin, after_end=wakes.end)
    run = fit("lightning", callbacks, steps_per_epoch=steps, epochs=epochs, wrap=wrap, timer=timer)
    os.environ.pop("WEBHOOK_URL", None)
    if variant in AFS_VARIANTS:
        # Untimed: as a process that trained once and exits. Left open, each round's manager
        # (its sender's once-a-second look) and its end's chart, still being drawn, would
        # run through the next variants' loops and be counted against them.
        callbacks[0].tracker.manager.close()
    return run.wall_s, run.hooks_loop_s


def main() -> None:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rounds", type=int, default=6, help="rounds of all variants (default 6)")
        parser.add_argument(
            "--waits", action="store_true", help="also count each thread's wake-ups by the line that waited"
        )

    args = parse_args(__doc__.splitlines()[0], extra)
    quiet()
    if args.waits:
        _SITES.install()
    import torch

    torch.set_num_threads(1)
    rounds = 2 if args.quick else args.rounds
    steps, epochs = (50, 2) if args.quick else (200, 10)
    report = Report("wall_clock", args)
    load_before = load_average()
    fits: dict[str, list[float]] = defaultdict(list)
    loops: dict[str, list[float]] = defaultdict(list)
    wake_rows: dict[str, list[dict[str, tuple[int, int]]]] = defaultdict(list)
    site_rows: dict[str, list[Counter[tuple[str, str]]]] = defaultdict(list)
    with LoopbackReceiver() as receiver:
        _one("none", receiver, steps, 1, _Wakes())  # warm-up: imports, first allocations
        for index in range(rounds):
            order = VARIANTS[index % len(VARIANTS) :] + VARIANTS[: index % len(VARIANTS)]
            for variant in order:
                wakes = _Wakes()
                wall, loop = _one(variant, receiver, steps, epochs, wakes)
                fits[variant].append(wall)
                loops[variant].append(loop)
                wake_rows[variant].append(wakes.delta)
                site_rows[variant].append(wakes.sites)
    load_after = load_average()

    def ratio(series: dict[str, list[float]], variant: str) -> float:
        return median([a / b for a, b in zip(series[variant], series["none"], strict=True)])

    rows = []
    for variant in VARIANTS:
        outside = median([w - loop for w, loop in zip(fits[variant], loops[variant], strict=True)])
        rows.append(
            (
                variant,
                f"{ratio(fits, variant):.3f}",
                f"{ratio(loops, variant):.3f}",
                f"{outside:.3f} s",
                f"{median(fits[variant]):.2f} s",
            )
        )
    report.table(
        f"Lightning, {epochs} epochs × {steps} steps, median of {rounds} alternating rounds"
        f" (load average {load_before} before, {load_after} after)",
        ("variant", "fit × none", "loop × none", "outside the loop", "fit (median)"),
        rows,
    )
    names = sorted({name for deltas in wake_rows.values() for delta in deltas for name in delta})
    switch_rows = []
    for name in names:
        cells = []
        for variant in VARIANTS:
            deltas = wake_rows[variant]
            voluntary = median([delta.get(name, (0, 0))[0] for delta in deltas])
            involuntary = median([delta.get(name, (0, 0))[1] for delta in deltas])
            cells.append(f"{voluntary:.0f} / {involuntary:.0f}")
        if any(cell != "0 / 0" for cell in cells):
            switch_rows.append((name, *cells))
    report.table(
        "context switches per thread during the loop, voluntary (wake-ups and GIL waits) /"
        " involuntary (preempted), median over rounds",
        ("thread", *VARIANTS),
        switch_rows,
    )
    if args.waits:
        for variant in AFS_VARIANTS:
            runs = site_rows[variant]
            keys = sorted({key for sites in runs for key in sites})
            report.table(
                f"{variant}: wake-ups by the line that waited, during the loop (median over rounds)",
                ("thread", "waited at", "wake-ups"),
                [(*key, f"{median([sites.get(key, 0) for sites in runs]):.0f}") for key in keys],
            )
    for what, series, goal in (("fit() × none", fits, 1.03), ("loop × none", loops, 1.02)):
        for variant in AFS_VARIANTS:
            measured = ratio(series, variant)
            report.target(f"{what}, {variant}", f"≤ {goal}", f"{measured:.3f}", measured <= goal)
    report.target(
        "fit() × none, AFSNotify() vs knockknock",
        "at or below",
        f"{ratio(fits, 'AFSNotify()'):.3f} vs {ratio(fits, 'knockknock'):.3f}",
        ratio(fits, "AFSNotify()") <= ratio(fits, "knockknock"),
    )
    report.finish(
        load_before=load_before,
        load_after=load_after,
        fits={k: list(v) for k, v in fits.items()},
        loops={k: list(v) for k, v in loops.items()},
    )


if __name__ == "__main__":
    main()
