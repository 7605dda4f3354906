"""A sweep's end: what its summary says, and when a sweep whose trials ran in processes of
their own is over.

The summary reads the trials' events from the history they share (one state dir): each
trial's newest end since the sweep opened, its value of the sweep's metric and its
parameters; a trial with no end stored takes its outcome from its ``runs`` row (a trial
the death watcher found killed). :func:`summarise` is used by every voice of
:mod:`afs_callbacks.sweeps` (a ``Sweep`` block, an Optuna study's own process).

A sweep whose trials run in other processes (Ray Tune, W&B agents, SLURM array tasks)
without a block is opened by its first trial (:mod:`.sweep_claims`, voice ``trials``);
nothing in a trial knows when the sweep is over. The death watcher, which outlives the
trials, asks :func:`quiet_summaries` every round: a sweep with no trial running and none
started or ended for :func:`quiet_seconds` is over, and the one process that closes its
claim sends its summary. :func:`awaiting_summary` keeps the watcher alive till then.

No manager here: the watcher imports this and stays small.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from afs_callbacks._log import get_logger
from afs_callbacks.delivery import sweep_claims
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.events import TERMINAL_TYPES, EventType, NotificationEvent, NotificationLevel
from afs_callbacks.formatting import format_duration
from afs_callbacks.outcome import LIVE_STATUSES, Outcome
from afs_callbacks.runstate import RunState

log = get_logger(__name__)

#: Most events of the history read for one summary.
MAX_EVENTS_READ = 20_000
#: Seconds with no trial running, started or ended after which a sweep nobody closes is
#: over (``AFS_SWEEP_QUIET`` overrides it).
QUIET_SECONDS = 60.0
#: A trial on another host (a state dir on a shared file system) whose row has not been
#: written for this long no longer counts as running: its host's watcher may be gone too.
OTHER_HOST_STALE_SECONDS = 6 * 3600.0
#: Slack on "started since the sweep opened" (clocks of one host; a row written a hair early).
_SINCE_SLACK = 1.0


def quiet_seconds(default: float = QUIET_SECONDS) -> float:
    """``AFS_SWEEP_QUIET`` (seconds) where set, else ``default``."""
    try:
        return max(0.0, float(os.environ.get("AFS_SWEEP_QUIET", default)))
    except ValueError:
        return default


@dataclass
class TrialEnd:
    """One trial as the summary counts it."""

    trial: str
    outcome: Outcome | None  # None: started, no end stored (still running, or killed)
    value: float | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepSummary:
    """What a sweep's end says: its trials by outcome and the best one."""

    name: str
    trials: list[TrialEnd]
    seconds: float
    metric: str | None
    mode: str

    def count(self, *outcomes: Outcome) -> int:
        """Trials that ended with one of ``outcomes``."""
        return sum(1 for t in self.trials if t.outcome in outcomes)

    @property
    def failed(self) -> int:
        """Trials that crashed or were killed (a pruning is not a failure)."""
        return self.count(Outcome.FAILED, Outcome.KILLED, Outcome.STOPPED_ON_PROBLEM)

    @property
    def pruned(self) -> int:
        """Trials a pruner or scheduler ended."""
        return self.count(Outcome.PRUNED)

    @property
    def unfinished(self) -> int:
        """Trials with no end stored."""
        return sum(1 for t in self.trials if t.outcome is None)

    @property
    def best(self) -> TrialEnd | None:
        """The trial with the best value (``mode``), among those that have one."""
        scored = [t for t in self.trials if t.value is not None]
        if not scored:
            return None
        pick = min if self.mode == "min" else max
        return pick(scored, key=lambda t: t.value if t.value is not None else 0.0)

    def lines(self) -> list[str]:
        """The summary in words."""
        finished = len(self.trials) - self.unfinished
        lines = [
            f"{len(self.trials)} trials in {format_duration(self.seconds)}: {finished} ended,"
            f" {self.pruned} pruned, {self.failed} failed"
            + (f", {self.unfinished} without an end" if self.unfinished else "")
            + "."
        ]
        best = self.best
        if best is not None:
            shown = ", ".join(f"{name}={_short(value)}" for name, value in best.params.items())
            where = f"trial {best.trial}" + (f": {shown}" if shown else "")
            lines.append(f"Best {self.metric or 'value'}: {_short(best.value)} ({where})")
        return lines

    def event(self, *, error: BaseException | None = None, event_id: str | None = None) -> NotificationEvent:
        """The summary as the message every voice sends: ``Sweep finished: NAME`` (``…
        with failures`` at warning level when a trial failed or ``error`` ended the sweep)."""
        clean = error is None and self.failed == 0
        lines = self.lines()
        if error is not None:
            lines.append(f"The sweep itself ended with {type(error).__name__}: {str(error)[:300]}")
        best = self.best
        context: dict[str, Any] = {
            "run_id": self.name,
            "model": "sweep",
            "sweep": self.name,
            "outcome": (Outcome.COMPLETED if clean else Outcome.COMPLETED_WITH_WARNINGS).value,
            "trials": len(self.trials),
            "pruned": self.pruned,
            "failed": self.failed,
            "duration": self.seconds,
        }
        if best is not None:
            context["best"] = {self.metric or "value": best.value, "trial": best.trial}
            context["best_params"] = dict(best.params)
        event = NotificationEvent(
            event_type=EventType.TRAINING_COMPLETED,
            level=NotificationLevel.SUCCESS if clean else NotificationLevel.WARNING,
            title=f"Sweep finished: {self.name}" if clean else f"Sweep finished with failures: {self.name}",
            message="\n".join(lines),
            context=context,
        )
        return event if event_id is None else replace(event, id=event_id)


def summarise(
    name: str,
    events: list[NotificationEvent],
    *,
    since: float,
    seconds: float,
    metric: str | None = None,
    mode: str = "min",
    runs: Iterable[RunState] = (),
) -> SweepSummary:
    """The summary of sweep ``name`` from its trials' events (the newest end of each trial
    since ``since``, epoch seconds, counts) and their ``runs`` rows (a trial with no end
    event takes its row's outcome: one the death watcher found killed)."""
    trials: dict[str, TrialEnd] = {}
    chosen = metric
    for event in sorted(events, key=lambda e: e.timestamp):
        context = event.context
        if context.get("sweep") != name or context.get("trial") is None:
            continue
        if event.timestamp.timestamp() < since:
            continue
        key = str(event.run_id or context["trial"])
        trial = trials.setdefault(key, TrialEnd(str(context["trial"]), None))
        trial.params = dict(context.get("trial_params") or trial.params)
        if event.event_type not in TERMINAL_TYPES:
            continue
        trial.outcome = _outcome(event)
        value, found = _value(context, chosen)
        if chosen is None and found is not None:
            chosen = found  # the first trial's monitored metric names the rest
        trial.value = value
    for state in trials_of(name, runs, since):
        trial = trials.setdefault(state.run_id, TrialEnd(str(state.extra["trial"]), None))
        if trial.outcome is None and state.outcome is not None:
            trial.outcome = state.outcome
    return SweepSummary(name, list(trials.values()), seconds, chosen, mode)


def trials_of(name: str, runs: Iterable[RunState], since: float) -> list[RunState]:
    """The rows of sweep ``name``'s trials that started since ``since``."""
    return [
        state
        for state in runs
        if state.extra.get("sweep") == name
        and state.extra.get("trial") is not None
        and (state.started_at is None or state.started_at >= since - _SINCE_SLACK)
    ]


# The watcher's part: a sweep of trials in other processes ends once it is quiet ------------


def awaiting_summary(state_dir: str) -> bool:
    """Whether a sweep that :func:`quiet_summaries` will summarise, or whose live card it
    shows, is still open here (the watcher lingers while so). One ``listdir`` when there
    is none."""
    return any(
        claim.voice == "trials" or (state_dir, claim.name, claim.generation) in _carded
        for claim in sweep_claims.open_claims(state_dir)
        if not claim.stale
    )


#: Shows a sweep's live card (the watcher's ``manager.update_run``: stored, and edited in
#: place on the channels that keep cards, at their pace).
Show = Callable[[RunState], object]
#: The sweeps whose card this process shows: (state dir, name, generation) -> (what the
#: card last said, the claim).
_carded: dict[tuple[str, str, int], tuple[tuple[Any, ...], sweep_claims.Claim]] = {}


def quiet_summaries(
    outbox: Outbox, state_dir: str, *, now: float | None = None, show: Show | None = None
) -> list[NotificationEvent]:
    """The summaries now due of the open sweeps of ``state_dir`` whose trials speak for
    themselves (voice ``trials``): no trial running, the newest start or end older than
    :func:`quiet_seconds`. Each is claimed (closed) before it is returned, so of the
    processes asking only one gets it. ``show``: also keep every open sweep's live card
    (trials ended, running, pruned, failed; the best so far with its parameters), updated
    as trials end and finished with the summary. Raises what the outbox raises (the
    watcher opens the file again next round)."""
    claims = [claim for claim in sweep_claims.open_claims(state_dir) if not claim.stale]
    carded = {key: held for key, held in _carded.items() if key[0] == state_dir}
    if not claims and not carded:
        return []
    now = time.time() if now is None else now
    quiet = quiet_seconds()
    since = min(claim.started for claim in [*claims, *(held[1] for held in carded.values())])
    rows = outbox.runs(ended_since=since - _SINCE_SLACK, limit=None)
    host = socket.gethostname()
    quiet_ones: list[tuple[sweep_claims.Claim, list[RunState], float]] = []
    for claim in claims:
        trials = trials_of(claim.name, rows, claim.started)
        if show is not None:
            _show_live(outbox, state_dir, claim, trials, show, host, now)
        if claim.voice != "trials" or any(_running(state, host, now) for state in trials):
            continue
        moments = [claim.started] + [t for s in trials for t in (s.started_at, s.updated_at, s.ended_at) if t]
        if now - max(moments) >= quiet:
            ends = [state.ended_at for state in trials if state.ended_at is not None]
            quiet_ones.append((claim, trials, max(ends) if ends else max(moments)))
    open_keys = {(state_dir, claim.name, claim.generation) for claim in claims}
    closed = [held[1] for key, held in carded.items() if key not in open_keys]  # by a block, a study
    if not quiet_ones and not closed:
        return []
    # Read once, before any claim is closed: a busy file raises here, and the sweeps stay
    # open for the next round.
    events = [entry.event for entry in outbox.history(event_type=_READ_TYPES, limit=MAX_EVENTS_READ)]
    due = []
    for claim, trials, last in quiet_ones:
        summary = _summary(claim, events, trials, last)
        if sweep_claims.close(state_dir, claim):
            due.append(summary.event(event_id=claim.event_id("summary")))
            closed.append(claim)
            if show is not None:
                show(card_state(claim, summary, now=now, ended_at=last))
    for claim in closed:
        if _carded.pop((state_dir, claim.name, claim.generation), None) is None or show is None:
            continue
        if any(claim is done for done, _, _ in quiet_ones):
            continue  # its final card went with its summary above
        trials = trials_of(claim.name, rows, claim.started)
        ends = [state.ended_at for state in trials if state.ended_at is not None]
        last = max(ends) if ends else now
        show(card_state(claim, _summary(claim, events, trials, last), now=now, ended_at=last))
    if due:
        sweep_claims.prune(state_dir, now=now)
    return due


def _summary(
    claim: sweep_claims.Claim, events: list[NotificationEvent], trials: list[RunState], last: float
) -> SweepSummary:
    """The summary of ``claim``'s sweep, whose last trial ended at ``last``."""
    return summarise(
        claim.name,
        events,
        since=claim.started,
        seconds=max(0.0, last - claim.started),
        metric=claim.metric,
        mode=claim.mode,
        runs=trials,
    )


def card_state(
    claim: sweep_claims.Claim,
    summary: SweepSummary,
    *,
    now: float,
    running: int = 0,
    ended_at: float | None = None,
) -> RunState:
    """The sweep's live card as a run state (``ended_at``: the sweep is over, and the card
    says how it ended). The trials and the best trial are two lines of their own
    (``extra["trials"]``, ``extra["best_trial"]``, shown by every card renderer)."""
    ended = len(summary.trials) - summary.unfinished
    trials = f"{ended} ended ({summary.pruned} pruned, {summary.failed} failed)"
    if ended_at is None:
        trials += f", {running} running"
    elif summary.unfinished:
        trials += f", {summary.unfinished} without an end"
    extra: dict[str, Any] = {"sweep": claim.name, "trials": trials}
    best = summary.best
    if best is not None:
        shown = ", ".join(f"{name}={_short(value)}" for name, value in best.params.items())
        extra["best_trial"] = f"{summary.metric or 'value'} {_short(best.value)}, trial {best.trial}" + (
            f": {shown}" if shown else ""
        )
    if ended_at is None:
        status = LIVE_STATUSES[0]
    else:
        status = (Outcome.COMPLETED if summary.failed == 0 else Outcome.COMPLETED_WITH_WARNINGS).value
    return RunState(
        run_id=claim.name if claim.generation == 0 else f"{claim.name} ({claim.generation + 1})",
        model=f"Sweep {claim.name}",
        status=status,
        started_at=claim.started,
        updated_at=now,
        ended_at=ended_at,
        summary="\n".join(summary.lines()) if ended_at is not None else None,
        extra=extra,
    )


def _show_live(
    outbox: Outbox,
    state_dir: str,
    claim: sweep_claims.Claim,
    trials: list[RunState],
    show: Show,
    host: str,
    now: float,
) -> None:
    """Update the sweep's live card when what it says changed (a trial started or ended)."""
    running = sum(1 for state in trials if _running(state, host, now))
    ended = [state for state in trials if state.outcome is not None]
    scored = [
        (value, state) for state in ended for value in [_row_value(state, claim.metric)] if value is not None
    ]
    pick = min if claim.mode == "min" else max
    best = pick(scored, key=lambda pair: pair[0]) if scored else None
    said = (running, tuple(sorted((s.run_id, s.status) for s in ended)), best and (best[1].run_id, best[0]))
    key = (state_dir, claim.name, claim.generation)
    if key in _carded and _carded[key][0] == said:
        return
    best_value, best_state = best if best is not None else (None, None)
    params = _trial_params(outbox, best_state.run_id) if best_state is not None else {}
    summary = SweepSummary(
        claim.name,
        [
            TrialEnd(str(s.extra["trial"]), s.outcome, best_value, params)
            if s is best_state
            else TrialEnd(str(s.extra["trial"]), s.outcome)
            for s in trials
        ],
        max(0.0, now - claim.started),
        claim.metric or (best_state.monitor if best_state is not None else None),
        claim.mode,
    )
    show(card_state(claim, summary, now=now, running=running))
    _carded[key] = (said, claim)


def _row_value(state: RunState, metric: str | None) -> float | None:
    """A trial's value from its row: ``metric``'s latest, else its monitored best."""
    value = state.metrics.get(metric) if metric else state.best
    return float(value) if isinstance(value, (int, float)) else None


def _trial_params(outbox: Outbox, run_id: str) -> dict[str, Any]:
    """A trial's parameters, from its start event (rows keep only scalars of the run)."""
    for entry in outbox.history(run_id=run_id, event_type="training_started", limit=1):
        params = entry.event.context.get("trial_params")
        if isinstance(params, Mapping):
            return dict(params)
    return {}


_READ_TYPES = [kind.value for kind in (*TERMINAL_TYPES, EventType.TRAINING_STARTED)]


def _running(state: RunState, host: str, now: float) -> bool:
    if state.status not in LIVE_STATUSES:
        return False
    if state.host in (None, "", host):
        return True  # this host's: the death watcher turns a vanished one's row ``killed``
    return state.updated_at is not None and now - state.updated_at < OTHER_HOST_STALE_SECONDS


def _outcome(event: NotificationEvent) -> Outcome:
    recorded = event.context.get("outcome")
    if recorded:
        try:
            return Outcome.parse(str(recorded))
        except ValueError:
            pass
    if event.event_type is EventType.TRAINING_COMPLETED:
        return Outcome.COMPLETED
    if event.event_type is EventType.TRAINING_INTERRUPTED:
        return Outcome.INTERRUPTED
    if event.level is NotificationLevel.CRITICAL:
        return Outcome.KILLED
    return Outcome.FAILED


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _value(context: Mapping[str, Any], metric: str | None) -> tuple[float | None, str | None]:
    """The trial's value of ``metric`` (default: its best monitored one), and the name."""
    best = context.get("best")
    if isinstance(best, Mapping):
        names = [k for k in best if k != "epoch"]
        name = metric if metric in best else (names[0] if names and metric is None else None)
        if name is not None and isinstance(best.get(name), (int, float)):
            return float(best[name]), name
    metrics = context.get("metrics")
    if isinstance(metrics, Mapping) and metric is not None and isinstance(metrics.get(metric), (int, float)):
        return float(metrics[metric]), metric
    return None, None


__all__ = [
    "MAX_EVENTS_READ",
    "QUIET_SECONDS",
    "SweepSummary",
    "TrialEnd",
    "awaiting_summary",
    "card_state",
    "quiet_seconds",
    "quiet_summaries",
    "summarise",
    "trials_of",
]
