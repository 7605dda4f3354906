"""Who speaks for a sweep is claimed once per state dir, and a sweep of trials in other
processes is summarised once, when it has gone quiet.

Real processes race for the claim (a barrier on their stdin, then all claim at once); the
quiet rule reads a real outbox with the rows and ends that trials store.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from afs_callbacks.delivery import sweep_claims, sweep_end
from afs_callbacks.delivery.outbox import Outbox
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.runstate import RunState

RACER = """
import sys
from afs_callbacks.delivery import sweep_claims
print("ready", flush=True)
sys.stdin.readline()
found = sweep_claims.claim(sys.argv[1], "race-sweep", "trials")
print("won" if found is not None and found.won else "joined", found.generation if found else None, flush=True)
"""


def test_of_processes_claiming_one_sweep_at_once_exactly_one_wins(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, state],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    for racer in racers:
        assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
    for racer in racers:  # the barrier: every process is up and waiting on its stdin
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    answers = [racer.communicate(timeout=60)[0].split() for racer in racers]
    assert sorted(answer[0] for answer in answers) == ["joined"] * 5 + ["won"]
    assert {answer[1] for answer in answers} == {"0"}
    (opened,) = sweep_claims.open_claims(state)
    assert opened.name == "race-sweep" and opened.voice == "trials"


def test_a_closed_sweep_is_closed_once_and_its_name_used_again_is_a_new_sweep(tmp_path: Path) -> None:
    state = str(tmp_path)
    first = sweep_claims.claim(state, "lr", "trials")
    assert first is not None and first.won and first.generation == 0
    joined = sweep_claims.claim(state, "lr", "block")
    assert joined is not None and not joined.won and joined.voice == "trials"
    assert sweep_claims.close(state, first) and not sweep_claims.close(state, first)
    assert sweep_claims.open_claims(state) == []
    again = sweep_claims.claim(state, "lr", "trials")
    assert again is not None and again.won and again.generation == 1
    assert again.event_id("started") != first.event_id("started")
    assert first.event_id("started") == joined.event_id("started")  # the same in every process


def test_a_block_takes_over_a_sweep_and_a_killed_blocks_claim_is_stale(tmp_path: Path) -> None:
    state = str(tmp_path)
    opened = sweep_claims.claim(state, "asha", "trials")
    assert opened is not None
    taken = sweep_claims.take_over(state, opened, "block")
    assert taken.voice == "block" and not taken.stale  # this process lives
    (listed,) = sweep_claims.open_claims(state)
    assert listed.voice == "block" and listed.started == opened.started
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = sweep_claims.Claim("x", 0, "block", time.time(), socket.gethostname(), int(gone.stdout))
    assert dead.stale
    assert not sweep_claims.Claim("x", 0, "trials", time.time(), socket.gethostname(), int(gone.stdout)).stale


def test_closed_claims_are_pruned_after_a_week(tmp_path: Path) -> None:
    state = str(tmp_path)
    old = sweep_claims.claim(state, "old", "trials")
    assert old is not None and sweep_claims.close(state, old)
    assert sweep_claims.prune(state) == 0  # closed just now: kept
    assert sweep_claims.prune(state, now=time.time() + sweep_claims.KEEP_SECONDS + 1) == 2
    assert os.listdir(tmp_path / sweep_claims.FOLDER) == []


# The quiet rule -------------------------------------------------------------------------------


def trial_row(
    claim: sweep_claims.Claim, run_id: str, trial: str, status: str, ended: float | None
) -> RunState:
    return RunState(
        run_id,
        "net",
        host=socket.gethostname(),
        pid=os.getpid(),
        status=status,
        started_at=claim.started + 0.1,
        updated_at=ended or claim.started + 0.2,
        ended_at=ended,
        extra={"sweep": claim.name, "trial": trial},
    )


def trial_end(
    claim: sweep_claims.Claim, run_id: str, trial: str, value: float, outcome: str
) -> NotificationEvent:
    return NotificationEvent(
        event_type=EventType.TRAINING_COMPLETED,
        level=NotificationLevel.SUCCESS,
        title="Training completed: net",
        context={
            "run_id": run_id,
            "sweep": claim.name,
            "trial": trial,
            "trial_params": {"lr": value},
            "best": {"val_loss": value, "epoch": 1},
            "outcome": outcome,
        },
    )


def test_a_sweep_is_summarised_once_when_no_trial_runs_and_none_ended_for_the_quiet_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFS_SWEEP_QUIET", "2")
    state = str(tmp_path)
    claim = sweep_claims.claim(state, "grid", "trials")
    assert claim is not None
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    t0 = claim.started
    outbox.save_run(trial_row(claim, "r1", "1", "running", None))
    outbox.save_run(trial_row(claim, "r2", "2", "completed", t0 + 1))
    outbox.write([(trial_end(claim, "r2", "2", 0.2, "completed"), [])])
    assert sweep_end.quiet_summaries(outbox, state, now=t0 + 100) == []  # r1 still runs
    assert sweep_end.awaiting_summary(state)

    outbox.save_run(trial_row(claim, "r1", "1", "pruned", t0 + 5))
    outbox.write([(trial_end(claim, "r1", "1", 0.4, "pruned"), [])])
    outbox.save_run(trial_row(claim, "r3", "3", "killed", t0 + 6))  # the death watcher's: no end event
    assert sweep_end.quiet_summaries(outbox, state, now=t0 + 7) == []  # the newest end is 1 s old

    (summary,) = sweep_end.quiet_summaries(outbox, state, now=t0 + 8.5)
    assert summary.title == "Sweep finished with failures: grid"
    assert summary.level is NotificationLevel.WARNING and summary.id == claim.event_id("summary")
    context = summary.context
    assert (context["trials"], context["pruned"], context["failed"]) == (3, 1, 1)
    assert context["best"] == {"val_loss": 0.2, "trial": "2"} and context["best_params"] == {"lr": 0.2}
    assert context["duration"] == pytest.approx(6.0)  # from the sweep's start to its last end
    assert "3 trials in 6.0s: 3 ended, 1 pruned, 1 failed." in summary.message
    assert sweep_end.quiet_summaries(outbox, state, now=t0 + 20) == []  # closed: said once
    assert not sweep_end.awaiting_summary(state)
    outbox.close()


def test_sweeps_a_block_or_a_study_speaks_for_are_left_to_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFS_SWEEP_QUIET", "0")
    state = str(tmp_path)
    for name, voice in (("blk", "block"), ("study", "study")):
        assert sweep_claims.claim(state, name, voice) is not None
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    assert sweep_end.quiet_summaries(outbox, state, now=time.time() + 3600) == []
    assert not sweep_end.awaiting_summary(state)
    assert len(sweep_claims.open_claims(state)) == 2
    outbox.close()


def test_the_live_card_changes_as_trials_end_and_ends_with_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from afs_callbacks.channels.card_view import render_text

    monkeypatch.setenv("AFS_SWEEP_QUIET", "2")
    state = str(tmp_path)
    claim = sweep_claims.claim(state, "cards", "trials")
    assert claim is not None
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    shown: list[RunState] = []
    t0 = claim.started
    outbox.save_run(trial_row(claim, "r1", "1", "running", None))
    outbox.save_run(trial_row(claim, "r2", "2", "running", None))
    outbox.write([(trial_start(claim, "r1", "1", 0.3), []), (trial_start(claim, "r2", "2", 0.1), [])])
    sweep_end.quiet_summaries(outbox, state, now=t0 + 1, show=shown.append)
    sweep_end.quiet_summaries(outbox, state, now=t0 + 1.5, show=shown.append)  # nothing new: no edit
    assert len(shown) == 1 and "0 ended (0 pruned, 0 failed), 2 running" in render_text(shown[0])
    assert sweep_end.awaiting_summary(state)

    outbox.save_run(replace(trial_row(claim, "r2", "2", "completed", t0 + 2), best=0.1, monitor="val_loss"))
    sweep_end.quiet_summaries(outbox, state, now=t0 + 2.5, show=shown.append)
    card = render_text(shown[-1])
    assert len(shown) == 2 and "1 ended (0 pruned, 0 failed), 1 running" in card
    assert "Best trial: val_loss 0.1, trial 2: lr=0.1" in card and not shown[-1].final

    outbox.save_run(replace(trial_row(claim, "r1", "1", "completed", t0 + 3), best=0.3, monitor="val_loss"))
    outbox.write(
        [
            (trial_end(claim, "r1", "1", 0.3, "completed"), []),
            (trial_end(claim, "r2", "2", 0.1, "completed"), []),
        ]
    )
    (summary,) = sweep_end.quiet_summaries(outbox, state, now=t0 + 6, show=shown.append)
    final = shown[-1]
    assert final.final and final.status == "completed" and final.run_id == "cards"
    assert "2 trials in 3.0s: 2 ended, 0 pruned, 0 failed." in render_text(final)
    assert "Best trial: val_loss 0.1, trial 2: lr=0.1" in render_text(final)
    assert summary.title == "Sweep finished: cards"
    count = len(shown)
    assert sweep_end.quiet_summaries(outbox, state, now=t0 + 9, show=shown.append) == []
    assert len(shown) == count and not sweep_end.awaiting_summary(state)
    outbox.close()


def trial_start(claim: sweep_claims.Claim, run_id: str, trial: str, value: float) -> NotificationEvent:
    return NotificationEvent(
        event_type=EventType.TRAINING_STARTED,
        level=NotificationLevel.INFO,
        title="Training started: net",
        context={"run_id": run_id, "sweep": claim.name, "trial": trial, "trial_params": {"lr": value}},
    )


def test_a_blocks_sweep_gets_a_card_finished_when_the_block_closes_it(tmp_path: Path) -> None:
    state = str(tmp_path)
    claim = sweep_claims.claim(state, "blk", "block")
    assert claim is not None
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    shown: list[RunState] = []
    outbox.save_run(trial_row(claim, "r1", "1", "running", None))
    assert sweep_end.quiet_summaries(outbox, state, now=claim.started + 1, show=shown.append) == []
    assert len(shown) == 1 and sweep_end.awaiting_summary(state)  # the watcher stays to finish it
    outbox.save_run(trial_row(claim, "r1", "1", "failed", claim.started + 2))
    assert sweep_claims.close(state, claim)  # the block said its summary
    assert sweep_end.quiet_summaries(outbox, state, now=claim.started + 3, show=shown.append) == []
    assert shown[-1].final and shown[-1].status == "completed_with_warnings"
    assert "1 ended (0 pruned, 1 failed)" in shown[-1].extra["trials"]
    assert not sweep_end.awaiting_summary(state)
    outbox.close()
