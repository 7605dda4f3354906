"""In-loop accounting: what AFSNotify costs a run, measured from inside that same run.

On a shared 2-vCPU machine the CPU speed drifts by ±20-30 % within seconds, so a ratio of
two runs' wall times (one with AFSNotify, one without) carries that drift. Here one
*instrumented* run with AFSNotify records, over the same seconds of its own training loop:

* ``hook_s``: wall seconds the training thread spent inside AFSNotify's hooks
  (:class:`HookClock` wraps each hook on the instance; the recording wrapper costs under a
  microsecond per call on the project's VM, about 0.8 µs, and the table title prints the
  figure measured on the spot: the part inside the timed interval, about one
  ``perf_counter`` call, inflates ``hook_s``; the rest inflates ``loop_s`` without being
  subtracted; both count against AFSNotify), split by hook name into
  per-step hooks (the train-batch hooks, and any other hook, not an epoch or evaluation
  one, called once a step or more), start/end hooks (train start/end, setup, teardown,
  init, and each per-step hook's first call: its one-time set-up) and the rest: epoch
  boundaries, validation (its per-batch hooks included), logging and saving. Only calls
  between the loop's start and end marks count as in the loop; calls during fit() outside
  them count as outside. Per step = per-step hook seconds / steps (a mean: a slow call at
  every epoch end counts); per epoch boundary = the rest / epochs;
* ``bg_s``: CPU seconds AFSNotify's own background threads (threads named ``afs…``) and
  child processes (the death watcher, any reaped child) used between the loop's start and
  end marks. A thread's CPU is read from ``/proc/self/task/<tid>/schedstat`` (ns; ``stat``
  ticks where schedstat is missing) at both marks; a thread that ends inside the loop
  reports its own ``time.thread_time()`` as it exits (``threading.Thread.run`` is wrapped
  for the instrumented run only); a thread started inside the loop counts from 0. Child
  processes: the watcher named in ``deathwatch.lock`` and our children running
  ``afs_callbacks``, read the same way, plus the CPU of children reaped during the loop
  (``cutime + cstime`` of this process);
* ``loop_s``: the loop's wall seconds (train-start hook to train-end hook).

Accounted loop ratio = ``loop_s / (loop_s − hook_s − bg_s)``: the loop as it ran, over the
loop with AFSNotify's training-thread time removed and, conservatively, every CPU second of
its background work removed too, as if each one had delayed the loop by a full second (on
2 cores with torch using both, a background CPU second takes a core from the loop for at
most that second). GIL waits the training thread suffers happen while a background thread
runs, so they lie inside ``bg_s``. Both sides come from the same seconds, so the machine's
drift cancels to first order. Not counted: work AFSNotify makes the framework do outside
its hooks, and cache effects; the wall-clock ratios beside these figures would show those.

Accounted whole-fit ratio = ``fit_s / (fit_s − hook_s − bg_s − outside_s)``, where
``outside_s`` is the time fit() spends outside the loop because of AFSNotify: the larger of
(a) the seconds in its hooks during fit() but outside the loop (train end, setup, teardown:
from the same instrumented run) and (b) the median over rounds of the paired wall-clock
difference of ``fit − loop`` between AFSNotify's timed runs and the no-callback runs
(clamped at 0; this part is wall clock, but small).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_STEP = "train_batch_start train_batch_end train_batch_begin batch_begin batch_end step_begin step_end"
_STEP += " substep_end pre_optimizer_step optimizer_step before_backward after_backward"
_STEP += " before_optimizer_step before_zero_grad"
# HF's on_log: the Trainer hands a step's loss over at its logging steps (step reporting).
_STEP += " log"
STEP_HOOKS = frozenset(f"on_{name}" for name in _STEP.split())
# Hooks whose first call starts the run (Keras announces it at the first epoch's begin).
FIRST_CALL_STARTS = frozenset({"on_epoch_begin"})
_START_END = "init_end fit_start fit_end train_start train_begin train_end exception"
_START_END += " sanity_check_start sanity_check_end"
START_END_HOOKS = frozenset({"setup", "teardown"} | {f"on_{name}" for name in _START_END.split()})
THREAD_PREFIX = "afs"
_TICK = os.sysconf("SC_CLK_TCK")


def task_cpu_s(task: str) -> float | None:
    """CPU seconds of one task (``/proc/<pid>/task/<tid>``), or None when it is gone."""
    try:
        return int(Path(task, "schedstat").read_text().split()[0]) / 1e9
    except FileNotFoundError:
        pass
    except (OSError, ValueError, IndexError):
        return None
    try:  # no schedstat in this kernel: clock ticks
        fields = Path(task, "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds of a live process: the sum of its live tasks (None when it is gone)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    values = [task_cpu_s(f"/proc/{pid}/task/{tid}") for tid in tasks]
    return sum(v for v in values if v is not None)


def reaped_children_cpu_s() -> float:
    """CPU seconds of this process's children that were waited for (cutime + cstime)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / _TICK


class Ledger:
    """CPU used by AFSNotify's background threads and processes between two marks.

    Use :meth:`watching` around the whole fit call, and call :meth:`loop_started` and
    :meth:`loop_ended` from the loop timer's hooks (before and after its own marks, so the
    reads stay out of the timed loop).
    """

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.start: dict[str, dict[int, float]] = {}
        self.end: dict[str, dict[int, float]] = {}
        self.reaped = (0.0, 0.0)
        self.marks = (float("nan"), float("nan"))
        self.exited: dict[int, tuple[str, float, float]] = {}  # tid: (name, cpu s, when)
        self.names: dict[int, str] = {}

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Have every thread started meanwhile report its CPU time when it ends."""
        original = threading.Thread.run
        ledger = self

        def run(thread: threading.Thread) -> None:
            try:
                original(thread)
            finally:
                if thread.name.startswith(THREAD_PREFIX) and thread.native_id is not None:
                    ledger.exited[thread.native_id] = (thread.name, time.thread_time(), time.perf_counter())

        threading.Thread.run = run  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            threading.Thread.run = original  # type: ignore[method-assign]

    def loop_started(self) -> None:
        """Read every counter at the loop's start."""
        self.start = self._snapshot()
        self.reaped = (reaped_children_cpu_s(), 0.0)
        self.marks = (time.perf_counter(), float("nan"))

    def loop_ended(self) -> None:
        """Read every counter at the loop's end."""
        self.marks = (self.marks[0], time.perf_counter())
        self.end = self._snapshot()
        self.reaped = (self.reaped[0], reaped_children_cpu_s())

    def background(self) -> dict[str, Any]:
        """CPU seconds in the loop: ``threads_s``, ``processes_s``, and per thread name."""
        start, end = self.start.get("threads", {}), self.end.get("threads", {})
        used = {tid: cpu - start.get(tid, 0.0) for tid, cpu in end.items()}
        begun, ended = self.marks
        for tid, (name, cpu, when) in self.exited.items():
            if tid not in end and begun <= when <= ended:  # ended inside the loop
                used[tid] = cpu - start.get(tid, 0.0)
                self.names[tid] = name
        per_name: dict[str, float] = {}
        for tid, seconds in used.items():
            name = self.names.get(tid, "?")
            per_name[name] = per_name.get(name, 0.0) + max(0.0, seconds)
        procs_start, procs_end = self.start.get("processes", {}), self.end.get("processes", {})
        live = sum(max(0.0, cpu - procs_start.get(pid, 0.0)) for pid, cpu in procs_end.items())
        reaped = max(0.0, self.reaped[1] - self.reaped[0])
        return {
            "threads_s": sum(per_name.values()),
            "processes_s": live + reaped,
            "per_thread_s": per_name,
            "processes": sorted(procs_end),
        }

    def _snapshot(self) -> dict[str, dict[int, float]]:
        threads = {}
        for thread in threading.enumerate():
            tid = thread.native_id
            if tid is None or not thread.name.startswith(THREAD_PREFIX):
                continue
            cpu = task_cpu_s(f"/proc/self/task/{tid}")
            if cpu is not None:
                threads[tid] = cpu
                self.names[tid] = thread.name
        processes = {}
        for pid in self._processes():
            cpu = process_cpu_s(pid)
            if cpu is not None:
                processes[pid] = cpu
        return {"threads": threads, "processes": processes}

    def _processes(self) -> set[int]:
        """The death watcher of our state dir, and our children running afs_callbacks."""
        found = set()
        with contextlib.suppress(OSError, ValueError):
            found.add(int(Path(self.state_dir, "deathwatch.lock").read_text().split()[0]))
        with contextlib.suppress(OSError):
            for tid in os.listdir("/proc/self/task"):
                with contextlib.suppress(OSError, ValueError):
                    found |= {int(p) for p in Path(f"/proc/self/task/{tid}/children").read_text().split()}
        return {pid for pid in found if pid != os.getpid() and _runs_afs(pid)}


def _runs_afs(pid: int) -> bool:
    try:
        return b"afs_callbacks" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def split_hooks(log: list[tuple[str, float, float]], marks: dict[str, float], steps: int) -> dict[str, float]:
    """Seconds in the hooks from a :class:`HookClock` call log ``(name, start, seconds)``:
    inside the loop (per-step, start/end, the rest) and during fit() outside the loop. The
    first call of each per-step hook (its one-time set-up) counts as start, not as a step."""
    calls: dict[str, int] = {}
    for name, _, _ in log:
        calls[name] = calls.get(name, 0) + 1
    out = {"step_s": 0.0, "start_end_s": 0.0, "boundary_s": 0.0, "outside_s": 0.0}
    step_calls: list[float] = []
    seen: set[str] = set()
    for name, start, seconds in log:
        if not marks["fit_start"] <= start <= marks["fit_end"]:
            continue  # before the fit call (HF's on_init_end) or after it
        if not marks["loop_start"] <= start <= marks["loop_end"]:
            out["outside_s"] += seconds
        elif name in STEP_HOOKS or (_unknown_train_hook(name) and calls[name] >= max(1, steps)):
            if name not in seen:
                seen.add(name)
                out["start_end_s"] += seconds
                continue
            out["step_s"] += seconds
            step_calls.append(seconds)
        elif name in START_END_HOOKS or (name in FIRST_CALL_STARTS and name not in seen):
            seen.add(name)
            out["start_end_s"] += seconds
        else:
            out["boundary_s"] += seconds
    out["loop_hook_s"] = out["step_s"] + out["start_end_s"] + out["boundary_s"]
    out["step_calls"] = len(step_calls)
    out["step_call_p50_s"] = statistics.median(step_calls) if step_calls else 0.0
    return out


def _unknown_train_hook(name: str) -> bool:
    """A hook of no known kind that is neither an epoch nor an evaluation one (with one step
    an epoch, epoch hooks run once a step too; evaluation ones run per eval batch)."""
    words = ("epoch", "validation", "test", "predict", "eval")
    return name not in START_END_HOOKS and not any(word in name for word in words)


def accounted(run: dict[str, Any], epochs: int, steps: int, wall_outside_extra_s: float) -> dict[str, float]:
    """The figures of one instrumented run (see the module docstring for the formulas)."""
    loop, fit, hooks = run["loop_s"], run["fit_s"], run["hooks"]
    bg = run["background"]["threads_s"] + run["background"]["processes_s"]
    outside = max(hooks["outside_s"], wall_outside_extra_s, 0.0)
    return {
        "loop_x": loop / (loop - hooks["loop_hook_s"] - bg),
        "fit_x": fit / (fit - hooks["loop_hook_s"] - bg - outside),
        "epoch_ms": hooks["boundary_s"] / epochs * 1000,
        "step_us": hooks["step_s"] / max(steps, 1) * 1e6,
        "step_call_p50_us": hooks["step_call_p50_s"] * 1e6,
        "start_end_ms": hooks["start_end_s"] * 1000,
        "hook_ms": hooks["loop_hook_s"] * 1000,
        "bg_ms": bg * 1000,
        "outside_ms": outside * 1000,
        "loop_s": loop,
    }


def wrapper_cost_us(calls: int = 10_000, repeats: int = 7) -> float:
    """What the recording :class:`HookClock` wrapper adds per call, on this machine, now
    (µs; the median of ``repeats`` paired timings, the machine's speed drifting)."""
    from _peers import HookClock

    class Plain:
        def on_batch_end(self) -> None:
            return None

    plain, clocked = Plain(), Plain()
    HookClock(clocked, "", record=True)
    differences = []
    for _ in range(repeats):
        timings = []
        for target in (plain, clocked):
            hook = target.on_batch_end
            start = time.perf_counter()
            for _ in range(calls):
                hook()
            timings.append(time.perf_counter() - start)
        differences.append((timings[1] - timings[0]) / calls * 1e6)
    return max(0.0, statistics.median(differences))


# Summaries, table and targets ------------------------------------------------------------

FIGURES = (
    "loop_x",
    "fit_x",
    "epoch_ms",
    "step_us",
    "step_call_p50_us",
    "start_end_ms",
    "hook_ms",
    "bg_ms",
    "outside_ms",
    "loop_s",
)


def summarise(
    runs: list[dict[str, Any]], epochs: int, steps: int, wall_outside_extra_s: float
) -> dict[str, Any]:
    """Per figure, the median over the rounds' instrumented runs; the accounted ratios' range;
    and every round's figures (``rounds``)."""
    rounds = [accounted(run, epochs, steps, wall_outside_extra_s) for run in runs]
    out: dict[str, Any] = {key: statistics.median(r[key] for r in rounds) for key in FIGURES}
    for key in ("loop_x", "fit_x"):
        out[f"{key}_min"] = min(r[key] for r in rounds)
        out[f"{key}_max"] = max(r[key] for r in rounds)
    out["wall_outside_extra_ms"] = wall_outside_extra_s * 1000
    out["rounds"] = rounds
    return out


def by_variant(
    raw: dict[str, Any], stats: dict[str, dict[str, float]], names: tuple[str, ...], epochs: int, steps: int
) -> dict[str, Any]:
    """:func:`summarise` for each variant in ``names`` on one shape (``steps`` per epoch),
    from its ``instrumented`` runs and its wall-clock ``outside_extra_s`` (clamped at 0)."""
    return {
        name: summarise(
            raw[name]["instrumented"], epochs, epochs * steps, max(0.0, stats[name]["outside_extra_s"])
        )
        for name in names
    }


def table(
    report: Any, framework: str, figures: dict[str, dict[str, dict[str, Any]]], wrapper_us: float
) -> None:
    """The accounting table of one framework: one row per shape and AFSNotify variant."""
    rows = []
    for label, by_variant in figures.items():
        for name, s in by_variant.items():
            rows.append(
                (
                    label,
                    name,
                    f"{s['loop_s']:.2f}",
                    f"{s['hook_ms']:.1f}",
                    f"{s['step_us']:.1f} ({s['step_call_p50_us']:.1f})",
                    f"{s['epoch_ms']:.2f}",
                    f"{s['start_end_ms']:.1f}",
                    f"{s['bg_ms']:.1f}",
                    f"{s['loop_x']:.3f}×",
                    f"{s['outside_ms']:.0f}",
                    f"{s['fit_x']:.3f}×",
                )
            )
    report.table(
        f"{framework}: in-loop accounting, one instrumented AFSNotify run per shape and round, medians"
        f" (drift-free: each ratio from one run's own seconds; hook wrapper ≈{wrapper_us:.2f} µs/call"
        " counted against AFSNotify)",
        (
            "shape",
            "variant",
            "loop s",
            "hooks in loop ms",
            "step hooks µs/step (median call)",
            "boundary ms/epoch",
            "start/end + first step ms",
            "background CPU ms",
            "accounted loop ×",
            "outside-loop ms",
            "accounted fit ×",
        ),
        rows,
    )


def targets(
    report: Any, framework: str, figures: dict[str, dict[str, dict[str, Any]]], names: tuple[str, ...]
) -> None:
    """Issue #16's targets from the accounting: worst shape, medians over rounds."""
    checks = (
        ("loop_x", "loop, accounted", 1.02, "≤ 1.02×", "{:.3f}×"),
        ("fit_x", "whole fit(), accounted", 1.03, "≤ 1.03×", "{:.3f}×"),
        ("epoch_ms", "training-thread work per epoch boundary", 1.0, "≤ 1 ms", "{:.2f} ms"),
        ("step_us", "per-step hook", 2.0, "≤ 2 µs", "{:.2f} µs"),
    )
    for name in names:
        for key, what, limit, goal, fmt in checks:
            label, worst = max(figures.items(), key=lambda item: item[1][name][key])
            s = worst[name]
            spread = ""
            if f"{key}_min" in s:
                spread = f"rounds {s[f'{key}_min']:.3f}–{s[f'{key}_max']:.3f}"
            report.target(
                f"{framework}, {name}: {what}, worst shape",
                goal,
                f"{fmt.format(s[key])} at {label}",
                s[key] <= limit,
                spread,
            )
