"""The one path of every surface (control.issue), the run's side (RunControl), who may
command, and the privacy of the state directory."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from afs_callbacks import NotificationManager, Settings
from afs_callbacks.config import Env
from afs_callbacks.config import Settings as CoreSettings
from afs_callbacks.control import ControlPolicy, ask, attach, cancel, confirm, issue
from afs_callbacks.control.commands import this_host
from afs_callbacks.delivery.outbox import Command, Outbox
from afs_callbacks.exceptions import ConfigurationError
from afs_callbacks.runstate import RunState
from afs_callbacks.testing import CapturingHandler
from afs_callbacks.tracking import RunTracker, TrackerConfig
from tests.dashboard.support import wait_for

ON = ControlPolicy(surfaces=("cli", "dashboard", "telegram", "slack"), max_age=60)


def stored_run(store: Outbox, run_id: str = "run-1", **facts: object) -> RunState:
    values: dict[str, object] = {
        "run_id": run_id,
        "model": "tiny",
        "host": this_host(),
        "status": "running",
        "started_at": time.time(),
        "control": {"accepts": ["cli", "dashboard"]},
    }
    values.update(facts)
    state = RunState(**values)  # type: ignore[arg-type]
    store.save_run(state)
    return state


@pytest.fixture
def store(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "state" / "outbox.sqlite3")


@pytest.mark.parametrize(
    ("policy", "facts", "action", "source", "reason"),
    [
        pytest.param(
            ControlPolicy(), {}, "stop", "cli", "AFS_CONTROL does not name cli", id="control off here"
        ),
        pytest.param(ON, {"control": {}}, "stop", "cli", "no commands through cli", id="run takes none"),
        pytest.param(ON, {}, "stop", "telegram", "through telegram", id="surface not taken"),
        pytest.param(ON, {"host": "other-node"}, "stop", "cli", "trains on other-node", id="another host"),
        pytest.param(ON, {"status": "completed"}, "checkpoint", "cli", "has ended", id="ended"),
        pytest.param(ON, {}, "rm -rf /", "cli", "unknown command", id="not an action"),
    ],
)
def test_a_command_is_refused_and_kept(
    store: Outbox, policy: ControlPolicy, facts: dict[str, object], action: str, source: str, reason: str
) -> None:
    stored_run(store, **facts)
    command = issue(store, "run-1", action, source=source, actor="alice@node", policy=policy)
    assert command.state == "refused" and reason in command.detail
    [kept] = store.commands(run_ids=["run-1"])
    assert (kept.state, kept.actor, kept.source) == ("refused", "alice@node", source)
    assert abs(kept.created - time.time()) < 60


def test_an_unknown_run_is_refused_and_kept(store: Outbox) -> None:
    command = issue(store, "nope", "stop", source="cli", actor="alice@node", policy=ON)
    assert command.state == "refused" and "no run 'nope'" in command.detail
    assert store.command(command.id) == command


def test_a_stop_waits_for_its_askers_confirmation(store: Outbox) -> None:
    stored_run(store)
    command = issue(store, "run-1", "stop", source="dashboard", actor="alice", policy=ON, confirmed=False)
    assert command.state == "unconfirmed"
    assert confirm(store, command.id, actor="mallory", policy=ON).state == "unconfirmed"  # type: ignore[union-attr]
    assert confirm(store, command.id, actor="alice", policy=ON).state == "pending"  # type: ignore[union-attr]


def test_a_late_confirmation_expires(store: Outbox) -> None:
    stored_run(store)
    long_ago = time.time() - 3600
    command = issue(
        store, "run-1", "stop", source="dashboard", actor="alice", policy=ON, confirmed=False, now=long_ago
    )
    assert confirm(store, command.id, actor="alice", policy=ON).state == "expired"  # type: ignore[union-attr]


def test_a_cancelled_stop_is_kept(store: Outbox) -> None:
    stored_run(store)
    command = issue(store, "run-1", "stop", source="dashboard", actor="alice", policy=ON, confirmed=False)
    assert cancel(store, command.id, actor="alice").state == "cancelled"  # type: ignore[union-attr]


def test_the_telegram_allow_list() -> None:
    anyone = ControlPolicy(surfaces=("telegram",))
    assert anyone.telegram_refusal("42", "-100", "-100") is None
    assert "not the configured chat" in (anyone.telegram_refusal("42", "-200", "-100") or "")
    listed = ControlPolicy(surfaces=("telegram",), telegram_users=frozenset({"42"}))
    assert listed.telegram_refusal("42", "-100", "-100") is None
    assert listed.telegram_refusal("42", "42", "-100") is None  # the user's own chat with the bot
    assert "not in AFS_CONTROL_TELEGRAM_USERS" in (listed.telegram_refusal("7", "-100", "-100") or "")


def test_afs_control_names_surfaces() -> None:
    read = lambda value: CoreSettings.from_env(Env({"AFS_CONTROL": value}, env_file=False)).control  # noqa: E731
    assert read("cli, Telegram") == ("cli", "telegram")
    assert read("all") == ("cli", "dashboard", "telegram", "slack")
    assert read("off") == ()
    assert CoreSettings.from_env(Env({}, env_file=False)).control == ()
    with pytest.raises(ConfigurationError, match="AFS_CONTROL: unknown surface"):
        read("cli,shell")


# The run's side ------------------------------------------------------------------------


def started(tmp_path: Path, **settings: object) -> tuple[NotificationManager, RunTracker]:
    manager = NotificationManager(
        {"capture": CapturingHandler()},
        settings=Settings(state_dir=tmp_path / "state", control=("cli",), control_max_age=30, **settings),
    )
    tracker = RunTracker(
        manager, TrackerConfig(model_name="tiny", monitors=False, chart=False, stall_timeout=None)
    )
    tracker.start(max_steps=100)
    return manager, tracker


def other_process(tmp_path: Path) -> Outbox:
    """What afs-notify or the dashboard writes through: a connection of its own."""
    return Outbox(tmp_path / "state" / "outbox.sqlite3")


def test_the_run_takes_a_command_written_by_another_connection(tmp_path: Path) -> None:
    manager, tracker = started(tmp_path)
    control = attach(tracker)
    assert control is not None
    tracker.on_step(1)
    manager.flush(10)  # the state, with what the run takes, is in the store; a sender runs
    outside = other_process(tmp_path)
    command = issue(outside, tracker.run_id, "checkpoint", source="cli", actor="bob@node", policy=ON)
    assert command.state == "pending"
    # The sender's idle look notices the foreign write within about a second.
    wait_for(lambda: tracker.asks_waiting()[1], timeout=10, what="the ask to reach the tracker")
    assert tracker.on_step(2) is True  # the step hook tells the adapter to look
    asked = tracker.asked()
    assert asked.checkpoint is not None and asked.checkpoint.actor == "bob@node"
    tracker.answered(asked.checkpoint, checkpoint="/ckpt/step2.pt")
    done = wait_for(lambda: (c := outside.command(command.id)) and c.state == "done" and c, what="done")
    assert "/ckpt/step2.pt" in done.detail
    assert tracker.on_step(3) is False
    tracker.completed()  # an ended run: no run of this test stays active in the process
    manager.close()


def test_a_stale_command_is_ignored(tmp_path: Path) -> None:
    manager, tracker = started(tmp_path)
    attach(tracker)
    tracker.on_step(1)
    manager.flush(10)
    outside = other_process(tmp_path)
    command = issue(
        outside, tracker.run_id, "stop", source="cli", actor="bob", policy=ON, now=time.time() - 600
    )
    wait_for(lambda: outside.command(command.id).state == "expired", timeout=10, what="expired")  # type: ignore[union-attr]
    assert tracker.on_step(2) is False and tracker.asks_waiting() == (False, False)
    tracker.completed()
    manager.close()


def test_a_stop_ends_the_run_stopped_by_its_asker(tmp_path: Path) -> None:
    manager, tracker = started(tmp_path)
    assert ask(tracker, "stop", reason="loss > 3 * best", source="rule", actor='rule "loss > 3 * best"')
    assert tracker.on_step(1) is True
    asked = tracker.asked()
    assert asked.stop is not None
    tracker.completed()
    manager.flush(10)
    handler = manager.handlers["capture"]
    [end] = [e for e in handler.events if e.event_type.value == "training_completed"]  # type: ignore[attr-defined]
    assert end.context["outcome"] == "stopped_by_rule"
    assert end.context["end_reason"].startswith('stopped by rule "loss > 3 * best": ')
    store = other_process(tmp_path)
    wait_for(
        lambda: (
            store.commands(run_ids=[tracker.run_id])
            and store.commands(run_ids=[tracker.run_id])[0].state == "done"
        ),
        what="done",
    )
    [command] = store.commands(run_ids=[tracker.run_id])
    assert command.source == "rule" and "ended at step 1" in command.detail
    manager.close()


def test_an_ask_without_control_is_refused_when_not_running(tmp_path: Path) -> None:
    tracker = RunTracker(CapturingSink(), TrackerConfig(monitors=False, stall_timeout=None))
    assert tracker.ask("stop", source="cli", actor="x") is False  # not started
    with pytest.raises(ValueError, match="must be one of stop, checkpoint"):
        tracker.ask("delete", source="cli", actor="x")


class CapturingSink:
    def emit(self, event: object) -> None:
        return None


# Privacy ---------------------------------------------------------------------------------


def test_the_state_dir_and_its_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # what most shells have: files 0644, folders 0755
    try:
        manager, tracker = started(tmp_path)
        tracker.on_step(1)
        tracker.completed()
        manager.flush(10)
        manager.close()
    finally:
        os.umask(old)
    state = tmp_path / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = [p for p in state.iterdir() if p.is_file()]
    assert "outbox.sqlite3" in {p.name for p in files}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_an_older_readable_store_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    path = state / "outbox.sqlite3"
    Outbox(path).close()
    for name in ("outbox.sqlite3", "outbox.sqlite3-wal"):
        if (state / name).exists():
            os.chmod(state / name, 0o644)
    Outbox(path).close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_shared_folder_is_left_as_it_is(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    Outbox(shared / "outbox.sqlite3").close()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "outbox.sqlite3").stat().st_mode) == 0o600


def test_commands_are_redacted_and_bounded(store: Outbox) -> None:
    from afs_callbacks.redaction import register_secret

    register_secret("s3cr3t-value-xyz")
    store.add_command(
        Command(
            "c1", "r", "stop", "cli", "s3cr3t-value-xyz" * 40, time.time(), time.time(), detail="x" * 5000
        )
    )
    [kept] = store.commands()
    assert "s3cr3t-value-xyz" not in kept.actor and len(kept.detail) <= 500
