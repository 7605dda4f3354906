"""The manager's policy: a quiet default, old handlers, run states and cards, the end of a
run first at exit, control data as event fields."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import ClassVar

import pytest
from helpers.hook import event_ids, manager_for, wait_until

from afs_callbacks import DeliveryResult, EventType, NotificationEvent, NotificationHandler
from afs_callbacks.events import DEFAULT_LEVELS, PROGRESS_TYPES
from afs_callbacks.runstate import COMPLETED, RUNNING, MetricPoint, RunState
from afs_callbacks.testing import CapturingHandler, LoopbackReceiver


def run_event(kind: EventType, run_id: str = "r1") -> NotificationEvent:
    return NotificationEvent(
        kind, DEFAULT_LEVELS[kind], f"{kind.value} of {run_id}", context={"run_id": run_id}
    )


PUSHED_BY_DEFAULT = {EventType.TRAINING_STARTED, EventType.TRAINING_COMPLETED, EventType.NAN_DETECTED}


@pytest.mark.parametrize(
    ("verbosity", "pushed"),
    [
        ("normal", PUSHED_BY_DEFAULT),
        ("quiet", PUSHED_BY_DEFAULT - {EventType.TRAINING_STARTED}),
        ("verbose", PUSHED_BY_DEFAULT | PROGRESS_TYPES),
    ],
)
def test_run_events_are_pushed_by_verbosity_and_all_kept_in_the_history(
    tmp_path: Path, verbosity: str, pushed: set[EventType]
) -> None:
    captured = CapturingHandler()
    manager = manager_for(tmp_path, {"capture": captured}, verbosity=verbosity)
    kinds = sorted(PUSHED_BY_DEFAULT | PROGRESS_TYPES, key=lambda kind: kind.value)
    for kind in kinds:
        # The end on a run of its own: a run's end supersedes its queued progress.
        assert (
            manager.emit(run_event(kind, "r2" if kind is EventType.TRAINING_COMPLETED else "r1")) is not None
        )
    assert manager.flush(10).pending == 0
    assert {e.event_type for e in captured.events} == pushed
    assert len(manager.outbox.history(limit=100)) == len(kinds)  # progress is in the history
    manager.close()


def test_a_channel_that_names_progress_types_gets_them_at_any_verbosity(tmp_path: Path) -> None:
    everything, epochs = CapturingHandler(), CapturingHandler()
    manager = manager_for(tmp_path, {"default": everything}, verbosity="quiet")
    manager.register_handler("epochs", epochs, events=["epoch_completed"])
    manager.emit(run_event(EventType.EPOCH_COMPLETED, "r1"))
    manager.emit(run_event(EventType.TRAINING_COMPLETED, "r2"))
    assert manager.flush(10).pending == 0
    assert [e.event_type for e in epochs.events] == [EventType.EPOCH_COMPLETED]
    assert [e.event_type for e in everything.events] == [EventType.TRAINING_COMPLETED]
    manager.close()


class OldHandler(NotificationHandler):
    """A handler written for the seed API: it only overrides is_configured()."""

    def __init__(self) -> None:
        self.sent: list[NotificationEvent] = []

    def send(self, event: NotificationEvent) -> bool:
        self.sent.append(event)
        return True

    def is_configured(self) -> bool:
        return False


def test_a_handler_whose_is_configured_is_false_gets_nothing_and_shows_why(tmp_path: Path) -> None:
    old, captured = OldHandler(), CapturingHandler()
    manager = manager_for(tmp_path, {"old": old, "capture": captured})
    manager.notify("hello")
    assert manager.flush(10).pending == 0
    assert old.sent == [] and len(captured.events) == 1
    [status] = [s for s in manager.status() if s.name == "old"]
    assert not status.configured and "is_configured() returned False" in status.reason
    manager.close()


def test_notify_key_sets_the_field_that_tells_repeats_apart(tmp_path: Path) -> None:
    captured = CapturingHandler()
    manager = manager_for(tmp_path, {"capture": captured}, dedup_window=60.0)
    manager.notify("GPU 0 hot", event_type="gpu_temperature", run_id="r", key="gpu0")
    assert manager.notify("GPU 0 still hot", event_type="gpu_temperature", run_id="r", key="gpu0") is None
    manager.notify("GPU 1 hot", event_type="gpu_temperature", run_id="r", key="gpu1")
    assert manager.flush(10).pending == 0
    assert [e.key for e in captured.events] == ["gpu0", "gpu1"]
    manager.close()


class CardChannel(CapturingHandler):
    """A channel that edits one message per run: records every card it was shown."""

    supports_cards: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[RunState] = []

    def post_card(self, state: RunState) -> DeliveryResult:
        self.cards.append(state)
        return DeliveryResult(DeliveryResult.delivered().outcome, message_id="m1")

    def edit_card(self, message_id: str, state: RunState) -> DeliveryResult:
        self.cards.append(state)
        return DeliveryResult.delivered()


def test_run_states_are_stored_latest_first_and_shown_on_the_card(tmp_path: Path) -> None:
    card = CardChannel()
    manager = manager_for(tmp_path, {"card": card}, card_interval=0.0)
    started = time.time()
    for step in range(1, 51):
        state = RunState("r1", "tiny", status=RUNNING, step=step, started_at=started, updated_at=time.time())
        manager.update_run(state, [MetricPoint("loss", float(step), 1.0 / step)])
    final = RunState("r1", "tiny", status=COMPLETED, step=50, started_at=started, updated_at=time.time())
    manager.update_run(final, [])
    manager.close(timeout=5)
    stored = manager.outbox.run("r1")
    assert stored is not None and stored.status == COMPLETED
    assert len(manager.outbox.points("r1")["loss"]) == 50  # every point kept, states coalesced
    assert card.cards and card.cards[-1].status == COMPLETED


EXIT_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from helpers.hook import PacedHookChannel, manager_for
from afs_callbacks import EventType, NotificationEvent, NotificationLevel
manager = manager_for({state!r}, {{"paced": PacedHookChannel({url!r})}}, verbosity="verbose",
                      exit_flush_timeout=3.0)
for epoch in range(40):
    manager.emit(NotificationEvent(EventType.EPOCH_COMPLETED, NotificationLevel.INFO,
                                   f"Epoch {{epoch}}", context={{"run_id": "r1"}}))
done = manager.emit(NotificationEvent(EventType.TRAINING_COMPLETED, NotificationLevel.SUCCESS,
                                      "Training completed", context={{"run_id": "r1"}}))
print(done.id, flush=True)
"""


def test_the_end_of_a_run_goes_out_first_within_the_exit_flush(
    tmp_path: Path, receiver: LoopbackReceiver
) -> None:
    """40 queued progress messages at 0.3 s each would take 12 s; the exit flush has 3 s."""
    script = EXIT_SCRIPT.format(
        tests=str(Path(__file__).parents[1]), state=str(tmp_path / "s"), url=receiver.url("/h")
    )
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    completed_id = result.stdout.split()[-1]
    wait_until(lambda: completed_id in event_ids(receiver.requests), timeout=5, what="the completion")
    assert event_ids(receiver.requests).index(completed_id) <= 1  # at most one epoch before it


def test_monitors_read_the_settings_the_manager_was_built_from(tmp_path: Path) -> None:
    from afs_callbacks import NotificationManager
    from afs_callbacks.monitors import start_monitors

    manager = NotificationManager.from_env({"AFS_STATE_DIR": str(tmp_path), "AFS_MONITORS": "system"})
    monitors = start_monitors(manager, paths=[tmp_path])  # no env: the manager's, not os.environ
    try:
        assert [monitor.name for monitor in monitors] == ["system"]
    finally:
        monitors.stop()
        manager.close()
