"""What a user's stopwatch says: the whole ``fit()`` and its loop, beside the peers (issue #27).

One tiny Lightning run in the issue's shape (10 epochs × 200 steps of about a millisecond,
one torch thread, a fast loopback webhook), in six variants that alternate in one process,
in an order shuffled anew each round (``--seed``), for several rounds:

* no callback (the yardstick);
* an empty callback overriding the hooks AFSNotify overrides, each doing nothing: what
  Lightning's dispatch to one more callback costs (any callback pays it);
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

With ``--hooks``, AFSNotify's hooks are also timed on the training thread (each call
logged, about a microsecond a call more), split into the loop's start (its train-start
hook), its steps and the rest (epoch ends): what the training thread spent in the library
itself, beside what the stopwatch says the loop grew by. The difference is what the library
made the training thread wait for (the GIL, mostly) or slowed down (caches).

``--profile HOOK`` (with ``--hooks``) also runs cProfile inside that hook of AFSNotify's
(``setup``, ``on_train_start``, ``on_train_end``...) over every round, and prints where its
time went (cProfile inflates Python calls; the ``--hooks`` figures are the uninstrumented
ones).

``--in-situ`` instead times the batch-end hook inside a real loop: one fit of 20 epochs in
which every hook of AFSNotify runs but the batch end only after odd batches, so that the two
kinds of step alternate every millisecond and share the machine's drift, Lightning's
dispatch and the library's threads; beside a batch end that only keeps the loss in a list
(the floor: what any NaN check must do).
``AFSNotify(off)`` (``AFS_ENABLED=false``: hooks without threads or store) is a variant for
the attribution, run only when named.

``--variants`` runs only some variants (the no-callback run always): for a sampling
profiler attached to the process (``py-spy record --native --threads --idle``, see
``benchmarks/README.md``). ``a loss list`` is the floor in a full run: the empty callback
whose batch end keeps the loss in a list of 50, run only when named.

This VM's host slows whole runs by up to 1.7× for seconds at a time, unseen from inside (no
steal time, no page faults, no other process busy: each run's ``/proc`` figures are in the
JSON output), so the table gives two figures. The median of paired ratios, as the issue
asks; and the quiet host's: each variant's faster half of rounds over the no-callback run's,
since a slower host only ever adds time. ``--paired`` runs each variant between two
no-callback runs and compares it with their mean: consecutive runs share most of the drift.
``--epochs`` shortens the runs, so more rounds fit in the same minutes.

The load average is printed before and after: on a shared 2-vCPU VM a figure taken under
load says more about the neighbours than about the callback.

    python benchmarks/bench_wall_clock.py             # 6 rounds
    python benchmarks/bench_wall_clock.py --quick     # 2 rounds of 2 × 50 steps
    python benchmarks/bench_wall_clock.py --waits     # and where each thread woke up
    python benchmarks/bench_wall_clock.py --hooks     # and the training thread's time in the hooks
    python benchmarks/bench_wall_clock.py --hooks --profile on_train_start --variants 'AFSNotify()'
    python benchmarks/bench_wall_clock.py --variants 'AFSNotify(lean)' --rounds 10
    python benchmarks/bench_wall_clock.py --in-situ --variants 'AFSNotify()' 'AFSNotify(off)'
    python benchmarks/bench_wall_clock.py --paired --rounds 12 --variants knockknock 'AFSNotify()'
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any, NamedTuple

from _common import Report, fresh_state_dir, load_average, median, parse_args
from _loops import fit, quiet
from _peers import HookClock, LoopTimer, callback_base, knockknock_wrap, same_hooks_callback

from afs_callbacks.testing import LoopbackReceiver

VARIANTS = (
    "none",
    "empty callback",
    "knockknock",
    "apprise per epoch",
    "AFSNotify()",
    "AFSNotify(lean)",
    "AFSNotify(off)",
    "AFSNotify(no monitors)",
    "AFSNotify(no chart)",
    "a loss list",
)
#: AFSNotify's options in each of its variants (off: AFS_ENABLED=false).
AFS_OPTIONS: dict[str, dict[str, bool]] = {
    "AFSNotify()": {},
    "AFSNotify(lean)": {"monitors": False, "chart": False},
    "AFSNotify(off)": {},
    "AFSNotify(no monitors)": {"monitors": False},
    "AFSNotify(no chart)": {"chart": False},
}
AFS_VARIANTS = tuple(AFS_OPTIONS)
#: The variants a full run times. The others are for the attribution, asked for by name:
#: AFSNotify(off) (AFS_ENABLED=false: the hooks' own work, no thread, no store), the lean
#: variant's two halves, and the floor.
DEFAULT_VARIANTS = VARIANTS[:-4]
#: The floor (in a full run, and --in-situ's): the empty callback with a batch end that keeps
#: the loss tensor in a list of 50, as any NaN check must, and nothing else.
IN_SITU_FLOOR = "a loss list"


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


def _schedstat() -> dict[str, tuple[float, float]]:
    """Thread name -> (seconds on a CPU, seconds runnable but waiting for a CPU) so far
    (``/proc/self/task/<tid>/schedstat``), for this process."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    times: dict[str, tuple[float, float]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            on_cpu, waiting = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        name = names.get(int(tid), "?")
        old = times.get(name, (0.0, 0.0))
        times[name] = (old[0] + int(on_cpu) / 1e9, old[1] + int(waiting) / 1e9)
    return times


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


class _Collections:
    """Seconds the garbage collector ran while :attr:`on` (``gc.callbacks``). A full
    collection of this process's ~480,000 objects takes ~70 ms, 3 % of the loop, and lands
    in about one loop in eight, in any variant: it is the largest single noise here."""

    def __init__(self) -> None:
        self.on = False
        self.seconds = 0.0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if not self.on:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started


_GC = _Collections()


def _page_faults() -> tuple[int, int]:
    """This process's (minor, major) page faults so far (``/proc/self/stat``). A major one
    reads a page back from disk (library code the host's DAMON ``pageout`` scheme dropped
    as cold); a minor one maps a page afresh (memory the allocator gave back and takes again)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[9])  # minflt and majflt, the stat file's 10th and 12th


def _machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy so far (``/proc/stat``: user, nice,
    system, irq, softirq), less this process's own: the death watcher, the kernel's
    writeback, anything else here."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(fields[index]) for index in (0, 1, 2, 5, 6)) / ticks
    own = os.times()
    return busy - own.user - own.system


class _Wakes:
    """Context switches per thread between the train-start and train-end hooks, and the
    wake-ups by site (when ``--waits`` installed the counter)."""

    def __init__(self) -> None:
        self.start: dict[str, tuple[int, int]] = {}
        self.delta: dict[str, tuple[int, int]] = {}
        self.sites: Counter[tuple[str, str]] = Counter()
        self.times_start: dict[str, tuple[float, float]] = {}
        self.times: dict[str, tuple[float, float]] = {}  # name -> (on a CPU, waiting for one) s
        self.gc_s = 0.0
        self.faults = (0, 0)  # (minor, major) page faults during the loop
        self.elsewhere = 0.0  # CPU seconds other processes used during the loop

    def begin(self) -> None:
        self._faults_before = _page_faults()
        self.elsewhere = -_machine_cpu()
        self.start = _switches()
        _SITES.counts = Counter()
        _SITES.on = True
        self.times_start = _schedstat()
        _GC.seconds, _GC.on = 0.0, True

    def end(self) -> None:
        times = _schedstat()
        (minor, major), (minor_before, major_before) = _page_faults(), self._faults_before
        self.faults = (minor - minor_before, major - major_before)
        self.elsewhere += _machine_cpu()
        _GC.on = False
        self.gc_s = _GC.seconds
        _SITES.on = False
        self.sites = _SITES.counts
        self.times = {
            name: (
                cpu - self.times_start.get(name, (0.0, 0.0))[0],
                wait - self.times_start.get(name, (0.0, 0.0))[1],
            )
            for name, (cpu, wait) in times.items()
        }
        now = _switches()
        self.delta = {
            name: (v - self.start.get(name, (0, 0))[0], n - self.start.get(name, (0, 0))[1])
            for name, (v, n) in now.items()
        }


def _keep_loss() -> Any:
    """The floor's batch end: the loss tensor kept in a list of 50, cleared when full."""
    kept: list[Any] = []

    def keep_loss(self: Any, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        kept.append(outputs["loss"])
        if len(kept) == 50:
            kept.clear()

    return keep_loss


def _apprise_callback(url: str) -> Any:
    """A callback that calls Apprise at every epoch end (what a user writes by hand)."""
    import apprise

    notifier = apprise.Apprise()
    notifier.add(url)
    base = callback_base("lightning")

    def on_train_epoch_end(self: Any, trainer: Any, module: Any) -> None:
        notifier.notify(title="epoch", body=f"epoch {trainer.current_epoch} done")

    return type("AppriseEveryEpoch", (base,), {"on_train_epoch_end": on_train_epoch_end})()


class _Hooks:
    """With ``--hooks``: seconds AFSNotify's hooks took on the training thread, by part of
    the run (``start``: its train-start hook; ``steps``: the per-batch hooks; ``epochs``: the
    other hooks inside the loop; ``outside``: those before and after it)."""

    PARTS = ("start", "steps", "epochs", "outside")
    profiler: Any = None  # a cProfile.Profile run inside the hook named `profiled`
    profiled = ""

    def __init__(self) -> None:
        self.clock: HookClock | None = None
        self.seconds: dict[str, float] = dict.fromkeys(self.PARTS, 0.0)

    def watch(self, callback: Any) -> None:
        if self.profiled:
            hook = getattr(callback, self.profiled)
            profiler = type(self).profiler

            def profiled(*args: Any, **kwargs: Any) -> Any:
                profiler.enable()
                try:
                    return hook(*args, **kwargs)
                finally:
                    profiler.disable()

            setattr(callback, self.profiled, profiled)
        self.clock = HookClock(callback, "lightning", record=True)

    def split(self, started: float, ended: float) -> None:
        for name, start, seconds in (self.clock.log if self.clock else None) or ():
            if not started <= start <= ended:
                part = "outside"
            elif name == "on_train_start":
                part = "start"
            elif "batch" in name:
                part = "steps"
            else:
                part = "epochs"
            self.seconds[part] += seconds


def _one(
    variant: str,
    receiver: LoopbackReceiver,
    steps: int,
    epochs: int,
    wakes: _Wakes,
    hooks: _Hooks | None = None,
) -> tuple[float, float]:
    """(fit seconds, loop seconds) of one run of ``variant``."""
    url = receiver.url("/hook")
    callbacks: list[Any] = []
    wrap = None
    if variant == "knockknock":
        wrap, _ = knockknock_wrap(url)
    elif variant == "empty callback":
        from afs_callbacks.integrations.lightning import AFSNotify

        callbacks.append(same_hooks_callback("lightning", AFSNotify))
    elif variant == IN_SITU_FLOOR:
        from afs_callbacks.integrations.lightning import AFSNotify

        callbacks.append(same_hooks_callback("lightning", AFSNotify, batch_end=_keep_loss()))
    elif variant == "apprise per epoch":
        callbacks.append(_apprise_callback("json://" + url.removeprefix("http://")))
    elif variant in AFS_VARIANTS:
        from afs_callbacks.integrations.lightning import AFSNotify

        options = AFS_OPTIONS[variant]
        fresh_state_dir()
        os.environ["WEBHOOK_URL"] = url
        if variant == "AFSNotify(off)":
            os.environ["AFS_ENABLED"] = "false"
        callbacks.append(AFSNotify(model_name="bench", **options))
        if hooks is not None:
            hooks.watch(callbacks[0])
    # Counted at the marks, outside the timed loop (a /proc read costs ~100 µs), in every
    # variant: the no-callback run's counts are what the framework and the receiver cost.
    timer = LoopTimer.make("lightning", before_start=wakes.begin, after_end=wakes.end)
    run = fit("lightning", callbacks, steps_per_epoch=steps, epochs=epochs, wrap=wrap, timer=timer)
    os.environ.pop("WEBHOOK_URL", None)
    os.environ.pop("AFS_ENABLED", None)
    if variant in AFS_VARIANTS:
        # Untimed: as a process that trained once and exits. Left open, each round's manager
        # (its sender's once-a-second look) and its end's chart, still being drawn, would
        # run through the next variants' loops and be counted against them.
        callbacks[0].tracker.manager.close()
        if hooks is not None:
            hooks.split(timer.started, timer.ended)
    return run.wall_s, run.hooks_loop_s


def _time_split(times: dict[str, tuple[float, float]], loop: float) -> dict[str, float]:
    """The training thread's loop seconds by scheduler state, and the others' CPU seconds."""
    on_cpu, waiting = times.get("MainThread", (0.0, 0.0))
    return {
        "on a CPU": on_cpu,
        "waiting for a CPU": waiting,
        "asleep": loop - on_cpu - waiting,
        "afs threads' CPU": sum(cpu for name, (cpu, _) in times.items() if name.startswith("afs")),
        "other threads' CPU": sum(
            cpu for name, (cpu, _) in times.items() if name != "MainThread" and not name.startswith("afs")
        ),
    }


def _in_situ(receiver: LoopbackReceiver, variant: str, epochs: int, steps: int) -> dict[str, float]:
    """The batch-end hook's cost inside a real loop: one fit in which every AFSNotify hook
    runs but the batch end only after odd batches, so the two kinds of step alternate every
    ~1 ms and share the machine's drift, the dispatch and the library's threads. Per step
    (forward to next forward, which holds the batch end between them; the first five of each
    epoch left out), µs: the mean of each kind, trimmed of its slowest and fastest 5 % and not."""
    from afs_callbacks.integrations.lightning import AFSNotify

    fresh_state_dir()
    os.environ["WEBHOOK_URL"] = receiver.url("/hook")
    if variant == "AFSNotify(off)":
        os.environ["AFS_ENABLED"] = "false"
    inner = None if variant == IN_SITU_FLOOR else AFSNotify(model_name="bench", **AFS_OPTIONS[variant])
    if inner is None:
        forward: dict[str, Any] = {"on_train_batch_end": functools.partial(_keep_loss(), None)}
    else:
        forward = {
            name: getattr(inner, name)
            for name in dir(type(inner))
            if (name.startswith("on_") or name in ("setup", "teardown")) and callable(getattr(inner, name))
        }

    # The adapter sees every other batch: it is shown a step count that moves once per batch
    # it sees, or it would take each of its batches for two steps and count them one by one.
    seen = SimpleNamespace(completed=0)

    def shown_seen(hook: str) -> Any:
        def shown(trainer: Any, pl_module: Any) -> None:
            forward[hook](trainer, pl_module)
            if inner is not None:
                inner._step_counter = seen  # after the adapter looked for (or checked) its own

        return shown

    def batch_end(trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx % 2:
            seen.completed += 1
            forward["on_train_batch_end"](trainer, pl_module, outputs, batch, batch_idx)

    members: dict[str, Any] = {name: staticmethod(hook) for name, hook in forward.items()}
    members["on_train_batch_end"] = staticmethod(batch_end)
    for hook in ("on_train_start", "on_train_epoch_start"):
        if hook in forward:
            members[hook] = staticmethod(shown_seen(hook))
    skipped = [name for name in dir(AFSNotify) if name.startswith("on_") and getattr(AFSNotify, name) is None]
    members.update(dict.fromkeys(skipped))
    halves = type("Alternating", (callback_base("lightning"),), members)()
    run = fit("lightning", [halves], steps_per_epoch=steps, epochs=epochs)
    os.environ.pop("WEBHOOK_URL", None)
    os.environ.pop("AFS_ENABLED", None)
    if inner is not None:
        inner.tracker.manager.close()
    durations: dict[bool, list[float]] = {True: [], False: []}
    for epoch in range(epochs):
        first = epoch * steps
        for index in range(5, steps - 1):
            durations[bool(index % 2)].append(run.stamps[first + index + 1] - run.stamps[first + index])

    def mean(values: list[float], trim: float) -> float:
        kept = sorted(values)[int(len(values) * trim) : len(values) - int(len(values) * trim)]
        return sum(kept) / len(kept) * 1e6

    return {
        "with, trimmed": mean(durations[True], 0.05),
        "without, trimmed": mean(durations[False], 0.05),
        "with": mean(durations[True], 0.0),
        "without": mean(durations[False], 0.0),
    }


def main() -> None:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rounds", type=int, default=6, help="rounds of all variants (default 6)")
        parser.add_argument(
            "--epochs",
            type=int,
            default=10,
            help="epochs of 200 steps a run (default 10)",
        )
        parser.add_argument("--seed", type=int, default=0, help="seed of the rounds' orders (default 0)")
        parser.add_argument(
            "--paired",
            action="store_true",
            help="run each variant between two no-callback runs and compare it with them",
        )
        parser.add_argument(
            "--waits", action="store_true", help="also count each thread's wake-ups by the line that waited"
        )
        parser.add_argument(
            "--hooks", action="store_true", help="also time AFSNotify's hooks on the training thread"
        )
        parser.add_argument(
            "--profile", metavar="HOOK", default="", help="with --hooks: cProfile inside this AFSNotify hook"
        )
        parser.add_argument(
            "--in-situ",
            action="store_true",
            help="instead: the batch-end hook's cost inside a real loop (alternating epochs)",
        )
        parser.add_argument(
            "--variants",
            nargs="+",
            choices=VARIANTS,
            default=list(DEFAULT_VARIANTS),
            help="the variants to run (the no-callback one always runs)",
        )

    args = parse_args(__doc__.splitlines()[0], extra)
    args.hooks = args.hooks or bool(args.profile)
    quiet()
    if args.waits:
        _SITES.install()
    if args.profile:
        import cProfile

        _Hooks.profiler, _Hooks.profiled = cProfile.Profile(), args.profile
    import torch

    torch.set_num_threads(1)
    variants = tuple(v for v in VARIANTS if v == "none" or v in args.variants)
    afs_variants = tuple(v for v in AFS_VARIANTS if v in variants)
    rounds = 2 if args.quick else args.rounds
    steps, epochs = (50, 2) if args.quick else (200, args.epochs)
    report = Report("wall_clock", args)
    load_before = load_average()
    if args.in_situ:
        _report_in_situ(
            report,
            [IN_SITU_FLOOR, *(v for v in variants if v in AFS_VARIANTS)],
            rounds,
            2 if args.quick else 20,
            load_before,
        )
        return
    fits: dict[str, list[float]] = defaultdict(list)
    loops: dict[str, list[float]] = defaultdict(list)
    wake_rows: dict[str, list[dict[str, tuple[int, int]]]] = defaultdict(list)
    site_rows: dict[str, list[Counter[tuple[str, str]]]] = defaultdict(list)
    hook_rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    time_rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    sequence: list[_Run] = []  # every run, in the order run
    with LoopbackReceiver() as receiver:
        _one("none", receiver, steps, 1, _Wakes())  # warm-up: imports, first allocations
        shuffle = random.Random(args.seed).shuffle
        for index in range(rounds):
            # A new order each round: a rotation would put each variant after the same one
            # every round, and what a run leaves behind would be charged to its successor.
            order = list(variants)
            shuffle(order)
            if args.paired:  # each variant between two no-callback runs (the last one's ends the round)
                order = [name for variant in order if variant != "none" for name in ("none", variant)]
                if index == rounds - 1:
                    order.append("none")
            for variant in order:
                wakes = _Wakes()
                hooks = _Hooks() if args.hooks else None
                wall, loop = _one(variant, receiver, steps, epochs, wakes, hooks)
                sequence.append(_Run(variant, wall, loop, wakes.gc_s, wakes.elsewhere, *wakes.faults))
                if hooks is not None:
                    hook_rows[variant].append(hooks.seconds)
                fits[variant].append(wall)
                loops[variant].append(loop)
                wake_rows[variant].append(wakes.delta)
                time_rows[variant].append(
                    {
                        **_time_split(wakes.times, loop),
                        "gc": wakes.gc_s,
                        "other processes' CPU": wakes.elsewhere,
                    }
                )
                site_rows[variant].append(wakes.sites)
    load_after = load_average()

    def ratio(series: dict[str, list[float]], variant: str) -> float:
        if args.paired:
            if variant == "none":
                return 1.0
            return median(_beside_none(sequence, variant, "fit" if series is fits else "loop"))
        return median([a / b for a, b in zip(series[variant], series["none"], strict=True)])

    rows = []
    for variant in variants:
        outside = median([w - loop for w, loop in zip(fits[variant], loops[variant], strict=True)])
        rows.append(
            (
                variant,
                f"{ratio(fits, variant):.3f}",
                f"{ratio(loops, variant):.3f}",
                f"{quiet_ratio(fits, variant):.3f}",
                f"{quiet_ratio(loops, variant):.3f}",
                f"{outside:.3f} s",
                f"{median(fits[variant]):.2f} s",
                *([_carried(sequence, variant)] if args.paired else []),
            )
        )
    report.table(
        f"Lightning, {epochs} epochs × {steps} steps, median of {rounds} alternating rounds"
        + (", each run over the no-callback runs either side of it" if args.paired else "")
        + f" (load average {load_before} before, {load_after} after); quiet host: the mean of each"
        " variant's faster half of rounds over the no-callback run's",
        (
            "variant",
            "fit × none",
            "loop × none",
            "fit, quiet host",
            "loop, quiet host",
            "outside the loop",
            "fit (median)",
            *(["next run's loop × previous's"] if args.paired else []),
        ),
        rows,
    )
    parts = (
        "on a CPU",
        "waiting for a CPU",
        "asleep",
        "gc",
        "afs threads' CPU",
        "other threads' CPU",
        "other processes' CPU",
    )
    report.table(
        "the training thread's loop seconds split by its scheduler state (/proc schedstat), and the"
        " other threads' CPU during the loop, ms, median over rounds (asleep: waiting for the GIL,"
        " or I/O; gc: the garbage collector's time, within on a CPU; other processes: the death watcher,"
        " the kernel's writeback, anything else on the machine)",
        ("variant", "loop", *parts),
        [
            (
                variant,
                f"{median(loops[variant]) * 1e3:.0f}",
                *(f"{median([row[part] for row in time_rows[variant]]) * 1e3:.0f}" for part in parts),
            )
            for variant in variants
        ],
    )
    names = sorted({name for deltas in wake_rows.values() for delta in deltas for name in delta})
    switch_rows = []
    for name in names:
        cells = []
        for variant in variants:
            deltas = wake_rows[variant]
            voluntary = median([delta.get(name, (0, 0))[0] for delta in deltas])
            involuntary = median([delta.get(name, (0, 0))[1] for delta in deltas])
            cells.append(f"{voluntary:.0f} / {involuntary:.0f}")
        if any(cell != "0 / 0" for cell in cells):
            switch_rows.append((name, *cells))
    report.table(
        "context switches per thread during the loop, voluntary (wake-ups and GIL waits) /"
        " involuntary (preempted), median over rounds",
        ("thread", *variants),
        switch_rows,
    )
    if args.hooks:
        hook_table = []
        for variant in afs_variants:
            if args.paired:
                grew = (ratio(loops, variant) - 1) * median(loops["none"]) * 1e3
            else:
                grew = median([(a - b) * 1e3 for a, b in zip(loops[variant], loops["none"], strict=True)])
            parts = {part: median([row[part] * 1e3 for row in hook_rows[variant]]) for part in _Hooks.PARTS}
            inside = sum(parts[part] for part in ("start", "steps", "epochs"))
            hook_table.append(
                (
                    variant,
                    f"{grew:.0f}",
                    *(f"{parts[part]:.1f}" for part in ("start", "steps", "epochs")),
                    f"{grew - inside:.0f}",
                    f"{parts['outside']:.1f}",
                )
            )
        report.table(
            "the training thread in AFSNotify's hooks, ms per run (median over rounds), beside what"
            " the loop grew by (median paired difference to the no-callback run)",
            ("variant", "loop grew", "train start", "steps", "epochs", "not in the hooks", "outside"),
            hook_table,
        )
    if args.profile and not args.json:
        import pstats

        print(f"\ncProfile inside {args.profile}, every AFSNotify run, cumulative time:")
        pstats.Stats(_Hooks.profiler).sort_stats("cumulative").print_stats(25)
    if args.waits:
        for variant in afs_variants:
            runs = site_rows[variant]
            keys = sorted({key for sites in runs for key in sites})
            report.table(
                f"{variant}: wake-ups by the line that waited, during the loop (median over rounds)",
                ("thread", "waited at", "wake-ups"),
                [(*key, f"{median([sites.get(key, 0) for sites in runs]):.0f}") for key in keys],
            )
    for how, figure in (("median of rounds", ratio), ("quiet host", quiet_ratio)):
        for what, series, goal in (("fit() × none", fits, 1.03), ("loop × none", loops, 1.02)):
            for variant in afs_variants:
                measured = figure(series, variant)
                report.target(f"{what}, {variant}, {how}", f"≤ {goal}", f"{measured:.3f}", measured <= goal)
        if "AFSNotify()" in variants and "knockknock" in variants:
            ours, theirs = figure(fits, "AFSNotify()"), figure(fits, "knockknock")
            report.target(
                f"fit() × none, AFSNotify() vs knockknock, {how}",
                "at or below",
                f"{ours:.3f} vs {theirs:.3f}",
                ours <= theirs,
            )
    report.finish(
        load_before=load_before,
        load_after=load_after,
        fits={k: list(v) for k, v in fits.items()},
        loops={k: list(v) for k, v in loops.items()},
        sequence=[run._asdict() for run in sequence],
    )


def _dispatch_costs(calls: int = 200_000) -> list[tuple[str, str]]:
    """What Lightning's dispatch of one hook costs with no callback, with one whose hook is
    the base class's no-op (what any callback pays for each hook it does not define), and
    with one whose hook is None (skipped: AFSNotify's per-batch hooks it has no use for)."""
    import timeit

    from lightning.pytorch.profilers import PassThroughProfiler
    from lightning.pytorch.trainer import call

    base = callback_base("lightning")
    subjects = {
        "none": [],
        "one, its hook the base class's no-op": [base()],
        "one, its hook None": [type("Skipped", (base,), {"on_before_backward": None})()],
    }
    rows = []
    for label, callbacks in subjects.items():
        trainer = type("Trainer", (), {"lightning_module": None, "profiler": PassThroughProfiler()})()
        trainer.callbacks = callbacks
        seconds = timeit.timeit(
            lambda t=trainer: call._call_callback_hooks(t, "on_before_backward", None), number=calls
        )
        rows.append((label, f"{seconds / calls * 1e6:.2f}"))
    return rows


class _Run(NamedTuple):
    """One timed run, as the JSON output lists them in the order run."""

    variant: str
    fit: float  # s
    loop: float  # s
    gc: float  # s of the loop in the garbage collector
    elsewhere: float  # CPU s other processes used during the loop
    minor_faults: int  # during the loop
    major_faults: int


def _next_over_previous(sequence: list[_Run], variant: str) -> list[float]:
    """With ``--paired``: the loop of the no-callback run after each run of ``variant`` over
    the one before it: what the variant leaves behind for the work that follows (a sweep's
    next trial), beside the drift that any variant's runs show."""
    ratios = []
    for index, run in enumerate(sequence):
        if run.variant == variant and 0 < index < len(sequence) - 1:
            before, after = sequence[index - 1], sequence[index + 1]
            if before.variant == after.variant == "none":
                ratios.append(after.loop / before.loop)
    return ratios


def _carried(sequence: list[_Run], variant: str) -> str:
    ratios = _next_over_previous(sequence, variant)
    return f"{median(ratios):.3f}" if variant != "none" and ratios else "—"


def _beside_none(sequence: list[_Run], variant: str, field: str) -> list[float]:
    """With ``--paired``: each run of ``variant`` over the mean of the no-callback runs just
    before and after it (``field``: ``fit`` or ``loop``). Consecutive runs share most of
    the host's drift (on this VM one run's time correlates 0.66 with the next one's, 0.16
    with the fifth one's), which a ratio to a run further away in the round does not."""
    ratios = []
    for index, run in enumerate(sequence):
        if run.variant == variant and 0 < index < len(sequence) - 1:
            before, after = sequence[index - 1], sequence[index + 1]
            if before.variant == after.variant == "none":
                mean = (getattr(before, field) + getattr(after, field)) / 2
                ratios.append(getattr(run, field) / mean)
    return ratios


def quiet_ratio(series: dict[str, list[float]], variant: str) -> float:
    """``variant``'s time on a quiet host over the no-callback run's: the mean of each one's
    faster half of rounds. This VM's host slows whole runs down by up to 1.7× for seconds at
    a time, all of it on a CPU (no steal, no page faults: ``benchmarks/README.md``), which a
    median of paired ratios carries; a slower host only ever adds time, so the faster half of
    each variant's runs is where the variants can be told apart."""

    def faster_half(values: list[float]) -> float:
        kept = sorted(values)[: max(1, len(values) // 2)]
        return sum(kept) / len(kept)

    return faster_half(series[variant]) / faster_half(series["none"])


def _report_in_situ(report: Report, variants: list[str], rounds: int, epochs: int, load_before: str) -> None:
    rows = []
    with LoopbackReceiver() as receiver:
        _one("none", receiver, 50, 1, _Wakes())  # warm-up: imports, first allocations
        results: dict[str, list[dict[str, float]]] = defaultdict(list)
        for _ in range(rounds):
            for variant in variants:
                results[variant].append(_in_situ(receiver, variant, epochs=epochs, steps=200))
    for variant in variants:
        got = {key: median([r[key] for r in results[variant]]) for key in results[variant][0]}
        rows.append(
            [
                variant,
                f"{got['without, trimmed']:.1f}",
                f"{got['with, trimmed'] - got['without, trimmed']:+.1f}",
                f"{got['without']:.1f}",
                f"{got['with'] - got['without']:+.1f}",
            ]
        )
    report.table(
        "Lightning's dispatch of one hook call to one callback (trainer/call.py's _call_callback_hooks"
        " with a pass-through profiler), µs",
        ("callbacks", "µs per hook call"),
        _dispatch_costs(),
    )
    report.table(
        f"The batch-end hook inside a real loop: µs per step, 20 epochs × 200 steps, the hook after odd"
        f" batches only, median of {rounds} fits (load average {load_before} before, {load_average()} after)",
        ("variant", "step without (trimmed 5 %)", "the hook adds", "step without (all)", "the hook adds"),
        rows,
    )
    report.finish()


if __name__ == "__main__":
    main()
