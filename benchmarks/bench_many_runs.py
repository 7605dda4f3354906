"""Many training runs at once on one node: one state directory, one webhook (issue #23, item 4).

N processes start together, each a tiny real training (a linear regression fitted by SGD
in plain Python, a few milliseconds a step) inside ``RunNotifier``, with the defaults and
one webhook channel (``WEBHOOK_URL``) to a loopback HTTP server in this process, all on one
``AFS_STATE_DIR``. A few of them are killed with SIGKILL at random moments: one as soon as
its run has started (before its first state can be stored), one within its first second,
the others later. This process watches from outside:

* per process, from ``/proc``: threads and RSS before the library was imported and at
  their highest during the run;
* the death-watcher processes alive on the host (``afs-deathwatch``: those of this
  benchmark's own ``XDG_RUNTIME_DIR``, so that only its watcher counts, and all), at their
  most during the runs and once everything arrived;
* the messages the receiver got, by event id: every run's start and end exactly once,
  a death notice for every killed run, and none twice;
* the lock warnings the processes printed, and the wall time;
* for each killed run: whether its death notice came and how long after the kill. Runs
  still unreported then are checked once more by starting one more run (the next start
  reports what the watcher could not see).

* for each event id received twice: when each copy came, and its delivery row in the
  outbox (attempts, state, the lease owner's pid and whether that process was killed),
  to tell an at-least-once resend (a sender killed between its POST and its record) from
  a bug.

``--own-state-dirs`` gives each process a state dir of its own (as 24 separate jobs would
have): still one watcher, for the user.

Targets: one watcher; every start and end once, no duplicate; a death notice for every
killed run; no lock warning; threads and RSS per process printed (the issue asks that they
stay flat from 24 to 64 processes: compare the two runs' tables).

    python benchmarks/bench_many_runs.py [--quick] [--processes 24 | --64] [--kills 4]
        [--own-state-dirs] [--seed N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import Report, fresh_state_dir, median, parse_args, percentile

HERE = Path(__file__).resolve().parent
#: The watcher's process name (``afs_callbacks._watcher_main.PROCESS_NAME``), read from
#: ``/proc`` here without importing the library into this process's figures.
WATCHER_NAME = "afs-deathwatch"
KILLED_TITLE = "killed without a word"
#: Seconds every message has to arrive once the last run ended (the watcher looks every
#: second; a notice then goes through its own manager).
ARRIVAL_WAIT = 30.0
SAMPLE_EVERY = 0.2


# The training process ------------------------------------------------------------------


def child(marks: str, index: int, steps: int, step_s: float) -> None:
    """One run: baseline figures, then ``steps`` SGD steps inside ``RunNotifier``; writes
    ``marks/<index>.json`` once the run has started (the parent's cue for a kill)."""
    baseline = proc_figures(os.getpid())
    from afs_callbacks.integrations.loop import RunNotifier

    log_sends(os.path.join(marks, f"{index}.sends"))

    rng = random.Random(index)
    data = [(x / 32, 3 * x / 32 + 1 + rng.gauss(0, 0.05)) for x in range(32)]
    w = b = 0.0
    with RunNotifier("tiny-net", run_id=f"many-{index}", total_steps=steps) as run:
        mark = {"entered": time.monotonic(), "threads": baseline[0], "rss_kib": baseline[1]}
        path = os.path.join(marks, f"{index}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as file:
            json.dump(mark, file)
        os.replace(path + ".tmp", path)  # whole or absent for the parent
        for _ in range(steps):
            grad_w = grad_b = loss = 0.0
            for x, y in data:
                error = w * x + b - y
                loss += error * error / len(data)
                grad_w += 2 * error * x / len(data)
                grad_b += 2 * error / len(data)
            w, b = w - 0.1 * grad_w, b - 0.1 * grad_b
            run.step(loss=loss)
            time.sleep(step_s)


def log_sends(path: str) -> None:
    """Note each send of this process's senders in ``path``: ``claim`` before it (with
    whether its outbox keeps events in memory), ``done`` once its outcome is recorded. A
    ``claim`` with no ``done`` is a send the process did not live to record."""
    from afs_callbacks.delivery.sender import ChannelWorker

    deliver = ChannelWorker._deliver
    out = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (for the process's life)

    def logged(self: Any, claim: Any) -> None:
        kept = getattr(self.outbox, "_kept", None) is not None
        out.write(f"claim {claim.event.id} {time.time():.3f} kept={int(kept)} attempts={claim.attempts}\n")
        deliver(self, claim)
        out.write(f"done {claim.event.id} {time.time():.3f}\n")

    ChannelWorker._deliver = logged  # type: ignore[method-assign]


def sends_of(marks: str, index: int) -> list[list[str]]:
    """The lines :func:`log_sends` wrote for run ``index``, split."""
    try:
        with open(os.path.join(marks, f"{index}.sends"), encoding="utf-8") as file:
            return [line.split() for line in file]
    except OSError:
        return []


def proc_figures(pid: int) -> tuple[int, int]:
    """(threads, RSS in KiB) of ``pid`` from ``/proc``; (0, 0) once it is gone."""
    threads = rss = 0
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("Threads:"):
                    threads = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return threads, rss


def watchers(runtime_dir: str) -> tuple[list[int], int]:
    """(pids of the death watchers started under ``runtime_dir``, this benchmark's
    ``XDG_RUNTIME_DIR``; how many watchers on the host in all, other users' and tests' too)."""
    mine = f"XDG_RUNTIME_DIR={runtime_dir}".encode()
    ours, total = [], 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", encoding="utf-8") as comm:
                if comm.read().strip() != WATCHER_NAME:
                    continue
            with open(f"/proc/{entry}/environ", "rb") as environ:
                variables = environ.read().split(b"\0")
        except OSError:
            continue
        total += 1
        if mine in variables:
            ours.append(int(entry))
    return ours, total


# The benchmark -------------------------------------------------------------------------


@dataclass
class Run:
    """One training process as seen from here."""

    index: int
    process: subprocess.Popen[bytes]
    stderr: Path
    spawned: float
    kill_after: float | None = None  # seconds after its run started; None: not killed
    killed_at: float | None = None
    baseline: tuple[int, int] = (0, 0)
    peak: tuple[int, int] = (0, 0)
    middle: tuple[int, int] = (0, 0)  # the first sample past the middle of its run
    started: float | None = None

    @property
    def run_id(self) -> str:
        return f"many-{self.index}"


@dataclass
class Received:
    """What reached the webhook, by event id, with when each id was first seen."""

    first_seen: dict[str, float] = field(default_factory=dict)
    seen_at: dict[str, list[float]] = field(default_factory=dict)  # every copy's arrival
    times: Counter[str] = field(default_factory=Counter)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    read: int = 0
    torn: int = 0  # requests whose body did not arrive whole

    def take(self, requests: list[Any]) -> None:
        """Note the requests that came since the last call."""
        now = time.monotonic()
        for request in requests[self.read :]:
            try:
                body = request.json()
            except ValueError:  # the client gave up mid-request (its timeout, on a loaded machine)
                self.torn += 1
                continue
            event_id = request.headers.get("webhook-id") or request.headers.get("Webhook-Id") or "?"
            self.times[event_id] += 1
            self.first_seen.setdefault(event_id, now)
            self.seen_at.setdefault(event_id, []).append(now)
            self.bodies.setdefault(event_id, body)
        self.read = len(requests)

    def of_run(self, run_id: str, kind: str) -> list[str]:
        """The ids of ``run_id``'s messages of ``kind`` (start, end, death)."""
        return [i for i, body in self.bodies.items() if body_run(body) == run_id and kind_of(body) == kind]


def body_run(body: dict[str, Any]) -> str | None:
    run_id = (body.get("context") or {}).get("run_id")
    return str(run_id) if run_id is not None else None


def kind_of(body: dict[str, Any]) -> str:
    """start, end, death or other, from a webhook body."""
    if KILLED_TITLE in str(body.get("title", "")):
        return "death"
    kind = str(body.get("event_type", ""))
    if kind in ("training_started", "training_resumed"):
        return "start"
    if kind in ("training_completed", "training_failed", "training_interrupted", "out_of_memory"):
        return "end"
    return "other"


def kill_plan(processes: int, kills: int, run_s: float, rng: random.Random) -> dict[int, float]:
    """Victim index -> seconds after its run started: the first at once (before its first
    state is stored), the second within its first second, the others later in the run."""
    victims = rng.sample(range(processes), min(kills, processes))
    later = max(1.1, run_s * 0.8)
    moments = [0.0, rng.uniform(0.05, 1.0)] + [rng.uniform(1.0, later) for _ in victims[2:]]
    return dict(zip(victims, moments[: len(victims)], strict=True))


def run_state_dir(state_dir: str, index: int, own: bool) -> str:
    """The state dir of run ``index``: the shared one, or one of its own."""
    return os.path.join(state_dir, f"p{index}") if own else state_dir


def spawn(index: int, state_dir: str, marks: str, steps: int, step_s: float, env: dict[str, str]) -> Run:
    """Start training process ``index`` on ``state_dir``."""
    stderr = Path(marks) / f"{index}.stderr"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", marks, str(index), str(steps)]
    with open(stderr, "wb") as errors:  # a file, not a pipe: a full pipe would stall it
        process = subprocess.Popen(
            [*command, str(step_s)],
            env={**env, "AFS_STATE_DIR": state_dir},
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    return Run(index, process, stderr, time.monotonic())


def read_mark(run: Run, marks: str) -> None:
    """Pick up the run's start mark (its baseline figures), once it is there."""
    if run.started is not None:
        return
    try:
        with open(os.path.join(marks, f"{run.index}.json"), encoding="utf-8") as file:
            mark = json.load(file)
    except (OSError, ValueError):
        return
    run.started = float(mark["entered"])
    run.baseline = (int(mark["threads"]), int(mark["rss_kib"]))


def measure(
    processes: int, kills: int, steps: int, step_s: float, seed: int | None, own: bool
) -> dict[str, Any]:
    """Run the whole scenario; every figure the tables show."""
    from afs_callbacks.testing import LoopbackReceiver

    rng = random.Random(seed)
    state_dir = os.path.realpath(fresh_state_dir())
    marks = os.path.join(state_dir, "bench")
    os.makedirs(marks)
    # A runtime dir of its own: the watcher counted is this benchmark's, not one another
    # run on this machine (a test, the user's own training) started or shares.
    runtime_dir = os.path.join(state_dir, "xdg-run")
    os.makedirs(runtime_dir, mode=0o700)
    received = Received()
    load = os.getloadavg()
    with LoopbackReceiver() as receiver:
        env = {
            **os.environ,
            "XDG_RUNTIME_DIR": runtime_dir,
            "WEBHOOK_URL": receiver.url("/hook"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
        }
        plan = kill_plan(processes, kills, steps * step_s, rng)
        began = time.monotonic()
        runs = [
            spawn(i, run_state_dir(state_dir, i, own), marks, steps, step_s, env) for i in range(processes)
        ]
        for run in runs:
            run.kill_after = plan.get(run.index)
        spawned_s = time.monotonic() - began
        most_watchers = most_on_host = 0
        watcher_peak = (0, 0)  # threads, RSS KiB of the watcher at its highest
        sampled = 0.0
        victims = [run for run in runs if run.kill_after is not None]
        while any(run.process.poll() is None for run in runs):
            # The victims are watched every few milliseconds (a kill "as soon as its run
            # started" must be one); everything else every SAMPLE_EVERY, so that this
            # process leaves the CPU (and the GIL of the receiver's threads) to the runs.
            for run in victims:
                read_mark(run, marks)
                if run.started is None or run.killed_at is not None:
                    continue
                if time.monotonic() >= run.started + (run.kill_after or 0.0):
                    run.process.send_signal(signal.SIGKILL)
                    run.killed_at = time.monotonic()
            now = time.monotonic()
            if now - sampled >= SAMPLE_EVERY:
                sampled = now
                for run in runs:
                    read_mark(run, marks)
                    if run.process.poll() is not None:
                        continue
                    threads, rss = proc_figures(run.process.pid)
                    run.peak = (max(run.peak[0], threads), max(run.peak[1], rss))
                    if run.started and not run.middle[0] and now > run.started + steps * step_s / 2:
                        run.middle = (threads, rss)
                ours, on_host = watchers(runtime_dir)
                most_watchers, most_on_host = max(most_watchers, len(ours)), max(most_on_host, on_host)
                for pid in ours:
                    threads, rss = proc_figures(pid)
                    watcher_peak = (max(watcher_peak[0], threads), max(watcher_peak[1], rss))
                received.take(receiver.requests)
            pending = any(run.killed_at is None for run in victims)
            time.sleep(0.005 if pending else SAMPLE_EVERY)
        ended_s = time.monotonic() - began

        def complete() -> bool:
            received.take(receiver.requests)
            return all(received.of_run(r.run_id, "death" if r.killed_at else "end") for r in runs)

        deadline = time.monotonic() + ARRIVAL_WAIT
        while not complete() and time.monotonic() < deadline:
            time.sleep(0.1)
        arrived_s = time.monotonic() - began
        after_ours, after_on_host = watchers(runtime_dir)
        watcher_rss_mib = max((proc_figures(pid)[1] / 1024 for pid in after_ours), default=0.0)
        watcher_threads = max((proc_figures(pid)[0] for pid in after_ours), default=0)
        # The killed runs the watcher did not report: does the next run's start report them?
        unreported = [r for r in runs if r.killed_at and not received.of_run(r.run_id, "death")]
        by_next_start = 0
        if unreported:
            later = spawn(processes, run_state_dir(state_dir, unreported[0].index, own), marks, 5, 0.01, env)
            later.process.wait(120)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                received.take(receiver.requests)
                by_next_start = sum(bool(received.of_run(r.run_id, "death")) for r in unreported)
                if by_next_start == len(unreported):
                    break
                time.sleep(0.1)
        for pid in watchers(runtime_dir)[
            0
        ]:  # it lingers by design (AFS_DEATHWATCH_GRACE); not past the benchmark
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return summarise(runs, received, state_dir, unreported, by_next_start) | {
        "twice": duplicates(runs, received, state_dir, own),
        "own_state_dirs": own,
        "watcher_rss_mib": watcher_rss_mib,
        "watcher_threads": watcher_threads,
        "watcher_peak_threads": watcher_peak[0],
        "watcher_peak_rss_mib": watcher_peak[1] / 1024,
        "processes": processes,
        "load_average": load,
        "spawn_s": spawned_s,
        "wall_s": ended_s,
        "arrived_s": arrived_s,
        "watchers_during": most_watchers,
        "watchers_on_host_during": most_on_host,
        "watchers_after": len(after_ours),
        "watchers_on_host_after": after_on_host,
    }


def summarise(
    runs: list[Run], received: Received, state_dir: str, unreported: list[Run], by_next_start: int
) -> dict[str, Any]:
    """Per-process cost, messages by kind and run, the kills."""
    survivors = [run for run in runs if not run.killed_at]
    starts = {run.run_id: len(received.of_run(run.run_id, "start")) for run in runs}
    ends = {run.run_id: len(received.of_run(run.run_id, "end")) for run in runs}
    deaths = {run.run_id: len(received.of_run(run.run_id, "death")) for run in runs}
    warnings = Counter[str]()
    for run in runs:
        for line in run.stderr.read_text(errors="replace").splitlines():
            if "write lock" in line:
                warnings["lock"] += 1
            elif "afs-callbacks" in line:
                warnings["other"] += 1
    kills = []
    for run in runs:
        if not run.killed_at:
            continue
        notice = next(iter(received.of_run(run.run_id, "death")), None)
        kills.append(
            {
                "run": run.run_id,
                "planned_s": run.kill_after,
                "killed_after_start_s": run.killed_at - (run.started or run.killed_at),
                "start_received": starts[run.run_id] > 0,
                "notice": notice is not None,
                "notice_after_s": received.first_seen[notice] - run.killed_at if notice else None,
                "detected_by": (received.bodies[notice].get("context") or {}).get("detected_by")
                if notice
                else None,
                "unreported_by_watcher": run in unreported,
            }
        )
    threads = [run.peak[0] - run.baseline[0] for run in survivors if run.baseline[0]]
    rss = [(run.peak[1] - run.baseline[1]) / 1024 for run in survivors if run.baseline[1]]
    return {
        "threads_before": median([r.baseline[0] for r in survivors if r.baseline[0]] or [0]),
        "threads_peak": max((r.peak[0] for r in survivors), default=0),
        "threads_added_median": median(threads or [0]),
        "threads_added_max": max(threads, default=0),
        "rss_before_mib": median([r.baseline[1] / 1024 for r in survivors if r.baseline[1]] or [0]),
        "rss_peak_mib_median": median([r.peak[1] / 1024 for r in survivors] or [0]),
        "rss_middle_mib_median": median([r.middle[1] / 1024 for r in survivors if r.middle[1]] or [0]),
        "threads_middle_median": median([r.middle[0] for r in survivors if r.middle[0]] or [0]),
        "rss_added_mib_median": median(rss or [0]),
        "rss_added_mib_p90": percentile(rss, 0.9),
        "starts_missing": sum(n == 0 for rid, n in starts.items() if rid in {r.run_id for r in survivors}),
        "starts_twice": sum(n > 1 for n in starts.values()),
        "ends_missing": sum(ends[r.run_id] == 0 for r in survivors),
        "ends_twice": sum(n > 1 for n in ends.values()),
        "deaths_twice": sum(n > 1 for n in deaths.values()),
        "ids_twice": sum(n > 1 for n in received.times.values()),
        "ids_twice_by_kind": dict(
            Counter(kind_of(received.bodies[i]) for i, n in received.times.items() if n > 1)
        ),
        "messages": sum(received.times.values()),
        "torn_requests": received.torn,
        "by_kind": dict(Counter(kind_of(body) for body in received.bodies.values())),
        "lock_warnings": warnings["lock"],
        "other_warnings": warnings["other"],
        "kills": kills,
        "by_next_start": by_next_start,
        "state_dir": state_dir,
    }


def duplicates(runs: list[Run], received: Received, state_dir: str, own: bool) -> list[dict[str, Any]]:
    """Each event id received twice: its kind and run, when the copies came, and what its
    delivery row says (attempts, state, last error, the lease owner and whether that
    process was one of the killed)."""
    import sqlite3

    killed = {run.process.pid: run.run_id for run in runs if run.killed_at}
    index = {run.run_id: run.index for run in runs}
    found = []
    for event_id, count in received.times.items():
        if count < 2:
            continue
        body = received.bodies[event_id]
        run_id = body_run(body) or ""
        path = os.path.join(run_state_dir(state_dir, index.get(run_id, 0), own), "outbox.sqlite3")
        rows: list[Any] = []
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn,
        ):
            rows = conn.execute(
                "SELECT channel, state, attempts, lease_owner, last_error, last_attempt, delivered_at"
                " FROM deliveries WHERE event_id = ?",
                (event_id,),
            ).fetchall()
        copies = received.seen_at[event_id]
        senders = []  # (run, claimed, recorded) of each training process's send of it
        for run in runs:
            lines = [
                line for line in sends_of(os.path.join(state_dir, "bench"), run.index) if line[1] == event_id
            ]
            for claim in (line for line in lines if line[0] == "claim"):
                recorded = any(line[0] == "done" and float(line[2]) >= float(claim[2]) for line in lines)
                senders.append(
                    {"run": run.run_id, "kept": claim[3], "recorded": recorded, "at": float(claim[2])}
                )
        owners = [str(row[3] or "") for row in rows]
        owner_pids = [int(o.rsplit(":", 1)[1]) for o in owners if ":" in o and o.rsplit(":", 1)[1].isdigit()]
        found.append(
            {
                "id": event_id,
                "kind": kind_of(body),
                "event_type": body.get("event_type"),
                "run": run_id,
                "copies": count,
                "apart_s": copies[-1] - copies[0],
                "deliveries": [
                    {"channel": r[0], "state": r[1], "attempts": r[2], "lease_owner": r[3], "error": r[4]}
                    for r in rows
                ],
                "owner_killed": [killed.get(pid) for pid in owner_pids],
                "senders": senders,
                "run_killed": run_id in killed.values(),
                # The documented at-least-once case: a sender killed between its POST and
                # its record, so another process sent it again.
                "killed_mid_send": any(
                    not sender["recorded"] and sender["run"] in killed.values() for sender in senders
                ),
            }
        )
    return found


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processes", type=int, default=24, help="training processes at once")
    parser.add_argument("--64", dest="sixty_four", action="store_true", help="64 processes")
    parser.add_argument("--kills", type=int, default=4, help="runs killed with SIGKILL")
    parser.add_argument("--steps", type=int, default=400, help="steps per run")
    parser.add_argument("--step-ms", type=float, default=10.0, help="sleep per step (the GPU's time)")
    parser.add_argument("--seed", type=int, default=None, help="for the victims and their moments")
    parser.add_argument(
        "--own-state-dirs", action="store_true", help="each process its own state dir (still one watcher)"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        marks, index, steps, step_s = sys.argv[2:6]
        child(marks, int(index), int(steps), float(step_s))
        return
    args = parse_args(__doc__ or "", _extra)
    report = Report("many_runs", args)
    processes = 4 if args.quick else 64 if args.sixty_four else args.processes
    kills = 2 if args.quick else args.kills
    steps = 100 if args.quick else args.steps
    f = measure(processes, kills, steps, args.step_ms / 1000, args.seed, args.own_state_dirs)
    load = "load average {:.1f} {:.1f} {:.1f}".format(*f["load_average"])
    note = f"{load} on {os.cpu_count()} CPUs at the start"
    pair = "{} / {}".format
    where = "each on a state dir of its own" if args.own_state_dirs else "on one state dir"
    report.table(
        f"{processes} runs at once {where}, one webhook ({note})",
        ["figure", "value"],
        [
            ["spawning them all, s", f["spawn_s"]],
            ["wall time, first spawn to last exit, s", f["wall_s"]],
            ["wall time until every message arrived, s", f["arrived_s"]],
            ["threads per process before the library (median)", f["threads_before"]],
            [
                "threads per process added, median / max",
                pair(f["threads_added_median"], f["threads_added_max"]),
            ],
            ["RSS per process before the library, MiB (median)", f["rss_before_mib"]],
            [
                "RSS per process added, MiB, median / p90",
                f"{f['rss_added_mib_median']:.1f} / {f['rss_added_mib_p90']:.1f}",
            ],
            [
                "threads / RSS MiB per process mid-run (median)",
                pair(f["threads_middle_median"], f"{f['rss_middle_mib_median']:.1f}"),
            ],
            [
                "RSS per process at its peak, MiB (median; the end renders its chart)",
                f["rss_peak_mib_median"],
            ],
            [
                "death watchers of this benchmark (its XDG_RUNTIME_DIR), most during / after",
                pair(f["watchers_during"], f["watchers_after"]),
            ],
            [
                "the watcher: threads / RSS MiB, at its peak / once everything arrived",
                f"{f['watcher_peak_threads']} / {f['watcher_peak_rss_mib']:.1f}, "
                f"{f['watcher_threads']} / {f['watcher_rss_mib']:.1f}",
            ],
            [
                "death watchers on the host, most during / after",
                pair(f["watchers_on_host_during"], f["watchers_on_host_after"]),
            ],
            [
                "lock warnings printed / other afs-callbacks lines",
                pair(f["lock_warnings"], f["other_warnings"]),
            ],
        ],
    )
    survivors = processes - len(f["kills"])
    twice = f"{f['starts_twice']} / {f['ends_twice']} / {f['deaths_twice']}"
    report.table(
        "Messages at the webhook, by event id",
        ["what", "expected", "received"],
        [
            ["messages", "", f["messages"]],
            *[[f"  of kind {kind}", "", n] for kind, n in sorted(f["by_kind"].items())],
            ["runs that ended with no start received", 0, f["starts_missing"]],
            ["runs that ended with no end received", 0, f["ends_missing"]],
            ["runs with two starts / two ends / two death notices", "0 / 0 / 0", twice],
            ["event ids received twice (by kind)", 0, f"{f['ids_twice']} {f['ids_twice_by_kind'] or ''}"],
            ["requests that did not arrive whole (the client timed out)", 0, f["torn_requests"]],
            ["runs that ended normally", survivors, survivors],
        ],
    )
    report.table(
        "SIGKILLed runs: the death notice",
        ["run", "killed s after its start", "its start received", "notice", "s after the kill", "by"],
        [
            [
                k["run"],
                k["killed_after_start_s"],
                "yes" if k["start_received"] else "no",
                "yes" if k["notice"] else "NONE",
                "" if k["notice_after_s"] is None else k["notice_after_s"],
                k["detected_by"] or "",
            ]
            for k in f["kills"]
        ],
    )
    if f["twice"]:
        report.table(
            "Event ids received twice: the copies and the delivery row",
            [
                "run",
                "kind",
                "copies, s apart",
                "deliveries (state, attempts)",
                "sent by (run: recorded?, store in memory?)",
                "run killed",
            ],
            [
                [
                    t["run"],
                    t["event_type"],
                    f"{t['copies']}, {t['apart_s']:.2f}",
                    "; ".join(f"{d['state']} x{d['attempts']}" for d in t["deliveries"]),
                    ", ".join(
                        f"{x['run']}: {'recorded' if x['recorded'] else 'NOT recorded'}, {x['kept']}"
                        for x in t["senders"]
                    )
                    or "none of them (the watcher)",
                    "yes" if t["run_killed"] else "no",
                ]
                for t in f["twice"]
            ],
        )
    killed = len(f["kills"])
    noticed = sum(k["notice"] for k in f["kills"])
    by_watcher = sum(k["notice"] and not k["unreported_by_watcher"] for k in f["kills"])
    delays = [k["notice_after_s"] for k in f["kills"] if k["notice_after_s"] is not None]
    missing = f["starts_missing"] + f["ends_missing"]
    report.target(
        "death watchers (one per user and host)",
        "1",
        str(f["watchers_during"]),
        f["watchers_during"] == 1,
        note,
    )
    report.target("starts and ends missing", "0", str(missing), missing == 0)
    mid_send = sum(t["killed_mid_send"] for t in f["twice"])
    beyond = f["ids_twice"] - mid_send
    report.target(
        "event ids received twice, beyond a sender killed between its send and its record",
        "0",
        f"{beyond} (and {mid_send} resent after such a kill)",
        beyond == 0,
    )
    report.target("lock warnings", "0", str(f["lock_warnings"]), f["lock_warnings"] == 0)
    report.target(
        "SIGKILLed runs with a death notice while the others run",
        f"{killed} of {killed}",
        f"{by_watcher} of {killed} (slowest {max(delays, default=0.0):.1f} s;"
        f" {noticed - by_watcher} more at the next start)",
        by_watcher == killed,
    )
    report.finish(**f)


if __name__ == "__main__":
    main()
