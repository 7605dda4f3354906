"""A run's end tells its earlier messages still waiting as one story; alert channels and
a service that refuses the story get the run message by message, in its order.

The rule for one run (priority.next_of_run) on its own, then real workers on a real outbox
file posting to a loopback receiver.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import ClassVar

from helpers.hook import HookChannel, manager_for

from afs_callbacks.delivery.outbox import DELIVERED
from afs_callbacks.delivery.priority import FOLDED, Queued, next_of_run
from afs_callbacks.events import EventType, NotificationEvent, NotificationLevel
from afs_callbacks.testing import LoopbackReceiver, Reply

from .sender_kit import rig, titles, wait_for

START, NAN, END, EPOCH = (
    EventType.TRAINING_STARTED,
    EventType.NAN_DETECTED,
    EventType.TRAINING_COMPLETED,
    EventType.EPOCH_COMPLETED,
)


def row(name: str, kind: EventType, *, flying: bool = False, due: bool = True) -> Queued:
    return Queued(name, kind, flying, due)


def test_a_run_sends_its_oldest_message_first() -> None:
    chosen = next_of_run([row("s", START), row("e", EPOCH), row("n", NAN)], stories=True)
    assert chosen.next is not None and chosen.next.event_id == "s"
    assert chosen.leads_exempt and not chosen.tells  # an alert waits: no budget hold


def test_an_end_takes_the_messages_before_it_along() -> None:
    chosen = next_of_run([row("s", START), row("n", NAN), row("x", END)], stories=True)
    assert chosen.next is not None and chosen.next.event_id == "x" and chosen.tells


def test_nothing_overtakes_a_message_in_flight() -> None:
    assert next_of_run([row("s", START, flying=True), row("x", END)], stories=True).next is None
    assert next_of_run([row("s", START, flying=True), row("n", NAN)], stories=False).next is None


def test_without_stories_the_end_waits_its_turn() -> None:
    chosen = next_of_run([row("s", START), row("n", NAN), row("x", END)], stories=False)
    assert chosen.next is not None and chosen.next.event_id == "s" and not chosen.tells


def nan_run(run: str) -> list[NotificationEvent]:
    """started, NaN at step 5 (0.2 s later), stopped (0.4 s after the start)."""
    zero = datetime.now(timezone.utc)

    def at(
        seconds: float, kind: EventType, title: str, body: str, level: NotificationLevel
    ) -> NotificationEvent:
        when = zero + timedelta(seconds=seconds)
        return NotificationEvent(kind, level, title, body, {"run_id": run, "plan": "1 epoch"}, timestamp=when)

    return [
        at(0.0, START, f"Training started: {run}", "Plan: 1 epoch of 8 steps", NotificationLevel.INFO),
        at(
            0.2, NAN, f"NaN/Inf train_loss: {run}", "train_loss became NaN at step 5", NotificationLevel.ERROR
        ),
        at(0.4, END, f"Training stopped after NaN/Inf: {run}", "Duration: 0.4 s", NotificationLevel.WARNING),
    ]


def test_the_end_tells_the_whole_story_in_one_message(tmp_path: Path, receiver: LoopbackReceiver) -> None:
    with rig(tmp_path) as r:
        worker = r.add("hook", HookChannel(receiver.url("/hook")), start=False)
        r.enqueue(*nan_run("r1"))
        worker.start()
        wait_for(
            lambda: r.states("hook").get("Training stopped after NaN/Inf: r1") == DELIVERED, what="the end"
        )
        states = r.states("hook")
    (request,) = receiver.requests
    told = request.json()["event"]
    assert told["title"] == "Training stopped after NaN/Inf: r1"
    lines = told["message"].splitlines()
    assert lines[0] == "Duration: 0.4 s"  # the end's own body leads (a failure's error first)
    assert lines[2] == "Earlier in this run:"
    assert lines[3] == "Training started: r1 — Plan: 1 epoch of 8 steps"
    assert lines[4] == "0.2s later: NaN/Inf train_loss: r1 — train_loss became NaN at step 5"
    assert lines[5].startswith("0.4s later: ")
    assert told["level"] == "error"  # the folded NaN is still pushed as an error
    assert [entry["event_type"] for entry in told["context"]["story"]] == ["training_started", "nan_detected"]
    assert told["context"]["plan"] == "1 epoch"  # the start's context under the end's
    assert states["Training started: r1"] == states["NaN/Inf train_loss: r1"] == FOLDED


class AlertHook(HookChannel):
    """An alert channel: each event fires or resolves on its own (like Alertmanager)."""

    name: ClassVar[str] = "alerts"
    tells_stories: ClassVar[bool] = False


def test_an_alert_channel_gets_each_message_in_order(tmp_path: Path, receiver: LoopbackReceiver) -> None:
    with rig(tmp_path) as r:
        worker = r.add("alerts", AlertHook(receiver.url("/hook")), start=False)
        r.enqueue(*nan_run("r2"))
        worker.start()
        wait_for(lambda: len(receiver.requests) == 3, what="three messages")
    assert titles(receiver.requests) == [
        "Training started: r2",
        "NaN/Inf train_loss: r2",
        "Training stopped after NaN/Inf: r2",
    ]


def test_a_refused_story_goes_out_message_by_message_in_order(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    receiver.reply(Reply(400, body="invalid_payload"))  # the story, refused for good
    with rig(tmp_path) as r:
        worker = r.add("hook", HookChannel(receiver.url("/hook")), start=False)
        r.enqueue(*nan_run("r3"))
        worker.start()
        wait_for(lambda: len(receiver.requests) == 4, what="the story and three messages")
        wait_for(lambda: set(r.states("hook").values()) == {DELIVERED}, what="all delivered")
    assert titles(receiver.requests)[1:] == [
        "Training started: r3",
        "NaN/Inf train_loss: r3",
        "Training stopped after NaN/Inf: r3",
    ]
    assert receiver.requests[3].json()["event"]["message"] == "Duration: 0.4 s"  # no story again


def test_a_runs_repeat_digest_comes_before_its_end(tmp_path: Path, receiver: LoopbackReceiver) -> None:
    """A NaN at every step, then the end: the repeat window closes at the end, so its digest
    is stored (and sent) before the end, never after it."""
    channel = AlertHook(receiver.url("/hook"))
    with manager_for(tmp_path, {"alerts": channel}, dedup_window=60.0) as manager:
        for step in range(10):
            manager.notify("NaN loss: r7", f"at step {step}", EventType.NAN_DETECTED, key="loss", run_id="r7")
        manager.notify("Training stopped after NaN/Inf: r7", "", END, run_id="r7")
        manager.flush(10)
        sent = titles(receiver.requests)
    assert sent[0] == "NaN loss: r7"
    assert sent[-1] == "Training stopped after NaN/Inf: r7"
    assert len(sent) == 3 and "repeated 9 times" in sent[1]
